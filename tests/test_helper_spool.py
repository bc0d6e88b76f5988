"""Nothing is lost: events the database cannot take wait in the spool and are replayed in order.

The database is made unreachable by pointing the helper's config at a closed port (the
machine's MariaDB is shared and stays up); every helper run reads its config afresh.
"""

from __future__ import annotations

import json
import stat
import time
from typing import TYPE_CHECKING

import pytest
from testbed import DOVECOT_PORTS, POSTFIX_PORTS, closed_port, host_module, record_figure, wait_for

if TYPE_CHECKING:
    from testbed import Database, Fail2ban, Host

IPS = [f"203.0.113.{n}" for n in range(1, 21)]


def test_twenty_bans_while_the_database_is_away(db: Database, host: Host) -> None:
    host.write_config(port=closed_port())
    for ip in IPS:
        result = host.run("ban", ip, DOVECOT_PORTS, "tcp", "dovecot", "2", f"auth failure from {ip}")
        assert result.returncode == 0, str(result)
        assert result.stderr.strip(), f"the fault was not logged: {result}"
        assert "Traceback" not in result.stderr
    assert len(host.spooled()) == 20
    assert db.count() == 0
    # root-only: the events hold attackers' log lines
    assert stat.S_IMODE(host.spool.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in host.spooled()} == {0o600}

    host.write_config()
    host.ok("start", "dovecot")  # any command replays first
    rows = db.banned()
    assert sorted(row["ip"] for row in rows) == sorted(IPS)  # each exactly once
    assert {row["hostname"] for row in rows} == {host.name}
    assert host.spooled() == []
    assert host.rejected() == []
    assert [row["name"] for row in db.jails()] == ["dovecot"]

    host.ok("replay")  # nothing left to apply twice
    assert len(db.banned()) == 20


@pytest.mark.parametrize(
    "command",
    [
        ["replay"],
        ["start", "postfix"],
        ["ban", "192.0.2.99", DOVECOT_PORTS, "tcp", "dovecot", "1"],
        ["unban", "192.0.2.98"],
        ["stop", "postfix"],
        ["unban_db"],
    ],
    ids=lambda command: command[0],
)
def test_any_command_replays_the_spool(db: Database, host: Host, command: list[str]) -> None:
    host.write_config(port=closed_port())
    host.ban("192.0.2.1")
    assert len(host.spooled()) == 1
    host.write_config()
    host.ok(*command)
    assert host.spooled() == []
    assert [row["ip"] for row in db.banned(ip="192.0.2.1")] == ["192.0.2.1"]


def test_spool_replays_in_order(db: Database, host: Host) -> None:
    host.write_config(port=closed_port())
    host.ok("start", "postfix")
    host.ban("192.0.2.1")
    host.ban("192.0.2.2")
    host.ok("unban", "192.0.2.1")
    host.ban("192.0.2.3", jail="postfix", ports=POSTFIX_PORTS)
    host.ok("stop", "postfix")
    host.ban("192.0.2.4", jail="postfix", ports=POSTFIX_PORTS)
    assert len(host.spooled()) == 7
    host.write_config()
    host.ok("replay")
    # Applied in any other order, 192.0.2.1 or 192.0.2.3 would have survived, or .4 be gone.
    assert sorted((row["ip"], row["jail"]) for row in db.banned()) == [
        ("192.0.2.2", "dovecot"),
        ("192.0.2.4", "postfix"),
    ]
    assert db.jails() == []


def test_an_unreadable_event_is_set_aside_not_retried_forever(db: Database, host: Host) -> None:
    host.write_config(port=closed_port())
    host.ban("192.0.2.1")
    host.ban("192.0.2.2")
    first, _second = host.spooled()
    first.write_bytes(first.read_bytes()[:20])  # cut short, as by a full disk
    host.write_config()
    host.ok("replay")
    assert [row["ip"] for row in db.banned()] == ["192.0.2.2"]
    assert host.spooled() == []
    assert [path.name for path in host.rejected()] == [first.name]
    host.ok("replay")  # the rejected event stays aside
    assert [path.name for path in host.rejected()] == [first.name]


def test_replay_while_the_database_is_still_away_keeps_the_spool(db: Database, host: Host) -> None:
    host.write_config(port=closed_port())
    host.ban("192.0.2.1")
    result = host.run("replay")
    assert result.returncode != 0, "replay reported success with events left"
    assert len(host.spooled()) == 1
    assert db.count() == 0


def test_wrong_password_loses_nothing(db: Database, host: Host) -> None:
    # scram-sha-256 (PostgreSQL) and MariaDB both check it: the event waits for a fixed config.
    host.write_config(client={"password": "not-the-password"})
    result = host.run("ban", "192.0.2.5", DOVECOT_PORTS, "tcp", "dovecot", "1")
    assert db.count() == 0
    assert result.returncode == 0, str(result)
    assert len(host.spooled()) == 1
    host.write_config()
    host.ok("replay")
    assert [row["ip"] for row in db.banned()] == ["192.0.2.5"]


def test_no_database_and_no_spool_fails(db: Database, host: Host) -> None:
    blocker = host.home / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    host.write_config(port=closed_port(), spool=blocker / "spool")
    result = host.run("ban", "192.0.2.6", DOVECOT_PORTS, "tcp", "dovecot", "1")
    assert result.returncode == 1, str(result)
    assert result.stderr.strip() and "Traceback" not in result.stderr, str(result)


def test_unusable_spool_does_not_stop_bans_while_the_database_is_up(db: Database, host: Host) -> None:
    blocker = host.home / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    host.write_config(spool=blocker / "spool")
    result = host.run("ban", "192.0.2.7", DOVECOT_PORTS, "tcp", "dovecot", "1")
    assert result.returncode == 0, str(result)
    assert [row["ip"] for row in db.banned()] == ["192.0.2.7"]


def test_fail2ban_keeps_banning_while_the_database_is_away(db: Database, host: Host, fail2ban: Fail2ban) -> None:
    wait_for(lambda: len(db.jails()) == 2, "the jails recorded at start")
    host.write_config(port=closed_port())
    fail2ban.banip(*IPS)
    wait_for(lambda: len(host.spooled()) == 20, "20 spooled bans")
    assert fail2ban.banned() == set(IPS)
    assert db.count() == 0

    host.write_config()
    host.ok("replay")
    assert sorted(row["ip"] for row in db.banned()) == sorted(IPS)
    assert host.spooled() == []
    # Lifted later through the panel as usual.
    db.execute("UPDATE banned SET remove = 1")
    host.ok("unban_db")
    assert db.count() == 0
    assert fail2ban.banned() == set()


# --------------------------------------------------------------------------- the spool never jams


def test_an_event_the_database_refuses_for_good_does_not_block_the_rest(db: Database, host: Host) -> None:
    host.write_config(port=closed_port())
    host.ban("192.0.2.1", jail="refused")
    for ip in IPS:
        host.ban(ip)
    assert len(host.spooled()) == 1 + len(IPS)
    # The server refuses that first row for good (a constraint; a missing column or privilege
    # would be the same), the 20 behind it are fine.
    db.execute("ALTER TABLE banned ADD CONSTRAINT f2bt_refuse CHECK (jail <> 'refused')")
    host.write_config()
    result = host.run("ban", "192.0.2.50", DOVECOT_PORTS, "tcp", "dovecot", "1")
    assert result.returncode == 0, str(result)
    assert sorted(row["ip"] for row in db.banned()) == sorted([*IPS, "192.0.2.50"])
    assert host.spooled() == []
    [aside] = host.rejected()
    assert '"refused"' in aside.read_text(encoding="utf-8")
    [line] = [line for line in result.stderr.splitlines() if "set aside" in line]
    assert aside.name in line and "refused ban" in line, line
    # The event at hand is kept aside the same way when the database refuses it for good.
    again = host.run("ban", "192.0.2.51", DOVECOT_PORTS, "tcp", "refused", "1")
    assert again.returncode == 1 and "set aside" in again.stderr, str(again)
    assert len(host.rejected()) == 2 and host.spooled() == []


def test_a_backlog_of_20000_events_does_not_hold_the_ban_at_hand(db: Database, host: Host) -> None:
    settings = host_module("settings").load_settings(str(host.config), None)
    events = host_module("events")
    # More than any backend here replays within the budget. Written as the spool names its files
    # (arrival time in ns, pid, token), without the fsync of each that Spool.put does.
    backlog = [f"10.{n // 65536}.{n // 256 % 256}.{n % 256}" for n in range(20_000)]
    host.spool.mkdir(mode=0o700)
    first = time.time_ns() - 10**9
    for n, ip in enumerate(backlog):
        event = events.to_json(events.ban_event(settings, ip, DOVECOT_PORTS, "tcp", "dovecot", 1, "", None))
        (host.spool / f"{first + n:020d}-0000001-{n:08x}.json").write_text(json.dumps(event), encoding="utf-8")
    total = len(backlog) + 1  # the backlog and the ban at hand
    budget = 1
    host.write_config(replay_budget=str(budget))
    began = time.monotonic()
    result = host.run("ban", "192.0.2.60", DOVECOT_PORTS, "tcp", "dovecot", "1")
    took = time.monotonic() - began
    assert result.returncode == 0, str(result)
    # Within its budget (plus one connect), far inside fail2ban's 60 s action timeout...
    assert took < budget + 2 * host.timeout + 2, f"the ban took {took:.1f} s behind a backlog"
    # ... the replay stopped short, and the ban waits behind the backlog, in order: nothing lost.
    left = host.spooled()
    assert 0 < len(left) < total and db.count() + len(left) == total
    assert "192.0.2.60" in left[-1].read_text(encoding="utf-8")
    began = time.monotonic()
    host.ok("replay")  # cron's run, or an admin: as long as it takes
    replay = time.monotonic() - began
    assert host.spooled() == [] and db.count() == total
    assert db.banned(ip="192.0.2.60")
    record_figure(
        f"spool backlog ({db.backend}): {len(backlog)} events, replay budget {budget} s: the ban at hand took"
        f" {took:.1f} s ({total - len(left)} replayed, {len(left)} left, the ban behind them); the rest replayed in"
        f" {replay:.1f} s"
    )
