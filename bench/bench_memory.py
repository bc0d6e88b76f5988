#!/usr/bin/env python3
"""What the Python action costs fail2ban-server in memory: its resident size with banned_db.py in
every jail, against the same server and jails without it.

For each backend and each of --runs runs, two fail2ban-servers one after the other, each with
--jails jails (the dummy firewall action in each, as a real jail has its firewall action): one
also runs the Python action in every jail, the other runs no recording action. Each gets a burst
of --bans bans in every jail (the action's writer, its queue and its database connection all in
use); the resident set (VmRSS) is read once every row is written, and the peak (VmHWM).

Run as root from the repository root, with the servers scripts/setup-dev-machine starts:
    .venv/bin/python bench/bench_memory.py [--backends mysql,pgsql] [--jails 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_bans import Bench, addresses, machine  # noqa: E402 -- one copy of the bench's host and addresses
from testbed import reap_lingering, wait_for  # noqa: E402


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of the process, in kB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def measure(backend: str, action: str, jails: int, bans: int, offset: int) -> tuple[int, int]:
    bench = Bench(backend, action, True, timeout=10, jails=jails)
    try:
        fail2ban, db = bench.fail2ban, bench.db
        for n, jail in enumerate(fail2ban.jails):
            fail2ban.banip(*addresses(bans, offset=offset + n * bans), jail=jail)
        total = bans * len(fail2ban.jails)
        if action == "python":
            wait_for(lambda: db.count() == total, f"{total} rows", timeout=600, interval=0.05)
        for jail in fail2ban.jails:
            assert len(fail2ban.banned(jail)) == bans, jail
        assert fail2ban.pid is not None
        return memory(fail2ban.pid)
    finally:
        bench.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="mysql,pgsql")
    parser.add_argument("--jails", type=int, default=10)
    parser.add_argument("--bans", type=int, default=200, help="bans per jail")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    args = parser.parse_args()
    print(f"fail2ban-server, {args.jails} jails (dummy firewall action each), {args.bans} bans per jail")
    print(machine())
    try:
        for backend in args.backends.split(","):
            found: dict[str, list[tuple[int, int]]] = {"none": [], "python": []}
            for run in range(args.runs):
                for action in found:
                    found[action].append(measure(backend, action, args.jails, args.bans, run * 10_000))
                print(f"  {backend}: run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
            rss = {action: statistics.median(r for r, _ in values) for action, values in found.items()}
            peak = {action: statistics.median(p for _, p in values) for action, values in found.items()}
            print(f"\n{backend}: {'':<24}{'resident':>12}{'peak':>12}")
            rows = (
                ("without banned_db", rss["none"], peak["none"]),
                ("with the Python action", rss["python"], peak["python"]),
                ("more", rss["python"] - rss["none"], peak["python"] - peak["none"]),
            )
            for label, resident, high in rows:
                print(f"{'':{len(backend) + 2}}{label:<24}{resident / 1024:>9.1f} MB{high / 1024:>9.1f} MB", flush=True)
    finally:
        reap_lingering()
    return 0


if __name__ == "__main__":
    sys.exit(main())
