"""Many hosts on one database: two fail2ban servers with different host names share it.

mail-a records its bans with the command action, mail-b with the Python action. Both ban the
same addresses; then A unbans one, a panel unbans one of B's (remove = 1, B's cron run), A stops
a jail. After every step each host's rows are exactly the bans its fail2ban holds (the hosts
converge), and the other host's rows are untouched, byte for byte.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from testbed import Database, Fail2ban, Host, record_figure, wait_for

SHARED = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::7"]


def _rows(db: Database, host: Host) -> list[dict[str, Any]]:
    return db.banned(hostname=host.name)


def _running(fail2ban: Fail2ban) -> set[str]:
    for line in fail2ban.client("status").stdout.splitlines():
        if "Jail list:" in line:
            return {name.strip() for name in line.split("Jail list:", 1)[1].split(",") if name.strip()}
    return set()


def _converged(db: Database, host: Host, fail2ban: Fail2ban) -> bool:
    """This host's rows of each jail are exactly the addresses its fail2ban holds there, and its
    `jails` rows the jails it runs."""
    running = _running(fail2ban)
    for jail in Fail2ban.JAILS:
        rows = {row["ip"] for row in db.banned(hostname=host.name, jail=jail)}
        if rows != (fail2ban.banned(jail) if jail in running else set()):
            return False
    return {row["name"] for row in db.jails(hostname=host.name)} == running


def _has_rows(db: Database, host: Host, count: int) -> bool:
    return len(_rows(db, host)) == count


def test_two_hosts_on_one_database_touch_only_their_own_rows_and_converge(
    db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    a, b = make_host(db, "mail-a.example.test"), make_host(db, "mail-b.example.test")
    servers = {a.name: start_fail2ban(a, action="command"), b.name: start_fail2ban(b, action="python")}
    hosts = {a.name: a, b.name: b}
    steps = 0

    def step(acting: Host, what: str) -> None:
        """After each step: both hosts converge; the host that did not act kept its rows as they were."""
        nonlocal steps
        steps += 1
        for name, host in hosts.items():
            wait_for(functools.partial(_converged, db, host, servers[name]), f"{name} to converge after {what}")
        other = b if acting is a else a
        assert _rows(db, other) == before[other.name], f"{what} on {acting.name} touched {other.name}'s rows"

    for server in servers.values():
        server.banip(*SHARED)
        server.banip(SHARED[0], jail="postfix")
    for host in hosts.values():
        wait_for(functools.partial(_has_rows, db, host, len(SHARED) + 1), f"{host.name}'s rows")
    before = {name: _rows(db, host) for name, host in hosts.items()}
    step(a, "the bans")
    assert {row["ip"] for row in before[a.name]} == {row["ip"] for row in before[b.name]}

    servers[a.name].unbanip(SHARED[0])  # fail2ban's own unban, through A's command action
    step(a, "A's unban")
    assert SHARED[0] not in {row["ip"] for row in db.banned(hostname=a.name, jail="dovecot")}

    before = {name: _rows(db, host) for name, host in hosts.items()}
    # A panel marks B's ban of .2 and, by mistake of its own, A's ban of .3: B's cron run must
    # lift only B's, and A's run then A's.
    db.execute("UPDATE banned SET remove = 1 WHERE hostname = %s AND ip = %s", (b.name, SHARED[1]))
    db.execute("UPDATE banned SET remove = 1 WHERE hostname = %s AND ip = %s", (a.name, SHARED[2]))
    before[a.name] = _rows(db, a)
    b.ok("unban_db")
    step(b, "the panel unban on B")
    assert SHARED[1] not in servers[b.name].banned() and SHARED[1] in servers[a.name].banned()
    a.ok("unban_db")
    before[b.name] = _rows(db, b)
    step(a, "A's own cron run")
    assert SHARED[2] not in servers[a.name].banned() and SHARED[2] in servers[b.name].banned()

    before = {name: _rows(db, host) for name, host in hosts.items()}
    servers[a.name].client("stop", "postfix")  # actionstop: A's postfix rows and jail row go
    step(a, "A's jail stop")
    assert db.banned(hostname=a.name, jail="postfix") == [] and db.jails(hostname=a.name, name="postfix") == []
    assert [row["ip"] for row in db.banned(hostname=b.name, jail="postfix")] == [SHARED[0]]

    total = {name: len(_rows(db, host)) for name, host in hosts.items()}
    record_figure(
        f"two hosts on one database ({db.backend}, command + Python action): {steps} steps (bans, unban,"
        f" panel unban on each, jail stop), both converged after each, 0 rows of the other host touched;"
        f" rows left A {total[a.name]}, B {total[b.name]}"
    )
