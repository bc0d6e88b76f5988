"""banned_history: every way a row leaves `banned` leaves exactly one history row, with its reason.

A real fail2ban-server with either action (command: a helper process per event; python: the
action inside fail2ban-server), both backends; the cron run prunes by age, this host's rows only.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import TYPE_CHECKING, Any, Callable

import pytest
from testbed import DOVECOT_PORTS, host_module, wait_for

if TYPE_CHECKING:
    from testbed import Database, Fail2ban, Host

ACTIONS = ["command", "python"]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)


def history(db: Database, **where: Any) -> list[dict[str, Any]]:
    clause = " AND ".join(f"{column} = %s" for column in where) or "1 = 1"
    return db.query(f"SELECT * FROM banned_history WHERE {clause} ORDER BY id", list(where.values()))  # noqa: S608


def _one_ended(db: Database, ip: str, reason: str, began: datetime.datetime, before: datetime.datetime) -> None:
    """The address's ban left `banned` once, for this reason, with its start and a sane end."""
    wait_for(lambda: history(db, ip=ip), f"a history row of {ip}")
    rows = history(db, ip=ip)
    assert [(row["reason"], row["jail"]) for row in rows] == [(reason, "dovecot")], rows
    row = rows[0]
    assert row["banned_at"] == began, row
    assert before - datetime.timedelta(seconds=1) <= row["ended_at"] <= _now() + datetime.timedelta(seconds=1), row
    assert row["ports"] == DOVECOT_PORTS and row["failures"] >= 0
    assert db.banned(ip=ip) == []


def _banned(fail2ban: Fail2ban, db: Database, ip: str) -> datetime.datetime:
    fail2ban.banip(ip)
    wait_for(lambda: db.banned(ip=ip), f"the row of {ip}")
    return db.banned(ip=ip)[0]["timestamp"]


@pytest.fixture(params=ACTIONS)
def server(request: pytest.FixtureRequest, start_fail2ban: Callable[..., Fail2ban], host: Host) -> Fail2ban:
    return start_fail2ban(host, action=request.param)


def test_unban_leaves_one_history_row(db: Database, server: Fail2ban) -> None:
    began = _banned(server, db, "192.0.2.1")
    before = _now()
    server.unbanip("192.0.2.1")
    _one_ended(db, "192.0.2.1", "unbanned", began, before)


def test_panel_removal_leaves_one_history_row(db: Database, host: Host, server: Fail2ban) -> None:
    began = _banned(server, db, "192.0.2.2")
    db.execute("UPDATE banned SET remove = 1")
    before = _now()
    host.ok("unban_db")
    assert server.banned() == set()
    _one_ended(db, "192.0.2.2", "removed", began, before)


def test_expiry_leaves_one_history_row(db: Database, server: Fail2ban) -> None:
    server.client("set", "dovecot", "bantime", "2")
    began = _banned(server, db, "192.0.2.3")
    _one_ended(db, "192.0.2.3", "expired", began, began + datetime.timedelta(seconds=2))


def test_jail_stop_leaves_one_history_row_per_ban(db: Database, server: Fail2ban) -> None:
    began = _banned(server, db, "192.0.2.4")
    before = _now()
    server.client("stop", "dovecot")
    _one_ended(db, "192.0.2.4", "stopped", began, before)


def test_sync_ends_a_row_fail2ban_does_not_hold(db: Database, host: Host, server: Fail2ban) -> None:
    began = _banned(server, db, "192.0.2.6")
    db.insert_banned(ip="192.0.2.5", ports=DOVECOT_PORTS, protocol="tcp", jail="dovecot", hostname=host.name,
                     timestamp=began)  # fmt: skip
    before = _now()
    host.ok("sync")
    _one_ended(db, "192.0.2.5", "synced", began, before)
    assert history(db, ip="192.0.2.6") == [] and len(db.banned(ip="192.0.2.6")) == 1


def test_rows_of_a_jail_that_is_gone_end_as_gone(db: Database, host: Host, server: Fail2ban) -> None:
    _banned(server, db, "192.0.2.30")
    db.insert_banned(ip="192.0.2.31", ports="22", protocol="tcp", jail="sshd-gone", hostname=host.name)
    host.ok("sync")
    assert [(row["reason"], row["jail"]) for row in history(db, ip="192.0.2.31")] == [("gone", "sshd-gone")]


def test_without_the_history_table_bans_still_end(db: Database, host: Host) -> None:
    # A database whose schema is older than the helper (its play left out): rows go all the same.
    db.execute("DROP TABLE banned_history")
    host.ok("start", "--ports", DOVECOT_PORTS, "--protocol", "tcp", "dovecot")
    host.ban("192.0.2.32")
    done = host.run("unban", "--jail", "dovecot", "192.0.2.32")
    assert done.returncode == 0 and "banned_history is missing" in done.stderr, str(done)
    assert db.banned() == [] and host.spooled() == [] and host.rejected() == []


def test_a_connection_that_died_spools_the_event(db: Database, host: Host) -> None:
    # The Python action keeps its connection for months; the server may drop it (a restart,
    # wait_timeout). Ending a ban then begins with BEGIN (MySQL) or one statement (PostgreSQL):
    # either way the event is spooled, never lost to a driver error nobody catches.
    settings = host_module("settings").load_settings(str(host.config), None)
    runner = host_module("runner").Runner(settings, in_process=True)
    events = host_module("events")
    try:
        runner.record(events.Start("dovecot", host.name, DOVECOT_PORTS, "tcp"))
        runner.record(events.ban_event(settings, "192.0.2.33", DOVECOT_PORTS, "tcp", "dovecot", 1, "", None))
        conn = runner.db._conn
        if db.backend == "mysql":
            db.execute("KILL %s", (conn.thread_id(),))
        else:
            db.execute("SELECT pg_terminate_backend(%s)", (conn.get_backend_pid(),))
        assert runner.record(events.Unban(("192.0.2.33",), host.name, "dovecot")) == 0
        assert len(host.spooled()) == 1, "the unban is neither done nor spooled"
        runner.close()
        assert runner.catch_up(budget=30)  # the next run (a new connection) replays it
    finally:
        runner.close()
    assert db.banned() == [] and [row["reason"] for row in history(db)] == ["unbanned"]


def test_a_spooled_unban_keeps_its_reason(db: Database, host: Host) -> None:
    host.ok("start", "--ports", DOVECOT_PORTS, "--protocol", "tcp", "dovecot")
    host.ban("192.0.2.7")
    began = db.banned()[0]["timestamp"]
    real = host.config.read_text()
    host.write_config(port=1)  # the database is away: the unban waits in the spool
    host.ok("unban", "--jail", "dovecot", "--time", "100000", "--bantime", "60", "192.0.2.7")
    assert [json.loads(path.read_text())["reason"] for path in host.spooled()] == ["expired"]
    host.config.write_text(real)
    before = _now()
    host.ok("replay")
    _one_ended(db, "192.0.2.7", "expired", began, before)


def test_the_cron_run_prunes_this_hosts_old_history_only(db: Database, host: Host, server: Fail2ban) -> None:
    old = _now() - datetime.timedelta(days=40)
    recent = _now() - datetime.timedelta(days=5)
    for hostname, ended in ((host.name, old), (host.name, recent), ("mail-other.example.test", old)):
        db.execute(
            "INSERT INTO banned_history (ip, jail, hostname, banned_at, ended_at, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            ("198.51.100.1", "dovecot", hostname, ended, ended, "unbanned"),
        )
    host.ok("unban_db", "--history-days", "30")
    assert sorted((row["hostname"], row["ended_at"]) for row in history(db)) == sorted(
        [(host.name, recent), ("mail-other.example.test", old)]
    )
    host.ok("unban_db", "--history-days", "0")  # 0 keeps everything
    assert len(history(db)) == 2
    host.write_config(history_days="3")  # the settings file's key, as the cron line's option
    host.ok("unban_db")
    assert [row["hostname"] for row in history(db)] == ["mail-other.example.test"]


def test_f2bsql_history_lists_ended_and_current_bans(db: Database, host: Host, server: Fail2ban) -> None:
    first = _banned(server, db, "192.0.2.8")
    server.unbanip("192.0.2.8")
    wait_for(lambda: history(db, ip="192.0.2.8"), "the history row")
    time.sleep(1.1)  # a later ban, a later start
    again = _banned(server, db, "192.0.2.8")
    data = json.loads(host.admin("history", "--json", "192.0.2.8").stdout)
    assert [ban["ip"] for ban in data["current"]] == ["192.0.2.8"]
    assert [(ban["reason"], ban["began"]) for ban in data["ended"]] == [("unbanned", f"{first:%Y-%m-%dT%H:%M:%SZ}")]
    text = host.admin("history", "192.0.2.8")
    assert text.returncode == 0, str(text)
    lines = text.stdout.splitlines()
    assert lines[0] == "192.0.2.8: 1 current ban(s), 1 ended"
    assert "still banned" in lines[2] and f"{again:%Y-%m-%d %H:%M:%S}" in lines[2]
    assert "unbanned" in lines[3] and f"{first:%Y-%m-%d %H:%M:%S}" in lines[3]
    never = host.admin("history", "192.0.2.99")
    assert never.returncode == 1 and "never banned" in never.stdout, str(never)
    # stats counts both: the ended ban and the current one began within its window.
    stats = json.loads(host.admin("stats", "--json").stdout)
    assert stats["top"][0]["ip"] == "192.0.2.8" and stats["top"][0]["bans"] == 2
