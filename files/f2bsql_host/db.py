"""The database: one copy of every statement, for MySQL/MariaDB and PostgreSQL, and one connection.

Connections are made by the host code's own clients (mysqlwire, pgwire), or where those
cannot by the driver (PyMySQL or psycopg2), imported only then. Every failure becomes
DatabaseUnavailable (try again later: the event is spooled) or EventRejected (the server
refused the event itself: it is set aside).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import sys
import time

from .cdatetime import datetime
from .record import Record
from .report import DatabaseUnavailable, EventRejected, HelperError, log, reason
from .settings import Settings

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any

    from .events import BanRow

MYSQL_SOCKETS = (
    "/run/mysqld/mysqld.sock",  # Debian, Ubuntu
    "/var/lib/mysql/mysql.sock",  # RHEL family
    "/var/run/mysql/mysql.sock",  # OpenBSD
    "/tmp/mysql.sock",  # noqa: S108 -- FreeBSD puts the server socket there
)
BATCH = 500  # rows per DELETE ... IN (...) and addresses per fail2ban-client call
APPLICATION = "fail2ban_banned_db"  # PostgreSQL's application_name: who holds a connection

# Bans per jail, host or country that began since a time, current and ended, and the addresses
# banned most often (f2bsql stats); q is the backend's identifier quote. UNION, not UNION ALL: a ban
# fail2ban restored after a restart has the same start as the history row its stop left. A ban that
# began since then ended since then too (both times are the same host's clock, and the same naive
# UTC): `ended_at`, indexed, narrows the history to the window.
_BEGAN = (
    "(SELECT {q}ip{q}, {q}jail{q}, {q}hostname{q}, {q}country{q}, {q}failures{q}, {q}timestamp{q} AS {q}began{q}"
    " FROM {q}banned{q} WHERE {q}timestamp{q} >= %s"
    " UNION SELECT {q}ip{q}, {q}jail{q}, {q}hostname{q}, {q}country{q}, {q}failures{q}, {q}banned_at{q}"
    " FROM {q}banned_history{q} WHERE {q}banned_at{q} >= %s AND {q}ended_at{q} >= %s) AS {q}began_since{q}"
)
_COUNT_BY = (
    "SELECT {column}, COUNT(*), COUNT(DISTINCT {q}ip{q}) FROM {began}"
    " GROUP BY {column} ORDER BY COUNT(*) DESC, {column}"
)
_TOP = (
    "SELECT {q}ip{q}, COUNT(*), SUM({q}failures{q}), COUNT(DISTINCT {q}hostname{q}), MAX({q}began{q})"
    " FROM {began} GROUP BY {q}ip{q} ORDER BY COUNT(*) DESC, SUM({q}failures{q}) DESC, {q}ip{q} LIMIT %s"
)


# The values of one row of `ban`: ip, ports, protocol, jail, hostname, country, rdns, failures,
# loglines, timestamp (remove is 0).
_BAN_ROW = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0)"


def _stats(q: str) -> dict[str, str]:
    """The statements of f2bsql stats, for a backend whose identifiers are quoted with q."""
    began = _BEGAN.format(q=q)
    return {
        **{f"count_by_{name}": _COUNT_BY.format(column=f"{q}{name}{q}", began=began, q=q)
           for name in ("jail", "hostname", "country")},
        "top_addresses": _TOP.format(began=began, q=q),
    }  # fmt: skip


# The one copy of every statement. Identifiers are constants; values are always parameters.
SQL: dict[str, dict[str, str]] = {
    "mysql": {
        # {rows}: one _BAN_ROW per ban; a burst's bans go in one statement.
        "ban": (
            "INSERT INTO `banned` (`ip`, `ports`, `protocol`, `jail`, `hostname`, `country`,"
            " `rdns`, `failures`, `loglines`, `timestamp`, `remove`)"
            " VALUES {rows} ON DUPLICATE KEY UPDATE `id` = `id`"
        ),
        # A start without ports (an older event, or iRedMail's action line) keeps the known ones.
        "start": (
            "INSERT INTO `jails` (`name`, `hostname`, `enabled`, `ports`, `protocol`) VALUES (%s, %s, 1, %s, %s)"
            " ON DUPLICATE KEY UPDATE `enabled` = 1,"
            " `ports` = COALESCE(NULLIF(VALUES(`ports`), ''), `ports`),"
            " `protocol` = COALESCE(NULLIF(VALUES(`protocol`), ''), `protocol`)"
        ),
        # A row a panel marked remove = 1 goes only through unban_db, once fail2ban has lifted the ban
        # (or no longer runs the jail). Stopping fail2ban unbans every address and deletes the rows;
        # a pending removal deleted with them would be lost when fail2ban restores the ban at start.
        # Rows leave `banned` only through history_move, with one of these conditions ({cond}).
        "stop_banned": "`jail` = %s AND `hostname` = %s AND `remove` = 0",
        "stop_jail": "DELETE FROM `jails` WHERE `name` = %s AND `hostname` = %s",
        "host_rows": "SELECT `id`, `jail`, `ip`, `remove` FROM `banned` WHERE `hostname` = %s",
        "host_jails": "SELECT `name`, `ports`, `protocol` FROM `jails` WHERE `hostname` = %s",
        "unban": "`hostname` = %s AND `remove` = 0 AND `ip` IN ({marks})",
        "unban_jail": "`hostname` = %s AND `jail` = %s AND `remove` = 0 AND `ip` IN ({marks})",
        "pending": ("SELECT `id`, `jail`, `ip` FROM `banned` WHERE `hostname` = %s AND `remove` = 1 ORDER BY `id`"),
        "delete_ids": "`id` IN ({marks})",
        # MySQL has no DELETE ... RETURNING to feed an INSERT: the rows are locked, copied, deleted
        # in one transaction.
        "history_lock": "SELECT `id` FROM `banned` WHERE {cond} FOR UPDATE",
        "history_copy": (
            "INSERT INTO `banned_history` (`ip`, `ports`, `protocol`, `jail`, `hostname`, `country`, `rdns`,"
            " `failures`, `loglines`, `banned_at`, `ended_at`, `reason`)"
            " SELECT `ip`, `ports`, `protocol`, `jail`, `hostname`, `country`, `rdns`, `failures`, `loglines`,"
            " `timestamp`, %s, %s FROM `banned` WHERE `id` IN ({marks})"
        ),
        "history_delete": "DELETE FROM `banned` WHERE `id` IN ({marks})",
        # Without banned_history (a database whose schema is older than this helper).
        "delete_where": "DELETE FROM `banned` WHERE {cond}",
        "history_prune": "DELETE FROM `banned_history` WHERE `hostname` = %s AND `ended_at` < %s LIMIT %s",
        "history": (
            "SELECT `ip`, `ports`, `protocol`, `jail`, `hostname`, `country`, `rdns`, `failures`, `loglines`,"
            " `banned_at`, `ended_at`, `reason` FROM `banned_history` WHERE `ip` = %s"
            " ORDER BY `ended_at` DESC, `id` DESC LIMIT %s"
        ),
        "rdns_todo": (
            "SELECT `id`, `ip` FROM `banned` WHERE `hostname` = %s AND `rdns_checked` = 0 ORDER BY `id` LIMIT %s"
        ),
        "rdns_set": "UPDATE `banned` SET `rdns` = %s, `rdns_checked` = 1 WHERE `id` = %s",
        # The admin CLI (f2bsql). {where} is made of FILTERS only.
        "bans": (
            "SELECT `ip`, `ports`, `protocol`, `jail`, `hostname`, `country`, `rdns`, `failures`, `loglines`,"
            " `id`, `timestamp`, `remove` FROM `banned`{where} ORDER BY `timestamp` DESC, `id` DESC"
        ),
        "jail_known": (
            "(SELECT `name` FROM `jails` WHERE `name` = %s LIMIT 10)"
            " UNION (SELECT `jail` FROM `banned` WHERE `jail` = %s LIMIT 10)"
        ),
        "jail_names": "SELECT `name` FROM `jails` UNION SELECT `jail` FROM `banned`",
        "mark_remove": "UPDATE `banned` SET `remove` = 1 WHERE `id` IN ({marks}) AND `remove` = 0",
        # Shared bans: the addresses the other hosts hold banned (not through the fleet jail, not
        # marked for removal, since a time), newest first; {cond} narrows the jails (fleet_from).
        "fleet_bans": (
            "SELECT `ip` FROM `banned` WHERE `hostname` <> %s AND `jail` <> %s AND `remove` = 0"
            " AND `timestamp` >= %s{cond}"
            " GROUP BY `ip` ORDER BY MAX(`timestamp`) DESC"
        ),
        "fleet_from": " AND `jail` IN ({marks})",
        **_stats("`"),
    },
    "pgsql": {
        "ban": (
            "INSERT INTO banned (ip, ports, protocol, jail, hostname, country,"
            " rdns, failures, loglines, timestamp, remove)"
            " VALUES {rows} ON CONFLICT (ip, ports, protocol, jail, hostname) DO NOTHING"
        ),
        "start": (
            "INSERT INTO jails (name, hostname, enabled, ports, protocol) VALUES (%s, %s, 1, %s, %s)"
            " ON CONFLICT (name, hostname) DO UPDATE SET enabled = 1,"
            " ports = COALESCE(NULLIF(EXCLUDED.ports, ''), jails.ports),"
            " protocol = COALESCE(NULLIF(EXCLUDED.protocol, ''), jails.protocol)"
        ),
        "stop_banned": "jail = %s AND hostname = %s AND remove = 0",
        "stop_jail": "DELETE FROM jails WHERE name = %s AND hostname = %s",
        "host_rows": "SELECT id, jail, ip, remove FROM banned WHERE hostname = %s",
        "host_jails": "SELECT name, ports, protocol FROM jails WHERE hostname = %s",
        "unban": "hostname = %s AND remove = 0 AND ip IN ({marks})",
        "unban_jail": "hostname = %s AND jail = %s AND remove = 0 AND ip IN ({marks})",
        "pending": "SELECT id, jail, ip FROM banned WHERE hostname = %s AND remove = 1 ORDER BY id",
        "delete_ids": "id IN ({marks})",
        # One statement: what the DELETE returns is what goes into the history.
        "history_move": (
            "WITH gone AS (DELETE FROM banned WHERE {cond} RETURNING ip, ports, protocol, jail, hostname,"
            " country, rdns, failures, loglines, timestamp)"
            " INSERT INTO banned_history (ip, ports, protocol, jail, hostname, country, rdns, failures, loglines,"
            " banned_at, ended_at, reason)"
            " SELECT ip, ports, protocol, jail, hostname, country, rdns, failures, loglines, timestamp, %s, %s"
            " FROM gone"
        ),
        "delete_where": "DELETE FROM banned WHERE {cond}",
        "history_prune": (
            "DELETE FROM banned_history WHERE id IN"
            " (SELECT id FROM banned_history WHERE hostname = %s AND ended_at < %s LIMIT %s)"
        ),
        "history": (
            "SELECT ip, ports, protocol, jail, hostname, country, rdns, failures, loglines,"
            " banned_at, ended_at, reason FROM banned_history WHERE ip = %s"
            " ORDER BY ended_at DESC, id DESC LIMIT %s"
        ),
        "rdns_todo": "SELECT id, ip FROM banned WHERE hostname = %s AND rdns_checked = 0 ORDER BY id LIMIT %s",
        "rdns_set": "UPDATE banned SET rdns = %s, rdns_checked = 1 WHERE id = %s",
        "bans": (
            "SELECT ip, ports, protocol, jail, hostname, country, rdns, failures, loglines,"
            " id, timestamp, remove FROM banned{where} ORDER BY timestamp DESC, id DESC"
        ),
        "jail_known": (
            "(SELECT name FROM jails WHERE name = %s LIMIT 10) UNION (SELECT jail FROM banned WHERE jail = %s LIMIT 10)"
        ),
        "jail_names": "SELECT name FROM jails UNION SELECT jail FROM banned",
        "mark_remove": "UPDATE banned SET remove = 1 WHERE id IN ({marks}) AND remove = 0",
        "fleet_bans": (
            "SELECT ip FROM banned WHERE hostname <> %s AND jail <> %s AND remove = 0 AND timestamp >= %s{cond}"
            " GROUP BY ip ORDER BY MAX(timestamp) DESC"
        ),
        "fleet_from": " AND jail IN ({marks})",
        **_stats(""),
    },
}


# The conditions `bans` may be narrowed by, joined with AND into its {where}.
FILTERS: dict[str, dict[str, str]] = {
    "mysql": {"hostname": "`hostname` = %s", "jail": "`jail` = %s", "ip": "`ip` = %s", "since": "`timestamp` >= %s"},
    "pgsql": {"hostname": "hostname = %s", "jail": "jail = %s", "ip": "ip = %s", "since": "timestamp >= %s"},
}


class BanFields(Record):
    """What a row of `banned` says of a ban, as inserted, read back and kept in `banned_history`."""

    ip: str
    ports: str
    protocol: str
    jail: str
    hostname: str
    country: str
    rdns: str
    failures: int
    loglines: str  # base64, as iRedMail's helper stored it


def _fields(values: Sequence[Any]) -> dict[str, Any]:
    """The BanFields of a row read in their order (a panel's row may hold NULLs)."""
    ip, ports, protocol, jail, hostname, country, rdns, failures, loglines = values
    return {
        "ip": str(ip), "ports": str(ports or ""), "protocol": str(protocol or ""), "jail": str(jail),
        "hostname": str(hostname), "country": str(country or ""), "rdns": str(rdns or ""),
        "failures": int(failures or 0), "loglines": str(loglines or ""),
    }  # fmt: skip


class StoredBan(BanFields):
    """A row of `banned` as the admin CLI reads it."""

    id: int
    timestamp: datetime.datetime  # naive UTC
    remove: bool


# Why a ban left `banned` (banned_history.reason).
UNBANNED = "unbanned"  # fail2ban unbanned it before its time (fail2ban-client unbanip, a reload)
EXPIRED = "expired"  # its bantime ran out
REMOVED = "removed"  # a panel (or f2bsql unban) marked it and unban_db lifted it
STOPPED = "stopped"  # the jail stopped, or fail2ban lifted all its bans at once (unban --all)
SYNCED = "synced"  # sync found that fail2ban no longer held it (an unban event was lost)
GONE = "gone"  # the jail no longer runs on the host


class EndedBan(BanFields):
    """A row of `banned_history`."""

    banned_at: datetime.datetime  # naive UTC
    ended_at: datetime.datetime
    reason: str


def _marks(count: int) -> str:
    return ", ".join(["%s"] * count)


# A multi-row INSERT stays well under the smallest max_allowed_packet in use (MySQL 5.7: 4 MB):
# a ban's log lines may be 44 KB (32 KiB base64), the rest of a row is under 1.5 KB.
STATEMENT_BYTES = 1_000_000
_ROW_BYTES = 1536


def _ban_chunks(rows: Sequence[BanRow]) -> Iterator[Sequence[BanRow]]:
    """The rows in order, in chunks of at most BATCH rows and about STATEMENT_BYTES."""
    start, size = 0, 0
    for index, row in enumerate(rows):
        row_size = _ROW_BYTES + len(row.loglines)
        if index > start and (index - start >= BATCH or size + row_size > STATEMENT_BYTES):
            yield rows[start:index]
            start, size = index, 0
        size += row_size
    if start < len(rows):
        yield rows[start:]


def _naive_utc(text: str) -> datetime.datetime:
    """A row's "YYYY-MM-DD HH:MM:SS" (naive UTC), strictly: no offset, no date alone."""
    if len(text) != 19 or text[10] != " ":
        raise ValueError(f"not a naive UTC time: {text!r}")
    return datetime.datetime.fromisoformat(text)


def chunks(items: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Statement failures that say nothing about the event: the server is away, busy or read-only for a
# moment (1047: a Galera node not ready yet). Anything else the server answers to a statement
# (unknown column or table, missing privilege, constraint, bad value) refuses this event for good:
# it is set aside, not retried.
MYSQL_TRANSIENT = frozenset({
    1021, 1040, 1041, 1047, 1053, 1114, 1203, 1205, 1213, 1226, 1290, 1317, 1792, 1836, 1927, 1969, 3024, 4031,
})  # fmt: skip
# PostgreSQL SQLSTATE classes and codes of the same kind: connection, rollback (serialization,
# deadlock), resources, lock not available, operator intervention (timeouts), system, internal,
# read-only transaction (a standby).
PGSQL_TRANSIENT = ("08", "40", "53", "55P03", "57", "58", "XX", "25006")


def _missing_table(backend: str, exc: BaseException) -> bool:
    """The statement named a table the database does not have (1146; SQLSTATE 42P01)."""
    if backend == "mysql":
        return bool(exc.args) and exc.args[0] == 1146
    return getattr(exc, "pgcode", None) == "42P01"


def _transient(backend: str, exc: BaseException) -> bool:
    if backend == "mysql":
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        # 0: the driver's own (connection gone); 2000-2999: client errors (lost, cannot connect).
        return code == 0 or 2000 <= code < 3000 or code in MYSQL_TRANSIENT
    state = getattr(exc, "pgcode", None) or ""
    return not state or state.startswith(PGSQL_TRANSIENT)


class Database:
    """One autocommit connection; every failure becomes DatabaseUnavailable or EventRejected."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sql = SQL[settings.backend]
        self._conn: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._history = True  # banned_history exists (until a statement finds it missing)

    def connect(self) -> Database:
        s = self.settings
        try:
            if s.backend == "mysql":
                self._conn = self._connect_mysql()
            else:
                self._conn = self._connect_pgsql()
        except ImportError as exc:
            driver = "PyMySQL (python3-pymysql)" if s.backend == "mysql" else "psycopg2 (python3-psycopg2)"
            raise HelperError(f"{driver} is not importable by {sys.executable}: {exc}") from None
        except self._errors as exc:
            # Whatever goes wrong at login (a wrong password included) is the host's setup, not the
            # event's: the event waits in the spool until the setup is fixed.
            raise DatabaseUnavailable(f"cannot connect to the {s.backend} database: {reason(exc)}") from None
        return self

    def _connect_pgsql(self) -> Any:
        """Our own client (pgwire: it loads no libpq into fail2ban-server), or psycopg2 where the
        server, the login or libpq's environment needs what ours does not speak."""
        from . import pgwire

        s = self.settings
        where = s.host or s.socket
        parameters = {
            "application_name": APPLICATION,
            "options": f"-c lock_timeout={s.timeout * 1000} -c statement_timeout={s.timeout * 2000}",
        }
        self._errors = (pgwire.PgError,)
        try:
            return pgwire.connect(
                user=s.user, password=s.password, database=s.database, host=where, port=s.port or 5432,
                connect_timeout=s.timeout, read_timeout=s.timeout * 2, parameters=parameters,
            )  # fmt: skip
        except pgwire.Unsupported:
            pass
        import psycopg2  # type: ignore[import-untyped]

        self._errors = (psycopg2.Error,)
        kwargs: dict[str, Any] = {"dbname": s.database, "user": s.user, "connect_timeout": s.timeout, **parameters}
        if s.password is not None:
            kwargs["password"] = s.password
        if where:
            kwargs["host"] = where
        if s.port:
            kwargs["port"] = s.port
        # libpq waits for an answer for ever: a server that hangs with the connection open
        # (stopped, swapping, its disk stuck) would hold the caller, and fail2ban's jail with
        # the Python action, for good. Wait as the read timeout of our clients does, then give up.
        psycopg2.extensions.set_wait_callback(functools.partial(_pg_wait, s.timeout * 2))
        conn = psycopg2.connect(**kwargs)
        conn.autocommit = True
        return conn

    def _connect_mysql(self) -> Any:
        """Our own client (mysqlwire: imported in a few milliseconds), or PyMySQL where the server
        or the login needs what ours does not speak."""
        from . import mysqlwire

        s = self.settings
        # As the mysql client does: "localhost" or no host means the unix socket.
        unix_socket = s.socket or (mysql_socket() if s.host in ("", "localhost") else "")
        where: dict[str, Any] = {"unix_socket": unix_socket} if unix_socket else {
            "host": s.host or "127.0.0.1", "port": s.port or 3306}  # fmt: skip
        login: dict[str, Any] = {
            "user": s.user,
            "password": s.password or "",
            "database": s.database,
            "connect_timeout": s.timeout,
            "read_timeout": s.timeout * 2,
            # Give up on a row lock well before fail2ban's own action timeout.
            "init_command": f"SET SESSION innodb_lock_wait_timeout = {int(s.timeout)}",
            **where,
        }
        self._errors = (mysqlwire.MySQLError,)
        try:
            return mysqlwire.connect(**login)
        except mysqlwire.Unsupported:
            pass
        import pymysql  # type: ignore[import-untyped]

        self._errors = (pymysql.err.MySQLError,)
        return pymysql.connect(charset="utf8mb4", autocommit=True, write_timeout=s.timeout * 2, **login)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> Database:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(
        self,
        name: str,
        params: Sequence[Any],
        *,
        count: int = 0,
        fetch: bool = False,
        where: Sequence[str] = (),
        cond: str = "",
        rows: int = 1,
    ) -> Any:
        """Run statement `name`: {marks} holds `count` parameters, {where} the FILTERS named,
        {cond} the condition statement `cond` (with its own {marks}) and {rows} `rows` rows."""
        statement = self.sql[name]
        if "{" in statement:
            clauses = " AND ".join(FILTERS[self.settings.backend][key] for key in where)
            statement = statement.format(
                marks=_marks(count),
                where=f" WHERE {clauses}" if clauses else "",
                cond=self.sql[cond].format(marks=_marks(count)) if cond else "",
                rows=", ".join([_BAN_ROW] * rows),
            )
        with self._translated(name), self._conn.cursor() as cursor:
            cursor.execute(statement, tuple(params))
            return cursor.fetchall() if fetch else cursor.rowcount

    @contextlib.contextmanager
    def _translated(self, name: str) -> Iterator[None]:
        """The driver's errors as DatabaseUnavailable (try again later) or EventRejected (for good)."""
        try:
            yield
        except self._errors as exc:
            if _transient(self.settings.backend, exc):
                raise DatabaseUnavailable(f"{name} failed: {reason(exc)}") from None
            rejected = EventRejected(f"the database refused {name}: {reason(exc)}")
            rejected.missing_table = _missing_table(self.settings.backend, exc)
            raise rejected from None

    # The operations. Each is safe to repeat, which makes replaying the spool safe.

    def ban(self, row: BanRow) -> None:
        self.ban_rows([row])

    def ban_rows(self, rows: Sequence[BanRow]) -> None:
        """Insert these bans, BATCH to a statement (autocommit: one commit each) and at most
        STATEMENT_BYTES of log lines; a row that exists already (the same ban recorded before)
        is left as it is."""
        # Each statement takes its rows' keys in one order (sync inserts what the writer may be
        # inserting too): two of them in opposite orders could deadlock. The sort keeps the first
        # of two equal keys first, and the first one is the one inserted.
        ordered = sorted(rows, key=lambda row: (row.ip, row.ports, row.protocol, row.jail, row.hostname))
        for chunk in _ban_chunks(ordered):
            params: list[Any] = []
            for row in chunk:
                params += (
                    row.ip, row.ports, row.protocol, row.jail, row.hostname, row.country, row.rdns,
                    row.failures, row.loglines, _naive_utc(row.timestamp),
                )  # fmt: skip
            self.execute("ban", params, rows=len(chunk))

    def start(self, jail: str, hostname: str, ports: str = "", protocol: str = "") -> None:
        self.execute("start", (jail, hostname, ports, protocol))

    def flush(self, jail: str, hostname: str) -> int:
        """fail2ban lifted every ban of the jail at once (it stops, or `unban --all`)."""
        return self.end_bans("stop_banned", (jail, hostname), STOPPED)

    def stop(self, jail: str, hostname: str) -> int:
        removed = self.flush(jail, hostname)
        self.execute("stop_jail", (jail, hostname))
        return removed

    def host_rows(self, hostname: str) -> list[tuple[int, str, str, int]]:
        """(id, jail, ip, remove) of every row of this host."""
        rows = self.execute("host_rows", (hostname,), fetch=True)
        return [(int(i), str(j), str(a), int(r)) for i, j, a, r in rows]

    def host_jails(self, hostname: str) -> dict[str, tuple[str, str]]:
        """The jails that record on this host (their banned_db started): name -> (ports, protocol)."""
        return {str(n): (str(p or ""), str(r or "")) for n, p, r in self.execute("host_jails", (hostname,), fetch=True)}

    def unban(self, ips: Sequence[str], hostname: str, jail: str | None, reason: str = UNBANNED) -> int:
        removed = 0
        for chunk in chunks(ips):
            if jail:
                removed += self.end_bans("unban_jail", (hostname, jail, *chunk), reason, count=len(chunk))
            else:
                removed += self.end_bans("unban", (hostname, *chunk), reason, count=len(chunk))
        return removed

    def pending(self, hostname: str) -> list[tuple[int, str, str]]:
        return [(int(i), str(j), str(a)) for i, j, a in self.execute("pending", (hostname,), fetch=True)]

    def rdns_todo(self, hostname: str, limit: int) -> list[tuple[int, str]]:
        return [(int(i), str(a)) for i, a in self.execute("rdns_todo", (hostname, limit), fetch=True)]

    def rdns_set(self, row_id: int, name: str) -> None:
        self.execute("rdns_set", (name, row_id))

    def bans(self, **filters: Any) -> list[StoredBan]:
        """Rows of `banned`, newest first, narrowed by FILTERS (hostname, jail, ip, since) not None."""
        keys = [key for key in FILTERS[self.settings.backend] if filters.get(key) is not None]
        rows = self.execute("bans", [filters[key] for key in keys], fetch=True, where=keys)
        return [StoredBan(**_fields(row[:9]), id=int(row[9]), timestamp=row[10], remove=bool(row[11])) for row in rows]

    def jail_known(self, jail: str) -> bool:
        """Whether a host recorded with this jail, or a row holds it (by index; the names are
        compared here too: MySQL's collation would take DOVECOT for dovecot)."""
        return jail in {str(name) for (name,) in self.execute("jail_known", (jail, jail), fetch=True)}

    def fleet_bans(
        self, hostname: str, fleet_jail: str, since: datetime.datetime, jails: Sequence[str] = ()
    ) -> list[str]:
        """The addresses the fleet's other hosts ban (in `jails`, or any) since `since` (naive UTC),
        newest first: those the fleet jail of this host holds. Rows of a fleet jail are never
        counted (no echo), nor rows a panel marked for removal."""
        cond = "fleet_from" if jails else ""
        params = (hostname, fleet_jail, since, *jails)
        rows = self.execute("fleet_bans", params, fetch=True, count=len(jails), cond=cond)
        return [str(ip) for (ip,) in rows]

    def jail_names(self) -> set[str]:
        """Every jail a host recorded with, or that holds a row."""
        return {str(name) for (name,) in self.execute("jail_names", (), fetch=True)}

    def mark_remove(self, ids: Sequence[int]) -> int:
        """Set remove = 1 on these rows, as a web panel does: their hosts lift the bans."""
        marked = 0
        for chunk in chunks(ids):
            marked += int(self.execute("mark_remove", chunk, count=len(chunk)))
        return marked

    def count_by(self, column: str, since: datetime.datetime) -> list[tuple[str, int, int]]:
        """(value, bans, addresses) per jail, hostname or country of bans begun since, most bans first."""
        rows = self.execute(f"count_by_{column}", (since, since, since), fetch=True)
        return [(str(value or ""), int(bans), int(addresses)) for value, bans, addresses in rows]

    def top_addresses(self, since: datetime.datetime, limit: int) -> list[tuple[str, int, int, int, datetime.datetime]]:
        """(ip, bans, failures, hosts, latest ban) of the addresses banned most often."""
        rows = self.execute("top_addresses", (since, since, since, limit), fetch=True)
        return [(str(ip), int(n), int(f or 0), int(h), t) for ip, n, f, h, t in rows]

    def delete_ids(self, ids: Sequence[int], reason: str) -> int:
        removed = 0
        for chunk in chunks(ids):
            removed += self.end_bans("delete_ids", chunk, reason, count=len(chunk))
        return removed

    def end_bans(self, cond: str, params: Sequence[Any], reason: str, *, count: int = 0) -> int:
        """Move the rows that match condition `cond` from `banned` to `banned_history`; how many."""
        if not self._history:
            return int(self.execute("delete_where", params, count=count, cond=cond))
        ended = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)
        try:
            if self.settings.backend == "pgsql":
                return int(self.execute("history_move", (*params, ended, reason), count=count, cond=cond))
            return self._move_in_transaction(cond, params, reason, ended, count)
        except EventRejected as exc:
            if not exc.missing_table:
                raise
            # The schema of this version was not applied to the database yet (the database play
            # left out, or the database managed elsewhere): the ban must end all the same.
            self._history = False
            log(f"table banned_history is missing (apply files/sql, e.g. run playbooks/site.yml): rows are"
                f" deleted without history ({exc})", error=True)  # fmt: skip
            return int(self.execute("delete_where", params, count=count, cond=cond))

    def _move_in_transaction(
        self, cond: str, params: Sequence[Any], reason: str, ended: datetime.datetime, count: int
    ) -> int:
        """MySQL: lock the rows, copy them, delete them, in one transaction."""
        try:
            with self._translated("begin"):
                self._conn.begin()
            locked = self.execute("history_lock", params, count=count, fetch=True, cond=cond)
            ids = [int(row_id) for (row_id,) in locked]
            for chunk in chunks(ids):
                self.execute("history_copy", (ended, reason, *chunk), count=len(chunk))
                self.execute("history_delete", chunk, count=len(chunk))
            with self._translated("commit"):
                self._conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                self._conn.rollback()
            raise
        return len(ids)

    def prune_history(self, hostname: str, before: datetime.datetime, limit: int) -> int:
        """Forget this host's history rows of bans that ended before `before` (at most `limit`)."""
        return int(self.execute("history_prune", (hostname, before, limit)))

    def history(self, ip: str, limit: int) -> list[EndedBan]:
        rows = self.execute("history", (ip, limit), fetch=True)
        return [EndedBan(**_fields(row[:9]), banned_at=row[9], ended_at=row[10], reason=str(row[11])) for row in rows]


def _pg_wait(limit: float, conn: Any) -> None:
    """psycopg2's wait callback (connect and every statement), giving up after `limit` seconds."""
    import psycopg2
    import psycopg2.extensions  # type: ignore[import-untyped]

    deadline = time.monotonic() + limit
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN if state == psycopg2.extensions.POLL_READ else select.POLLOUT)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise psycopg2.OperationalError(f"no answer from the database within {limit:g} s")


def mysql_socket() -> str:
    """The local server's socket where the distros put it, or '' to use TCP."""
    for path in MYSQL_SOCKETS:
        if os.path.exists(path):
            return path
    return ""
