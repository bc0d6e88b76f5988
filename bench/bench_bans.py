#!/usr/bin/env python3
"""Bans and panel unbans through a real fail2ban-server: the command action, the Python action, and
fail2ban with no recording action at all (the floor: what its firewall action alone costs).

All run in the same process, against the same servers, the actions taking turns within each
run, so their ratios hold on a noisy machine. For each backend, action and burst size N, and each of --runs runs:

  burst     `fail2ban-client set dovecot banip` of N addresses in one call, until the firewall
            action has run for all N (for the floor too); --no-firewall: until all N rows exist
  cpu       fail2ban-server's CPU seconds in that burst (its threads and the firewall's shells;
            for the Python action until every row is written)
  rows late how long after the firewall action's last ban of the burst the last row came
  unban_db  all N rows set remove = 1, then `fail2ban_banned_db unban_db` (the cron command)
  ban       one `banip` until its row exists (median of --singles)
  unban     one `unbanip` until its row is gone
  cli ban   one `fail2ban_banned_db ban` process of a public address (country looked up, as on a
            host), as the original helper was timed; with --baseline-helper, the same for that
            helper (iRedMail's bash script, say) in the same run

After each burst the rows are checked (exactly N, no duplicates, the jail's fields), after each
unban_db that fail2ban holds none of them and no row is left. Figures are medians.

Run as root from the repository root, with the servers scripts/setup-dev-machine starts:
    .venv/bin/python bench/bench_bans.py [--backends mysql,pgsql] [--sizes 100,500,2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from testbed import (  # noqa: E402 -- the test bed lives beside the tests, one copy for both
    BASE_ENV,
    DOVECOT_PORTS,
    Database,
    Fail2ban,
    Host,
    Server,
    new_database,
    reap_lingering,
    wait_for,
    write_private,
)

# The machine's own servers as they run in production (not the tests' fsync-less cluster).
SERVERS = {
    "mysql": Server("mysql", "127.0.0.1", 3306, "root", "", "/run/mysqld/mysqld.sock", admin_via_socket=True),
    "pgsql": Server("pgsql", "127.0.0.1", 5432, "postgres", ""),
}
# RFC 2544's benchmarking range: never a real client.
FIRST_ADDRESS = int(ipaddress.ip_address("198.18.0.1"))


# Public addresses for the single helper runs: the country lookup runs for them (a benchmarking
# address has no country, and f2bsql skips looking it up). They only ever reach the bench's own
# throwaway database.
FIRST_PUBLIC = int(ipaddress.ip_address("8.8.0.1"))
ACTIONS = ("command", "python", "none")


def addresses(count: int, offset: int = 0, first: int = FIRST_ADDRESS) -> list[str]:
    return [str(ipaddress.ip_address(first + offset + n)) for n in range(count)]


class BaselineHelper:
    """Another helper that takes `ban <ip> <ports> <protocol> <jail> <failures> [loglines]`, run as
    fail2ban's command action runs it. iRedMail's bash helper reads a fixed database name, user
    and credential file: this runs a copy of it with those strings pointed at the bench's own
    database (the same work per ban) and refuses a helper in which they are not found."""

    def __init__(self, path: Path, db: Database, root: Path) -> None:
        text = path.read_text(encoding="utf-8")
        absent = root / "absent"
        if db.backend == "mysql":
            credentials = root / "baseline.my.cnf"
            write_private(
                credentials,
                f"[client]\nhost={db.server.host}\nport={db.server.port}\nuser={db.user}\npassword={db.password}\n",
            )
            swaps = {"/root/.my.cnf-fail2ban": str(credentials), "/root/.my.cnf ": f"{absent} "}
        else:
            pgpass = root / "pgpass"
            pgpass.mkdir()
            write_private(pgpass / ".pgpass", f"*:*:{db.name}:{db.user}:{db.password}\n")
            swaps = {
                "/root/.my.cnf-fail2ban": str(absent),
                "/root/.my.cnf ": f"{absent} ",
                "/var/lib/postgresql": str(pgpass),
            }
        swaps |= {'DB_NAME="fail2ban"': f'DB_NAME="{db.name}"', 'DB_USER="fail2ban"': f'DB_USER="{db.user}"'}
        for old, new in swaps.items():
            if old not in text:
                raise SystemExit(f"{path}: no {old!r} to point at the bench's database; not a helper like iRedMail's")
            text = text.replace(old, new)
        self.path = root / "baseline-helper"
        self.path.write_text(text, encoding="utf-8")
        self.path.chmod(0o700)
        self.db = db

    def ban(self, ip: str) -> float:
        argv = [str(self.path), "ban", ip, DOVECOT_PORTS, "tcp", "dovecot", "3", "auth failure"]
        started = time.perf_counter()
        done = subprocess.run(argv, env={**BASE_ENV, "PGHOST": "127.0.0.1"}, capture_output=True, check=False)
        took = time.perf_counter() - started
        assert done.returncode == 0 and self.db.banned(ip=ip), f"baseline ban of {ip}: {done}"
        self.db.execute("DELETE FROM banned WHERE ip = %s", (ip,))
        return took


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class Bench:
    """One database, one helper host and one fail2ban-server running the given action."""

    def __init__(
        self,
        backend: str,
        action: str,
        firewall: bool,
        baseline: Path | None = None,
        fill: Callable[[Database], None] | None = None,
        timeout: int = 5,
        jails: int = len(Fail2ban.JAILS),
    ) -> None:
        """`fill`: what to put in the database before the host starts (bench_scale's fleet);
        `jails`: how many jails the server runs (bench_memory's 10)."""
        self.root = Path(tempfile.mkdtemp(prefix="f2bsql-bench-"))
        self.db: Database = new_database(SERVERS[backend])
        self.db.create()
        self.db.apply_schema()
        if fill is not None:
            fill(self.db)
        self.host = Host(self.db, "bench.example.test", self.root, self.root / "f2b" / "fail2ban.sock", timeout=timeout)
        self.fail2ban = Fail2ban(
            self.root / "f2b",
            self.host.config,
            action=action,
            firewall=firewall,
            extra_jails=jails - len(Fail2ban.JAILS),
        )
        self.fail2ban.start()
        self.baseline = BaselineHelper(baseline, self.db, self.root) if baseline is not None else None
        self.last_cpu = 0.0  # fail2ban-server's CPU seconds in the last burst (cpu())

    def close(self) -> None:
        try:
            self.fail2ban.stop()
        finally:
            self.db.close()
            self.db.drop()
            shutil.rmtree(self.root, ignore_errors=True)

    def fired(self) -> int:
        """Bans the jail's firewall action has run (the dummy action's target file, one line each)."""
        try:
            with (self.fail2ban.root / "dovecot.dummy").open("rb") as target:
                return sum(line.startswith(b"+") for line in target)
        except FileNotFoundError:
            return 0

    def cpu(self) -> float:
        """CPU seconds fail2ban-server has used so far: all its threads, and its children once
        reaped (the firewall action's shells), as /proc counts them (utime, stime, cutime,
        cstime). Work is work however busy the machine is: far steadier than the wall clock."""
        assert self.fail2ban.pid is not None
        fields = Path(f"/proc/{self.fail2ban.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def floor(self, ips: list[str]) -> float:
        """A burst through the jail with its firewall action alone, until that has run for all."""
        before = self.fired()
        cpu = self.cpu()
        started = time.perf_counter()
        self.fail2ban.banip(*ips)
        wait_for(lambda: self.fired() - before >= len(ips), f"{len(ips)} firewall bans", timeout=1800, interval=0.01)
        took = time.perf_counter() - started
        self.last_cpu = self.cpu() - cpu
        assert self.fail2ban.banned() == set(ips)
        self.fail2ban.unbanip(*ips)
        return took

    def burst(self, ips: list[str]) -> tuple[float, float | None]:
        """(seconds the burst took fail2ban, seconds the last row came after the firewall's last
        ban; None without the firewall action).

        With the firewall action the burst is timed as the floor times it, by the firewall's own
        record, and the rows are looked for only then: asking the database every 10 ms during the
        burst would spend, on the bench's side, CPU the floor's burst does not give up. Without
        it, the burst lasts until every row exists."""
        before = self.fired()
        cpu = self.cpu()
        started = time.perf_counter()
        self.fail2ban.banip(*ips)
        if self.fail2ban.firewall:
            wait_for(lambda: self.fired() - before >= len(ips), "the firewall's bans", timeout=1800, interval=0.01)
            firewall_done = time.perf_counter()
        wait_for(lambda: self.db.count() >= len(ips), f"{len(ips)} rows", timeout=1800, interval=0.01)
        rows_done = time.perf_counter()
        self.last_cpu = self.cpu() - cpu  # the rows written too: the writer's share is in it
        took, after = rows_done - started, None
        if self.fail2ban.firewall:
            took, after = firewall_done - started, rows_done - firewall_done
        rows = self.db.banned()
        assert len(rows) == len(ips), f"{len(rows)} rows for {len(ips)} bans"
        assert sorted(row["ip"] for row in rows) == sorted(ips), "rows do not match the bans"
        for row in rows:
            assert (row["ports"], row["protocol"], row["jail"]) == (DOVECOT_PORTS, "tcp", "dovecot"), row
            assert (row["hostname"], row["remove"]) == (self.host.name, 0), row
        assert self.fail2ban.banned() == set(ips)
        return took, after

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
        assert self.db.banned(ip=ip), f"no row for {ip}"
        self.host.ok("unban", "--jail", "dovecot", ip)
        return took


def measure_once(
    backend: str,
    action: str,
    sizes: list[int],
    run: int,
    singles: int,
    firewall: bool,
    baseline: Path | None,
    figures: dict[str, list[float]],
) -> None:
    """One run of one action: a fresh database and fail2ban-server, each burst size, the singles."""
    bench = Bench(backend, action, firewall, baseline if action == "command" else None)
    try:
        for size in sizes:
            ips = addresses(size, offset=run * 100_000 % 60_000)
            if action == "none":
                figures.setdefault(f"burst {size}", []).append(bench.floor(ips))
                figures.setdefault(f"cpu {size}", []).append(bench.last_cpu)
                continue
            took, after = bench.burst(ips)
            figures.setdefault(f"burst {size}", []).append(took)
            figures.setdefault(f"cpu {size}", []).append(bench.last_cpu)
            if after is not None:
                figures.setdefault(f"rows late {size}", []).append(after)
            figures.setdefault(f"unban_db {size}", []).append(bench.unban_db(size))
        for n in range(singles if action != "none" else 0):
            ban, unban = bench.single(addresses(1, offset=120_000 + n)[0])
            figures.setdefault("ban", []).append(ban)
            figures.setdefault("unban", []).append(unban)
            if action == "command":  # the CLI is the same whichever action fail2ban uses
                # Country lookups on, as on a host (the test bed's settings turn them off).
                bench.host.write_config(geoip="auto")
                public = addresses(1, offset=run * singles + n, first=FIRST_PUBLIC)[0]
                figures.setdefault("cli ban", []).append(bench.cli_ban(public))
                if bench.baseline is not None:
                    figures.setdefault("cli ban baseline", []).append(bench.baseline.ban(public))
                bench.host.write_config()
    finally:
        bench.close()


def measure(
    backend: str,
    actions: list[str],
    sizes: dict[str, list[int]],
    runs: int,
    singles: int,
    firewall: bool,
    baseline: Path | None,
) -> dict[str, dict[str, float]]:
    """Medians per action. The actions take turns within each run, and which goes first turns
    too (python, floor; floor, python; ...): a machine that gets slower or faster during the
    bench moves both sides of a ratio, and neither side always follows the other's teardown."""
    figures: dict[str, dict[str, list[float]]] = {action: {} for action in actions}
    for run in range(runs):
        for action in actions if run % 2 == 0 else actions[::-1]:
            measure_once(backend, action, sizes[action], run, singles, firewall, baseline, figures[action])
        print(f"  {backend} {', '.join(actions)}: run {run + 1}/{runs} done", file=sys.stderr, flush=True)
    return {
        action: {name: statistics.median(values) for name, values in by_name.items()}
        for action, by_name in figures.items()
    }


def _figure_order(name: str) -> tuple[int, int]:
    kind, size = name.split(" ", 1)[0], name.rsplit(" ", 1)[-1]
    kinds = ["burst", "cpu", "rows", "unban_db", "ban", "unban", "cli"]
    return (kinds.index(kind) if kind in kinds else len(kinds), int(size) if size.isdigit() else 0)


def machine() -> str:
    """The line every bench prints first: the machine and its load as the bench starts."""
    return f"machine: {os.cpu_count()} cores, load average {' '.join(f'{n:.2f}' for n in os.getloadavg())} at the start"


def _sizes(text: str) -> list[int]:
    """Burst sizes; "" for none (e.g. `--baseline-sizes ""`: the command action's singles only)."""
    return [int(size) for size in text.split(",") if size]


def ms(value: float | None, width: int) -> str:
    return f"{value * 1000:>{width - 3}.1f} ms" if value is not None else f"{'-':>{width}}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="mysql,pgsql")
    parser.add_argument("--sizes", default="100,500,2000", help="burst sizes, comma separated")
    parser.add_argument(
        "--baseline-sizes", help='burst sizes for the command action (default: --sizes, "": none); a process per ban'
    )
    parser.add_argument("--actions", default=",".join(ACTIONS), help=f"some of {', '.join(ACTIONS)} (none: the floor)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--singles", type=int, default=15, help="single ban/unban samples per run")
    parser.add_argument("--no-firewall", action="store_true", help="leave out the dummy firewall action")
    parser.add_argument(
        "--baseline-helper", type=Path, help="another helper to time `cli ban` against, in the same run"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    baseline_sizes = (
        [int(size) for size in (args.baseline_sizes or args.sizes).split(",")] if args.baseline_sizes != "" else []
    )
    actions = [action for action in args.actions.split(",") if action]
    if set(actions) - set(ACTIONS) or ("none" in actions and args.no_firewall):
        parser.error(f"--actions: some of {', '.join(ACTIONS)}; the floor (none) needs the firewall action")
    firewall = not args.no_firewall
    print(f"fail2ban jail: {'dummy firewall action + ' if firewall else ''}banned_db; medians of {args.runs} runs")
    print(machine())
    try:
        for backend in args.backends.split(","):
            results = measure(
                backend,
                actions,
                {action: baseline_sizes if action == "command" else sizes for action in actions},
                args.runs,
                args.singles,
                firewall,
                args.baseline_helper,
            )
            command, python, floor = (results.get(action, {}) for action in ACTIONS)
            print(
                f"\n{backend}: {'figure':<18}{'command action':>16}{'Python action':>16}{'floor':>16}"
                f"{'cmd/py':>9}{'py/floor':>10}",
                flush=True,
            )
            for name in sorted({*command, *python, *floor}, key=_figure_order):
                c, p, f = command.get(name), python.get(name), floor.get(name)
                ratio = f"{c / p:>8.1f}x" if c is not None and p else f"{'':>9}"
                above = f"{p / f:>9.2f}x" if p is not None and f else f"{'':>10}"
                print(f"{'':{len(backend) + 2}}{name:<18}{ms(c, 16)}{ms(p, 16)}{ms(f, 16)}{ratio}{above}", flush=True)
            if "cli ban" in command and "cli ban baseline" in command:
                print(
                    f"{'':{len(backend) + 2}}cli ban / baseline: {command['cli ban'] / command['cli ban baseline']:.2f}"
                )
    finally:
        reap_lingering()
    return 0


if __name__ == "__main__":
    sys.exit(main())
