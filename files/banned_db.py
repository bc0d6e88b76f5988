"""fail2ban Python action `banned_db`: the SQL record of bans, inside fail2ban-server.

The command action (action.d/banned_db.conf) starts a helper process per ban: fine for a
trickle, slow for a burst of hundreds. This action runs in fail2ban-server itself and keeps
one database connection per jail. It does not carry SQL of its own: it loads the installed
helper (/usr/local/bin/fail2ban_banned_db) as a module and uses its statements, checks,
spool and replay, so both paths write exactly the same rows.

Use it in a jail instead of the command action (the jail's name is taken from the jail):

    action = %(known/action)s
             banned_db.py[port="80,443,25", protocol=tcp]

Options: port, protocol (as the command action); helper (path of the helper); config
(settings file, as the helper's --config); hostname (as the helper's --hostname);
retry (seconds to spool directly after the database failed before trying it again, 30).

A new helper file is only read by a new fail2ban-server: the role restarts fail2ban when the
helper or this file changes (a `reload` keeps the loaded code).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import threading
from types import ModuleType
from typing import Any

from fail2ban.server.action import ActionBase  # type: ignore[import-not-found]

DEFAULT_HELPER = "/usr/local/bin/fail2ban_banned_db"
_MODULES: dict[str, ModuleType] = {}
_MODULES_LOCK = threading.Lock()


def _log(message: str, *, error: bool = False) -> None:
    logging.getLogger("fail2ban.banned_db").log(logging.ERROR if error else logging.INFO, "%s", message)


def load_helper(path: str) -> ModuleType:
    """The helper file as a module, loaded once per fail2ban-server process."""
    with _MODULES_LOCK:
        if path not in _MODULES:
            name = f"f2bsql_helper_{len(_MODULES)}"
            loader = importlib.machinery.SourceFileLoader(name, path)
            spec = importlib.util.spec_from_loader(name, loader)
            if spec is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            loader.exec_module(module)
            module.log = _log  # faults go to fail2ban's log, not a stderr nobody reads
            _MODULES[path] = module
        return _MODULES[path]


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
        helper: str = DEFAULT_HELPER,
        config: str | None = None,
        hostname: str | None = None,
        retry: str = "30",
    ) -> None:
        module = load_helper(helper)
        jail_name = module.check_jail(self._jail.name)
        ports = module.check_ports(port)
        protocols = module.check_protocol(protocol)
        settings = module.load_settings(config, hostname)
        runner = module.Runner(settings, retry_after_failure=float(retry), in_process=True)
        with self._lock:
            old, self._runner = self._runner, runner
            self._helper, self._jail_name, self._port, self._protocol = module, jail_name, ports, protocols
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

    def _event(self, op: str, **fields: Any) -> dict[str, Any]:
        return {"op": op, "jail": self._jail_name, "hostname": self._runner.settings.hostname, **fields}

    def _record(self, make: Any) -> None:
        with self._lock:
            try:
                self._runner.record(make())
            except self._helper.HelperError as exc:
                # Not even spooled: say so loudly; fail2ban's own ban stands regardless.
                self._logSys.error("[%s] banned_db: %s", self._jail.name, exc)

    def start(self) -> None:
        self._record(lambda: self._event("start", ports=self._port, protocol=self._protocol))

    def flush(self) -> bool:
        """Every ban of the jail is lifted at once (the jail stops, `unban --all`): one statement
        instead of one unban per address. True tells fail2ban not to unban them one by one."""
        self._record(lambda: self._event("flush"))
        return True

    def stop(self) -> None:
        self._record(lambda: self._event("stop"))
        with self._lock:
            self._runner.close()

    def ban(self, aInfo: Any) -> None:
        helper = self._helper
        try:
            event = helper.ban_event(
                self._runner.settings,
                helper.check_ip(str(aInfo["ip"])),
                self._port,
                self._protocol,
                self._jail_name,
                helper.check_failures(str(aInfo["ipjailfailures"])),
                helper.encode_loglines([str(aInfo["ipjailmatches"])]),
                helper.check_time(str(aInfo["time"])),
            )
        except helper.UsageError as exc:
            self._logSys.error("[%s] banned_db: %s", self._jail.name, exc)
            return
        self._record(lambda: event)

    def reban(self, aInfo: Any) -> None:
        self.ban(aInfo)

    def unban(self, aInfo: Any) -> None:
        try:
            ip = self._helper.check_ip(str(aInfo["ip"]))
        except self._helper.UsageError as exc:
            self._logSys.error("[%s] banned_db: %s", self._jail.name, exc)
            return
        self._record(lambda: self._event("unban", ips=[ip]))


Action = BannedDbAction
