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

New package files are only read by a new fail2ban-server: the role restarts fail2ban when the
package or this file changes (a `reload` keeps the loaded code).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from types import ModuleType
from typing import Any

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


_MODULES = ("checks", "events", "report", "runner", "settings")


class BannedDbAction(ActionBase):  # type: ignore[misc]
    """The jail's banned_db: start, ban, unban, flush and stop write rows; reload keeps them.

    fail2ban's `reload` (also what `systemctl reload fail2ban` runs) keeps an action that has
    `reload()` and `clearAllParams()`: without them it would build a second instance, count it
    obsolete, unban every address through it (deleting this host's rows while the bans stay)
    and drop the action, so that the jail recorded nothing afterwards.
    """

    def __init__(self, jail: Any, name: str, **options: str) -> None:
        super().__init__(jail, name)
        # The jail's thread and the command thread (banip/unbanip) may both call in.
        self._lock = threading.Lock()
        self._runner: Any = None
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
        settings = host["settings"].load_settings(config, hostname)
        runner = host["runner"].Runner(settings, retry_after_failure=float(retry), in_process=True)
        with self._lock:
            old, self._runner = self._runner, runner
            self._host, self._jail_name, self._port, self._protocol = host, jail_name, ports, protocols
        if old is not None:
            old.close()

    def clearAllParams(self) -> None:
        """fail2ban's reload begins: nothing to clear, every option comes back through reload()."""

    def reload(self, **options: str) -> None:
        """fail2ban's reload ends: the jail's options as they are now (the settings file is read again).

        New ports or protocol are recorded as a start records them (`sync` makes rows with them)."""
        before = (self._port, self._protocol)
        self._configure(**options)
        if (self._port, self._protocol) != before:
            self.start()

    def _record(self, make: Any) -> None:
        """Record the event make() builds (from the options of the moment, under the lock)."""
        with self._lock:
            try:
                self._runner.record(make())
            except self._host["report"].HelperError as exc:
                # Not even spooled: say so loudly; fail2ban's own ban stands regardless.
                self._logSys.error("[%s] banned_db: %s", self._jail.name, exc)

    def _hostname(self) -> str:
        return str(self._runner.settings.hostname)

    def start(self) -> None:
        events = self._host["events"]
        self._record(lambda: events.Start(self._jail_name, self._hostname(), self._port, self._protocol))

    def flush(self) -> bool:
        """Every ban of the jail is lifted at once (the jail stops, `unban --all`): one statement
        instead of one unban per address. True tells fail2ban not to unban them one by one."""
        events = self._host["events"]
        self._record(lambda: events.Flush(self._jail_name, self._hostname()))
        return True

    def stop(self) -> None:
        events = self._host["events"]
        self._record(lambda: events.Stop(self._jail_name, self._hostname()))
        with self._lock:
            self._runner.close()

    def ban(self, aInfo: Any) -> None:
        checks = self._host["checks"]
        try:
            event = self._host["events"].ban_event(
                self._runner.settings,
                checks.check_ip(str(aInfo["ip"])),
                self._port,
                self._protocol,
                self._jail_name,
                checks.check_failures(str(aInfo["ipjailfailures"])),
                checks.encode_loglines([str(aInfo["ipjailmatches"])]),
                checks.check_time(str(aInfo["time"])),
            )
        except checks.InvalidValue as exc:
            self._logSys.error("[%s] banned_db: %s", self._jail.name, exc)
            return
        self._record(lambda: event)

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
        self._record(lambda: events.Unban((ip,), self._hostname(), self._jail_name, reason))


Action = BannedDbAction
