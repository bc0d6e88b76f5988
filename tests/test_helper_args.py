"""What the helper accepts and refuses on its command line, on both backends.

Loglines hold whatever an attacker sent; the other arguments come from jail configs and the
database. Nothing of it may reach a shell or SQL, and a bad argument writes nothing at all.
"""

from __future__ import annotations

import datetime
import subprocess
from typing import TYPE_CHECKING

from testbed import BASE_ENV, DOVECOT_PORTS, HOST_LIB, SYSTEM_PYTHON, unb64, write_private

if TYPE_CHECKING:
    from testbed import Database, Host


def test_loglines_are_stored_byte_for_byte(db: Database, host: Host) -> None:
    canary = host.home / "pwned"
    loglines = [
        f"user='root' pass=\"x\" $(touch {canary}) `touch {canary}` ; | & * #".encode(),
        b"first line\nsecond line\r\nthird\n",
        b"latin-1 \xe9t\xe9, broken UTF-8 \xff\xfe\xc3, control \x01\x1b[31m\x7f",
        b"  leading and trailing spaces  ",
        b"-v",
        b"--config=/etc/passwd",
        b"\\' \\\" \\\\ %s %(x)s {0} ${HOME}",
    ]
    result = host.run("ban", "198.51.100.7", DOVECOT_PORTS, "tcp", "dovecot", "4", *loglines)
    assert result.returncode == 0, str(result)
    [row] = db.banned()
    assert row["ip"] == "198.51.100.7"
    assert row["failures"] == 4
    # The original joined its arguments with a space and stored base64: so do we.
    assert unb64(row["loglines"]) == b" ".join(loglines)
    assert not canary.exists(), "a log line was run by a shell"


def test_loglines_are_cut_at_32_kib(db: Database, host: Host) -> None:
    huge = bytes(range(1, 256)) * 200  # 51 000 bytes, every byte value but NUL (argv cannot hold it)
    host.ok("ban", "198.51.100.8", DOVECOT_PORTS, "tcp", "dovecot", "1", huge)
    [row] = db.banned()
    assert unb64(row["loglines"]) == huge[: 32 * 1024]


def test_empty_failures_and_no_loglines(db: Database, host: Host) -> None:
    host.ok("ban", "198.51.100.9", DOVECOT_PORTS, "tcp", "dovecot", "")
    host.ok("ban", "198.51.100.10", DOVECOT_PORTS, "tcp", "dovecot")
    rows = db.banned()
    assert [(row["ip"], row["failures"], unb64(row["loglines"])) for row in rows] == [
        ("198.51.100.9", 0, b""),
        ("198.51.100.10", 0, b""),
    ]


def test_ports_written_with_blanks_are_stored_without(db: Database, host: Host) -> None:
    # A jail may say `port = 80, 443`; the action quotes <port>, the column keeps "80,443".
    host.ok("ban", "198.51.100.13", "80, 443,\t25", "TCP", "dovecot", "1")
    [row] = db.banned()
    assert (row["ports"], row["protocol"]) == ("80,443,25", "tcp")


def test_what_fail2ban_accepts_is_stored(db: Database, host: Host) -> None:
    # iRedMail's `ports` holds 255 characters; multiport and nftables actions take protocol lists.
    ports = ",".join(str(port) for port in range(1000, 1051)) + "0"
    assert len(ports) == 255
    host.ok("ban", "198.51.100.14", ports, "tcp, UDP", "dovecot", "1")
    host.ok("start", "--ports", ports, "--protocol", "tcp,udp", "dovecot")
    [row] = db.banned()
    assert (row["ports"], row["protocol"]) == (ports, "tcp,udp")
    [jail] = db.jails()
    assert (jail["ports"], jail["protocol"]) == (ports, "tcp,udp")


def test_ban_time_is_stored_as_naive_utc(db: Database, host: Host) -> None:
    # fail2ban's <time> (epoch seconds); the helper runs with TZ=Asia/Tokyo (UTC+9).
    host.ok("ban", "--time", "1700000000.25", "198.51.100.11", DOVECOT_PORTS, "tcp", "dovecot", "1")
    # Rounded as fail2ban's own database rounds it, so a restored ban gets the same second.
    host.ok("ban", "--time", "1700000000.75", "198.51.100.12", DOVECOT_PORTS, "tcp", "dovecot", "1")
    assert [row["timestamp"] for row in db.banned()] == [
        datetime.datetime(2023, 11, 14, 22, 13, 20),
        datetime.datetime(2023, 11, 14, 22, 13, 21),
    ]


def test_ipv6_and_networks_round_trip(db: Database, host: Host) -> None:
    host.ok("ban", "2001:DB8:0:0:0:0:0:5", DOVECOT_PORTS, "tcp", "dovecot", "1")
    host.ok("ban", "2001:db8:1::/64", DOVECOT_PORTS, "tcp", "dovecot", "1")
    host.ok("ban", "192.0.2.0/24", DOVECOT_PORTS, "tcp", "dovecot", "1")
    host.ok("ban", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", DOVECOT_PORTS, "tcp", "dovecot", "1")
    # Stored in normal form, so that the row matches what fail2ban prints and unbans.
    assert [row["ip"] for row in db.banned()] == [
        "2001:db8::5",
        "2001:db8:1::/64",
        "192.0.2.0/24",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
    ]
    # Unban takes any spelling of the same address, and several at once.
    host.ok("unban", "2001:0db8:0000::0005", "2001:db8:1:0::/64")
    assert [row["ip"] for row in db.banned()] == ["192.0.2.0/24", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"]
    host.ok("unban", "--jail", "dovecot", "192.0.2.0/24", "FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFE")
    assert db.banned() == []


INJECTION = "1.1.1.1'; DROP TABLE banned; --"
GOOD = ["192.0.2.50", DOVECOT_PORTS, "tcp", "dovecot", "1"]

# (what is wrong, the helper's arguments)
REFUSED: list[tuple[str, list[str]]] = [
    ("SQL in the address", ["ban", INJECTION, *GOOD[1:]]),
    ("octet out of range", ["ban", "999.1.1.1", *GOOD[1:]]),
    ("short IPv4", ["ban", "1.1.1", *GOOD[1:]]),
    ("host name for an address", ["ban", "example.com", *GOOD[1:]]),
    ("empty address", ["ban", "", *GOOD[1:]]),
    ("network with host bits", ["ban", "10.0.0.1/8", *GOOD[1:]]),
    ("prefix too long", ["ban", "10.0.0.0/33", *GOOD[1:]]),
    ("scoped IPv6", ["ban", "fe80::1%eth0", *GOOD[1:]]),
    ("two addresses in one", ["ban", "1.1.1.1\n2.2.2.2", *GOOD[1:]]),
    ("space in the jail", ["ban", *GOOD[:3], "dove cot", "1"]),
    ("shell in the jail", ["ban", *GOOD[:3], "dovecot;id", "1"]),
    ("quote in the jail", ["ban", *GOOD[:3], "dovecot'--", "1"]),
    ("jail too long", ["ban", *GOOD[:3], "j" * 51, "1"]),
    ("empty jail", ["ban", *GOOD[:3], "", "1"]),
    ("shell in the ports", ["ban", GOOD[0], "80;id", "tcp", "dovecot", "1"]),
    ("space in the ports", ["ban", GOOD[0], "80 443", "tcp", "dovecot", "1"]),
    ("quote in the ports", ["ban", GOOD[0], "80'", "tcp", "dovecot", "1"]),
    ("ports too long", ["ban", GOOD[0], "1" * 256, "tcp", "dovecot", "1"]),
    ("empty ports", ["ban", GOOD[0], "", "tcp", "dovecot", "1"]),
    ("shell in the protocol", ["ban", *GOOD[:2], "tcp;id", "dovecot", "1"]),
    ("two protocols", ["ban", *GOOD[:2], "tcp udp", "dovecot", "1"]),
    ("protocol too long", ["ban", *GOOD[:2], "t" * 33, "dovecot", "1"]),
    ("protocol list ends in a comma", ["ban", *GOOD[:2], "tcp,", "dovecot", "1"]),
    ("empty protocol", ["ban", *GOOD[:2], "", "dovecot", "1"]),
    ("failures not a number", ["ban", *GOOD[:4], "abc"]),
    ("failures a fraction", ["ban", *GOOD[:4], "1.5"]),
    ("failures with SQL", ["ban", *GOOD[:4], "1; DROP TABLE banned"]),
    ("negative failures", ["ban", *GOOD[:4], "-1"]),
    ("ban time not a number", ["ban", "--time", "yesterday", *GOOD]),
    ("ban time not finite", ["ban", "--time", "nan", *GOOD]),
    ("too few arguments", ["ban", "192.0.2.50", DOVECOT_PORTS]),
    ("SQL in an unban", ["unban", INJECTION]),
    ("one bad address among good ones", ["unban", "192.0.2.1", INJECTION]),
    ("bad jail on unban", ["unban", "--jail", "x;y", "192.0.2.1"]),
    ("SQL in a started jail", ["start", "dovecot'); DROP TABLE jails; --"]),
    ("path in a stopped jail", ["stop", "../../etc"]),
    ("bad jail on cleanup", ["cleanup", "a b"]),
    ("unknown command", ["drop", "banned"]),
]


def _snapshot(db: Database) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    return db.banned(), db.jails()


def test_bad_arguments_are_refused_and_write_nothing(db: Database, host: Host) -> None:
    host.ok("start", "dovecot")
    host.ban("192.0.2.1")
    before = _snapshot(db)
    problems = []
    for what, args in REFUSED:
        result = host.run(*args)
        lines = result.stderr.strip().splitlines()
        if result.returncode != 2:
            problems.append(f"{what}: exit {result.returncode}, wanted 2\n{result}")
        elif len(lines) != 1 or "Traceback" in result.stderr:
            problems.append(f"{what}: wanted one line on stderr\n{result}")
        elif _snapshot(db) != before:
            problems.append(f"{what}: the tables changed")
        elif host.spooled():
            problems.append(f"{what}: an event was spooled")
    assert not problems, "\n\n".join(problems)
    # The table is still there and whole (no statement was ever built from the input).
    assert db.count("banned") == 1
    assert db.count("jails") == 1


def test_injection_message_names_the_address(db: Database, host: Host) -> None:
    result = host.run("ban", INJECTION, *GOOD[1:])
    assert result.returncode == 2
    assert "address" in result.stderr.lower(), result.stderr
    assert db.count("banned") == 0


def test_unusable_settings_exit_3(db: Database, host: Host) -> None:
    good = host.config.read_text(encoding="utf-8")
    broken = {
        "missing file": None,
        "unknown backend": good.replace(f"backend = {db.backend}", "backend = oracle"),
        "port not a number": good.replace(f"port = {db.server.port}", "port = mysql"),
        # configparser's messages quote the line they refuse: here, the password's.
        "a setting before any section": f"password = {db.password}\n{good}",
        "a line without a key": good.replace("[client]", f"[client]\n= {db.password}"),
    }
    for what, text in broken.items():
        if text is None:
            host.config.unlink()
        else:
            write_private(host.config, text)
        result = host.run("ban", *GOOD)
        assert result.returncode == 3, f"{what}: {result}"
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, f"{what}: {result}"
        assert db.password not in result.stderr, f"{what}: the password is in the message"
    assert host.spooled() == []
    assert db.count() == 0


# Standard modules a `ban` process has no need of, each most of a millisecond or more to import
# (argparse, configparser and re: helper.quick_args, settings.plain_ini, checks; socket: _socket;
# datetime: cdatetime; threading: _thread).
COSTLY = (
    "dataclasses", "inspect", "typing", "json", "shutil", "hashlib", "subprocess",
    "argparse", "gettext", "configparser", "re", "enum", "socket", "selectors", "base64", "datetime", "threading",
)  # fmt: skip
# Run a command of the helper in a fresh interpreter and print the package's modules it loaded
# (and the drivers', and which of COSTLY).
_LOADED = (
    "import sys; sys.path.insert(0, sys.argv[1]); from f2bsql_host.helper import main; code = main(sys.argv[2:]);"
    " print(' '.join(sorted(m for m in sys.modules if m.startswith(('f2bsql_host', 'pymysql', 'psycopg2'))"
    f" or m in {COSTLY!r})));"
    " sys.exit(code)"
)


def test_an_event_command_loads_none_of_the_cron_runs_code(db: Database, host: Host) -> None:
    """fail2ban starts a helper process for every event: `ban` must not pay for the modules of
    unban_db and sync (maintenance, and what it asks fail2ban with), nor, with country lookups
    off, for the lookup's, nor for PyMySQL or psycopg2 (their own clients speak these logins), nor
    for the standard modules in COSTLY;
    `unban_db` loads them."""
    argv = [SYSTEM_PYTHON, "-c", _LOADED, str(HOST_LIB), "--config", str(host.config)]
    ban = ["ban", "192.0.2.7", DOVECOT_PORTS, "tcp", "dovecot", "3", "auth failure"]
    done = subprocess.run([*argv, *ban], env=BASE_ENV, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    cron = {f"f2bsql_host.{name}" for name in ("maintenance", "fail2ban", "rdns", "metrics", "geo", "admin")}
    assert loaded & cron == set(), loaded
    assert {"f2bsql_host.db", "f2bsql_host.runner"} <= loaded and db.banned(ip="192.0.2.7")
    if db.backend == "mysql":
        assert "f2bsql_host.mysqlwire" in loaded and not {m for m in loaded if m.startswith("pymysql")}, loaded
    else:  # its own client there too: no psycopg2, and so no libpq and its libraries (pgwire.py)
        assert "f2bsql_host.pgwire" in loaded and not {m for m in loaded if m.startswith("psycopg2")}, loaded
    assert loaded & set(COSTLY) == set(), loaded
    done = subprocess.run([*argv, "unban_db"], env=BASE_ENV, capture_output=True, text=True, timeout=60, check=False)
    assert {"f2bsql_host.maintenance", "f2bsql_host.fail2ban"} <= set(done.stdout.split()), done
