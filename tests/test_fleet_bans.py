"""Shared bans: what one host of a fleet bans, the others ban too, in a jail of their own.

Two hosts on one database, each with its own fail2ban-server that runs the shared bans' jail
(templates/f2bsql-fleet-jail.j2, as the role renders it) beside its recording jails, and a
settings file that names it (fleet_jail). Each host's cron run (`unban_db`) makes its fleet jail
hold exactly the addresses the other hosts ban, within its ignoreip; no row is ever made for the
fleet jail, so nothing travels back.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from testbed import FLEET_JAIL, Database, Fail2ban, Host, wait_for

IGNORED = "127.0.0.0/8 ::1 198.51.100.0/24"


def _fleet_hosts(
    db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban], **settings: str
) -> tuple[tuple[Host, Fail2ban], tuple[Host, Fail2ban]]:
    pair = []
    for name, action in (("mail-a.example.test", "command"), ("mail-b.example.test", "python")):
        host = make_host(db, name)
        host.write_config(fleet_jail=FLEET_JAIL, **settings)
        pair.append((host, start_fail2ban(host, action=action, fleet_ignoreip=IGNORED)))
    return pair[0], pair[1]


def _rows(db: Database, host: Host) -> set[tuple[str, str]]:
    return {(row["jail"], row["ip"]) for row in db.banned(hostname=host.name)}


def test_a_ban_travels_to_the_other_host_and_is_lifted_with_its_origin(
    db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    (a, fail2ban_a), (b, fail2ban_b) = _fleet_hosts(db, make_host, start_fail2ban)
    fail2ban_a.banip("192.0.2.10", "198.51.100.5", "2001:db8::10")
    fail2ban_a.banip("192.0.2.11", jail="postfix")
    fail2ban_b.banip("192.0.2.20")
    wanted_a = {("dovecot", "192.0.2.10"), ("dovecot", "198.51.100.5"), ("dovecot", "2001:db8::10")}
    wanted_a.add(("postfix", "192.0.2.11"))
    wait_for(lambda: _rows(db, a) == wanted_a and _rows(db, b) == {("dovecot", "192.0.2.20")}, "both hosts' rows")

    b.ok("unban_db")
    a.ok("unban_db")
    # Every jail's bans travel; 198.51.100.5 is in the receiving host's ignoreip.
    assert fail2ban_b.banned(FLEET_JAIL) == {"192.0.2.10", "192.0.2.11", "2001:db8::10"}
    assert fail2ban_a.banned(FLEET_JAIL) == {"192.0.2.20"}
    # No echo: the fleet jail has no banned_db, so its bans are nobody's rows.
    assert _rows(db, a) == wanted_a
    assert _rows(db, b) == {("dovecot", "192.0.2.20")}
    a.ok("unban_db")
    b.ok("unban_db")
    assert fail2ban_a.banned(FLEET_JAIL) == {"192.0.2.20"}
    assert fail2ban_b.banned(FLEET_JAIL) == {"192.0.2.10", "192.0.2.11", "2001:db8::10"}

    # The origin lifts its ban: its row goes, and the next run of the other host lifts its copy.
    fail2ban_a.unbanip("192.0.2.10")
    wait_for(lambda: ("dovecot", "192.0.2.10") not in _rows(db, a), "A's row of 192.0.2.10 to go")
    # A panel's removal: the address no longer counts for the fleet from the moment it is marked.
    db.execute("UPDATE banned SET remove = 1 WHERE ip IN ('192.0.2.11')")
    b.ok("unban_db")
    assert fail2ban_b.banned(FLEET_JAIL) == {"2001:db8::10"}
    a.ok("unban_db")
    assert fail2ban_a.banned("postfix") == set()
    assert _rows(db, a) == {("dovecot", "198.51.100.5"), ("dovecot", "2001:db8::10")}
    # B's own dovecot ban never left its jail, and the fleet jail kept only what A still bans.
    assert fail2ban_b.banned("dovecot") == {"192.0.2.20"}


def test_only_the_chosen_jails_travel_and_a_run_applies_at_most_the_limit(
    db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    (a, fail2ban_a), (b, fail2ban_b) = _fleet_hosts(
        db, make_host, start_fail2ban, fleet_from="dovecot", fleet_limit="2"
    )
    fail2ban_a.banip("192.0.2.31", "192.0.2.32", "192.0.2.33")
    fail2ban_a.banip("192.0.2.40", jail="postfix")
    wait_for(lambda: len(_rows(db, a)) == 4, "A's four rows")

    b.ok("unban_db")
    assert len(fail2ban_b.banned(FLEET_JAIL)) == 2
    b.ok("unban_db")
    # The postfix ban is not one of the chosen jails' (fleet_from = dovecot).
    assert fail2ban_b.banned(FLEET_JAIL) == {"192.0.2.31", "192.0.2.32", "192.0.2.33"}


def test_a_fleet_jail_that_does_not_run_fails_the_run_and_says_so(
    db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    host = make_host(db, "mail-a.example.test")
    host.write_config(fleet_jail=FLEET_JAIL)
    start_fail2ban(host)  # no fleet jail configured: a reload that dropped it, a typo
    run = host.run("unban_db")
    assert run.returncode != 0
    assert f"jail {FLEET_JAIL!r} does not run here" in run.stderr


def test_rows_are_read_in_fail2bans_form_and_a_network_over_an_ignored_address_stays_out(
    db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    (a, _fail2ban_a), (b, fail2ban_b) = _fleet_hosts(db, make_host, start_fail2ban)
    # Rows as another tool may write them: a /32, upper-case IPv6, and a network that holds an
    # address of B's ignoreip (198.51.100.0/24).
    for ip in ("192.0.2.77/32", "2001:DB8::77", "198.51.0.0/16", "203.0.113.0/24"):
        db.insert_banned(ip=ip, ports="25", protocol="tcp", jail="dovecot", hostname=a.name)
    b.ok("unban_db")
    assert fail2ban_b.banned(FLEET_JAIL) == {"192.0.2.77", "2001:db8::77", "203.0.113.0/24"}
    # Nothing is lifted and set again from one run to the next: one Ban each in fail2ban's log.
    b.ok("unban_db")
    assert fail2ban_b.banned(FLEET_JAIL) == {"192.0.2.77", "2001:db8::77", "203.0.113.0/24"}
    log = fail2ban_b.server_log.read_text(encoding="utf-8")
    assert [log.count(f"[{FLEET_JAIL}] Ban {ip}\n") for ip in ("192.0.2.77", "2001:db8::77")] == [1, 1]
    assert f"[{FLEET_JAIL}] Unban" not in log


def test_a_retired_hosts_old_rows_stop_travelling(
    db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    """A host retired without its uninstall leaves rows nobody lifts: bans older than
    fleet_max_age do not travel, and one held here is lifted when it ages out; 0 is no limit."""
    (_a, _fail2ban_a), (b, fail2ban_b) = _fleet_hosts(db, make_host, start_fail2ban, fleet_max_age="86400")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)
    for ip, age in (("192.0.2.81", datetime.timedelta(days=8)), ("192.0.2.82", datetime.timedelta(minutes=5))):
        db.insert_banned(
            ip=ip, ports="25", protocol="tcp", jail="dovecot", hostname="retired.example.test", timestamp=now - age
        )
    b.ok("unban_db")
    assert fail2ban_b.banned(FLEET_JAIL) == {"192.0.2.82"}

    for no_limit in ("0", "9" * 30):  # an age beyond any date is no limit either
        b.write_config(fleet_jail=FLEET_JAIL, fleet_max_age=no_limit)
        b.ok("unban_db")
        assert fail2ban_b.banned(FLEET_JAIL) == {"192.0.2.81", "192.0.2.82"}

    b.write_config(fleet_jail=FLEET_JAIL, fleet_max_age="86400")
    db.execute("UPDATE banned SET timestamp = %s WHERE ip = %s", (now - datetime.timedelta(days=2), "192.0.2.82"))
    b.ok("unban_db")
    assert fail2ban_b.banned(FLEET_JAIL) == set()
    # The rows stay: the age only decides what travels.
    assert db.count() == 2


def test_the_fleets_own_hosts_and_the_hosts_ignoreip_stay_out(
    db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    """A host's ban of another host of the fleet (a relay that failed its login) does not travel:
    the fleet jail ignores the other hosts (f2bsql_fail2ban_fleet_ignoreip) and still the host's
    own ignoreip, which it keeps through %(known/ignoreip)s."""
    a = make_host(db, "mail-a.example.test")
    a.write_config(fleet_jail=FLEET_JAIL)
    fail2ban_a = start_fail2ban(a, fleet_ignoreip=IGNORED)
    b = make_host(db, "mail-b.example.test")
    b.write_config(fleet_jail=FLEET_JAIL)
    fail2ban_b = start_fail2ban(b, fleet_ignoreip=IGNORED, fleet_peers=("192.0.2.90", "2001:db8:90::/64"))
    fail2ban_a.banip("192.0.2.90", "192.0.2.91", "198.51.100.9", "2001:db8:90::5")
    wait_for(lambda: len(_rows(db, a)) == 4, "A's four rows")
    b.ok("unban_db")
    assert fail2ban_b.banned(FLEET_JAIL) == {"192.0.2.91"}
    assert fail2ban_a.banned("dovecot") == {"192.0.2.90", "192.0.2.91", "198.51.100.9", "2001:db8:90::5"}
