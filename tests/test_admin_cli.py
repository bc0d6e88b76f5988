"""f2bsql, the admin CLI (files/f2bsql): its tables and JSON, unban as a panel does, and bad input.

Against the real databases of both backends; rows come from the helper itself (several hosts of
one database), or from a real fail2ban-server where a ban must really be lifted.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, Callable

import pytest
from testbed import DOVECOT_PORTS, POSTFIX_PORTS, wait_for

if TYPE_CHECKING:
    from testbed import Database, Fail2ban, Host, Run

BAN_KEYS = ["id", "ip", "jail", "host", "ports", "protocol", "country", "rdns", "failures", "since", "remove"]


def _json(run: Run) -> Any:
    assert run.returncode == 0, str(run)
    return json.loads(run.stdout)


@pytest.fixture
def fleet(db: Database, make_host: Callable[..., Host]) -> dict[str, Host]:
    """Two hosts of one database, with bans in two jails; mail1 is the host the CLI runs on."""
    hosts = {name: make_host(db, name) for name in ("mail1.example.test", "mail2.example.test")}
    one, two = hosts.values()
    one.ok("start", "--ports", DOVECOT_PORTS, "--protocol", "tcp", "dovecot")
    two.ok("start", "--ports", POSTFIX_PORTS, "--protocol", "tcp", "postfix")
    one.ok("ban", "--time", "1764583200", "192.0.2.1", DOVECOT_PORTS, "tcp", "dovecot", "5", "auth failed 1\nline 2")
    two.ok("ban", "--time", "1764586800", "192.0.2.1", POSTFIX_PORTS, "tcp", "postfix", "3", "SASL failed")
    two.ok("ban", "--time", "1764590400", "2001:db8::7", POSTFIX_PORTS, "tcp", "postfix", "9", "evil\x1b[2Jline")
    one.ok("ban", "198.51.100.0/24", DOVECOT_PORTS, "tcp", "dovecot", "2", "")
    return hosts


def test_bans_table_newest_first_and_filters(fleet: dict[str, Host]) -> None:
    one = fleet["mail1.example.test"]
    table = one.admin("bans")
    assert table.returncode == 0, str(table)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["IP", "JAIL", "HOST", "COUNTRY", "RDNS", "FAILURES", "SINCE", "(UTC)"]
    # newest first: the network banned now, then 2001:db8::7 (2025-12-01 12:00), ...
    assert [line.split()[0] for line in lines[1:-1]] == ["198.51.100.0/24", "2001:db8::7", "192.0.2.1", "192.0.2.1"]
    assert lines[-1] == "4 ban(s)"
    assert "2025-12-01 12:00:00" in lines[2] and "mail2.example.test" in lines[2]

    def ips(*args: str) -> list[tuple[str, str]]:
        return [(ban["ip"], ban["host"]) for ban in _json(one.admin("bans", "--json", *args))["bans"]]

    assert ips("--host", "mail2.example.test") == [("2001:db8::7", "mail2.example.test"),
                                                   ("192.0.2.1", "mail2.example.test")]  # fmt: skip
    assert ips("--jail", "dovecot") == [("198.51.100.0/24", "mail1.example.test"), ("192.0.2.1", "mail1.example.test")]
    assert ips("--ip", "192.0.2.1") == [("192.0.2.1", "mail2.example.test"), ("192.0.2.1", "mail1.example.test")]
    # A network finds the addresses in it and the networks that overlap it.
    assert ips("--ip", "198.51.100.128/25") == [("198.51.100.0/24", "mail1.example.test")]
    assert ips("--ip", "2001:db8::/32") == [("2001:db8::7", "mail2.example.test")]
    assert ips("--since", "1h") == [("198.51.100.0/24", "mail1.example.test")]
    assert ips("--country", "AU") == []  # geoip is off in the test hosts: no country at all


def test_bans_json_is_the_documented_shape(fleet: dict[str, Host]) -> None:
    bans = _json(fleet["mail1.example.test"].admin("bans", "--json", "--host", "mail2.example.test"))["bans"]
    assert [list(ban) for ban in bans] == [BAN_KEYS, BAN_KEYS]
    assert bans[0] == {
        "id": bans[0]["id"],
        "ip": "2001:db8::7",
        "jail": "postfix",
        "host": "mail2.example.test",
        "ports": POSTFIX_PORTS,
        "protocol": "tcp",
        "country": "",
        "rdns": "",
        "failures": 9,
        "since": "2025-12-01T12:00:00Z",
        "remove": False,
    }
    assert isinstance(bans[0]["id"], int)


def test_show_decodes_the_log_lines_and_keeps_control_characters_off_the_terminal(fleet: dict[str, Host]) -> None:
    one = fleet["mail1.example.test"]
    shown = one.admin("show", "192.0.2.1")
    assert shown.returncode == 0, str(shown)
    assert "192.0.2.1  jail dovecot  host mail1.example.test" in shown.stdout
    assert "192.0.2.1  jail postfix  host mail2.example.test" in shown.stdout
    assert "    auth failed 1\n    line 2\n" in shown.stdout and "    SASL failed\n" in shown.stdout
    evil = one.admin("show", "2001:db8:0::7")  # any spelling of the address
    assert evil.returncode == 0, str(evil)
    assert "\x1b" not in evil.stdout and "evil\\x1b[2Jline" in evil.stdout
    data = _json(one.admin("show", "--json", "2001:db8::7"))
    assert data["ip"] == "2001:db8::7" and data["bans"][0]["loglines"] == ["evil\x1b[2Jline"]
    assert data["bans"][0]["failures"] == 9
    missing = one.admin("show", "192.0.2.99")
    assert missing.returncode == 1 and missing.stdout == "192.0.2.99: not banned\n", str(missing)


def test_stats_per_jail_host_country_and_top(fleet: dict[str, Host]) -> None:
    one = fleet["mail1.example.test"]
    data = _json(one.admin("stats", "--json", "--since", "3650d"))
    assert data["bans"] == 4
    assert data["jails"] == [
        {"jail": "dovecot", "bans": 2, "addresses": 2},
        {"jail": "postfix", "bans": 2, "addresses": 2},
    ]
    assert data["hosts"] == [{"host": "mail1.example.test", "bans": 2, "addresses": 2},
                             {"host": "mail2.example.test", "bans": 2, "addresses": 2}]  # fmt: skip
    assert data["countries"] == [{"country": "", "bans": 4, "addresses": 3}]
    assert data["top"][0] == {"ip": "192.0.2.1", "bans": 2, "failures": 8, "hosts": 2, "latest": "2025-12-01T11:00:00Z"}
    assert len(data["top"]) == 3
    # The default window is 7 days: the bans of 2025 are out of it.
    assert _json(one.admin("stats", "--json"))["bans"] == 1
    text = one.admin("stats", "--since", "3650d")
    assert text.returncode == 0, str(text)
    assert text.stdout.startswith("4 ban(s) since ") and "(unknown)" in text.stdout
    assert any(
        line.split() == ["192.0.2.1", "2", "8", "2", "2025-12-01", "11:00:00"] for line in text.stdout.splitlines()
    )


def test_unban_marks_rows_as_a_panel_does(db: Database, fleet: dict[str, Host]) -> None:
    one = fleet["mail1.example.test"]
    done = _json(one.admin("unban", "--json", "192.0.2.1", "--host", "mail2.example.test"))
    assert done["newly_marked"] == 1 and done["not_banned"] == [] and done["lifted_here"] is None
    assert [(ban["host"], ban["jail"]) for ban in done["marked"]] == [("mail2.example.test", "postfix")]
    assert {(row["hostname"], row["remove"]) for row in db.banned(ip="192.0.2.1")} == {
        ("mail1.example.test", 0),
        ("mail2.example.test", 1),
    }
    # Every host's row of it, and an address that is not banned: the others are marked, exit 1.
    both = one.admin("unban", "192.0.2.1", "192.0.2.99")
    assert both.returncode == 1, str(both)
    assert "192.0.2.99: not banned" in both.stdout
    assert {row["remove"] for row in db.banned(ip="192.0.2.1")} == {1}
    table = one.admin("bans", "--ip", "192.0.2.1")
    assert table.stdout.count("removal pending") == 2, str(table)


def test_unban_then_the_cron_command_lifts_the_ban(db: Database, host: Host, fail2ban: Fail2ban) -> None:
    fail2ban.banip("192.0.2.10", "192.0.2.11")
    wait_for(lambda: len(db.banned()) == 2, "rows of both bans")
    assert host.admin("unban", "192.0.2.10").returncode == 0
    assert fail2ban.banned() == {"192.0.2.10", "192.0.2.11"}  # marked only: cron lifts it
    host.ok("unban_db")  # what root's cron runs every minute
    assert fail2ban.banned() == {"192.0.2.11"}
    assert [row["ip"] for row in db.banned()] == ["192.0.2.11"]
    # --now: this host's unban_db at once.
    now = _json(host.admin("unban", "--now", "--json", "192.0.2.11"))
    assert now["lifted_here"] is True, now
    assert fail2ban.banned() == set() and db.banned() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "192.0.2.300"], "invalid IP address: '192.0.2.300'"),
        (["unban", "not-an-address"], "invalid IP address: 'not-an-address'"),
        (["bans", "--ip", "10.0.0.0/33"], "invalid IP address or network: '10.0.0.0/33'"),
        (["bans", "--jail", "no-such-jail"], "unknown jail: 'no-such-jail' (known: dovecot, postfix)"),
        (["unban", "192.0.2.1", "--jail", "no-such-jail"], "unknown jail: 'no-such-jail'"),
        (["bans", "--since", "2x"], "invalid duration: '2x'"),
        (["stats", "--since", "0h"], "invalid duration: '0h'"),
        (["stats", "--since", "999999w"], "invalid duration: '999999w'"),
        (["history", "192.0.2.1", "--limit", "-1"], "not a number from 1 to 1000000: '-1'"),
        (["bans", "--country", "Australia"], "invalid country code: 'Australia'"),
        (["bans", "--host", "a b"], "invalid host name: 'a b'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(fleet: dict[str, Host], db: Database, args: list[str], message: str) -> None:
    before = db.banned()
    bad = fleet["mail1.example.test"].admin(*args)
    assert bad.returncode == 2, str(bad)
    assert bad.stdout == "" and len(bad.stderr.splitlines()) == 1, str(bad)
    assert bad.stderr.startswith("f2bsql: ") and message in bad.stderr, str(bad)
    assert db.banned() == before


def test_no_settings_is_exit_3(host: Host) -> None:
    host.config.unlink()
    missing = host.admin("bans")
    assert missing.returncode == 3 and "does not exist" in missing.stderr, str(missing)


def test_loglines_that_are_not_base64_are_shown_as_stored(db: Database, host: Host) -> None:
    db.insert_banned(ip="192.0.2.5", ports="25", protocol="tcp", jail="postfix", hostname=host.name, loglines="plain %")
    encoded = base64.b64encode(b"\xff\xfe not utf-8").decode()
    db.insert_banned(ip="192.0.2.5", ports="25", protocol="tcp", jail="dovecot", hostname=host.name, loglines=encoded)
    shown = host.admin("show", "192.0.2.5")
    assert shown.returncode == 0, str(shown)
    assert "    plain %\n" in shown.stdout and "\ufffd\ufffd not utf-8" in shown.stdout
