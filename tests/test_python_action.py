"""fail2ban's Python action (files/banned_db.py) inside a real fail2ban-server.

It must write exactly the rows the command action writes (it uses the helper's own SQL),
keep a ban's first timestamp across a jail restart, and never stall fail2ban when the
database is away: events go to the helper's spool and the next helper run replays them.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path

from testbed import DOVECOT_PORTS, Database, Fail2ban, Host, closed_port, unb64, wait_for


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def test_ban_and_unban_write_the_same_rows_as_the_command_action(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    fail2ban = start_fail2ban(host, action="python")
    wait_for(lambda: len(db.jails()) == 2, "the jails' rows")
    assert sorted(row["name"] for row in db.jails()) == ["dovecot", "postfix"]

    fail2ban.banip("192.0.2.10", "2001:db8::10")
    wait_for(lambda: len(db.banned()) == 2, "two rows")
    rows = db.banned()
    before = utcnow()
    for row in rows:
        assert row["ports"] == DOVECOT_PORTS
        assert (row["protocol"], row["jail"], row["hostname"], row["remove"]) == ("tcp", "dovecot", host.name, 0)
        assert (row["country"], row["rdns"], row["failures"]) == ("", "", 0)
        # Naive UTC, rounded to the second as fail2ban rounds its ban time.
        assert abs(before - row["timestamp"]) < datetime.timedelta(minutes=1)
    assert {row["ip"] for row in rows} == {"192.0.2.10", "2001:db8::10"}
    # fail2ban forks itself for every firewall action call, and each fork copies what the server
    # has mapped: the action records through the host code's own clients, never loading libpq
    # (with its Kerberos, LDAP and GnuTLS) or PyMySQL's cryptography (bench/README, 2026-12-07).
    assert fail2ban.pid is not None
    maps = Path(f"/proc/{fail2ban.pid}/maps").read_text()
    assert not [lib for lib in ("libpq", "_psycopg", "libkrb5", "libldap", "_cffi_backend") if lib in maps]

    # Matches from the jail's own log: failures and base64 log lines as the helper stores them.
    lines = [f"auth failure from 192.0.2.11 try {n} it's `id` $(id)" for n in (1, 2)]
    fail2ban.log_failures(*lines)
    [row] = wait_for(lambda: db.banned(ip="192.0.2.11"), "the row of a ban from the log")
    assert row["failures"] == 2
    assert unb64(row["loglines"]) == "\n".join(lines).encode("utf-8")

    fail2ban.unbanip("192.0.2.10")
    wait_for(lambda: not db.banned(ip="192.0.2.10"), "the unbanned address's row to go")
    assert {row["ip"] for row in db.banned()} == {"2001:db8::10", "192.0.2.11"}
    assert fail2ban.action_errors() == [], fail2ban.log_tail()


def test_panel_unban_through_the_python_action(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    fail2ban = start_fail2ban(host, action="python")
    fail2ban.banip("192.0.2.20", "192.0.2.21")
    wait_for(lambda: len(db.banned()) == 2, "two rows")
    db.execute("UPDATE banned SET remove = 1 WHERE ip = %s", ["192.0.2.21"])
    host.ok("unban_db")
    assert fail2ban.banned() == {"192.0.2.20"}
    assert [row["ip"] for row in db.banned()] == ["192.0.2.20"]


def test_jail_restart_keeps_the_first_timestamp(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    fail2ban = start_fail2ban(host, action="python")
    fail2ban.banip("192.0.2.30")
    [first] = wait_for(lambda: db.banned(), "the ban's row")
    wait_for(lambda: utcnow() - first["timestamp"] >= datetime.timedelta(seconds=1), "the next second")
    # The action's stop drops the jail's rows, then fail2ban restores its bans into the new jail.
    fail2ban.client("reload", "--restart", "dovecot")
    [again] = wait_for(lambda: [row for row in db.banned() if row["id"] != first["id"]], "the restored row")
    assert (again["ip"], again["timestamp"]) == ("192.0.2.30", first["timestamp"])
    assert fail2ban.banned() == {"192.0.2.30"}


def test_database_away_spools_without_stalling_fail2ban_and_cron_replays(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    # fail2ban starts with the database unreachable (a closed port): every event is spooled.
    host.write_config(port=closed_port())
    fail2ban = start_fail2ban(host, action="python")
    addresses = [f"198.51.100.{n}" for n in range(1, 51)]
    started = time.monotonic()
    fail2ban.banip(*addresses)
    took = time.monotonic() - started
    # All 50 bans stand in fail2ban; the action did not wait out a timeout per ban.
    assert fail2ban.banned() == set(addresses)
    assert took < 10, f"banip of 50 addresses took {took:.1f} s with the database away"
    # Two jail starts and 50 bans wait in the spool; nothing reached the database.
    wait_for(lambda: len(host.spooled()) == 52, "52 spooled events", timeout=30)
    assert db.count() == 0
    assert "banned_db" in fail2ban.log_tail(200)

    # The database is back for the next cron run: it replays everything, once and in order.
    host.write_config()
    host.ok("unban_db")
    assert host.spooled() == []
    assert sorted(row["ip"] for row in db.banned()) == sorted(addresses)
    assert sorted(row["name"] for row in db.jails()) == ["dovecot", "postfix"]
