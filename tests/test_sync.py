"""`sync` (and cron's unban_db, which ends with it): this host's rows become fail2ban's live bans.

Drift comes from a lost event, a crash, a row deleted by hand, a ban made while the action was
missing. A missing row comes back with fail2ban's own ban time; a row whose ban fail2ban no
longer holds goes, unless a panel marked it for removal; other hosts' rows are never touched;
and nothing is touched while fail2ban answers but runs no jail yet (it is starting).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from testbed import DOVECOT_PORTS, POSTFIX_PORTS, Database, Fail2ban, Host, closed_port, record_figure, wait_for

OTHER_HOST = "mail-b.example.test"


@pytest.mark.parametrize("action", ["python", "command"])
def test_a_row_deleted_behind_fail2bans_back_comes_back_with_its_ban_time(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban], action: str
) -> None:
    fail2ban = start_fail2ban(host, action=action)
    fail2ban.banip("192.0.2.1", "2001:db8::1")
    fail2ban.banip("192.0.2.9", jail="postfix")
    fail2ban.log_failures(*(f"auth failure from 203.0.113.5 try {n}" for n in (1, 2)))
    wait_for(lambda: len(db.banned()) == 4, "four rows")
    first = {row["ip"]: row for row in db.banned()}
    # Someone's DELETE, or rows lost with a database restored from an older backup.
    gone = ("192.0.2.1", "192.0.2.9", "203.0.113.5")
    db.execute("DELETE FROM banned WHERE ip IN (%s, %s, %s)", gone)
    host.ok("sync")
    assert host.rows() == fail2ban.all_bans()
    for ip in gone:
        [row] = db.banned(ip=ip)
        columns = ("jail", "ports", "protocol", "timestamp", "failures", "loglines", "hostname", "remove")
        assert {key: row[key] for key in columns} == {key: first[ip][key] for key in columns}, row
    assert {row["ports"] for row in db.banned(jail="postfix")} == {POSTFIX_PORTS}
    host.ok("sync")  # nothing left to do
    assert len(db.banned()) == 4


def test_a_ban_whose_event_was_lost_is_recorded_by_the_next_cron_run(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    fail2ban = start_fail2ban(host, action="command")
    wait_for(lambda: len(db.jails()) == 2, "the jails recorded at start")
    # Database away and no room to spool: the event is lost, the ban stands.
    blocker = host.home / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    host.write_config(port=closed_port(), spool=blocker / "spool")
    fail2ban.banip("192.0.2.5")
    wait_for(lambda: any("192.0.2.5" in line for line in fail2ban.action_errors()), "the failed ban in fail2ban's log")
    host.write_config()
    assert db.banned() == [] and host.spooled() == []
    host.ok("unban_db")  # the cron line
    [row] = db.banned()
    assert (row["ip"], row["jail"], row["ports"], row["hostname"], row["remove"]) == (
        "192.0.2.5",
        "dovecot",
        DOVECOT_PORTS,
        host.name,
        0,
    )


def test_stale_rows_go_but_pending_removals_and_other_hosts_stay(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    fail2ban = start_fail2ban(host, action="python")
    fail2ban.banip("192.0.2.1")
    wait_for(lambda: len(db.banned()) == 1, "the row")
    common = {"ports": DOVECOT_PORTS, "protocol": "tcp", "jail": "dovecot"}
    db.insert_banned(ip="192.0.2.2", hostname=host.name, **common)  # fail2ban does not hold it
    db.insert_banned(ip="192.0.2.3", hostname=host.name, remove=1, **common)  # a panel's removal
    db.insert_banned(ip="192.0.2.4", hostname=OTHER_HOST, **common)  # another host's
    host.ok("sync")
    assert {(row["ip"], row["hostname"]) for row in db.banned()} == {
        ("192.0.2.1", host.name),
        ("192.0.2.3", host.name),
        ("192.0.2.4", OTHER_HOST),
    }
    host.ok("unban_db")  # the pending removal is unban_db's: lifted (nothing to lift) and gone
    left = {(row["ip"], row["hostname"]) for row in db.banned()}
    assert left == {("192.0.2.1", host.name), ("192.0.2.4", OTHER_HOST)}


def test_nothing_is_touched_while_fail2ban_runs_no_jail_yet(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    fail2ban = start_fail2ban(host, action="python")
    fail2ban.banip("192.0.2.1", "192.0.2.2")
    wait_for(lambda: len(db.banned()) == 2, "two rows")
    db.execute("UPDATE banned SET remove = 1 WHERE ip = %s", ("192.0.2.2",))
    fail2ban.kill()  # no action's stop ran: the rows and jails of this host stay
    before, jails = db.banned(), db.jails()
    # The next server answers on its socket before any jail exists (here: none is enabled).
    fail2ban.enabled = False
    fail2ban.start()
    for command in ("unban_db", "sync"):
        host.ok(command)
        assert db.banned() == before, f"{command} acted while fail2ban ran no jail"
    assert db.jails() == jails
    fail2ban.stop()
    # With its jails up, fail2ban restores both bans; the panel's removal is lifted at last.
    fail2ban.enabled = True
    fail2ban.start()
    wait_for(lambda: fail2ban.banned() == {"192.0.2.1", "192.0.2.2"}, "the restored bans")
    host.ok("unban_db")
    assert fail2ban.banned() == {"192.0.2.1"}
    wait_for(lambda: host.rows() == {("dovecot", "192.0.2.1")}, "rows = bans")


def test_a_pending_removal_waits_while_fail2ban_restores_its_bans(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    # The command action runs a process per ban: restoring 120 of them after a restart takes
    # seconds, during which the jail runs with part of its bans (fail2ban queues the rest).
    fail2ban = start_fail2ban(host, action="command")
    addresses = [f"198.51.100.{n}" for n in range(1, 121)]
    fail2ban.banip(*addresses)
    wait_for(lambda: len(db.banned()) == len(addresses), "a row per ban", timeout=120)
    marked = addresses[60:]  # fail2ban restores in the order it banned: these come last
    db.execute(f"UPDATE banned SET remove = 1 WHERE ip IN ({', '.join(['%s'] * len(marked))})", marked)  # noqa: S608
    fail2ban.stop()
    fail2ban.start()

    def settled() -> bool:
        """Every address restored by now, or restored and lifted already (no row left)."""
        banned, rows = fail2ban.banned(), {row["ip"] for row in db.banned()}
        return all(ip in banned or (ip in marked and ip not in rows) for ip in addresses)

    runs_while_restoring = 0
    deadline = time.monotonic() + 120
    while not settled():
        assert time.monotonic() < deadline, "fail2ban did not restore its bans within 120 s"
        host.ok("unban_db")  # cron's run, in the middle of the restore
        runs_while_restoring += 1
    assert runs_while_restoring > 0, "the restore was over before unban_db could run: the test missed its window"
    host.ok("unban_db")  # the next run, with every ban restored
    assert fail2ban.banned() == set(addresses[:60]), "a panel's removal was lost while fail2ban restored its bans"
    assert host.rows() == {("dovecot", ip) for ip in addresses[:60]}
    record_figure(
        f"restore window ({db.backend}): {runs_while_restoring} unban_db runs while fail2ban restored"
        f" {len(addresses)} bans; all {len(marked)} panel removals lifted after it, none lost"
    )
