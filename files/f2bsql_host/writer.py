"""The Python action's writer: fail2ban's threads hand events over, one thread writes them.

fail2ban calls an action's ban() in the jail's own thread (or the thread of a `banip` command),
between its firewall calls: whatever ban() spends there, every later ban of the burst waits for.
So the action only puts the event on this writer's queue (microseconds) and returns. The
writer's thread takes everything queued at once, up to BATCH events (while they keep coming, a
write waits until LINGER after the one before, unless a batch is full or a drain waits), and the
runner writes it: consecutive bans as multi-row INSERTs, anything else in its place, so the order
of ban and unban of one address is kept. A trickle is written as it comes (no waiting to fill
a batch); a burst is written in batches of what piled up meanwhile.

Queued events live in memory only: `drain()` waits until what was put before it is written (the
action calls it on flush, reload and stop), and a crash of fail2ban-server loses at most the
queue, which the next cron run's `sync` puts right from fail2ban's own bans.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Callable, Generic, TypeVar

from .report import log, reason

BATCH = 500  # events written per turn; the same figure as a DELETE's IN list (db.BATCH)
# While events keep coming, a write waits until LINGER seconds after the one before: each takes
# what piled up since. A jail's firewall action takes milliseconds per ban, a write about as long:
# without it, a burst would be written one ban per statement, every one costing the jail's thread
# its share of the interpreter. Each write also costs about a millisecond of the server's CPU
# whatever its size: 0.25 s makes that four a second in a burst, while the last rows still come
# well within a second of the last ban. The first event after a quiet moment is written at once.
LINGER = 0.25

Item = TypeVar("Item")


class Writer(Generic[Item]):
    """A queue and the one thread that empties it, `write(items)` a batch at a time, in order.

    `write` must deal with every item it is given (write it, spool it, or log why not): an
    exception it lets out is logged, and those items count as done all the same.
    """

    def __init__(
        self, write: Callable[[list[Item]], None], name: str, batch: int = BATCH, linger: float = LINGER
    ) -> None:
        self._write = write
        self._batch = batch
        self._linger = linger
        self._last_write = 0.0  # time.monotonic() when the last write began
        self._draining = 0  # drain() calls waiting: no lingering then
        self._queue: collections.deque[Item] = collections.deque()
        self._changed = threading.Condition()
        self._put = 0  # items ever put
        self._done = 0  # items ever handed to write() and returned from it (or taken by close())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed

    def put(self, item: Item) -> bool:
        """Queue the item; False (and not queued) once the writer is closed."""
        with self._changed:
            if self._closed:
                return False
            self._queue.append(item)
            self._put += 1
            # Wake the thread for the first event and for a full batch only: one wake-up per
            # event would cost the putting thread (the jail's) a switch of the interpreter each.
            if len(self._queue) == 1 or len(self._queue) >= self._batch:
                self._changed.notify_all()
            return True

    def pending(self) -> int:
        """Items queued or being written."""
        with self._changed:
            return self._put - self._done

    def drain(self, timeout: float) -> bool:
        """Wait until everything put before this call is written (what is put meanwhile is not
        waited for); False if `timeout` seconds passed first."""
        with self._changed:
            target = self._put
            self._draining += 1
            self._changed.notify_all()
            try:
                return self._changed.wait_for(lambda: self._done >= target, timeout)
            finally:
                self._draining -= 1

    def close(self, timeout: float) -> list[Item]:
        """Write what is queued (within `timeout` seconds), end the thread once the batch in hand
        is written (within the rest of `timeout`); the items it did not reach, in order."""
        deadline = time.monotonic() + timeout
        self.drain(timeout)
        with self._changed:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._done += len(left)
            self._changed.notify_all()
        if threading.current_thread() is not self._thread:
            # A moment at least: a batch taken but not started yet goes before what close returns.
            self._thread.join(max(1.0, deadline - time.monotonic()))
        return left

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                until = self._last_write + self._linger
                while len(self._queue) < self._batch and not self._closed and not self._draining:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._batch))]
                self._last_write = time.monotonic()
            try:
                if batch:  # close() may have taken the queue while the thread lingered
                    self._write(batch)
            except Exception as exc:  # the thread must outlive any one batch
                with contextlib.suppress(Exception):
                    log(f"writing {len(batch)} event(s) failed: {reason(exc)}", error=True)
            finally:
                with self._changed:
                    self._done += len(batch)
                    self._changed.notify_all()
