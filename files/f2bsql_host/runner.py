"""The helper's work: record an event now, or spool it behind the ones still waiting.

Runner is shared by the command-line helper (one event per process) and fail2ban's Python
action (one Runner per jail, for the life of fail2ban-server). The cron run's work (unban_db,
sync) is maintenance.Maintenance's, a Runner that also talks to fail2ban: neither the action
nor a `ban` process loads that code.
"""

from __future__ import annotations

import time

from .db import Database
from .events import Ban, apply
from .report import EXIT_FAILED, EXIT_OK, DatabaseUnavailable, EventRejected, HelperError, log
from .settings import Settings
from .spool import Spool

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from .events import Event

# The event at hand waits this long for another process's replay before it goes behind it.
SPOOL_LOCK_WAIT = 1.0


class Runner:
    """Runs commands: replays the spool first, spools the event if the database is away.

    A long-lived caller (fail2ban's Python action) passes `retry_after_failure`: after the
    database failed, events go straight to the spool for that many seconds instead of each
    waiting out a timeout, so a dead database never holds fail2ban up for long; and `in_process`,
    which keeps any replay within the database timeout, so the jail's thread is never held
    longer than one connect and one statement would hold it.
    """

    def __init__(self, settings: Settings, retry_after_failure: float = 0.0, in_process: bool = False) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_dir)
        self.db: Database | None = None
        self.retry_after_failure = retry_after_failure
        self.replay_budget = float(
            min(settings.replay_budget, settings.timeout) if in_process else settings.replay_budget
        )
        self._down_until = 0.0

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def database(self) -> Database:
        if self.db is None:
            if time.monotonic() < self._down_until:
                raise DatabaseUnavailable("the database failed moments ago; not retrying yet")
            try:
                self.db = Database(self.settings).connect()
            except DatabaseUnavailable:
                self._failed()
                raise
        return self.db

    def _failed(self) -> None:
        """Drop a connection that failed; the next use reconnects (after the pause, if any)."""
        self.close()
        # Events spooled during the pause land here too: they must not stretch it, or a steady
        # trickle of bans would keep the database unasked for ever.
        if time.monotonic() >= self._down_until:
            self._down_until = time.monotonic() + self.retry_after_failure

    def catch_up(self, budget: float | None = None) -> bool:
        """Replay the spool within `budget` seconds (default: the event's); True when it is empty.

        The event at hand waits at most SPOOL_LOCK_WAIT for a replay another process runs: it
        goes behind the spooled ones instead, and that replay (or the next run) takes it.
        """
        if not self.spool.pending():
            return True
        with self.spool.lock(wait=SPOOL_LOCK_WAIT if budget is None else self.settings.timeout * 2) as locked:
            if not locked:
                return False
            began = time.monotonic()
            try:
                replayed, finished = self.spool.replay(
                    self.database(), began + (self.replay_budget if budget is None else budget)
                )
            except DatabaseUnavailable:
                self._failed()
                return False
            if replayed:
                log(f"replayed {replayed} spooled event(s)")
            if not finished:
                left = len(self.spool.pending())
                log(f"replay stopped after {time.monotonic() - began:.1f} s with {left} event(s) left for the next run")
            return finished

    def record(self, event: Event) -> int:
        """Apply an event now, or spool it behind the ones still waiting."""
        if self.catch_up():
            try:
                apply(self.database(), event)
                return EXIT_OK
            except DatabaseUnavailable as exc:
                self._failed()
                reason = str(exc)
            except EventRejected as exc:
                # Refused for good: trying again would fail the same way. Kept aside, not lost.
                return self._set_aside(event, exc)
        else:
            reason = "database unavailable or spool busy"
        try:
            self.spool.put(event)
        except HelperError as exc:
            raise HelperError(f"{reason}; {exc}") from None
        log(f"{reason}; event spooled in {self.spool.path}", error=True)
        return EXIT_OK

    def record_all(self, events: Sequence[Event]) -> None:
        """Apply events in order, each run of consecutive bans as one statement (the Python
        action's writer); what the database cannot take now is spooled, in order. Never raises:
        what can be neither written nor spooled is logged and the rest goes on.

        A run of bans the server refuses as a whole is applied one ban at a time, so that only
        the ban it refuses is set aside.
        """
        done = 0
        for group in _runs_of_bans(events):
            try:
                if not self.catch_up():
                    self.spool_all(events[done:], "database unavailable or spool busy")
                    return
                if isinstance(group[0], Ban):
                    self.database().ban_rows([event.row for event in group])  # type: ignore[union-attr]
                else:
                    apply(self.database(), group[0])
            except DatabaseUnavailable as exc:
                self._failed()
                self.spool_all(events[done:], str(exc))
                return
            except EventRejected as exc:
                if len(group) == 1:
                    self._set_aside_or_log(group[0], exc)
                else:  # one ban at a time: only the one the server refuses is set aside
                    for event in group:
                        self._record_or_log(event)
            except HelperError as exc:
                log(f"{exc}: {len(group)} event(s) neither recorded nor spooled", error=True)
            done += len(group)

    def _record_or_log(self, event: Event) -> None:
        try:
            self.record(event)
        except HelperError as exc:
            log(f"{exc}: {type(event).__name__.lower()} event neither recorded nor spooled", error=True)

    def _set_aside_or_log(self, event: Event, exc: EventRejected) -> None:
        try:
            self._set_aside(event, exc)
        except HelperError as spool_exc:
            log(f"{spool_exc}: {type(event).__name__.lower()} event lost", error=True)

    def spool_all(self, events: Sequence[Event], why: str) -> None:
        """Spool these events, in order (each one that cannot be is logged)."""
        spooled = 0
        for event in events:
            try:
                self.spool.put(event)
                spooled += 1
            except HelperError as exc:
                log(f"{why}; {exc}: {type(event).__name__.lower()} event lost", error=True)
        if spooled:
            log(f"{why}; {spooled} event(s) spooled in {self.spool.path}", error=True)

    def _set_aside(self, event: Event, exc: EventRejected) -> int:
        """Keep an event the database refused for good in the spool's rejected folder."""
        try:
            name = self.spool.put(event, rejected=True)
        except HelperError as spool_exc:
            raise HelperError(f"{exc}; {spool_exc}") from None
        log(f"{exc}; event set aside in {self.spool.rejected}/{name}", error=True)
        return EXIT_FAILED


def _runs_of_bans(events: Sequence[Event]) -> Iterator[Sequence[Event]]:
    """The events in order, consecutive bans together, every other event on its own."""
    start = 0
    for index, event in enumerate(events):
        if not isinstance(event, Ban):
            if start < index:
                yield events[start:index]
            yield events[index : index + 1]
            start = index + 1
    if start < len(events):
        yield events[start:]
