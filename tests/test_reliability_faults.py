"""Faults: the database crashes mid-burst, or holds a lock for 30 s; fail2ban dies under unban_db;
the spool has no room. Nothing recorded is lost, nothing is recorded twice, fail2ban keeps banning.

The crashes hit servers of the tests' own (tests/servers.py): the machine's MariaDB and the
session's PostgreSQL cluster stay up for everyone else.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import need_service
from servers import OwnServer
from testbed import (
    BACKENDS,
    BASE_ENV,
    DOVECOT_PORTS,
    HELPER,
    POSTFIX_PORTS,
    SYSTEM_PYTHON,
    Database,
    Fail2ban,
    Host,
    Run,
    b64,
    closed_port,
    record_figure,
    table_locked,
    wait_for,
)

BURST = 200


def _ban(host: Host, ip: str, jail: str) -> Run:
    ports = DOVECOT_PORTS if jail == "dovecot" else POSTFIX_PORTS
    return host.run("ban", ip, ports, "tcp", jail, "2", f"auth failure from {ip}")


def _burst_ips() -> list[tuple[str, str]]:
    return [(f"198.51.{100 + n // 250}.{n % 250 + 1}", ("dovecot", "postfix")[n % 2]) for n in range(BURST)]


def _assert_each_once(db: Database, host: Host, wanted: list[tuple[str, str]]) -> None:
    rows = db.banned(hostname=host.name)
    keys = [(row["ip"], row["jail"]) for row in rows]
    assert len(keys) == len(set(keys)), "a ban was recorded twice"
    missing, extra = set(wanted) - set(keys), set(keys) - set(wanted)
    assert not missing and not extra, f"{len(missing)} lost: {sorted(missing)[:5]}; {len(extra)} unexpected"
    for row in rows:
        assert row["failures"] == 2 and row["loglines"] == b64(f"auth failure from {row['ip']}".encode()), row


def test_database_crash_mid_burst_loses_nothing_and_records_nothing_twice(
    own_server: OwnServer, own_db: Database, make_host: Callable[..., Host]
) -> None:
    """200 bans from helper processes, 4 at a time; the server dies after 60, is back after 130."""
    host = make_host(own_db)
    wanted = _burst_ips()
    done: list[Run] = []
    spooled_peak = 0
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_ban, host, ip, jail) for ip, jail in wanted]

        def finished() -> int:
            return sum(future.done() for future in futures)

        wait_for(lambda: finished() >= 60, "60 bans before the crash", timeout=120)
        own_server.crash()
        crashed_at = finished()
        wait_for(lambda: finished() >= 130, "70 bans while the database is down", timeout=120)
        spooled_peak = len(host.spooled())
        own_server.start()
        restarted_at = finished()
        done = [future.result() for future in futures]
    took = time.monotonic() - started
    failed = [run for run in done if run.returncode != 0 or "Traceback" in run.stderr]
    assert not failed, "\n".join(str(run) for run in failed[:3])
    told = sum("spooled" in run.stderr for run in done)
    assert told >= 130 - crashed_at - 4, "bans during the outage did not say they were spooled"

    own_db.close()  # its connection died with the server
    host.ok("replay")  # what cron's next run does first
    assert host.spooled() == [] and host.rejected() == []
    _assert_each_once(own_db, host, wanted)
    record_figure(
        f"database crash mid-burst ({own_db.backend}, helper processes): {BURST} bans, server killed after"
        f" {crashed_at} and back after {restarted_at}; {told} spooled (peak {spooled_peak} files);"
        f" after replay {BURST} rows, 0 lost, 0 duplicates; burst {took:.1f} s"
    )


def test_database_crash_mid_burst_through_the_python_action(
    own_server: OwnServer, own_db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    """The same burst through fail2ban's Python action: banip in chunks of 20, the server killed
    after the third chunk and back after the sixth. fail2ban bans all 200, never stalled."""
    host = make_host(own_db)
    fail2ban = start_fail2ban(host, action="python")
    wait_for(lambda: len(own_db.jails()) == 2, "the jails' rows")
    addresses = [ip for ip, _jail in _burst_ips()]
    chunks = [addresses[start : start + 20] for start in range(0, BURST, 20)]
    timings = []
    for number, chunk in enumerate(chunks):
        if number == 3:
            own_server.crash()
        if number == 6:
            own_server.start()
        began = time.monotonic()
        fail2ban.banip(*chunk)
        timings.append(time.monotonic() - began)
    assert fail2ban.banned() == set(addresses)
    assert max(timings) < 10, f"a banip of 20 took {max(timings):.1f} s: fail2ban was held up"
    # banip returns once the jail's thread has queued the bans: the writer thread may still hold
    # the last ones (and spools them while its retry pause after the outage lasts).
    own_db.close()  # its connection died with the server
    wait_for(lambda: own_db.count() + len(host.spooled()) == BURST, "every ban in a row or the spool", timeout=30)
    spooled = len(host.spooled())
    assert spooled >= 60, "the bans while the server was down were not spooled"

    host.ok("replay")
    assert host.spooled() == [] and host.rejected() == []
    rows = own_db.banned(hostname=host.name)
    keys = [(row["ip"], row["jail"]) for row in rows]
    assert len(keys) == len(set(keys)) == BURST and {ip for ip, _jail in keys} == set(addresses)
    # The outage is in fail2ban's log, and nothing but the record of the bans failed.
    errors = fail2ban.action_errors()
    assert any("spooled" in line for line in errors) and all("banned_db" in line for line in errors), errors
    record_figure(
        f"database crash mid-burst ({own_db.backend}, Python action): {BURST} bans in chunks of 20,"
        f" {spooled} spooled, banip of 20 took median {statistics.median(timings):.2f} s / max"
        f" {max(timings):.2f} s; after replay {BURST} rows, 0 lost, 0 duplicates"
    )


# --------------------------------------------------------------------------- a slow database

LOCK_SECONDS = 30


def _spooled_bans(host: Host, count: int) -> bool:
    return len(_spool_times(host)) == count


def _spooled_events(host: Host, count: int) -> bool:
    return len(host.spooled()) == count


def _has_jails(db: Database, count: int) -> bool:
    return len(db.jails()) == count


def _has_rows(db: Database, host: Host, count: int) -> bool:
    return len(db.banned(hostname=host.name)) == count


def _errors_saying(server: Fail2ban, reason: str) -> list[str]:
    return [line for line in server.action_errors() if reason in line]


def _spool_times(host: Host) -> dict[str, float]:
    """When each spooled ban was written (the spool names files by time_ns), by address."""
    times = {}
    for path in host.spooled():
        event = json.loads(path.read_text(encoding="utf-8"))
        if event["op"] == "ban":
            times[event["row"]["ip"]] = int(path.name.split("-", 1)[0]) / 1e9
    return times


def test_a_lock_held_30_s_on_banned_does_not_hold_fail2ban_up(
    make_db: Callable[..., Database], make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    """fail2ban bans on (status lists every address while the lock is held); the helper and the
    Python action's writer give up within their timeout and spool (the Python action's jail does not
    wait at all); after the lock, the next event replays.

    Both backends and both actions share one 30 s window: four fail2ban servers, two databases.
    """
    dbs = {backend: make_db(backend) for backend in BACKENDS}
    cases = [(backend, kind) for backend in BACKENDS for kind in ("command", "python")]
    hosts = {(backend, kind): make_host(dbs[backend], f"mail-{kind}.example.test") for backend, kind in cases}
    servers = {case: start_fail2ban(host, action=case[1]) for case, host in hosts.items()}
    for db in dbs.values():
        wait_for(functools.partial(_has_jails, db, 4), f"{db.backend}: both servers' jails recorded")
    addresses = {
        "command": [f"203.0.113.{n}" for n in range(1, 4)],  # a helper process each: one wait each
        "python": [f"203.0.113.{n}" for n in range(101, 121)],
    }
    timeout = hosts[cases[0]].timeout
    # MariaDB: the lock wait ends at the client's read timeout (2 x timeout); PostgreSQL: lock_timeout.
    give_up = {"mysql": timeout * 2 + 2, "pgsql": timeout + 2}
    seen: dict[tuple[tuple[str, str], str], float] = {}
    with contextlib.ExitStack() as locks:
        for db in dbs.values():
            locks.enter_context(table_locked(db))
        locked_at = time.time()
        for (_backend, kind), server in servers.items():
            for ip in addresses[kind]:
                server.log_failures(f"auth failure from {ip}", f"auth failure from {ip}")

        def all_banned() -> bool:
            for case, server in servers.items():
                now = time.time()
                for ip in server.banned():
                    seen.setdefault((case, ip), now)
            return len(seen) == sum(len(addresses[kind]) for _backend, kind in cases)

        wait_for(all_banned, "fail2ban to ban every address", timeout=LOCK_SECONDS - 5, interval=0.1)
        for case, host in hosts.items():
            wait_for(functools.partial(_spooled_bans, host, len(addresses[case[1]])), f"{case}: spooled")
        assert time.time() - locked_at < LOCK_SECONDS, "the bans and spooling took the whole lock"
        wait_for(lambda: time.time() - locked_at >= LOCK_SECONDS, "the end of the lock", timeout=LOCK_SECONDS)
    spooled = {case: _spool_times(host) for case, host in hosts.items()}
    latency = {case: [spooled[case][ip] - seen[(case, ip)] for ip in addresses[case[1]]] for case in cases}
    banned_in: dict[str, float] = {}
    for (backend, kind), waited in latency.items():
        assert max(waited) < give_up[backend], f"{backend}, {kind}: a ban was held {max(waited):.1f} s"
        if kind == "python":
            # The jail's thread never waits for the database (the action's writer does, once for
            # all it holds): fail2ban bans every address as fast as with the database well.
            times = [seen[((backend, kind), ip)] for ip in addresses[kind]]
            banned_in[backend] = max(times) - min(times)
            assert banned_in[backend] < 3, f"{backend}: the Python action held the jail: {banned_in[backend]:.1f} s"

    # The lock is gone: the next ban on each host replays its spool first (no cron needed).
    last_pause_start = max(min(spooled[(backend, "python")].values()) for backend in BACKENDS)
    wait_for(lambda: time.time() - last_pause_start > 31, "the Python actions' retry pauses", timeout=40)
    for (_backend, kind), server in servers.items():
        if kind == "command":
            server.log_failures("auth failure from 203.0.113.50", "auth failure from 203.0.113.50")
        else:
            server.banip("203.0.113.150")
    for (backend, kind), host in hosts.items():
        final = [*addresses[kind], "203.0.113.50" if kind == "command" else "203.0.113.150"]
        wait_for(functools.partial(_has_rows, dbs[backend], host, len(final)), f"{backend}, {kind}: rows")
        rows = dbs[backend].banned(hostname=host.name)
        assert sorted(row["ip"] for row in rows) == sorted(final), f"{backend}, {kind}: lost or doubled"
        assert host.spooled() == [] and host.rejected() == []
    for backend in BACKENDS:
        command, python = latency[(backend, "command")], latency[(backend, "python")]
        banned_within = max(when for ((db_backend, _kind), _ip), when in seen.items() if db_backend == backend)
        record_figure(
            f"lock on banned held {LOCK_SECONDS} s ({backend}, helper timeout {timeout} s): fail2ban banned"
            f" all {len(seen) // 2} addresses within {banned_within - locked_at:.1f} s of the lock; a helper gave"
            f" up and spooled after median {statistics.median(command):.1f} s (max {max(command):.1f} s) per"
            f" ban; the Python action's jail banned its {len(python)} within {banned_in[backend]:.1f} s and its"
            f" writer spooled them after {max(python):.1f} s, all at once; 0 lost, 0 duplicates"
        )


# --------------------------------------------------------------------------- fail2ban gone


def _kill(server: Fail2ban) -> None:
    """SIGKILL, as a crash or the OOM killer would: fail2ban runs no action's stop."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{server.pid}").exists(), "fail2ban-server to die")
    server.pidfile.unlink(missing_ok=True)  # else the next start would read the dead pid
    server.pid = None


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_fail2ban_gone_while_unban_db_runs_keeps_the_pending_rows(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban], how: str
) -> None:
    """A panel marks 1500 bans for removal; fail2ban dies (or is stopped) while unban_db lifts
    them, 500 per fail2ban-client call. No row goes whose ban was not lifted; the rest wait,
    still marked, and the next run after fail2ban is back lifts them all."""
    fail2ban = start_fail2ban(host, action="python", firewall=False)
    count = 1500
    addresses = [f"10.{n // 65536}.{n // 256 % 256}.{n % 256}" for n in range(1, count + 1)]
    fail2ban.banip(*addresses)
    wait_for(lambda: db.count() == count, "a row per ban")
    assert db.execute("UPDATE banned SET remove = 1") == count
    first = subprocess.Popen(
        [SYSTEM_PYTHON, str(HELPER), "--config", str(host.config), "unban_db"],
        env=BASE_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: db.count() <= count - 500, "unban_db to lift its first 500", timeout=120, interval=0.01)
    if how == "killed":
        _kill(fail2ban)
    else:
        fail2ban.stop()
    _stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 1, f"unban_db exited {first.returncode}: {stderr}"
    assert stderr.strip() and "Traceback" not in stderr, stderr
    left = db.banned()
    assert left, "fail2ban went away only after unban_db had finished: the test proved nothing"
    assert all(row["remove"] == 1 for row in left), "a pending removal lost its mark"

    fail2ban.start()  # restores its bans from its own database
    kept = {row["ip"] for row in left}
    wait_for(lambda: fail2ban.banned() == kept, "fail2ban to restore exactly the bans still pending")
    second = host.run("unban_db")
    assert second.returncode == 0, str(second)
    assert db.banned() == [] and fail2ban.banned() == set()
    record_figure(
        f"fail2ban {how} while unban_db lifted {count} bans ({db.backend}): {count - len(kept)} lifted before,"
        f" {len(kept)} rows kept with remove = 1, all lifted by the next run; 0 lost"
    )


# --------------------------------------------------------------------------- no room to spool


@contextlib.contextmanager
def unusable_spool(fault: str) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A directory for the spools, and the call that breaks it: fill it up (a 256 KiB tmpfs)
    or turn it read-only (a bind mount remounted ro). Unmounted afterwards, whatever happens."""
    mountpoint = Path(tempfile.mkdtemp(prefix="f2bsql-spoolfs-"))
    source = Path(tempfile.mkdtemp(prefix="f2bsql-spoolsrc-"))
    if fault == "full":
        mount = ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mountpoint)]
    else:
        mount = ["mount", "--bind", str(source), str(mountpoint)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        mountpoint.rmdir()
        source.rmdir()
        need_service(f"cannot mount the test's spool file system (needs CAP_SYS_ADMIN): {done.stderr.strip()}")

    def break_it() -> None:
        if fault == "full":
            with contextlib.suppress(OSError), (mountpoint / "filler").open("wb") as filler:
                while True:
                    filler.write(b"\0" * 4096)
                    filler.flush()
            assert shutil.disk_usage(mountpoint).free < 4096, "the tmpfs is not full"
        else:
            remount = ["mount", "-o", "remount,bind,ro", str(mountpoint)]
            subprocess.run(remount, capture_output=True, text=True, check=True)

    try:
        yield mountpoint, break_it
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
        shutil.rmtree(source, ignore_errors=True)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_no_room_to_spool_is_a_clear_error_and_the_ban_stands(
    db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban], fault: str
) -> None:
    """The database is down and the spool cannot take the event: fail2ban's log says why in
    one line (command action: the helper's exit 1 and stderr; Python action: its error), and
    the ban itself stands: fail2ban holds it and the firewall action ran."""
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    with unusable_spool(fault) as (mountpoint, break_it):
        servers = {}
        for kind in ("command", "python"):
            host = make_host(db, f"mail-{kind}.example.test")
            host.spool = mountpoint / kind
            host.write_config(port=closed_port())
            servers[kind] = start_fail2ban(host, action=kind)
            # The jail starts are spooled while there is room: the spools hold events to replay.
            wait_for(functools.partial(_spooled_events, host, 2), f"{kind}: the jail starts spooled")
        break_it()
        for number, server in enumerate(servers.values(), start=1):
            server.banip(f"192.0.2.{number}")
        for number, (kind, server) in enumerate(servers.items(), start=1):
            ip = f"192.0.2.{number}"
            assert server.banned() == {ip}, f"{kind}: the ban itself did not stand"
            dummy = server.root / "dovecot.dummy"
            assert f"+{ip}" in dummy.read_text(encoding="utf-8").split(), f"{kind}: the firewall action did not run"
            lines = wait_for(functools.partial(_errors_saying, server, reason), f"{kind}: fail2ban's log: {reason!r}")
            assert any("banned_db" in line or "fail2ban_banned_db" in line for line in lines), lines
            assert "Traceback" not in server.server_log.read_text(errors="replace"), server.log_tail()
            record_figure(
                f"spool {fault} and database down ({db.backend}, {kind} action): the ban stands,"
                f" fail2ban's log says {reason!r} in one line, no traceback"
            )


# --------------------------------------------------------------------------- a database that hangs


@contextlib.contextmanager
def hanging_database() -> Iterator[int]:
    """A port that takes connections and never says a word: a hung server, a dead NAT entry.

    Connecting succeeds (the kernel completes the handshake), then the client waits for the
    server's greeting until its own timeout.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        yield int(listener.getsockname()[1])


def test_python_action_does_not_stall_fail2ban_on_a_hanging_database(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    """50 bans with the database hanging: the Python action waits out its timeout once, then
    spools at once for its retry pause; a helper process per ban would wait it out every time."""
    # Either driver waits up to 2 x timeout for an answer (PyMySQL's read timeout, the helper's
    # psycopg2 wait callback). The jails' start events are the first to wait.
    one_wait = host.timeout * 2
    with hanging_database() as port:
        host.write_config(port=port)
        fail2ban = start_fail2ban(host, action="python", firewall=False)
        addresses = [f"198.51.100.{n}" for n in range(1, 51)]
        began = time.monotonic()
        fail2ban.banip(*addresses)
        took = time.monotonic() - began
        assert fail2ban.banned() == set(addresses)
        assert took < one_wait + 3, f"banip of 50 took {took:.1f} s: more than one wait for the database"
        wait_for(lambda: len(host.spooled()) == 52, "2 jail starts and 50 bans spooled")

        # The command action for comparison: every helper process waits for the greeting.
        began = time.monotonic()
        run = host.run("ban", "198.51.100.99", DOVECOT_PORTS, "tcp", "dovecot", "1")
        per_ban = time.monotonic() - began
        assert run.returncode == 0 and "spooled" in run.stderr, str(run)
        assert per_ban >= one_wait - 0.5, "the helper did not wait: the database did not hang"
    host.write_config()
    host.ok("replay")
    assert len(db.banned()) == 51 and host.spooled() == []
    record_figure(
        f"hanging database ({db.backend}, helper timeout {host.timeout} s): Python action, banip of 50 in"
        f" {took:.1f} s (at most one wait, then spooled at once); a helper process per ban waits"
        f" {per_ban:.1f} s each (50 bans: {50 * per_ban:.0f} s); all events replayed afterwards"
    )


def test_a_database_that_stops_answering_mid_connection_is_given_up_on(
    own_server: OwnServer, own_db: Database, make_host: Callable[..., Host], start_fail2ban: Callable[..., Fail2ban]
) -> None:
    """The server freezes (SIGSTOP) with the Python action's connection open: the kernel still
    takes the bytes, nothing answers. The ban must not wait longer than the timeout."""
    host = make_host(own_db)
    fail2ban = start_fail2ban(host, action="python", firewall=False)
    fail2ban.banip("192.0.2.1")
    wait_for(lambda: own_db.banned(ip="192.0.2.1"), "the first ban's row")
    own_server.freeze()
    try:
        began = time.monotonic()
        fail2ban.banip("192.0.2.2")  # fail2ban-client gives up after 60 s: the test cannot hang
        banned = time.monotonic() - began
        # The ban itself never waits (the action's writer does): the writer gives up within the
        # client's timeout and spools the event.
        wait_for(lambda: len(host.spooled()) == 1, "the ban spooled", timeout=host.timeout * 2 + 5, interval=0.05)
        took = time.monotonic() - began
    finally:
        own_server.thaw()
    assert banned < 2, f"banip waited {banned:.1f} s on a frozen database"
    assert took < host.timeout * 2 + 3, f"the writer waited {took:.1f} s on a frozen database"
    own_db.close()
    host.ok("replay")
    assert sorted(row["ip"] for row in own_db.banned()) == ["192.0.2.1", "192.0.2.2"]
    record_figure(
        f"database frozen mid-connection ({own_db.backend}, Python action, timeout {host.timeout} s):"
        f" banip returned in {banned:.2f} s, the writer gave up after {took:.1f} s and spooled the ban,"
        " replayed afterwards"
    )
