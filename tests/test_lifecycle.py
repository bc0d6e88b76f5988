"""fail2ban's own lifecycle, as admins and packages drive it, through both banned_db actions.

After each of `reload`, `reload <jail>`, `reload --restart <jail>`, `restart`, `stop` + start and
`flushlogs` (the service restart runs on the installed host in test_installer.py): every jail still
has exactly one banned_db action, this host's rows of each jail are fail2ban's live bans, a
restored ban keeps its first timestamp, and the next ban is recorded. Before the Python action
had reload()/clearAllParams(), a plain `reload` unbanned every address through a second instance
(deleting the rows, the bans staying) and dropped the action for good.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import pytest
from testbed import Database, Fail2ban, Host, record_figure, wait_for

STEPS: list[tuple[str, Callable[[Fail2ban], object]]] = [
    ("reload", lambda f2b: f2b.client("reload")),
    ("reload <jail>", lambda f2b: f2b.client("reload", "dovecot")),
    ("reload --restart <jail>", lambda f2b: f2b.client("reload", "--restart", "dovecot")),
    ("restart", lambda f2b: f2b.restart()),
    ("stop, start", lambda f2b: (f2b.stop(), f2b.start())),
    ("flushlogs", lambda f2b: f2b.client("flushlogs")),
]


def banned_db_actions(fail2ban: Fail2ban, jail: str) -> int:
    """How many actions of the running jail are banned_db (fail2ban lists names: count the kinds
    too, since the Python action and the command action would both be called banned_db)."""
    listed = fail2ban.client("get", jail, "actions").stdout.splitlines()[-1]
    return sum(name.strip() == "banned_db" for name in listed.split(","))


def rows_are_bans(host: Host, fail2ban: Fail2ban, expected: set[tuple[str, str]]) -> bool:
    """This host's rows are fail2ban's bans, and those are every ban made so far: after a restart
    fail2ban restores them one by one, and rows and bans agree at each step of the way."""
    return host.rows() == fail2ban.all_bans() == expected


@pytest.mark.parametrize("action", ["python", "command"])
def test_every_lifecycle_step_keeps_recording(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban], action: str
) -> None:
    fail2ban = start_fail2ban(host, action=action)
    fail2ban.banip("192.0.2.1", "2001:db8::1")
    fail2ban.banip("192.0.2.2", jail="postfix")
    wait_for(lambda: len(db.banned()) == 3, "the first three rows")
    first = {(row["jail"], row["ip"]): row["timestamp"] for row in db.banned()}
    # Let the clock pass the bans' second, so a restored ban stamped anew would show.
    wait_for(
        lambda: (
            datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - max(first.values())
            >= datetime.timedelta(seconds=1)
        ),
        "the next second",
    )
    table = []
    for number, (step, run) in enumerate(STEPS, start=1):
        run(fail2ban)
        counts = {jail: banned_db_actions(fail2ban, jail) for jail in Fail2ban.JAILS}
        assert counts == {"dovecot": 1, "postfix": 1}, f"after {step}: banned_db actions {counts}"
        wait_for(lambda: rows_are_bans(host, fail2ban, set(first)), f"rows = bans after {step}", timeout=60)
        stamps = {(row["jail"], row["ip"]): row["timestamp"] for row in db.banned()}
        assert {key: stamps[key] for key in first} == first, f"after {step}: a restored ban got a new timestamp"
        rows, bans = len(host.rows()), len(fail2ban.all_bans())
        new_ip = f"198.51.100.{number}"
        began = time.monotonic()
        fail2ban.banip(new_ip)
        wait_for(lambda: db.banned(ip=new_ip), f"the ban after {step} to be recorded", timeout=30)  # noqa: B023
        took = time.monotonic() - began
        first.update({(row["jail"], row["ip"]): row["timestamp"] for row in db.banned(ip=new_ip)})
        table.append(f"{step}: {rows} rows = {bans} bans, next ban recorded in {took:.2f} s")
    assert rows_are_bans(host, fail2ban, set(first))
    assert fail2ban.action_errors() == [], fail2ban.log_tail()
    record_figure(f"lifecycle ({db.backend}, {action} action): " + "; ".join(table))
