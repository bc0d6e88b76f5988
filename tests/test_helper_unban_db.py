"""unban_db: the cron job that lifts the bans a panel marked with remove = 1."""

from __future__ import annotations

import fcntl
import os
from typing import TYPE_CHECKING

from testbed import DOVECOT_PORTS, closed_port, wait_for

if TYPE_CHECKING:
    from testbed import Database, Fail2ban, Host


def _ban_through(fail2ban: Fail2ban, db: Database, *ips: str) -> None:
    fail2ban.banip(*ips)
    wait_for(lambda: len(db.banned()) >= len(ips), f"rows for {ips}")


def test_a_held_lock_makes_a_second_run_do_nothing(db: Database, host: Host, fail2ban: Fail2ban) -> None:
    _ban_through(fail2ban, db, "192.0.2.1")
    db.execute("UPDATE banned SET remove = 1")
    # The lock another unban_db run would hold (the helper keeps it in its spool directory).
    host.spool.mkdir(mode=0o700, exist_ok=True)
    with open(host.spool / "unban_db.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = host.run("unban_db")
        assert second.returncode == 0, str(second)
        assert [row["remove"] for row in db.banned()] == [1]
        assert fail2ban.banned() == {"192.0.2.1"}
    host.ok("unban_db")  # the lock is free again: this run does the work
    assert db.banned() == []
    assert fail2ban.banned() == set()


def test_stale_rows_are_removed_not_retried_forever(db: Database, host: Host, fail2ban: Fail2ban) -> None:
    _ban_through(fail2ban, db, "192.0.2.1")
    # A row for an address fail2ban does not hold (banned before a restart, say), one for a jail
    # this host does not run, and one the panel did not mark (for a ban fail2ban does not hold).
    db.insert_banned(ip="192.0.2.2", ports=DOVECOT_PORTS, protocol="tcp", jail="dovecot", hostname=host.name)
    db.insert_banned(ip="192.0.2.3", ports="22", protocol="tcp", jail="sshd-gone", hostname=host.name)
    db.insert_banned(ip="192.0.2.4", ports=DOVECOT_PORTS, protocol="tcp", jail="dovecot", hostname=host.name)
    # ... and one a panel or a hand-written INSERT left with something that is no address.
    db.insert_banned(ip="not-an-ip; rm -rf /", ports=DOVECOT_PORTS, protocol="tcp", jail="dovecot", hostname=host.name)
    db.execute("UPDATE banned SET remove = 1 WHERE ip <> %s", ("192.0.2.4",))
    host.ok("unban_db")
    # The marked ones are lifted or dropped; the unmarked stale one goes with unban_db's sync.
    assert db.banned() == []
    assert fail2ban.banned() == set()
    host.ok("unban_db")  # nothing left to do
    assert db.banned() == []


def test_fail2ban_unreachable_keeps_the_rows(db: Database, host: Host) -> None:
    # No fail2ban-server listens on the host's socket.
    host.ban("192.0.2.1")
    db.execute("UPDATE banned SET remove = 1")
    result = host.run("unban_db")
    assert result.returncode != 0, str(result)
    assert result.stderr.strip() and "Traceback" not in result.stderr, str(result)
    assert [(row["ip"], row["remove"]) for row in db.banned()] == [("192.0.2.1", 1)]


def test_database_unreachable_is_a_failure(db: Database, host: Host, fail2ban: Fail2ban) -> None:
    _ban_through(fail2ban, db, "192.0.2.1")
    db.execute("UPDATE banned SET remove = 1")
    host.write_config(port=closed_port())
    result = host.run("unban_db")
    assert result.returncode == 1, str(result)
    assert result.stderr.strip() and "Traceback" not in result.stderr, str(result)
    assert fail2ban.banned() == {"192.0.2.1"}
    host.write_config()
    host.ok("unban_db")
    assert db.banned() == []


def test_nothing_to_do_does_not_need_fail2ban(db: Database, host: Host) -> None:
    host.ban("192.0.2.1")
    result = host.run("unban_db")
    assert result.returncode == 0, str(result)
    assert [row["remove"] for row in db.banned()] == [0]
    assert not os.path.exists(host.fail2ban_socket)
