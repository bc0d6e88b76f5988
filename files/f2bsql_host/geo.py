"""The country of a banned address, from whichever country data the host has (docs/helper.md).

Three optional backends: an MMDB file (read by .mmdb, no package needed), libloc
(python3-location), and the geoiplookup commands; none is required, and a lookup never stops a
ban being recorded.
"""

from __future__ import annotations

import _thread  # threading's Lock is this module's lock; threading itself costs a `ban` a millisecond
import ipaddress
import os
import time

from .checks import global_address
from .report import log, reason
from .settings import Settings

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

MMDB_PATHS = (
    "/var/lib/f2bsql/dbip-country-lite.mmdb",  # the role's monthly refresh, where the distro has no data
    "/usr/share/GeoIP/GeoLite2-Country.mmdb",  # geoipupdate on Debian, Ubuntu, RHEL
    "/var/lib/GeoIP/GeoLite2-Country.mmdb",
    "/usr/share/GeoIP/dbip-country-lite.mmdb",
    "/var/lib/GeoIP/dbip-country-lite.mmdb",
    "/var/db/dbip/dbip-country-lite.mmdb",  # OpenBSD's dbip-country-lite package
    "/var/db/GeoIP/dbip-country-lite.mmdb",  # FreeBSD
    "/usr/local/share/GeoIP/GeoLite2-Country.mmdb",
)
LIBLOC_DATABASES = (
    "/var/lib/location/database.db",  # what `location update` keeps current (Debian links it to the next)
    "/usr/share/libloc-location/location.db",  # the libloc-database package's file
)
COUNTRY_DATA_CHECK = 60.0  # seconds between looks for new or replaced country data


class CountryLookup:
    """The country of an address as iRedMail stored it: "AU, Australia", or '' when unknown.

    Backends are tried in the configured order; each is optional (module or data missing:
    skipped), and a failing one is logged once and dropped until the data files change, never
    failing a ban. Inside fail2ban-server the lookup lives for months: data files that appear or
    are replaced (the monthly refresh) are picked up within COUNTRY_DATA_CHECK seconds.
    """

    def __init__(self, order: Sequence[str], mmdb: str = "") -> None:
        self.configured = list(order)
        self.order = list(order)  # less a backend that failed, until its data changes
        self.mmdb = mmdb
        self._handles: dict[str, tuple[Any, str] | None] = {}
        self._checked = time.monotonic()
        self._seen = self._data_files()
        # Inside fail2ban-server the jails' threads and the command thread (banip) look up at once;
        # the open readers, the order and the data check are shared between them.
        self._lock = _thread.allocate_lock()

    def _data_files(self) -> tuple[tuple[str, int, int], ...]:
        found = []
        for path in [*([self.mmdb] if self.mmdb else MMDB_PATHS), *LIBLOC_DATABASES]:
            try:
                status = os.stat(path)
            except OSError:
                continue
            found.append((path, status.st_ino, status.st_mtime_ns))
        return tuple(found)

    def _reopen_if_data_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked < COUNTRY_DATA_CHECK:
            return
        self._checked = now
        files = self._data_files()
        if files != self._seen:
            self._seen = files
            self._handles.clear()
            self.order = list(self.configured)  # a replaced file may be a good one again

    def __call__(self, ip: str) -> str:
        return self.lookup(ip)[0]

    def lookup(self, ip: str) -> tuple[str, str]:
        """The country and the data that answered ("libloc /usr/share/...", '' when none did)."""
        try:
            address = global_address(ip)
        except ValueError:
            return "", ""
        if address is None:
            return "", ""
        with self._lock:
            return self._lookup(address)

    def _lookup(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, str]:
        self._reopen_if_data_changed()
        for name in list(self.order):
            try:
                opened = self._open(name)
                if opened is None:
                    continue
                found = getattr(self, f"_ask_{name}")(opened[0], address)
            except Exception as exc:  # a lookup must never fail the ban
                log(f"country lookup with {name} failed, unused until the data changes: {reason(exc)}", error=True)
                self.order.remove(name)
                continue
            if found:
                return str(found)[:255], f"{name} {opened[1]}"
        return "", ""

    def _open(self, name: str) -> tuple[Any, str] | None:
        """The open backend and the file (or command) it reads, None where the host has neither."""
        if name not in self._handles:
            opened: tuple[Any, str] | None = getattr(self, f"_open_{name}")()
            self._handles[name] = opened
        return self._handles[name]

    def _open_mmdb(self) -> tuple[Any, str] | None:
        paths = [self.mmdb] if self.mmdb else list(MMDB_PATHS)
        path = next((path for path in paths if os.path.isfile(path)), None)
        if path is None:
            return None
        from .mmdb import Reader

        return Reader(path), path

    @staticmethod
    def _ask_mmdb(reader: Any, address: Any) -> str:
        record = reader.get(str(address)) or {}
        country = record.get("country") or record.get("registered_country") or {}
        code = country.get("iso_code") or ""
        name = (country.get("names") or {}).get("en") or ""
        return f"{code}, {name}" if code and name else code

    @staticmethod
    def _open_libloc() -> tuple[Any, str] | None:
        path = next((path for path in LIBLOC_DATABASES if os.path.isfile(path)), None)
        if path is None:
            return None
        try:  # the C module alone: the package around it sets up logging, a third of a `ban` process
            import _location as location  # type: ignore[import-not-found]
        except ImportError:
            try:
                import location  # type: ignore[import-not-found]
            except ImportError:
                return None
        return location.Database(path), os.path.realpath(path)

    @staticmethod
    def _ask_libloc(database: Any, address: Any) -> str:
        network = database.lookup(str(address))
        code = getattr(network, "country_code", None) or ""
        if not code:
            return ""
        country = database.get_country(code)
        name = getattr(country, "name", "") or ""
        return f"{code}, {name}" if name else code

    @staticmethod
    def _open_geoiplookup() -> tuple[Any, str] | None:
        search = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
        commands = {4: _which("geoiplookup", search), 6: _which("geoiplookup6", search)}
        found = [command for command in commands.values() if command]
        return (commands, " ".join(found)) if found else None

    @staticmethod
    def _ask_geoiplookup(commands: dict[int, str | None], address: Any) -> str:
        import re
        import subprocess

        command = commands.get(address.version)
        if not command:
            return ""
        result = subprocess.run([command, str(address)], capture_output=True, text=True, timeout=5, check=False)
        for line in result.stdout.splitlines():
            # "GeoIP Country Edition: AU, Australia", "GeoIP Country V6 Edition: ..."
            label, _, value = line.partition(": ")
            if label.startswith("GeoIP Country") and label.endswith("Edition"):
                value = value.strip()
                if "not found" in value.lower() or not re.fullmatch(r"[A-Z0-9]{2}, .+", value):
                    return ""
                return value
        return ""


def _which(name: str, directories: Sequence[str]) -> str | None:
    """shutil.which, without the cost of importing shutil in a `ban` process."""
    for directory in directories:
        path = os.path.join(directory, name)
        if directory and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def lookup_for(settings: Settings) -> CountryLookup:
    """The lookup of these settings, shared by every caller in the process (one open file each)."""
    key = (tuple(settings.geoip), settings.mmdb)
    with _COUNTRY_LOOKUPS_LOCK:
        if key not in _COUNTRY_LOOKUPS:
            _COUNTRY_LOOKUPS[key] = CountryLookup(*key)
        return _COUNTRY_LOOKUPS[key]


_COUNTRY_LOOKUPS: dict[tuple[tuple[str, ...], str], CountryLookup] = {}
_COUNTRY_LOOKUPS_LOCK = _thread.allocate_lock()


def country_of(ip: str, settings: Settings) -> str:
    """The country for a row; '' whatever goes wrong (a lookup never stops a ban being recorded)."""
    try:
        return lookup_for(settings)(ip)
    except Exception as exc:  # a broken data file, a reader that raises on this address, ...
        log(f"country lookup of {ip} failed: {reason(exc)}", error=True)
        return ""
