"""Rows belong to hosts: several hosts share one database and each touches only its own rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from testbed import DOVECOT_PORTS, POSTFIX_PORTS, wait_for

if TYPE_CHECKING:
    from testbed import Database, Fail2ban, Host


def _keyed(rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    return {(row["id"], row["ip"], row["jail"], row["ports"], row["hostname"]) for row in rows}


def test_hosts_sharing_a_database_touch_only_their_own_rows(
    db: Database,
    make_host: Callable[..., Host],
    start_fail2ban: Callable[[Host], Fail2ban],
) -> None:
    a = make_host(db, "mail-a.example.test")
    b = make_host(db, "mail-b.example.test")
    fail2ban_a = start_fail2ban(a)
    wait_for(lambda: len(db.jails(hostname=a.name)) == 2, "host A's jails at start")
    # The same addresses on the same jails on both hosts, plus one only B holds.
    fail2ban_a.banip("192.0.2.1", "192.0.2.2")
    fail2ban_a.banip("192.0.2.3", jail="postfix")
    for jail in ("dovecot", "postfix"):
        b.ok("start", jail)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.4"):
        b.ban(ip)
    b.ban("192.0.2.3", jail="postfix", ports=POSTFIX_PORTS)
    wait_for(lambda: len(db.banned(hostname=a.name)) == 3, "host A's three rows")
    b_rows, b_jails = _keyed(db.banned(hostname=b.name)), db.jails(hostname=b.name)
    assert len(b_rows) == 4

    # Through A's fail2ban, whose actions run A's helper (a hand-run helper unban behind fail2ban's
    # back would be drift, which unban_db's sync puts right).
    fail2ban_a.unbanip("192.0.2.1")
    wait_for(lambda: {row["ip"] for row in db.banned(hostname=a.name)} == {"192.0.2.2", "192.0.2.3"}, "A's unban")
    assert _keyed(db.banned(hostname=b.name)) == b_rows

    fail2ban_a.client("stop", "postfix")
    wait_for(lambda: {row["ip"] for row in db.banned(hostname=a.name)} == {"192.0.2.2"}, "A's postfix to stop")
    assert [row["name"] for row in db.jails(hostname=a.name)] == ["dovecot"]
    assert _keyed(db.banned(hostname=b.name)) == b_rows
    assert db.jails(hostname=b.name) == b_jails

    # A panel marks every row, of both hosts; A's cron lifts only A's.
    assert db.execute("UPDATE banned SET remove = 1") == 5
    a.ok("unban_db")
    assert db.banned(hostname=a.name) == []
    assert "192.0.2.2" not in fail2ban_a.banned()
    assert _keyed(db.banned(hostname=b.name)) == b_rows
    assert all(row["remove"] == 1 for row in db.banned(hostname=b.name))

    fail2ban_a.stop()
    assert db.jails(hostname=a.name) == []
    assert db.jails(hostname=b.name) == b_jails
    assert _keyed(db.banned(hostname=b.name)) == b_rows


def test_hostname_overrides(db: Database, host: Host) -> None:
    host.ok("ban", "192.0.2.10", DOVECOT_PORTS, "tcp", "dovecot", "1")
    result = host.run("ban", "192.0.2.11", DOVECOT_PORTS, "tcp", "dovecot", "1", env={"F2BSQL_HOSTNAME": "env-host"})
    assert result.returncode == 0, str(result)
    host.ok("--hostname", "flag-host", "ban", "192.0.2.12", DOVECOT_PORTS, "tcp", "dovecot", "1")
    assert [(row["ip"], row["hostname"]) for row in db.banned()] == [
        ("192.0.2.10", host.name),
        ("192.0.2.11", "env-host"),
        ("192.0.2.12", "flag-host"),
    ]
    # An override scopes unban too: the config's host name no longer reaches env-host's row.
    host.ok("unban", "192.0.2.11")
    assert len(db.banned(ip="192.0.2.11")) == 1
    host.ok("--hostname", "env-host", "unban", "192.0.2.11")
    assert db.banned(ip="192.0.2.11") == []


def test_start_and_stop_maintain_this_hosts_jails(db: Database, make_host: Callable[..., Host]) -> None:
    a = make_host(db, "mail-a.example.test")
    b = make_host(db, "mail-b.example.test")
    a.ok("start", "dovecot")
    a.ok("start", "dovecot")  # fail2ban restarts a jail: still one row
    a.ok("start", "postfix")
    b.ok("start", "dovecot")
    assert {(row["name"], row["hostname"], row["enabled"]) for row in db.jails()} == {
        ("dovecot", a.name, 1),
        ("postfix", a.name, 1),
        ("dovecot", b.name, 1),
    }
    a.ban("192.0.2.20")
    a.ban("192.0.2.21", jail="postfix", ports=POSTFIX_PORTS)
    b.ban("192.0.2.20")

    a.ok("stop", "dovecot")
    assert {(row["name"], row["hostname"]) for row in db.jails()} == {("postfix", a.name), ("dovecot", b.name)}
    assert {(row["ip"], row["jail"], row["hostname"]) for row in db.banned()} == {
        ("192.0.2.21", "postfix", a.name),
        ("192.0.2.20", "dovecot", b.name),
    }
    a.ok("cleanup", "postfix")  # the original's other name for stop
    assert {(row["name"], row["hostname"]) for row in db.jails()} == {("dovecot", b.name)}
    assert {(row["ip"], row["hostname"]) for row in db.banned()} == {("192.0.2.20", b.name)}


def test_banning_twice_leaves_one_row(db: Database, host: Host) -> None:
    host.ban("192.0.2.30")
    first = db.banned()
    host.ban("192.0.2.30")
    assert db.banned() == first
    # Another jail, or other ports, is another ban of the same address.
    host.ban("192.0.2.30", jail="postfix", ports=POSTFIX_PORTS)
    host.ban("192.0.2.30", ports="22")
    assert len(db.banned(ip="192.0.2.30")) == 3


def test_unix_socket_connection(db: Database, host: Host) -> None:
    # MariaDB: the user@'localhost' account through mysqld's socket; PostgreSQL: the socket
    # directory of the test cluster, where scram-sha-256 still asks for the password.
    if db.backend == "mysql":
        host.write_config(client={"host": "localhost", "socket": db.server.unix_socket})
    else:
        host.write_config(client={"host": db.server.unix_socket})
    host.ban("192.0.2.40")
    assert [row["ip"] for row in db.banned()] == ["192.0.2.40"]
    assert host.spooled() == []


def test_check_proves_the_login_or_gives_the_servers_answer(db: Database, host: Host) -> None:
    # What the roles run on each fail2ban host before changing its jails (a fleet's mail host
    # with a wrong password or no grant must fail the run, not spool every ban for ever).
    host.ok("start", "--ports", DOVECOT_PORTS, "--protocol", "tcp", "dovecot")
    done = host.run("check")
    assert done.returncode == 0, done
    assert f"as {db.user!r}; 1 jail(s) of {host.name} recorded" in done.stdout, done
    host.write_config(client={"password": "not-the-password-at-all"})
    refused = host.run("check")
    assert refused.returncode == 1, refused
    # The server's own answer (the tests' PostgreSQL cluster checks passwords: scram-sha-256).
    answer = "Access denied" if db.backend == "mysql" else "password authentication failed"
    assert answer in refused.stderr, refused
    assert "not-the-password-at-all" not in refused.stdout + refused.stderr
    assert db.jails(hostname=host.name), "check changed rows"
