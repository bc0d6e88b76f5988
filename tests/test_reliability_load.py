"""Load: 50 helper processes at once, banning overlapping addresses on several jails.

Each round starts 50 `ban` calls at the same moment (10 addresses x 3 jails, so most calls race
another for the same row) plus 6 `start` calls for the same jails. Every call must exit 0
without a word on stderr (no deadlock, no lock wait, nothing spooled), and the table must hold
exactly one row per (ip, ports, protocol, jail, host).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import TYPE_CHECKING

from testbed import BASE_ENV, DOVECOT_PORTS, HELPER, POSTFIX_PORTS, SYSTEM_PYTHON, b64, record_figure

if TYPE_CHECKING:
    from testbed import Database, Host

ROUNDS = 2
CALLS = 50
JAILS = {"dovecot": DOVECOT_PORTS, "postfix": POSTFIX_PORTS, "sogo": "80,443"}


def _round_calls(round_number: int) -> list[list[str]]:
    """50 bans over 10 addresses and 3 jails, shifted each round so rounds overlap too."""
    calls = []
    for n in range(CALLS):
        ip = f"192.0.2.{(n + round_number * 3) % 10 + 1}"
        jail = list(JAILS)[n % 3]
        calls.append(["ban", ip, JAILS[jail], "tcp", jail, "3", f"auth failure from {ip}"])
    return calls + [["start", jail] for jail in JAILS for _twice in range(2)]


def test_fifty_concurrent_bans_leave_one_row_each(db: Database, host: Host) -> None:
    wanted: set[tuple[str, str]] = set()
    walls = []
    for round_number in range(ROUNDS):
        calls = _round_calls(round_number)
        wanted |= {(call[1], call[4]) for call in calls if call[0] == "ban"}
        began = time.monotonic()
        processes = [
            subprocess.Popen(
                [SYSTEM_PYTHON, str(HELPER), "--config", str(host.config), *call],
                env=BASE_ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for call in calls
        ]
        results = [
            (call, process.wait(timeout=120), process.communicate()[1]) for call, process in zip(calls, processes)
        ]
        walls.append(time.monotonic() - began)
        failed = [f"{call}: exit {code}, stderr {stderr!r}" for call, code, stderr in results if code or stderr]
        assert not failed, "\n".join(failed[:5])
        assert host.spooled() == [], "a call spooled its event: the database gave up on it"

        rows = db.banned()
        keys = [(row["ip"], row["ports"], row["protocol"], row["jail"], row["hostname"]) for row in rows]
        assert len(keys) == len(set(keys)), "two rows for one ban"
        assert {(ip, jail) for ip, _ports, _protocol, jail, _host in keys} == wanted
        assert all(row["loglines"] == b64(f"auth failure from {row['ip']}".encode()) for row in rows)
        assert sorted(row["name"] for row in db.jails()) == sorted(JAILS)
    record_figure(
        f"load ({db.backend}): {ROUNDS} rounds of {CALLS} concurrent ban + 6 start processes on 10 addresses x"
        f" 3 jails: {ROUNDS * (CALLS + 6)} calls, all exit 0, 0 deadlocks, 0 spooled, {len(wanted)} rows, one"
        f" per key; median round {statistics.median(walls):.1f} s"
    )
