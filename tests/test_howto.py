"""The how-to's "Tests" section, replayed through a real fail2ban-server, on both backends."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from testbed import DOVECOT_PORTS, POSTFIX_PORTS, unb64, wait_for

if TYPE_CHECKING:
    from testbed import Database, Fail2ban, Host


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def test_howto_tests_section(db: Database, host: Host, fail2ban: Fail2ban) -> None:
    # fail2ban-client set dovecot banip 1.1.1.1 / 1.1.1.2
    fail2ban.banip("1.1.1.1")
    fail2ban.banip("1.1.1.2")
    rows = wait_for(lambda: len(db.banned()) == 2 and db.banned(), "two rows in banned")
    assert fail2ban.banned() == {"1.1.1.1", "1.1.1.2"}
    assert [row["ip"] for row in rows] == ["1.1.1.1", "1.1.1.2"]
    for row in rows:
        assert row["jail"] == "dovecot"
        assert row["ports"] == DOVECOT_PORTS
        assert row["protocol"] == "tcp"
        assert row["hostname"] == host.name
        assert row["remove"] == 0
        assert row["country"] == ""
        assert row["rdns"] == ""
        assert row["failures"] == 0  # a manual banip has no failures and no matches
        assert unb64(row["loglines"]) == b""
        stamp = row["timestamp"]
        assert isinstance(stamp, datetime.datetime)
        assert stamp.tzinfo is None, "timestamp must be naive (iRedAdmin-Pro reads it as UTC)"
        assert abs(stamp - utcnow()) < datetime.timedelta(minutes=1), f"{stamp} is not UTC now"

    # fail2ban-client set dovecot unbanip 1.1.1.1 → its row is gone
    fail2ban.unbanip("1.1.1.1")
    wait_for(lambda: [row["ip"] for row in db.banned()] == ["1.1.1.2"], "1.1.1.1's row to go")

    # What iRedAdmin-Pro does, then the cron job
    assert db.execute("UPDATE banned SET remove = 1 WHERE ip = %s", ("1.1.1.2",)) == 1
    host.ok("unban_db")
    assert db.banned() == []
    assert fail2ban.banned() == set()
    assert fail2ban.action_errors() == [], fail2ban.log_tail()


def test_fail2ban_start_records_its_jails(db: Database, host: Host, fail2ban: Fail2ban) -> None:
    jails = wait_for(lambda: len(db.jails()) == 2 and db.jails(), "both jails recorded at start")
    assert {(row["name"], row["hostname"], row["enabled"]) for row in jails} == {
        ("dovecot", host.name, 1),
        ("postfix", host.name, 1),
    }
    fail2ban.banip("1.1.1.9")
    wait_for(lambda: db.banned(ip="1.1.1.9"), "the ban's row")
    fail2ban.stop()  # actionstop: the host's rows of the jail and the jail itself go
    assert db.banned() == []
    assert db.jails() == []


def test_ipv6_through_fail2ban(db: Database, host: Host, fail2ban: Fail2ban) -> None:
    fail2ban.banip("2001:db8::1", "2001:db8:0:0:1::2")
    rows = wait_for(lambda: len(db.banned()) == 2 and db.banned(), "two IPv6 rows")
    # Stored in the form fail2ban itself prints, so that unban_db hands fail2ban what it knows.
    assert {row["ip"] for row in rows} == {"2001:db8::1", "2001:db8::1:0:0:2"} == fail2ban.banned()
    fail2ban.unbanip("2001:db8::1")
    wait_for(lambda: [row["ip"] for row in db.banned()] == ["2001:db8::1:0:0:2"], "the IPv6 row to go")
    assert db.execute("UPDATE banned SET remove = 1 WHERE ip = %s", ("2001:db8::1:0:0:2",)) == 1
    host.ok("unban_db")
    assert db.banned() == []
    assert fail2ban.banned() == set()


def test_same_address_on_two_jails(db: Database, fail2ban: Fail2ban) -> None:
    fail2ban.banip("1.1.1.5", jail="dovecot")
    fail2ban.banip("1.1.1.5", jail="postfix")
    rows = wait_for(lambda: len(db.banned()) == 2 and db.banned(), "a row per jail")
    assert {(row["jail"], row["ports"]) for row in rows} == {("dovecot", DOVECOT_PORTS), ("postfix", POSTFIX_PORTS)}
    fail2ban.unbanip("1.1.1.5", jail="postfix")
    wait_for(lambda: [row["jail"] for row in db.banned()] == ["dovecot"], "only the postfix row to go")


def test_loglines_from_a_real_log_reach_the_table_intact(db: Database, fail2ban: Fail2ban) -> None:
    # What an attacker controls ends up in <matches>: quotes, substitutions, globs.
    canary = fail2ban.root / "pwned"
    lines = [
        f"auth failure from 203.0.113.7 user='a\"b' $(touch {canary}) `touch {canary}` * ; | &",
        "auth failure from 203.0.113.7 pass=\\x00\\n 'unterminated \"quote Grüße",
    ]
    fail2ban.log_failures(*lines)
    rows = wait_for(lambda: db.banned(ip="203.0.113.7"), "the ban the log lines triggered")
    assert rows[0]["failures"] == 2
    assert unb64(rows[0]["loglines"]) == "\n".join(lines).encode("utf-8")
    assert fail2ban.action_errors() == [], fail2ban.log_tail()
    assert not canary.exists(), "a log line was run by a shell"


def test_jail_restart_keeps_the_rows_and_their_first_timestamp(db: Database, fail2ban: Fail2ban) -> None:
    fail2ban.banip("192.0.2.1")
    [first] = wait_for(lambda: db.banned(), "the ban's row")
    # Let the clock pass the ban's second, so a restart's own time would show.
    wait_for(lambda: utcnow() - first["timestamp"] >= datetime.timedelta(seconds=1), "the next second")
    # actionstop drops the jail's rows, then fail2ban restores its bans into the new jail.
    fail2ban.client("reload", "--restart", "dovecot")
    [again] = wait_for(lambda: [row for row in db.banned() if row["id"] != first["id"]], "the restored row")
    assert again["ip"] == "192.0.2.1"
    assert again["timestamp"] == first["timestamp"]
    assert fail2ban.banned() == {"192.0.2.1"}
    assert [row["name"] for row in db.jails(name="dovecot")] == ["dovecot"]
