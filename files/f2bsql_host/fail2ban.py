"""fail2ban itself, as the helper asks it: its live bans and its own record of them.

Through `fail2ban-client` on the socket the settings name (fail2ban_socket, else the default),
and fail2ban's own SQLite database (read only) for when a ban began and what caused it.
"""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import time
from typing import NamedTuple

from .report import Fail2banUnreachable, HelperError, log
from .settings import Settings


def fail2ban_client(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin", "/bin"])
    client = shutil.which("fail2ban-client", path=search)
    if client is None:
        raise HelperError("fail2ban-client not found")
    command = [client]
    if settings.fail2ban_socket:
        command += ["-s", settings.fail2ban_socket]
    try:
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise HelperError(f"fail2ban-client {args[0]} did not answer within 120 s") from None


def client_failed(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stderr or result.stdout).split())


def fail2ban_live(settings: Settings) -> dict[str, set[str]]:
    """Every jail fail2ban runs, with the addresses it holds banned: one `fail2ban-client banned`."""
    result = fail2ban_client(settings, "banned")
    if result.returncode != 0:
        raise Fail2banUnreachable(f"fail2ban is not reachable (fail2ban-client banned: {client_failed(result)})")
    # It prints a Python literal: [{'dovecot': ['192.0.2.1', ...]}, {'postfix': []}]
    try:
        listing = ast.literal_eval(result.stdout.strip() or "[]")
        live: dict[str, set[str]] = {}
        for entry in listing:
            for jail, addresses in entry.items():
                live[str(jail)] = {str(address) for address in addresses}
    except (ValueError, SyntaxError, TypeError, AttributeError):
        raise HelperError(
            f"fail2ban-client banned printed what this helper cannot read: {result.stdout[:200]!r}"
        ) from None
    return live


_BAN_TIME_LINE = re.compile(r"^(\S+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \+")


class RecordedBan(NamedTuple):
    """What fail2ban knows of a ban: when it began, the failures that caused it, and when it ends."""

    time: float | None
    failures: int
    matches: str
    until: float | None = None  # None: for ever, or not known

    def current(self, now: float) -> bool:
        return self.until is None or self.until > now


def fail2ban_recorded_bans(settings: Settings, jail: str) -> dict[str, RecordedBan]:
    """fail2ban's own record of the jail's bans, by address.

    Its database keeps, per address and jail, the ban's time rounded as the action's <time> is, its
    failure count and matched lines: a row made from it is the row the action would have written.
    Without a database (dbfile None or :memory:, or unreadable) the times come from `get <jail>
    banip --with-time`, which prints local time to the second, without failures.
    """
    recorded = fail2ban_database_bans(settings, jail)
    if recorded is not None:
        return recorded
    result = fail2ban_client(settings, "get", jail, "banip", "--with-time")
    if result.returncode != 0:
        log(f"fail2ban-client get {jail} banip --with-time failed: {client_failed(result)}", error=True)
        return {}
    bans: dict[str, RecordedBan] = {}
    for line in result.stdout.splitlines():
        match = _BAN_TIME_LINE.match(line.strip())
        if match:
            with contextlib.suppress(ValueError, OverflowError):
                # fail2ban prints its local time; the helper reads it in its own: the host's zone.
                epoch = time.mktime(time.strptime(match.group(2), "%Y-%m-%d %H:%M:%S"))
                bans[match.group(1)] = RecordedBan(epoch, 0, "")
    return bans


_DBFILES: dict[str, str] = {}


def _fail2ban_dbfile(settings: Settings) -> str:
    """fail2ban's database file ('' when it keeps none): one `get dbfile` per process."""
    if settings.fail2ban_socket not in _DBFILES:
        result = fail2ban_client(settings, "get", "dbfile")
        # "Current database file is:\n`- /var/lib/fail2ban/fail2ban.sqlite3"
        lines = result.stdout.strip().splitlines()
        path = lines[-1].lstrip("`- ").strip() if result.returncode == 0 and lines else ""
        _DBFILES[settings.fail2ban_socket] = path if path.startswith("/") and os.path.isfile(path) else ""
    return _DBFILES[settings.fail2ban_socket]


def fail2ban_database_bans(settings: Settings, jail: str) -> dict[str, RecordedBan] | None:
    """The jail's bans in fail2ban's own database (what it restores at start); None without one."""
    path = _fail2ban_dbfile(settings)
    if not path:
        return None
    import sqlite3
    from urllib.parse import quote

    try:
        with contextlib.closing(sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=2)) as conn:
            found = conn.execute("SELECT ip, timeofban, bantime, data FROM bips WHERE jail = ?", (jail,)).fetchall()
    except sqlite3.Error as exc:
        log(f"cannot read fail2ban's database {path}: {exc}", error=True)
        return None
    bans: dict[str, RecordedBan] = {}
    for ip, timeofban, bantime, data in found:
        try:
            until = None if bantime is None or bantime < 0 else float(timeofban) + float(bantime)
        except (ValueError, TypeError):
            until = None
        try:
            details = json.loads(data) if data else {}
            # A match is a line, or the (prefix, time, rest) parts fail2ban joins into one.
            lines = ["".join(part) if isinstance(part, list) else str(part) for part in details.get("matches") or []]
            bans[str(ip)] = RecordedBan(float(timeofban), int(details.get("failures") or 0), "\n".join(lines), until)
        except (ValueError, TypeError, AttributeError):
            bans[str(ip)] = RecordedBan(None, 0, "", until)
    return bans


def fail2ban_ignored(settings: Settings, jail: str) -> tuple[list[ipaddress.IPv4Network | ipaddress.IPv6Network], bool]:
    """The networks the jail's ignoreip names (a host name as it resolves now), and this host's own
    addresses while its ignoreself is on: `banip` bans even those, so the caller leaves them out.
    The flag is False when a name did not resolve (the list then misses its addresses)."""
    result = fail2ban_client(settings, "get", jail, "ignoreip")
    if result.returncode != 0:
        raise HelperError(f"fail2ban-client get {jail} ignoreip failed: {client_failed(result)}")
    # "These IP addresses/networks are ignored:\n|- 127.0.0.0/8\n`- ::1"
    names = [line.strip().lstrip("|`-").strip() for line in result.stdout.splitlines()[1:]]
    self_result = fail2ban_client(settings, "get", jail, "ignoreself")
    if self_result.returncode == 0 and self_result.stdout.strip() == "True":
        names.append(socket.gethostname())
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    complete = True
    for name in filter(None, names):
        try:
            networks.append(ipaddress.ip_network(name, strict=False))
        except ValueError:
            try:
                found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            except (OSError, UnicodeError):
                log(f"ignoreip of jail {jail}: cannot resolve {name!r}", error=True)
                complete = False
                continue
            networks += [ipaddress.ip_network(str(info[4][0]).split("%")[0]) for info in found]
    return networks, complete
