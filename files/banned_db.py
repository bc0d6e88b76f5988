"""fail2ban Python action `banned_db`: the SQL record of bans, inside fail2ban-server.

The command action (action.d/banned_db.conf) starts a helper process per ban: fine for a
trickle, slow for a burst of hundreds. This action runs in fail2ban-server itself and keeps
one database connection per jail. It carries no SQL of its own: it imports the package the
helper runs on (f2bsql_host, in /usr/local/lib/f2bsql) and uses its statements, checks, spool
and replay, so both paths write exactly the same rows.

Use it in a jail instead of the command action (the jail's name is taken from the jail):

    action = %(known/action)s
             banned_db.py[port="80,443,25", protocol=tcp]

Options: port, protocol (as the command action); config (settings file, as the helper's
--config); hostname (as the helper's --hostname); retry (seconds to spool directly after the
database failed before trying it again, 30); lib (the directory that holds f2bsql_host).

The jail's thread only queues an event; the jail's writer thread (f2bsql_host.writer) writes
them, a burst's bans in batches. flush, reload and stop wait until the queue is written.

New package files are only read by a new fail2ban-server: the role restarts fail2ban when the
package or this file changes (a `reload` keeps the loaded code).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from types import ModuleType
from typing import Any, Callable

from fail2ban.server.action import ActionBase  # type: ignore[import-not-found]

DEFAULT_LIB = "/usr/local/lib/f2bsql"
_LOAD_LOCK = threading.Lock()


def _log(message: str, error: bool) -> None:
    logging.getLogger("fail2ban.banned_db").log(logging.ERROR if error else logging.INFO, "%s", message)


def load_host_package(lib: str) -> dict[str, ModuleType]:
    """The modules of f2bsql_host this action uses, imported once per fail2ban-server process."""
    with _LOAD_LOCK:
        if lib not in sys.path:
            sys.path.insert(0, lib)
        modules = {name: importlib.import_module(f"f2bsql_host.{name}") for name in _MODULES}
        modules["report"].set_sink(_log)  # faults go to fail2ban's log, not a stderr nobody reads
        return modules


_MODULES = ("checks", "events", "report", "runner", "settings", "writer")


class BannedDbAction(ActionBase):  # type: ignore[misc]
    """The jail's banned_db: start, ban, unban, flush and stop write rows; reload keeps them.

    fail2ban's `reload` (also what `systemctl reload fail2ban` runs) keeps an action that has
    `reload()` and `clearAllParams()`: without them it would build a second instance, count it
    obsolete, unban every address through it (deleting this host's rows while the bans stay)
    and drop the action, so that the jail recorded nothing afterwards.

    Every call queues its event (a maker of it) on the jail's writer and returns; the writer's
    thread makes the events (what a ban looks up, its country and fail2ban's record of the
    address, is looked up there, off the jail's thread) and records them through the runner, in
    the order they came.
    """

    def __init__(self, jail: Any, name: str, **options: str) -> None:
        super().__init__(jail, name)
        # The writer's thread uses the runner; reload replaces it (after the queue is written).
        self._lock = threading.Lock()
        self._runner: Any = None
        # The jail's thread and the command thread (banip, unbanip, flush) put; stop ends the writer.
        self._writer_lock = threading.Lock()
        self._writer: Any = None
        self._stopped = False
        self._configure(**options)

    def _configure(
        self,
        port: str = "0:65535",
        protocol: str = "tcp",
        lib: str = DEFAULT_LIB,
        helper: str = "",  # earlier versions loaded the helper file; a jail that still says so works
        config: str | None = None,
        hostname: str | None = None,
        retry: str = "30",
    ) -> None:
        host = load_host_package(lib)
        checks = host["checks"]
        jail_name = checks.check_jail(self._jail.name)
        ports = checks.check_ports(port)
        protocols = checks.check_protocol(protocol)
        if config == host["settings"].STDIN:
            # fail2ban-server's standard input is no settings file (the helper's --config - is).
            raise host["report"].ConfigError("config = - names no file: give the settings file's path")
        settings = host["settings"].load_settings(config, hostname)
        runner = host["runner"].Runner(settings, retry_after_failure=float(retry), in_process=True)
        with self._lock:
            old, self._runner = self._runner, runner
            self._host, self._jail_name, self._port, self._protocol = host, jail_name, ports, protocols
        if old is not None:
            old.close()

    def _wait(self) -> float:
        """How long flush, reload and stop wait for the queue: a replay and a few statements."""
        settings = self._runner.settings
        return float(self._runner.replay_budget + 4 * settings.timeout)

    def _put(self, make: Callable[[], Any], *, starts: bool = False, stops: bool = False) -> Any:
        """Queue the maker of an event; the writer starts with the first (and with a start after a
        stop). `stops`: the last event, the writer is handed back (to close) and later events,
        until a start, are not recorded: the jail has stopped."""
        with self._writer_lock:
            if self._stopped and not starts:
                self._logSys.error("[%s] banned_db: an event after the jail's stop, not recorded", self._jail.name)
                return None
            self._stopped = stops
            if self._writer is None:
                self._writer = self._host["writer"].Writer(self._write, name=f"f2b/banned_db/{self._jail_name}")
            if not self._writer.put(make):
                self._logSys.error("[%s] banned_db: the writer is closed; event not recorded", self._jail.name)
            writer = self._writer
            if stops:
                self._writer = None
            return writer

    def _write(self, makers: list[Callable[[], Any]]) -> None:
        """The writer's thread: make the events and record them, in order. One event's fault
        costs that event only, as fail2ban's own guard around each action call did."""
        with self._lock:
            events = self._made(makers)
            try:
                self._runner.record_all(events)
            except Exception as exc:  # record_all logs and goes on; this is the last guard
                self._logSys.error("[%s] banned_db: %d event(s) not recorded: %s", self._jail.name, len(events), exc)

    def _drain(self) -> None:
        with self._writer_lock:
            writer = self._writer
        if writer is not None and not writer.drain(self._wait()):
            self._logSys.error("[%s] banned_db: events still queued after %g s", self._jail.name, self._wait())

    def clearAllParams(self) -> None:
        """fail2ban's reload begins: nothing to clear, every option comes back through reload()."""

    def reload(self, **options: str) -> None:
        """fail2ban's reload ends: the queue is written, then the jail's options are taken as they
        are now (the settings file is read again).

        New ports or protocol are recorded as a start records them (`sync` makes rows with them)."""
        self._drain()
        before = (self._port, self._protocol)
        self._configure(**options)
        if (self._port, self._protocol) != before:
            self.start()
            self._drain()

    def _hostname(self) -> str:
        return str(self._runner.settings.hostname)

    def start(self) -> None:
        events = self._host["events"]
        start = events.Start(self._jail_name, self._hostname(), self._port, self._protocol)
        self._put(lambda: start, starts=True)

    def flush(self) -> bool:
        """Every ban of the jail is lifted at once (the jail stops, `unban --all`): one statement
        instead of one unban per address. True tells fail2ban not to unban them one by one."""
        flush = self._host["events"].Flush(self._jail_name, self._hostname())
        self._put(lambda: flush)
        self._drain()
        return True

    def stop(self) -> None:
        """The jail stops: its rows go; the queue is written first, and the writer ends."""
        stop = self._host["events"].Stop(self._jail_name, self._hostname())
        writer = self._put(lambda: stop, stops=True)
        if writer is None:
            return
        left = writer.close(self._wait())
        with self._lock:  # after the batch the writer had in hand, if it is still writing it
            try:
                if left:
                    self._logSys.error(
                        "[%s] banned_db: %d event(s) still queued at stop: spooled", self._jail.name, len(left)
                    )
                    self._runner.spool_all(self._made(left), "the jail stopped before they were written")
            finally:
                self._runner.close()

    def _made(self, makers: list[Callable[[], Any]]) -> list[Any]:
        events = []
        for make in makers:
            try:
                events.append(make())
            except Exception as exc:
                self._logSys.error("[%s] banned_db: event not recorded: %s", self._jail.name, exc)
        return events

    def ban(self, aInfo: Any) -> None:
        # The jail's thread only takes the values and queues them; the checks run in the writer's.
        # fail2ban forks the server for each firewall call, so every page of it this thread then
        # writes to (Python's reference counts) costs a fault: the less it runs, the less it pays.
        # The failures and log lines are the ticket's own. Not the merged <ipjailfailures> /
        # <ipjailmatches>: fail2ban reads those from its own database, a query under its database
        # lock per ban (past bans of the address are in banned_history).
        values = (aInfo["ip"], aInfo["time"], aInfo["failures"], aInfo["matches"])
        self._put(lambda: self._ban_event(*values))

    def _ban_event(self, ip: Any, began: Any, failures: Any, matches: Any) -> Any:
        """In the writer's thread: the event of a ban (the country is a lookup in a data file)."""
        checks = self._host["checks"]
        return self._host["events"].ban_event(
            self._runner.settings, checks.check_ip(str(ip)), self._port, self._protocol, self._jail_name,
            checks.check_failures(str(failures)), checks.encode_loglines([str(matches)]),
            checks.check_time(str(began)),
        )  # fmt: skip

    def reban(self, aInfo: Any) -> None:
        self.ban(aInfo)

    def unban(self, aInfo: Any) -> None:
        checks = self._host["checks"]
        try:
            ip = checks.check_ip(str(aInfo["ip"]))
        except checks.InvalidValue as exc:
            self._logSys.error("[%s] banned_db: %s", self._jail.name, exc)
            return
        events = self._host["events"]
        try:
            reason = events.unban_reason(float(aInfo["time"]), float(aInfo["bantime"]))
        except (KeyError, TypeError, ValueError):  # a time it cannot read only costs the history its "expired"
            reason = events.unban_reason(None, None)
        unban = events.Unban((ip,), self._hostname(), self._jail_name, reason)
        self._put(lambda: unban)


Action = BannedDbAction
