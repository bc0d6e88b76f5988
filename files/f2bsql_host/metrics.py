"""Figures for Prometheus: node_exporter's textfile format, written by the cron run, printed by f2bsql.

The cron run (unban_db) writes them atomically to `<metrics_dir>/f2bsql.prom` (Debian's
textfile directory /var/lib/prometheus/node-exporter by default; nothing is written where the
directory does not exist) and `f2bsql metrics` prints the same. docs/admin.md lists them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from typing import Optional

from .db import Database
from .record import Record
from .report import HelperError, log
from .settings import Settings
from .spool import Spool

TEXTFILE = "f2bsql.prom"
LAST_RUN = "unban_db.last"  # in the spool directory: the last unban_db run, for these figures


class LastRun(Record):
    """What the last unban_db run did."""

    end: float  # Unix time
    duration: float
    success: bool
    lifted: int

    @classmethod
    def read(cls, spool_dir: str) -> Optional[LastRun]:
        try:
            with open(os.path.join(spool_dir, LAST_RUN), encoding="utf-8") as handle:
                data = json.load(handle)
            return cls(float(data["end"]), float(data["duration"]), bool(data["success"]), int(data["lifted"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, spool_dir: str) -> None:
        _replace(spool_dir, LAST_RUN, json.dumps(self.as_dict()), 0o600)


def _replace(directory: str, name: str, text: str, mode: int) -> None:
    """The file appears whole or not at all (written aside, then renamed over the old one).

    The directory may belong to node_exporter's user: a name nobody can guess, created anew
    (never through a link planted there), and its mode set on the open file.
    """
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
        os.rename(temporary, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Whole numbers as such, others to the microsecond (a Unix time keeps every digit)."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}".rstrip("0")


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: Sequence[tuple[dict[str, str], float]]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            inside = ",".join(f'{key}="{_label(text)}"' for key, text in labels.items())
            self.lines.append(f"{name}{{{inside}}} {_number(value)}" if inside else f"{name} {_number(value)}")


def collect(settings: Settings, db: Optional[Database], now: Optional[float] = None) -> str:
    """The figures of this host, as node_exporter's textfile collector reads them."""
    now = time.time() if now is None else now
    host = {"host": settings.hostname}
    out = _Text()
    rows = None
    if db is not None:
        try:
            rows = db.host_rows(settings.hostname)
        except HelperError as exc:
            log(f"metrics: cannot read this host's rows: {exc}", error=True)
    out.metric("f2bsql_database_up", "gauge", "Whether the database answered when these figures were taken.",
               [(host, 1 if rows is not None else 0)])  # fmt: skip
    if rows is not None:
        per_jail: dict[str, int] = {}
        for _row_id, jail, _ip, _remove in rows:
            per_jail[jail] = per_jail.get(jail, 0) + 1
        out.metric("f2bsql_bans", "gauge", "Bans of this host in table banned, per jail.",
                   [({**host, "jail": jail}, count) for jail, count in sorted(per_jail.items())])  # fmt: skip
        out.metric("f2bsql_pending_removals", "gauge",
                   "Bans of this host a panel marked for removal (remove = 1) that unban_db has not lifted yet.",
                   [(host, sum(1 for row in rows if row[3]))])  # fmt: skip
    spool = Spool(settings.spool_dir)
    waiting = spool.pending()
    out.metric("f2bsql_spool_events", "gauge", "Events waiting in the spool for the database.", [(host, len(waiting))])
    out.metric("f2bsql_spool_rejected_events", "gauge",
               "Events the database refused, set aside in the spool's rejected/ for an admin to look at.",
               [(host, len(spool.rejected_names()))])  # fmt: skip
    oldest = spool.oldest(waiting)
    out.metric("f2bsql_spool_oldest_event_age_seconds", "gauge",
               "Age of the oldest event waiting in the spool (0 when none waits).",
               [(host, max(0.0, now - oldest) if oldest is not None else 0)])  # fmt: skip
    last = LastRun.read(settings.spool_dir)
    if last is not None:
        out.metric(
            "f2bsql_unban_db_last_run_timestamp_seconds",
            "gauge",
            "When the last unban_db run (root's cron, every minute) ended, in Unix time.",
            [(host, last.end)],
        )
        out.metric(
            "f2bsql_unban_db_last_run_duration_seconds",
            "gauge",
            "How long the last unban_db run took.",
            [(host, last.duration)],
        )
        out.metric(
            "f2bsql_unban_db_last_run_success",
            "gauge",
            "Whether the last unban_db run succeeded (1) or failed (0).",
            [(host, 1 if last.success else 0)],
        )
        out.metric("f2bsql_unban_db_last_run_lifted_bans", "gauge",
                   "Bans the last unban_db run lifted because a panel marked them.", [(host, last.lifted)])  # fmt: skip
    return "\n".join(out.lines) + "\n"


def write_textfile(directory: str, text: str) -> bool:
    """Replace <directory>/f2bsql.prom; False (and nothing written) when there is no such directory."""
    if not directory or not os.path.isdir(directory):
        return False
    try:
        _replace(directory, TEXTFILE, text, 0o644)
    except OSError as exc:
        log(f"cannot write the metrics to {directory}: {exc}", error=True)
        return False
    return True
