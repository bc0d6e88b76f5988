#!/usr/bin/env python3
"""A fleet's central database: one host's cron run and admin CLI with 50 other hosts' rows beside its own.

For each backend, two databases side by side, each with its own fail2ban-server holding this
host's bans (Python action + dummy firewall action): one holds this host's rows only, the other
also --rows rows of 50 other hosts in `banned` and --history rows in `banned_history`, as a
fleet's central server holds them (the test bed's fill_fleet). Each run, on one then the other:

  sync          `fail2ban_banned_db sync` with fail2ban holding N bans and their N rows (nothing to do)
  sync repair   this host's N rows deleted behind fail2ban's back, then `sync` (it inserts them again)
  bans --host   `f2bsql bans --host H`: this host's N rows out of the whole table
  unban_db N    this host's N rows marked remove = 1, then `fail2ban_banned_db unban_db` (the cron run)

Each is checked (rows back, none left, fail2ban holds none of them). Figures are medians of
--runs runs; the ratio full / empty is what a fleet costs one host.

Run as root from the repository root, with the servers scripts/setup-dev-machine starts:
    .venv/bin/python bench/bench_scale.py [--backends mysql,pgsql] [--pending 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_bans import Bench, addresses, machine, timed  # noqa: E402 -- one copy of the bench's host and addresses
from testbed import Database, reap_lingering, wait_for  # noqa: E402

FIGURES = ("sync", "sync repair", "bans --host", "unban_db")


class Site(Bench):
    """A database (empty, or filled as a fleet's), this host on it and its fail2ban-server."""

    def __init__(self, backend: str, fleet: tuple[int, int] | None) -> None:
        super().__init__(
            backend, "python", True, fill=None if fleet is None else self._filler(backend, *fleet), timeout=10
        )
        self.others = self.db.count()

    @staticmethod
    def _filler(backend: str, rows: int, history: int) -> Callable[[Database], None]:
        def fill(db: Database) -> None:
            started = time.perf_counter()
            db.fill_fleet(hosts=50, rows=rows, history=history)
            [made] = db.query("SELECT COUNT(*) AS n, COUNT(DISTINCT hostname) AS hosts FROM banned_history")
            assert (int(made["n"]), int(made["hosts"])) == (history, 50), made
            took = time.perf_counter() - started
            print(f"  {backend}: {db.count()} rows, {made['n']} of history, in {took:.1f} s", file=sys.stderr)

        return fill

    def mine(self) -> int:
        return len(self.db.banned(hostname=self.host.name))

    def run(self, pending: int, offset: int) -> dict[str, float]:
        ips = addresses(pending, offset=offset)
        self.fail2ban.banip(*ips)
        wait_for(lambda: self.mine() == pending, f"{pending} rows", timeout=600, interval=0.05)
        took = {"sync": timed(lambda: self.host.ok("sync"))}
        assert self.mine() == pending
        self.db.execute("DELETE FROM banned WHERE hostname = %s", (self.host.name,))
        took["sync repair"] = timed(lambda: self.host.ok("sync"))
        assert self.mine() == pending, "sync did not put the rows back"
        listed = self.host.admin("bans", "--host", self.host.name, "--json")
        took["bans --host"] = timed(lambda: self.host.admin("bans", "--host", self.host.name, "--json"))
        assert listed.returncode == 0 and listed.stdout.count('"ip"') == pending, listed
        self.db.execute("UPDATE banned SET remove = 1 WHERE hostname = %s", (self.host.name,))
        took["unban_db"] = timed(lambda: self.host.ok("unban_db"))
        assert self.mine() == 0 and self.fail2ban.banned() == set(), "unban_db left bans"
        assert self.db.count() == self.others, "other hosts' rows changed"
        return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="mysql,pgsql")
    parser.add_argument("--pending", type=int, default=500, help="this host's bans (N)")
    parser.add_argument("--rows", type=int, default=100_000, help="other hosts' rows in banned")
    parser.add_argument("--history", type=int, default=1_000_000, help="rows in banned_history")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    args = parser.parse_args()
    print(f"this host: {args.pending} bans; fleet: {args.rows} rows of 50 other hosts, {args.history} of history")
    print(machine())
    try:
        for backend in args.backends.split(","):
            sites = {"empty": Site(backend, None), "fleet": Site(backend, (args.rows, args.history))}
            figures: dict[str, dict[str, list[float]]] = {name: {} for name in sites}
            try:
                for run in range(args.runs):
                    for name, site in sites.items():
                        for figure, value in site.run(args.pending, offset=run * args.pending).items():
                            figures[name].setdefault(figure, []).append(value)
                    print(f"  {backend}: run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
            finally:
                for site in sites.values():
                    site.close()
            print(f"\n{backend}: {'figure':<14}{'empty':>12}{'fleet':>12}{'fleet/empty':>13}", flush=True)
            for figure in FIGURES:
                empty, fleet = (statistics.median(figures[name][figure]) for name in sites)
                print(f"{'':{len(backend) + 2}}{figure:<14}{empty * 1000:>9.1f} ms{fleet * 1000:>9.1f} ms"
                      f"{fleet / empty:>12.2f}x", flush=True)  # fmt: skip
    finally:
        reap_lingering()
    return 0


if __name__ == "__main__":
    sys.exit(main())
