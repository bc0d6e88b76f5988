#!/usr/bin/env python3
"""Bans and panel unbans through a real fail2ban-server: the command action against the Python action.

Both run in the same process, against the same servers, one after the other, so their ratio
holds on a noisy machine. For each backend, action and burst size N, and each of --runs runs:

  burst     `fail2ban-client set dovecot banip` of N addresses in one call, until all N rows exist
  unban_db  all N rows set remove = 1, then `fail2ban_banned_db unban_db` (the cron command)
  ban       one `banip` until its row exists (median of --singles)
  unban     one `unbanip` until its row is gone
  cli ban   one `fail2ban_banned_db ban` process, as the original helper was timed

After each burst the rows are checked (exactly N, no duplicates, the jail's fields), after each
unban_db that fail2ban holds none of them and no row is left. Figures are medians.

Run as root from the repository root, with the servers scripts/setup-dev-machine starts:
    .venv/bin/python bench/bench_bans.py [--backends mysql,pgsql] [--sizes 100,500,2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from testbed import (  # noqa: E402 -- the test bed lives beside the tests, one copy for both
    DOVECOT_PORTS,
    Database,
    Fail2ban,
    Host,
    Server,
    new_database,
    reap_lingering,
    wait_for,
)

# The machine's own servers as they run in production (not the tests' fsync-less cluster).
SERVERS = {
    "mysql": Server("mysql", "127.0.0.1", 3306, "root", "", "/run/mysqld/mysqld.sock", admin_via_socket=True),
    "pgsql": Server("pgsql", "127.0.0.1", 5432, "postgres", ""),
}
# RFC 2544's benchmarking range: never a real client.
FIRST_ADDRESS = int(ipaddress.ip_address("198.18.0.1"))


def addresses(count: int, offset: int = 0) -> list[str]:
    return [str(ipaddress.ip_address(FIRST_ADDRESS + offset + n)) for n in range(count)]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class Bench:
    """One database, one helper host and one fail2ban-server running the given action."""

    def __init__(self, backend: str, action: str, firewall: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="f2bsql-bench-"))
        self.db: Database = new_database(SERVERS[backend])
        self.db.create()
        self.db.apply_schema()
        self.host = Host(self.db, "bench.example.test", self.root, self.root / "f2b" / "fail2ban.sock", timeout=5)
        self.fail2ban = Fail2ban(self.root / "f2b", self.host.config, action=action, firewall=firewall)
        self.fail2ban.start()

    def close(self) -> None:
        try:
            self.fail2ban.stop()
        finally:
            self.db.close()
            self.db.drop()
            shutil.rmtree(self.root, ignore_errors=True)

    def burst(self, ips: list[str]) -> float:
        started = time.perf_counter()
        self.fail2ban.banip(*ips)
        wait_for(lambda: self.db.count() >= len(ips), f"{len(ips)} rows", timeout=1800, interval=0.01)
        took = time.perf_counter() - started
        rows = self.db.banned()
        assert len(rows) == len(ips), f"{len(rows)} rows for {len(ips)} bans"
        assert sorted(row["ip"] for row in rows) == sorted(ips), "rows do not match the bans"
        for row in rows:
            assert (row["ports"], row["protocol"], row["jail"]) == (DOVECOT_PORTS, "tcp", "dovecot"), row
            assert (row["hostname"], row["remove"]) == (self.host.name, 0), row
        assert self.fail2ban.banned() == set(ips)
        return took

    def unban_db(self, count: int) -> float:
        assert self.db.execute("UPDATE banned SET remove = 1") == count
        took = timed(lambda: self.host.ok("unban_db"))
        assert self.db.count() == 0, "rows left after unban_db"
        assert self.fail2ban.banned() == set(), "fail2ban still holds bans after unban_db"
        return took

    def single(self, ip: str) -> tuple[float, float]:
        started = time.perf_counter()
        self.fail2ban.banip(ip)
        wait_for(lambda: self.db.banned(ip=ip), "the row", interval=0.002)
        ban = time.perf_counter() - started
        started = time.perf_counter()
        self.fail2ban.unbanip(ip)
        wait_for(lambda: not self.db.banned(ip=ip), "the row to go", interval=0.002)
        return ban, time.perf_counter() - started

    def cli_ban(self, ip: str) -> float:
        took = timed(lambda: self.host.ok("ban", ip, DOVECOT_PORTS, "tcp", "dovecot", "3", "auth failure"))
        self.host.ok("unban", "--jail", "dovecot", ip)
        return took


def measure(backend: str, action: str, sizes: list[int], runs: int, singles: int, firewall: bool) -> dict[str, float]:
    figures: dict[str, list[float]] = {}
    for run in range(runs):
        bench = Bench(backend, action, firewall)
        try:
            for size in sizes:
                ips = addresses(size, offset=run * 100_000 % 60_000)
                figures.setdefault(f"burst {size}", []).append(bench.burst(ips))
                figures.setdefault(f"unban_db {size}", []).append(bench.unban_db(size))
            for n in range(singles):
                ban, unban = bench.single(addresses(1, offset=120_000 + n)[0])
                figures.setdefault("ban", []).append(ban)
                figures.setdefault("unban", []).append(unban)
                if action == "command":  # the CLI is the same whichever action fail2ban uses
                    figures.setdefault("cli ban", []).append(bench.cli_ban(addresses(1, offset=125_000 + n)[0]))
        finally:
            bench.close()
        print(f"  {backend} {action}: run {run + 1}/{runs} done", file=sys.stderr, flush=True)
    return {name: statistics.median(values) for name, values in figures.items()}


def _figure_order(name: str) -> tuple[int, int]:
    kind, _, size = name.partition(" ")
    kinds = ["burst", "unban_db", "ban", "unban", "cli"]
    return (kinds.index(kind) if kind in kinds else len(kinds), int(size) if size.isdigit() else 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="mysql,pgsql")
    parser.add_argument("--sizes", default="100,500,2000", help="burst sizes, comma separated")
    parser.add_argument(
        "--baseline-sizes", help="burst sizes for the command action (default: --sizes); it forks a helper per ban"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--singles", type=int, default=15, help="single ban/unban samples per run")
    parser.add_argument("--no-firewall", action="store_true", help="leave out the dummy firewall action")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    baseline_sizes = [int(size) for size in (args.baseline_sizes or args.sizes).split(",")]
    firewall = not args.no_firewall
    print(f"fail2ban jail: {'dummy firewall action + ' if firewall else ''}banned_db; medians of {args.runs} runs")
    try:
        for backend in args.backends.split(","):
            results = {
                "command": measure(backend, "command", baseline_sizes, args.runs, args.singles, firewall),
                "python": measure(backend, "python", sizes, args.runs, args.singles, firewall),
            }
            print(f"\n{backend}: {'figure':<16}{'command action':>16}{'Python action':>16}{'ratio':>9}", flush=True)
            for name in sorted({*results["command"], *results["python"]}, key=_figure_order):
                command = results["command"].get(name)
                python = results["python"].get(name)
                left = f"{command * 1000:>13.1f} ms" if command is not None else f"{'-':>16}"
                right = f"{python * 1000:>13.1f} ms" if python is not None else f"{'-':>16}"
                ratio = f"{command / python:>8.1f}x" if command is not None and python else f"{'':>9}"
                print(f"{'':{len(backend) + 2}}{name:<16}{left}{right}{ratio}", flush=True)
    finally:
        reap_lingering()
    return 0


if __name__ == "__main__":
    sys.exit(main())
