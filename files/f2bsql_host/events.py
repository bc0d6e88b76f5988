"""What the helper records: one event per fail2ban call, applied to the database or spooled.

Events are typed here and become JSON only in the spool, in the form earlier versions wrote
(an event spooled before an upgrade still replays after it):

    {"op": "ban", "row": {"ip": ..., "ports": ..., ..., "timestamp": "2026-12-01 10:00:00"}}
    {"op": "unban", "ips": [...], "jail": null, "hostname": ..., "reason": "unbanned" | "expired"}
    {"op": "start", "jail": ..., "hostname": ..., "ports": ..., "protocol": ...}
    {"op": "flush" | "stop", "jail": ..., "hostname": ...}
"""

from __future__ import annotations

import time

from .cdatetime import datetime
from .db import EXPIRED, UNBANNED, BanFields
from .record import Record
from .settings import Settings

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from typing import Any, Optional, Union

    from .db import Database


class BanRow(BanFields):
    """A row of `banned` as the helper inserts it (id, remove and rdns_checked are the server's)."""

    timestamp: str  # naive UTC, "YYYY-MM-DD HH:MM:SS"


class Ban(Record):
    row: BanRow


class Unban(Record):
    ips: tuple[str, ...]
    hostname: str
    jail: Optional[str] = None  # None: the addresses' rows of every jail
    reason: str = UNBANNED  # or EXPIRED: what banned_history records (unban_reason)


class Start(Record):
    jail: str
    hostname: str
    ports: str = ""  # '' keeps what the jail's row already has
    protocol: str = ""


class Flush(Record):
    """fail2ban lifted every ban of the jail at once."""

    jail: str
    hostname: str


class Stop(Record):
    """The jail stopped: its rows and its `jails` row go."""

    jail: str
    hostname: str


if TYPE_CHECKING:
    Event = Union[Ban, Unban, Start, Flush, Stop]
_OPS: dict[str, type[Any]] = {"ban": Ban, "unban": Unban, "start": Start, "flush": Flush, "stop": Stop}
_NAMES = {kind: op for op, kind in _OPS.items()}


def utc_timestamp(epoch: float | None = None) -> str:
    """Naive UTC, second precision: what iRedAdmin-Pro expects in `timestamp`."""
    # fail2ban's database keeps a ban's time as int(round(t)), and a restored ban hands that back:
    # round a given time the same way, or a restored row would be a second later half the time.
    moment = datetime.datetime.fromtimestamp(time.time() if epoch is None else round(epoch), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def ban_event(settings: Settings, ip: str, ports: str, protocol: str, jail: str,
              failures: int, loglines: str, epoch: float | None = None) -> Ban:  # fmt: skip
    """A ban of this host, with the address's country; the arguments are checked already."""
    return Ban(BanRow(
        ip=ip, ports=ports, protocol=protocol, jail=jail, hostname=settings.hostname,
        country=_country_of(ip, settings), rdns="", failures=failures, loglines=loglines,
        timestamp=utc_timestamp(epoch),
    ))  # fmt: skip


def _country_of(ip: str, settings: Settings) -> str:
    if not settings.geoip:  # lookups off: not even the lookup's code is loaded
        return ""
    from .geo import country_of  # only when a ban needs a country: a `ban` process pays for it once

    return country_of(ip, settings)


def unban_reason(began: float | None, bantime: float | None, now: float | None = None) -> str:
    """EXPIRED when the ban's time ran out (fail2ban's <time> + <bantime>), else UNBANNED.

    fail2ban unbans an expired ban and one lifted by hand through the same action call; only the
    times tell them apart. A permanent ban (bantime < 0) never expires.
    """
    if began is None or bantime is None or bantime < 0:
        return UNBANNED
    # The expiry check runs about once a second: an unban within a second of the end is the expiry.
    return EXPIRED if began + bantime <= (time.time() if now is None else now) + 1 else UNBANNED


def to_json(event: Event) -> dict[str, Any]:
    data: dict[str, Any] = {"row": event.row.as_dict()} if isinstance(event, Ban) else event.as_dict()
    if isinstance(event, Unban):
        data["ips"] = list(event.ips)
    return {"op": _NAMES[type(event)], **data}


def _text(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} is not text: {value!r}")
    return value


def from_json(data: Any) -> Event:
    """The event a spool file holds; ValueError for anything else (the file is set aside)."""
    if not isinstance(data, dict) or data.get("op") not in _OPS:
        raise ValueError(f"not a spooled event: {str(data)[:100]!r}")
    op = data["op"]
    if op == "ban":
        row = data.get("row")
        if not isinstance(row, dict) or not isinstance(row.get("failures"), int):
            raise ValueError(f"not a spooled ban: {str(row)[:100]!r}")
        fields = {
            name: _text(row, name, "" if name in ("country", "rdns") else None)
            for name in ("ip", "ports", "protocol", "jail", "hostname", "country", "rdns", "loglines", "timestamp")
        }
        return Ban(BanRow(failures=row["failures"], **fields))
    hostname = _text(data, "hostname")
    if op == "unban":
        ips = data.get("ips")
        jail = data.get("jail")
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise ValueError(f"not a list of addresses: {ips!r}")
        if jail is not None and not isinstance(jail, str):
            raise ValueError(f"jail is not text: {jail!r}")
        reason = _text(data, "reason", UNBANNED)
        if reason not in (UNBANNED, EXPIRED):
            raise ValueError(f"not a reason an unban has: {reason!r}")
        return Unban(tuple(ips), hostname, jail, reason)
    jail = _text(data, "jail")
    if op == "start":
        return Start(jail, hostname, _text(data, "ports", ""), _text(data, "protocol", ""))
    return Flush(jail, hostname) if op == "flush" else Stop(jail, hostname)


def apply(db: Database, event: Event) -> None:
    if isinstance(event, Ban):
        db.ban(event.row)
    elif isinstance(event, Unban):
        db.unban(event.ips, event.hostname, event.jail, event.reason)
    elif isinstance(event, Start):
        db.start(event.jail, event.hostname, event.ports, event.protocol)
    elif isinstance(event, Flush):
        db.flush(event.jail, event.hostname)
    else:
        db.stop(event.jail, event.hostname)
