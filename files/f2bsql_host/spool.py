"""The spool: events the database could not take yet, kept on local disk until it can.

One file per event, named in arrival order, in the spool directory (settings key spool_dir,
/var/spool/f2bsql); events the database refused for good in its `rejected/` folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from .db import Database
from .events import apply, from_json, to_json
from .report import EventRejected, HelperError, log

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from collections.abc import Iterator

    from .events import Event


class Spool:
    """Events the database could not take yet: one file each, named in arrival order.

    A file appears whole (written aside, then renamed) and goes only after the database has
    taken its event, so a crash at any point loses nothing; replaying twice is harmless
    because every operation is idempotent. Events the database refuses for good go to
    `rejected/`, out of the way of the rest, where an admin can look at them.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.rejected = os.path.join(path, "rejected")

    def _ensure(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def pending(self) -> list[str]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            # Not a directory, no permission...: nothing to replay, but the event at hand can
            # still go to the database, or fail with a clear reason in put().
            log(f"cannot read the spool {self.path}: {exc}", error=True)
            return []
        return sorted(name for name in names if name.endswith(".json"))

    def rejected_names(self) -> list[str]:
        try:
            return sorted(name for name in os.listdir(self.rejected) if name.endswith(".json"))
        except OSError:
            return []

    @staticmethod
    def oldest(names: list[str]) -> float | None:
        """When the first of these events was spooled (Unix time; its name begins with it, in ns)."""
        for name in names:
            stamp = name.split("-", 1)[0]
            if stamp.isdigit():
                return int(stamp) / 1e9
        return None

    def put(self, event: Event, *, rejected: bool = False) -> str:
        folder = self.rejected if rejected else self.path
        try:
            self._ensure()
            os.makedirs(folder, mode=0o700, exist_ok=True)
            name = f"{time.time_ns():020d}-{os.getpid():07d}-{os.urandom(4).hex()}.json"
            temporary = os.path.join(folder, f".{name}.tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                import json  # only where the spool is used: most events never touch it

                json.dump(to_json(event), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, os.path.join(folder, name))
        except OSError as exc:
            raise HelperError(f"cannot spool the event in {folder}: {exc}") from None
        return name

    @contextlib.contextmanager
    def lock(self, wait: float) -> Iterator[bool]:
        """Hold the replay lock; yields False if another process kept it longer than `wait`."""
        try:
            self._ensure()
            handle = open(os.path.join(self.path, ".replay.lock"), "a")  # noqa: SIM115
        except OSError as exc:  # a read-only or full file system: say so, in one line
            raise HelperError(f"cannot lock the spool {self.path}: {exc}") from None
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
            yield True
        finally:
            handle.close()

    def replay(self, db: Database, deadline: float) -> tuple[int, bool]:
        """Apply spooled events in order until none is left or `deadline` (time.monotonic()) passes.

        Returns (events applied, whether the spool is empty). Raises DatabaseUnavailable at the
        first event that finds the database away: that one and all after it stay, in order.
        Events spooled meanwhile (by callers that found this lock taken) are taken in a further pass.
        """
        done = 0
        tried: set[str] = set()
        while True:
            names = [name for name in self.pending() if name not in tried]
            if not names:
                return done, not self.pending()
            for name in names:
                if time.monotonic() >= deadline:
                    return done, False
                tried.add(name)
                path = os.path.join(self.path, name)
                try:
                    with open(path, encoding="utf-8") as handle:
                        import json

                        event = from_json(json.load(handle))
                    apply(db, event)
                except FileNotFoundError:
                    continue  # another replay took it
                except (OSError, ValueError, KeyError, TypeError, AttributeError, EventRejected) as exc:
                    self._set_aside(name, exc)
                    continue
                os.unlink(path)
                done += 1

    def _set_aside(self, name: str, reason: BaseException) -> None:
        try:
            os.makedirs(self.rejected, mode=0o700, exist_ok=True)
            os.rename(os.path.join(self.path, name), os.path.join(self.rejected, name))
        except OSError as exc:
            log(f"spooled event {name} cannot be applied ({reason}) nor moved aside: {exc}", error=True)
            return
        log(f"spooled event {name} set aside in {self.rejected}: {reason}", error=True)
