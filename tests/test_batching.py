"""The Python action's writer: events queued by fail2ban's threads, written in batches.

Against the real servers: a batch keeps every event once and in order, a database that goes
away mid-batch spools the batch, a ban the server refuses is set aside alone; and in a real
fail2ban-server, a burst of 2,000 gives 2,000 rows and a stop in the middle of the queue
writes it all before the jail's rows go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
from testbed import DOVECOT_PORTS, Database, Fail2ban, Host, LockedFor, host_module, locked_for, wait_for

BURST = 2000


@pytest.fixture
def runner(host: Host) -> Iterator[Any]:
    settings = host_module("settings").load_settings(str(host.config), None)
    runner = host_module("runner").Runner(settings, retry_after_failure=30, in_process=True)
    yield runner
    runner.close()


def bans(runner: Any, addresses: list[str], loglines: str = "") -> list[Any]:
    events = host_module("events")
    return [
        events.ban_event(runner.settings, ip, DOVECOT_PORTS, "tcp", "dovecot", 3, loglines, None) for ip in addresses
    ]


def recording(runner: Any, fail_at_ban: int | None = None) -> list[int]:
    """The rows of each multi-row ban statement the runner's connection runs from now on;
    `fail_at_ban`: that one (counted from 1) fails, as a database going away would fail it."""
    statements: list[int] = []
    database = runner.database()
    real = database.execute

    def execute(name: str, params: Any, **options: Any) -> Any:
        if name == "ban":
            statements.append(options.get("rows", 1))
            if len(statements) == fail_at_ban:
                raise host_module("report").DatabaseUnavailable("the server went away (test)")
        return real(name, params, **options)

    database.execute = execute
    return statements


def addresses(count: int, prefix: str = "198.18") -> list[str]:
    return [f"{prefix}.{n // 250}.{n % 250 + 1}" for n in range(count)]


def counted(db: Database) -> tuple[int, int]:
    [row] = db.query("SELECT COUNT(*) AS n, COUNT(DISTINCT ip) AS ips FROM banned")
    return int(row["n"]), int(row["ips"])


def test_a_batch_writes_every_ban_once_in_few_statements(db: Database, host: Host, runner: Any) -> None:
    statements = recording(runner)
    runner.record_all(bans(runner, addresses(BURST)))
    assert counted(db) == (BURST, BURST)
    # 500 rows to a statement (one commit each), not one statement per ban.
    assert statements == [500, 500, 500, 500]
    # A batch that repeats rows already there inserts nothing twice.
    runner.record_all(bans(runner, addresses(600)))
    assert counted(db) == (BURST, BURST) and host.spooled() == []


def test_a_batch_of_long_log_lines_stays_under_the_servers_packet_size(db: Database, host: Host, runner: Any) -> None:
    # 500 bans of 32 KiB of log lines each (the most a ban keeps) would be a 22 MB statement,
    # over MariaDB's max_allowed_packet (16 MB) and MySQL 5.7's (4 MB).
    loglines = host_module("checks").encode_loglines(["x" * 40_000])
    statements = recording(runner)
    runner.record_all(bans(runner, addresses(500), loglines))
    assert counted(db) == (500, 500) and host.spooled() == []
    assert sum(statements) == 500 and max(statements) * len(loglines) <= 1_000_000, statements


def test_ban_unban_ban_of_one_address_in_one_batch_ends_with_one_row(db: Database, host: Host, runner: Any) -> None:
    events = host_module("events")
    [first, again] = bans(runner, ["192.0.2.40", "192.0.2.40"])
    other = bans(runner, ["192.0.2.41"])
    unban = events.Unban(("192.0.2.40",), host.name, "dovecot")
    runner.record_all([first, *other, unban, again])
    assert sorted(row["ip"] for row in db.banned()) == ["192.0.2.40", "192.0.2.41"]
    # Applied in order: the unban ended the first ban (history), the last ban stands.
    assert [row["ip"] for row in db.query("SELECT ip FROM banned_history")] == ["192.0.2.40"]
    runner.record_all([unban, again, unban])
    assert [row["ip"] for row in db.banned()] == ["192.0.2.41"]


def test_database_gone_before_a_batch_spools_the_batch_and_loses_nothing(db: Database, host: Host, runner: Any) -> None:
    events = host_module("events")
    runner.record_all([events.Start("dovecot", host.name, DOVECOT_PORTS, "tcp"), *bans(runner, addresses(10))])
    conn = runner.db._conn
    # The server drops the connection the action has held since the last batch (a restart,
    # wait_timeout): the next batch fails at its first statement.
    if db.backend == "mysql":
        db.execute("KILL %s", (conn.thread_id(),))
    else:
        db.execute("SELECT pg_terminate_backend(%s)", (conn.get_backend_pid(),))
    batch = [*bans(runner, addresses(300, "198.19")), events.Unban(("198.18.0.1",), host.name, "dovecot")]
    runner.record_all(batch)
    assert len(host.spooled()) == len(batch), "the batch is neither written nor spooled"
    assert counted(db) == (10, 10)
    # While the database counts as away, later batches go behind it in the spool, in order.
    runner.record_all(bans(runner, ["192.0.2.50"]))
    assert len(host.spooled()) == len(batch) + 1
    host.ok("replay")
    assert host.spooled() == [] and host.rejected() == []
    assert counted(db) == (10 + 300 - 1 + 1, 310)
    assert not db.banned(ip="198.18.0.1")


def test_database_gone_mid_batch_spools_what_is_left_in_order(db: Database, host: Host, runner: Any) -> None:
    events = host_module("events")
    first, second, third = addresses(10, "198.18"), addresses(10, "198.19"), addresses(10, "198.20")
    batch = [
        *bans(runner, first),
        events.Unban((first[0],), host.name, "dovecot"),
        *bans(runner, second),
        events.Unban((second[0],), host.name, "dovecot"),
        *bans(runner, [first[0]]),  # banned again after its unban: must end with a row
        *bans(runner, third),
    ]
    # The first bans and the first unban are written; the second bans' statement fails:
    # everything from them on is spooled, in order.
    statements = recording(runner, fail_at_ban=2)
    runner.record_all(batch)
    assert statements == [10, 10]
    assert counted(db) == (9, 9)
    assert len(host.spooled()) == len(batch) - 11
    host.ok("replay")
    assert host.spooled() == [] and host.rejected() == []
    expected = {*first, *second[1:], *third}
    assert {row["ip"] for row in db.banned()} == expected and counted(db) == (len(expected), len(expected))
    [row] = db.query("SELECT COUNT(*) AS n FROM banned_history")
    assert int(row["n"]) == 2, "each unban ended its ban once"


def test_a_ban_the_server_refuses_is_set_aside_alone(db: Database, host: Host, runner: Any) -> None:
    events = host_module("events")
    good = bans(runner, addresses(20))
    # A jail name longer than the column: the whole multi-row statement is refused for it.
    bad = events.ban_event(runner.settings, "192.0.2.60", DOVECOT_PORTS, "tcp", "j" * 300, 1, "", None)
    runner.record_all([*good[:10], bad, *good[10:]])
    assert counted(db) == (20, 20)
    assert len(host.rejected()) == 1 and host.spooled() == []


def test_the_writer_writes_everything_put_while_it_was_busy(db: Database, host: Host, runner: Any) -> None:
    writer_module = host_module("writer")
    taken, gate = threading.Event(), threading.Event()
    batches: list[int] = []

    def write(items: list[Any]) -> None:
        taken.set()
        gate.wait(10)
        batches.append(len(items))
        runner.record_all(items)

    writer = writer_module.Writer(write, name="f2bsql-test-writer")
    events = bans(runner, addresses(1200))
    writer.put(events[0])
    assert taken.wait(10), "the writer did not take the first event"
    for event in events[1:]:
        writer.put(event)
    assert not writer.drain(0.2), "drained while the database write was held up"
    assert writer.pending() == 1200
    gate.set()
    assert writer.drain(30)
    # One event alone first, then what piled up meanwhile, 500 at a time.
    assert batches == [1, 500, 500, 199]
    assert writer.close(5) == []
    assert not writer.put(events[0]), "a closed writer took an event"
    assert counted(db) == (1200, 1200)


def test_a_drain_waits_for_what_was_put_before_it_only() -> None:
    writer_module = host_module("writer")
    gate = threading.Event()
    written: list[int] = []

    def write(items: list[int]) -> None:
        if 1 in items:
            gate.wait(10)
        written.extend(items)

    writer = writer_module.Writer(write, name="f2bsql-test-writer")
    writer.put(1)
    drained: list[bool] = []
    waiter = threading.Thread(target=lambda: drained.append(writer.drain(10)))
    waiter.start()
    time.sleep(0.2)
    writer.put(2)  # put after the drain began: not what it waits for
    gate.set()
    waiter.join(10)
    assert drained == [True] and written[0] == 1
    assert writer.close(5) == [] and written == [1, 2]


def test_close_hands_back_what_a_stuck_writer_did_not_reach_in_order() -> None:
    writer_module = host_module("writer")
    taken, gate = threading.Event(), threading.Event()
    written: list[int] = []

    def write(items: list[int]) -> None:
        taken.set()
        gate.wait(10)
        written.extend(items)

    writer = writer_module.Writer(write, name="f2bsql-test-writer")
    writer.put(0)
    assert taken.wait(10)
    for item in range(1, 6):
        writer.put(item)
    threading.Timer(0.6, gate.set).start()  # within the moment close gives the batch in hand
    left = writer.close(0.2)
    # What the thread had in hand it wrote before close returned; the rest comes back, in order.
    assert written == [0] and left == [1, 2, 3, 4, 5]
    assert writer.pending() == 0 and not writer.put(6)


def test_a_burst_through_fail2ban_gives_every_row_once(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    fail2ban = start_fail2ban(host, action="python", firewall=False)
    burst = addresses(BURST)
    started = time.monotonic()
    fail2ban.banip(*burst)
    wait_for(lambda: counted(db)[0] == BURST, f"{BURST} rows", timeout=60)
    took = time.monotonic() - started
    assert counted(db) == (BURST, BURST)
    assert fail2ban.banned() == set(burst)
    assert fail2ban.action_errors() == [], fail2ban.log_tail()
    print(f"burst of {BURST} through the Python action, no firewall: {took:.2f} s to the last row")


class QueuedBurst(NamedTuple):
    fail2ban: Fail2ban
    lock: LockedFor
    returned: float  # time.monotonic() when banip returned

    def was_queued(self) -> bool:
        """banip returned while the table was still locked: none of the burst was written yet."""
        self.lock.thread.join(10)
        return bool(self.lock.released) and self.returned < self.lock.released[0]


def queued_burst(db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]) -> QueuedBurst:
    """A fail2ban-server whose Python action holds a whole burst in its queue: the table stays
    locked for 2 s, so the writer's first INSERT waits and the burst queues behind it."""
    fail2ban = start_fail2ban(host, action="python", firewall=False)
    lock = locked_for(db, 2.0)
    fail2ban.banip(*addresses(BURST))
    return QueuedBurst(fail2ban, lock, time.monotonic())


def test_a_stop_with_a_full_queue_writes_it_before_the_rows_go(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    queued = queued_burst(db, host, start_fail2ban)
    fail2ban = queued.fail2ban
    # The whole server stops (its jails with it) while the whole burst is still queued. Every ban
    # reaches the database and ends as the jail stops.
    fail2ban.stop()
    assert queued.was_queued(), "banip outlasted the lock: no queue to test"
    assert counted(db) == (0, 0)
    [row] = db.query("SELECT COUNT(*) AS n, COUNT(DISTINCT ip) AS ips FROM banned_history WHERE reason = 'stopped'")
    assert (int(row["n"]), int(row["ips"])) == (BURST, BURST)
    assert db.jails() == [] and host.spooled() == []


def test_a_reload_in_a_burst_writes_the_queue_first(
    db: Database, host: Host, start_fail2ban: Callable[..., Fail2ban]
) -> None:
    queued = queued_burst(db, host, start_fail2ban)
    fail2ban = queued.fail2ban
    fail2ban.client("reload")
    # reload returns once every action's reload() has: the queue was written before it.
    assert counted(db) == (BURST, BURST)
    assert queued.was_queued(), "banip outlasted the lock: no queue to test"
    fail2ban.banip("192.0.2.70")
    wait_for(lambda: db.banned(ip="192.0.2.70"), "a ban after the reload recorded")
    assert fail2ban.action_errors() == [], fail2ban.log_tail()
