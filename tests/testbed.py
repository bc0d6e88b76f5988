"""The test bed: throwaway databases, helper hosts and fail2ban servers, all real.

conftest.py turns these into fixtures; tests import the types from here for their hints.
Nothing here is a mock: the helper under test is files/fail2ban_banned_db itself, run on the
distro's python3 exactly as fail2ban and cron run it, the schema is files/sql itself, and the
fail2ban action is rendered from templates/banned_db.conf.j2.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import jinja2
import psycopg2
import psycopg2.sql
import pymysql
import pymysql.constants.CLIENT
import pymysql.cursors
import yaml

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "files" / "fail2ban_banned_db"
#: The admin CLI under test.
ADMIN = REPO / "files" / "f2bsql"
#: The directory that holds the host package, as /usr/local/lib/f2bsql does on a host.
HOST_LIB = REPO / "files"
PYTHON_ACTION = REPO / "files" / "banned_db.py"
SQL_DIR = REPO / "files" / "sql"
ACTION_TEMPLATE = REPO / "templates" / "banned_db.conf.j2"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: The iRedMail host the Molecule scenarios and the end-to-end tests lay out on this machine.
MOLECULE_RESOURCES = REPO / "molecule" / "resources"
#: Its variables (molecule/resources/vars/main.yml).
FIXTURE_VARS: dict[str, Any] = yaml.safe_load((MOLECULE_RESOURCES / "vars" / "main.yml").read_text())
#: The lock that keeps one run at a time on that fixture (molecule/resources/tasks/lock.yml).
FIXTURE_LOCK = Path(FIXTURE_VARS["f2bsql_molecule_lock"])
# The helper runs on the distro's python3 with the distro's drivers, as on a real host.
SYSTEM_PYTHON = "/usr/bin/python3"
BACKENDS = ("mysql", "pgsql")
# The ports iRedMail's dovecot jail passes to its actions (the how-to's example).
DOVECOT_PORTS = "80,443,25,587,465,110,995,143,993,4190"
POSTFIX_PORTS = "25,587,465"
# A clean environment for everything the tests start: nothing of the developer's F2BSQL_* leaks in.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": os.environ.get("HOME", "/root"),
    # Far from UTC, so a local time written where naive UTC belongs shows up as hours off.
    "TZ": "Asia/Tokyo",
}


# Figures the tests measure (cases run, rows checked, timings), printed at the end of the run so
# that they can be quoted (README's "Guarantees"): conftest.py's pytest_terminal_summary.
FIGURES: list[str] = []


def record_figure(line: str) -> None:
    FIGURES.append(line)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy and return it; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def closed_port() -> int:
    """A local TCP port nobody listens on: connecting is refused at once."""
    return free_port()


def write_private(path: Path, text: str) -> None:
    """Write a file 0600 from the first byte, atomically (a running helper may be reading it)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


# --------------------------------------------------------------------------- databases


@dataclasses.dataclass
class Server:
    """Where a database server listens and how the test bed reaches it as an administrator."""

    backend: str
    host: str
    port: int
    admin_user: str
    admin_password: str
    # MariaDB: mysqld's socket; PostgreSQL: the directory holding the cluster's socket.
    unix_socket: str = ""
    # Reach the administrator through the socket (MariaDB's root by unix_socket auth).
    admin_via_socket: bool = False


class Database:
    """A throwaway database with its own user and random password, reached as that user."""

    backend = ""

    def __init__(self, server: Server, name: str, password: str) -> None:
        self.server = server
        self.name = name
        self.user = name
        self.password = password
        self._conn: Any = None

    # --- administration (as the server's administrator)

    def create(self) -> None:
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError

    def _connect(self) -> Any:
        raise NotImplementedError

    def apply_sql(self, text: str) -> None:
        """Run a whole SQL file as the database's own user (so that user owns what it creates)."""
        raise NotImplementedError

    def apply_schema(self) -> None:
        self.apply_sql((SQL_DIR / f"fail2ban.{self.backend}").read_text(encoding="utf-8"))

    # --- reading and writing as the database user, always parameterised

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, tuple(params))
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, tuple(params))
            return int(cursor.rowcount)

    def banned(self, **where: Any) -> list[dict[str, Any]]:
        """Rows of `banned` matching column = value for each keyword (column names are ours)."""
        clause = " AND ".join(f"{column} = %s" for column in where) or "1 = 1"
        return self.query(f"SELECT * FROM banned WHERE {clause} ORDER BY id", list(where.values()))  # noqa: S608

    def jails(self, **where: Any) -> list[dict[str, Any]]:
        clause = " AND ".join(f"{column} = %s" for column in where) or "1 = 1"
        return self.query(f"SELECT * FROM jails WHERE {clause} ORDER BY id", list(where.values()))  # noqa: S608

    def count(self, table: str = "banned") -> int:
        assert table in ("banned", "jails")
        return int(self.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])  # noqa: S608

    def insert_banned(self, **row: Any) -> None:
        """A row as a panel or an older helper would have left it."""
        columns = ", ".join(row)
        marks = ", ".join(["%s"] * len(row))
        self.execute(f"INSERT INTO banned ({columns}) VALUES ({marks})", list(row.values()))  # noqa: S608

    # --- a shared database as a fleet fills it

    def fill_fleet(self, hosts: int = 50, rows: int = 100_000, history: int = 1_000_000) -> None:
        """Other hosts' bans, as a central server of a fleet holds them: `rows` rows of `banned`
        (one in a hundred marked for removal, as a panel leaves them until the host's next cron
        run), `history` rows of `banned_history` (ended over the last 30 days) and seven jails
        each, spread over `hosts` hosts named fleet00.example.test ... Made by the server itself,
        then the tables are analysed, as a server that has run a while has them."""
        made = FLEET_SQL[self.backend]
        for name, count in (("jails", hosts * len(FLEET_JAILS)), ("banned", rows), ("history", history)):
            self.execute(made[name].format(**made["parts"]), (hosts, count))
        for statement in made["analyze"].split(";"):
            self.execute(statement)

    # --- the schema as the catalogs describe it

    def fingerprint(self) -> tuple[Any, ...]:
        """Everything that makes up the schema: columns, indexes, constraints, owners."""
        raise NotImplementedError

    def unique_keys(self, table: str) -> set[tuple[str, ...]]:
        """The column lists of the table's unique indexes, the primary key left out."""
        raise NotImplementedError

    def columns(self, table: str) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def owners(self) -> dict[str, str]:
        """Table name -> owning role (PostgreSQL); MySQL tables have no owner."""
        return {}

    # --- what the helper reads

    def client_section(self, port: int | None = None) -> dict[str, str]:
        return {
            "host": self.server.host,
            "port": str(port or self.server.port),
            "user": self.user,
            "password": self.password,
            "database": self.name,
        }


@contextlib.contextmanager
def table_locked(db: Database) -> Iterator[None]:
    """Another session holds `banned` locked, as a long report or a stuck migration would.

    MariaDB: LOCK TABLES ... WRITE (even reads wait); PostgreSQL: ACCESS EXCLUSIVE in an open
    transaction. Taken as the database's own user, on a connection of its own.
    """
    other = type(db)(db.server, db.name, db.password)
    conn = other.conn
    with conn.cursor() as cursor:
        if db.backend == "mysql":
            cursor.execute("LOCK TABLES banned WRITE")
        else:
            conn.autocommit = False
            cursor.execute("LOCK TABLE banned IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        with conn.cursor() as cursor:
            cursor.execute("UNLOCK TABLES" if db.backend == "mysql" else "COMMIT")
        other.close()


class LockedFor(NamedTuple):
    """A table_locked held by a thread of its own for a while (see locked_for)."""

    thread: threading.Thread
    released: list[float]  # time.monotonic() when the lock went, once it has


def locked_for(db: Database, seconds: float) -> LockedFor:
    """Lock `banned` (table_locked) now and release it `seconds` later from another thread: what
    writes to it meanwhile waits, so whatever queues up behind those writes stays queued."""
    held = threading.Event()
    released: list[float] = []

    def hold() -> None:
        with table_locked(db):
            held.set()
            time.sleep(seconds)
        released.append(time.monotonic())

    thread = threading.Thread(target=hold, name="f2bsql-test-lock", daemon=True)
    thread.start()
    assert held.wait(10), "could not lock the table"
    return LockedFor(thread, released)


# What Database.fill_fleet runs. jails, banned, history: INSERT ... SELECT over the numbers
# n = 0 .. count - 1 ({seq}), with the parameters (hosts, count); {jail}, {ip}, {host}: what n
# gives; analyze: the statements that refresh the planner's statistics. Constants only.
FLEET_JAILS = ("dovecot", "postfix", "sshd", "roundcube", "nginx-http-auth", "postfix-pregreet", "sogo")
_JAIL_LIST = ", ".join(f"'{jail}'" for jail in FLEET_JAILS)
_DIGITS = "(SELECT 0 AS d" + "".join(f" UNION ALL SELECT {d}" for d in range(1, 10)) + ")"
_NUMBER = "a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + 100000 * g.d"
_MYSQL_SEQ = (
    f"(SELECT {_NUMBER} AS n FROM {' CROSS JOIN '.join(f'{_DIGITS} AS {a}' for a in 'abcefg')}) AS seq WHERE n < %s"  # noqa: S608
)
_FLEET_INSERTS = {
    "jails": "INSERT INTO jails (name, hostname, enabled, ports, protocol)"
    " SELECT {jail}, {host_of_jail}, 1, '993', 'tcp' FROM {seq}",
    "banned": "INSERT INTO banned (ip, ports, protocol, jail, hostname, country, rdns, rdns_checked, failures,"
    " loglines, {q}timestamp{q}, {q}remove{q}) SELECT {ip}, '993', 'tcp', {jail}, {host}, 'DE, Germany', '', 1, 3,"
    " '', {now} - {seconds_86400}, {one_in_100} FROM {seq}",
    "history": "INSERT INTO banned_history (ip, ports, protocol, jail, hostname, country, rdns, failures,"
    " loglines, banned_at, ended_at, reason) SELECT {ip}, '993', 'tcp', {jail}, {host}, 'DE, Germany', '', 3, '',"
    " {now} - {seconds_30_days} - {one_hour}, {now} - {seconds_30_days}, 'expired' FROM {seq}",
}
FLEET_SQL: dict[str, dict[str, Any]] = {
    "mysql": {
        **_FLEET_INSERTS,
        "parts": {
            "seq": _MYSQL_SEQ,
            "jail": f"ELT(1 + n MOD 7, {_JAIL_LIST})",
            "ip": "CONCAT('10.', n DIV 65536 MOD 256, '.', n DIV 256 MOD 256, '.', n MOD 256)",
            "host": "CONCAT('fleet', LPAD(n MOD %s, 2, '0'), '.example.test')",
            "host_of_jail": "CONCAT('fleet', LPAD(n DIV 7 MOD %s, 2, '0'), '.example.test')",
            "now": "UTC_TIMESTAMP()",
            "seconds_86400": "INTERVAL (n MOD 86400) SECOND",
            "seconds_30_days": "INTERVAL (n MOD 2592000) SECOND",
            "one_hour": "INTERVAL 1 HOUR",
            "one_in_100": "IF(n MOD 100 = 99, 1, 0)",
            "q": "`",
        },
        "analyze": "ANALYZE TABLE banned, banned_history, jails",
    },
    "pgsql": {
        **_FLEET_INSERTS,
        "parts": {
            "seq": "generate_series(0, %s - 1) AS n",
            "jail": f"(ARRAY[{_JAIL_LIST}])[1 + mod(n, 7)]",
            "ip": "'10.' || mod(n / 65536, 256) || '.' || mod(n / 256, 256) || '.' || mod(n, 256)",
            "host": "'fleet' || lpad(mod(n, %s)::text, 2, '0') || '.example.test'",
            "host_of_jail": "'fleet' || lpad(mod(n / 7, %s)::text, 2, '0') || '.example.test'",
            "now": "date_trunc('second', now() AT TIME ZONE 'UTC')",
            "seconds_86400": "mod(n, 86400) * interval '1 second'",
            "seconds_30_days": "mod(n, 2592000) * interval '1 second'",
            "one_hour": "interval '1 hour'",
            "one_in_100": "CASE WHEN mod(n, 100) = 99 THEN 1 ELSE 0 END",
            "q": "",
        },
        "analyze": "ANALYZE banned; ANALYZE banned_history; ANALYZE jails",
    },
}


def mysql_admin(server: Server) -> Any:
    where: dict[str, Any] = (
        {"unix_socket": server.unix_socket} if server.admin_via_socket else {"host": server.host, "port": server.port}
    )
    return pymysql.connect(
        user=server.admin_user, password=server.admin_password, autocommit=True, connect_timeout=5, **where
    )


class MysqlDatabase(Database):
    backend = "mysql"

    def _admin(self) -> Any:
        return mysql_admin(self.server)

    def create(self) -> None:
        admin = self._admin()
        try:
            with admin.cursor() as cursor:
                # Names are generated by the test bed (f2bt_<hex>), never taken from input.
                cursor.execute(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
                for host in ("localhost", "127.0.0.1"):
                    cursor.execute("CREATE USER %s@%s IDENTIFIED BY %s", (self.user, host, self.password))
                    cursor.execute(f"GRANT ALL ON `{self.name}`.* TO %s@%s", (self.user, host))
        finally:
            admin.close()

    def drop(self) -> None:
        self.close()
        admin = self._admin()
        try:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
                for host in ("localhost", "127.0.0.1"):
                    cursor.execute("DROP USER IF EXISTS %s@%s", (self.user, host))
        finally:
            admin.close()

    def _connect(self, **extra: Any) -> Any:
        return pymysql.connect(
            host=self.server.host,
            port=self.server.port,
            user=self.user,
            password=self.password,
            database=self.name,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
            **extra,
        )

    def apply_sql(self, text: str) -> None:
        conn = self._connect(client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cursor:
                cursor.execute(text)
                # Every statement has a result; an error in a later one only surfaces here.
                while cursor.nextset():
                    pass
        finally:
            conn.close()

    def fingerprint(self) -> tuple[Any, ...]:
        columns = self.query(
            "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT,"
            " EXTRA, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION"
        )
        indexes = self.query(
            "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART"
            " FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()"
            " ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
        )
        tables = self.query(
            "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME"
        )
        return tuple(tuple(sorted(row.items())) for row in (*tables, *columns, *indexes))

    def unique_keys(self, table: str) -> set[tuple[str, ...]]:
        rows = self.query(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND NON_UNIQUE = 0"
            " AND INDEX_NAME <> 'PRIMARY' ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (table,),
        )
        keys: dict[str, list[str]] = {}
        for row in rows:
            keys.setdefault(row["INDEX_NAME"], []).append(row["COLUMN_NAME"])
        return {tuple(columns) for columns in keys.values()}

    def columns(self, table: str) -> dict[str, dict[str, Any]]:
        rows = self.query(
            "SELECT COLUMN_NAME AS name, DATA_TYPE AS type, CHARACTER_MAXIMUM_LENGTH AS length,"
            " IS_NULLABLE AS nullable, COLUMN_DEFAULT AS `default` FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (table,),
        )
        return {row["name"]: row for row in rows}


class PgsqlDatabase(Database):
    backend = "pgsql"

    def _admin(self) -> Any:
        conn = psycopg2.connect(
            host=self.server.host,
            port=self.server.port,
            user=self.server.admin_user,
            password=self.server.admin_password,
            dbname="postgres",
            connect_timeout=5,
        )
        conn.autocommit = True
        return conn

    def create(self) -> None:
        ident = psycopg2.sql.Identifier(self.name)
        admin = self._admin()
        try:
            with admin.cursor() as cursor:
                cursor.execute(
                    psycopg2.sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s NOSUPERUSER NOCREATEDB NOCREATEROLE").format(
                        ident
                    ),
                    (self.password,),
                )
                cursor.execute(
                    psycopg2.sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING 'UTF8'").format(
                        ident, ident
                    )
                )
        finally:
            admin.close()

    def drop(self) -> None:
        self.close()
        ident = psycopg2.sql.Identifier(self.name)
        admin = self._admin()
        try:
            with admin.cursor() as cursor:
                cursor.execute(psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
                cursor.execute(psycopg2.sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
        finally:
            admin.close()

    def _connect(self) -> Any:
        conn = psycopg2.connect(
            host=self.server.host,
            port=self.server.port,
            user=self.user,
            password=self.password,
            dbname=self.name,
            connect_timeout=5,
        )
        conn.autocommit = True
        return conn

    def apply_sql(self, text: str) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(text)
        finally:
            conn.close()

    def fingerprint(self) -> tuple[Any, ...]:
        columns = self.query(
            "SELECT table_name, column_name, ordinal_position, data_type, character_maximum_length,"
            " is_nullable, column_default FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
        indexes = self.query(
            "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema() ORDER BY tablename, indexname"
        )
        constraints = self.query(
            "SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def"
            " FROM pg_constraint WHERE connamespace = current_schema()::regnamespace"
            " ORDER BY 1, 2"
        )
        owners = self.query(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        )
        return tuple(tuple(sorted(row.items())) for row in (*owners, *columns, *indexes, *constraints))

    def unique_keys(self, table: str) -> set[tuple[str, ...]]:
        rows = self.query(
            "SELECT i.relname AS idx, a.attname AS col"
            "  FROM pg_index x"
            "  JOIN pg_class i ON i.oid = x.indexrelid"
            "  JOIN pg_class t ON t.oid = x.indrelid"
            "  CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)"
            "  JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
            " WHERE t.relname = %s AND t.relnamespace = current_schema()::regnamespace"
            "   AND x.indisunique AND NOT x.indisprimary"
            " ORDER BY i.relname, k.ord",
            (table,),
        )
        keys: dict[str, list[str]] = {}
        for row in rows:
            keys.setdefault(row["idx"], []).append(row["col"])
        return {tuple(columns) for columns in keys.values()}

    def columns(self, table: str) -> dict[str, dict[str, Any]]:
        rows = self.query(
            "SELECT column_name AS name, data_type AS type, character_maximum_length AS length,"
            " is_nullable AS nullable, column_default AS default"
            " FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
        return {row["name"]: row for row in rows}

    def owners(self) -> dict[str, str]:
        rows = self.query("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = current_schema()")
        return {row["tablename"]: row["tableowner"] for row in rows}


DATABASE_TYPES: dict[str, type[Database]] = {"mysql": MysqlDatabase, "pgsql": PgsqlDatabase}


def new_database(server: Server) -> Database:
    name = f"f2bt_{secrets.token_hex(6)}"
    return DATABASE_TYPES[server.backend](server, name, secrets.token_urlsafe(24))


# --------------------------------------------------------------------------- the helper


def host_module(name: str) -> ModuleType:
    """A module of the host package, files/f2bsql_host itself (importing one does nothing else)."""
    if str(HOST_LIB) not in sys.path:
        sys.path.insert(0, str(HOST_LIB))
    return importlib.import_module(f"f2bsql_host.{name}")


# The host code's own clients (files/f2bsql_host/mysqlwire.py, pgwire.py), per backend.
WIRE_CLIENTS = {"mysql": "mysqlwire", "pgsql": "pgwire"}


def wire_connect(db: Database, **extra: Any) -> Any:
    """A connection of the backend's own client to this database, as its login user."""
    login: dict[str, Any] = {
        "user": db.user, "password": db.password, "database": db.name,
        "host": db.server.host, "port": db.server.port, "connect_timeout": 5, "read_timeout": 10,
    }  # fmt: skip
    return host_module(WIRE_CLIENTS[db.backend]).connect(**{**login, **extra})


def wire_run(conn: Any, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement through such a connection's cursor: the rows it read."""
    with conn.cursor() as cursor:
        cursor.execute(statement, tuple(params))
        return list(cursor.fetchall())


@dataclasses.dataclass
class Run:
    """What one helper run did."""

    args: list[str | bytes]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"helper {self.args!r} exited {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


class Host:
    """One host as the helper sees it: its own config file, host name, spool and fail2ban socket."""

    def __init__(self, db: Database, name: str, home: Path, fail2ban_socket: Path, timeout: int = 3) -> None:
        self.db = db
        self.name = name
        self.home = home
        self.config = home / "f2bsql.ini"
        self.spool = home / "spool"
        self.fail2ban_socket = fail2ban_socket
        self.timeout = timeout
        self.write_config()

    def write_config(
        self,
        *,
        port: int | None = None,
        spool: Path | None = None,
        client: dict[str, str] | None = None,
        **f2bsql: str,
    ) -> None:
        """(Re)write the settings; `port` points the helper elsewhere, e.g. at a closed port."""
        client = {**self.db.client_section(port), **(client or {})}
        section = {
            "backend": self.db.backend,
            "hostname": self.name,
            "spool_dir": str(spool or self.spool),
            "fail2ban_socket": str(self.fail2ban_socket),
            "timeout": str(self.timeout),
            # Lookups would make rows depend on this machine's GeoIP data and DNS: off unless a
            # test asks for them.
            "geoip": "off",
            "rdns": "no",
            # Never the machine's node_exporter directory; absent unless a test makes it.
            "metrics_dir": str(self.home / "metrics"),
            **f2bsql,
        }
        lines = ["[client]", *(f"{key} = {value}" for key, value in client.items()), ""]
        lines += ["[f2bsql]", *(f"{key} = {value}" for key, value in section.items()), ""]
        write_private(self.config, "\n".join(lines))

    def run(self, *args: str | bytes, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
        """Run the helper under test with this host's config, as fail2ban and cron do."""
        return self._run(HELPER, args, env, timeout)

    def admin(self, *args: str | bytes, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
        """Run the admin CLI f2bsql under test with this host's config, as an admin on it does."""
        return self._run(ADMIN, args, env, timeout)

    def _run(self, program: Path, args: Sequence[str | bytes], env: dict[str, str] | None, timeout: float) -> Run:
        argv: list[str | bytes] = [SYSTEM_PYTHON, str(program), "--config", str(self.config), *args]
        done = subprocess.run(argv, env={**BASE_ENV, **(env or {})}, capture_output=True, timeout=timeout, check=False)
        return Run(
            list(args),
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"),
        )

    def ok(self, *args: str | bytes) -> Run:
        result = self.run(*args)
        assert result.returncode == 0, str(result)
        return result

    def ban(self, ip: str, jail: str = "dovecot", ports: str = DOVECOT_PORTS) -> Run:
        return self.ok("ban", ip, ports, "tcp", jail, "3", f"auth failure from {ip}")

    def rows(self) -> set[tuple[str, str]]:
        """(jail, address) of this host's rows in `banned`."""
        return {(row["jail"], row["ip"]) for row in self.db.banned(hostname=self.name)}

    def spooled(self) -> list[Path]:
        """Events waiting in the spool (not the rejected ones, not lock or half-written files)."""
        if not self.spool.is_dir():
            return []
        return sorted(path for path in self.spool.iterdir() if path.is_file() and path.suffix == ".json")

    def rejected(self) -> list[Path]:
        folder = self.spool / "rejected"
        return sorted(folder.iterdir()) if folder.is_dir() else []


# --------------------------------------------------------------------------- fail2ban


def _comment(text: str) -> str:
    """Ansible's `comment` filter, the part the templates use."""
    return "\n".join(f"# {line}" if line else "#" for line in text.splitlines())


def _templates() -> jinja2.Environment:
    """templates/ as the roles' template module reads it: strict, the filters they use."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ACTION_TEMPLATE.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 -- renders INI files, not HTML
    )
    env.filters["comment"] = _comment
    env.globals["ansible_managed"] = "Rendered by the f2bsql test bed"
    return env


def render_action(helper: Path = HELPER) -> str:
    """templates/banned_db.conf.j2 rendered as the role renders it, pointing at the helper under test."""
    return (
        _templates()
        .get_template(ACTION_TEMPLATE.name)
        .render(
            f2bsql_fail2ban_python=SYSTEM_PYTHON,
            f2bsql_fail2ban_helper_path=str(helper),
        )
    )


# A filter the tests feed through a plain log file: no date on the line, the ban is "now".
FILTER = """\
[Definition]
failregex = ^auth failure from <HOST>( |$)
datepattern = {NONE}
"""

# The two ways a jail records its bans: the command action (a helper process per event) or the
# Python action inside fail2ban-server (loads the helper under test as a module); "none" records
# nothing (the benchmarks' floor: fail2ban and its firewall action alone).
RECORD_ACTIONS = {
    "command": 'banned_db[name={jail}, port="{ports}", protocol=tcp]',
    "python": 'banned_db.py[port="{ports}", protocol=tcp, lib=' + str(HOST_LIB) + "]",
    "none": "",
}

JAIL_DEFAULT = """\
[DEFAULT]
backend = polling
maxretry = 2
findtime = 600
bantime = 3600
usedns = no
"""

# An empty action line (no firewall, or no recording action) is one fail2ban skips.
JAIL_SECTION = """
[{jail}]
enabled = {enabled}
filter = f2bsql-test
logpath = {logfile}
action = {firewall}
         {record}
"""


#: The shared bans' jail, as the role names it (f2bsql_fail2ban_fleet_jail).
FLEET_JAIL = "f2bsql-fleet"


def render_fleet_jail(firewall: str, peers: Sequence[str] = (), host_ignoreip: str = "") -> str:
    """templates/f2bsql-fleet-jail.j2 as the role renders it into its overlay; `peers`: the fleet's
    other hosts (f2bsql_fail2ban_fleet_ignoreip), `host_ignoreip`: the host's own as the role's
    f2bsql_fail2ban_jails module reads it (tests/test_role_modules.py)."""
    return (
        _templates()
        .get_template("f2bsql-fleet-jail.j2")
        .render(
            f2bsql_fail2ban_fleet_jail=FLEET_JAIL,
            f2bsql_fail2ban_fleet_port="0:65535",
            f2bsql_fail2ban_fleet_action=firewall,
            f2bsql_fail2ban_fleet_bantime=86400,
            f2bsql_fail2ban_fleet_ignoreip=list(peers),
            __f2bsql_fail2ban_fleet_host_ignoreip=host_ignoreip,
        )
    )


class Fail2ban:
    """A fail2ban-server of the test's own: config tree, socket, pidfile, dbfile and log file."""

    JAILS = ("dovecot", "postfix")

    def __init__(
        self,
        root: Path,
        helper_config: Path,
        action: str = "command",
        firewall: bool = True,
        extra_jails: int = 0,
        fleet_ignoreip: str | None = None,
        fleet_peers: Sequence[str] = (),
    ) -> None:
        """`action`: one of RECORD_ACTIONS; `firewall`: run the `dummy` action beside it, as a real
        jail runs its firewall action (a process per ban); `extra_jails`: more jails like postfix
        (extra1, extra2, ...), each with its own log file; `fleet_ignoreip`: the host's ignoreip,
        and the shared bans' jail (FLEET_JAIL) beside the others, which also ignores `fleet_peers`."""
        assert action in RECORD_ACTIONS, action
        self.action = action
        self.firewall = firewall
        self.fleet_ignoreip = fleet_ignoreip
        self.fleet_peers = tuple(fleet_peers)
        self.jails = (*self.JAILS, *(f"extra{n}" for n in range(1, extra_jails + 1)))
        if fleet_ignoreip is not None:
            self.jails += (FLEET_JAIL,)
        self.root = root
        self.conf = root / "conf"
        self.socket = root / "fail2ban.sock"
        self.pidfile = root / "fail2ban.pid"
        self.server_log = root / "fail2ban.log"
        self.logfile = root / "auth.log"
        self.postfix_logfile = root / "postfix.log"
        self.helper_config = helper_config
        self.pid: int | None = None
        # False: the jails are configured but disabled, so the server runs none of them, as while
        # its configuration is still on its way after the socket answers.
        self.enabled = True

    def write_config(self) -> None:
        (self.conf / "action.d").mkdir(parents=True, exist_ok=True)
        (self.conf / "filter.d").mkdir(exist_ok=True)
        (self.conf / "jail.d").mkdir(exist_ok=True)
        shutil.copy("/etc/fail2ban/fail2ban.conf", self.conf / "fail2ban.conf")
        (self.conf / "fail2ban.local").write_text(
            "[Definition]\n"
            "loglevel = INFO\n"
            f"logtarget = {self.server_log}\n"
            f"dbfile = {self.root / 'fail2ban.sqlite3'}\n"
            "allowipv6 = auto\n",
            encoding="utf-8",
        )
        shutil.copy("/etc/fail2ban/action.d/dummy.conf", self.conf / "action.d" / "dummy.conf")
        (self.conf / "action.d" / "banned_db.conf").write_text(render_action(), encoding="utf-8")
        # fail2ban loads a Python action from its own action.d, as the role installs it.
        shutil.copy(PYTHON_ACTION, self.conf / "action.d" / "banned_db.py")
        (self.conf / "filter.d" / "f2bsql-test.conf").write_text(FILTER, encoding="utf-8")
        record_jails = [jail for jail in self.jails if jail != FLEET_JAIL]
        sections = [
            JAIL_SECTION.format(
                jail=jail,
                enabled=str(self.enabled).lower(),
                logfile=self._logfile(jail),
                firewall=self._firewall(jail),
                record=RECORD_ACTIONS[self.action].format(
                    jail=jail, ports=DOVECOT_PORTS if jail == "dovecot" else POSTFIX_PORTS
                ),
            )
            for jail in record_jails
        ]
        default = JAIL_DEFAULT
        if self.fleet_ignoreip is not None:
            default += f"ignoreip = {self.fleet_ignoreip}\n"
            firewall = f'dummy[target="{self.root / (FLEET_JAIL + ".dummy")}"]'
            sections.append(render_fleet_jail(firewall, self.fleet_peers, self.fleet_ignoreip))
        (self.conf / "jail.conf").write_text(default + "".join(sections), encoding="utf-8")
        for jail in record_jails:
            self._logfile(jail).touch()

    def _logfile(self, jail: str) -> Path:
        if jail == "dovecot":
            return self.logfile
        return self.postfix_logfile if jail == "postfix" else self.root / f"{jail}.log"

    def _firewall(self, jail: str) -> str:
        # Without a firewall action the first line is left empty, which fail2ban skips.
        return f'dummy[target="{self.root / (jail + ".dummy")}"]' if self.firewall else ""

    def start(self) -> None:
        self.write_config()
        env = {**BASE_ENV, "F2BSQL_CONFIG": str(self.helper_config)}
        command = ["fail2ban-server", "-c", str(self.conf), "-s", str(self.socket), "-p", str(self.pidfile)]
        done = subprocess.run([*command, "-x", "-b"], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"fail2ban-server did not start: {done.stderr}\n{self.log_tail()}"
        self._up()

    def _up(self) -> None:
        wait_for(lambda: self.client_rc("ping") == 0, "fail2ban-server to answer ping")
        self.pid = int(wait_for(self._read_pid, "fail2ban-server's pidfile"))
        if self.enabled:
            wait_for(lambda: all(self.client_rc("status", jail) == 0 for jail in self.jails), "the jails to start")

    def kill(self) -> None:
        """SIGKILL, as the OOM killer does it: no action's stop runs, socket and database stay."""
        process = Process.of(self.pid) if self.pid is not None else None
        assert process is not None, "no fail2ban-server of this test runs"
        handle = os.pidfd_open(process.pid)
        try:
            if process.alive():
                signal.pidfd_send_signal(handle, signal.SIGKILL)
        finally:
            os.close(handle)
        wait_for(lambda: not process.alive(), "fail2ban-server to die")
        self.pid = None
        self.pidfile.unlink(missing_ok=True)

    def restart(self) -> None:
        """`fail2ban-client restart`, as an admin types it: the client stops the server and starts a new
        one (which inherits the client's environment, hence the helper's settings file in it)."""
        old = Process.of(self.pid) if self.pid is not None else None
        if old is not None:
            LINGERING.append(old)
        env = {**BASE_ENV, "F2BSQL_CONFIG": str(self.helper_config)}
        done = subprocess.run(
            ["fail2ban-client", "-c", str(self.conf), "-s", str(self.socket), "-p", str(self.pidfile), "restart"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"fail2ban-client restart: {done.stdout}{done.stderr}\n{self.log_tail()}"
        self.pid = None
        wait_for(lambda: self._read_pid() not in (None, old and old.pid), "the new fail2ban-server's pidfile")
        self._up()

    def _read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server and wait until it has run every action's stop (its pidfile goes last).

        The process itself lingers about a second after that; `reap_lingering` collects it.
        Also stops a server whose start() failed half way, found by its socket and pidfile.
        """
        pid = self.pid if self.pid is not None else self._read_pid()
        self.pid = None
        if pid is None and not self.socket.exists():
            return
        process = Process.of(pid) if pid is not None else None
        if process is not None:
            LINGERING.append(process)
        self.client_rc("stop")
        wait_for(
            lambda: not self.pidfile.exists() or (process is not None and not process.alive()),
            "fail2ban-server to finish",
            timeout=30,
        )

    def client_rc(self, *args: str) -> int:
        return self.client(*args, check=False).returncode

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["fail2ban-client", "-c", str(self.conf), "-s", str(self.socket), *args],
            env=BASE_ENV,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"fail2ban-client {args}: {done.stdout}{done.stderr}"
        return done

    def banned(self, jail: str = "dovecot") -> set[str]:
        """The addresses `fail2ban-client status <jail>` lists, as the how-to reads them."""
        status = self.client("status", jail).stdout
        for line in status.splitlines():
            if "Banned IP list:" in line:
                return set(line.split("Banned IP list:", 1)[1].split())
        raise AssertionError(f"no banned list in:\n{status}")

    def all_bans(self) -> set[tuple[str, str]]:
        """(jail, address) of every ban the server holds in its jails."""
        return {(jail, ip) for jail in self.jails for ip in self.banned(jail)}

    def banip(self, *ips: str, jail: str = "dovecot") -> None:
        self.client("set", jail, "banip", *ips)

    def unbanip(self, *ips: str, jail: str = "dovecot") -> None:
        self.client("set", jail, "unbanip", *ips)

    def log_failures(self, *lines: str, jail: str = "dovecot") -> None:
        """Append lines the jail's filter will read (as a mail server's log would get them)."""
        path = self._logfile(jail)
        with path.open("a", encoding="utf-8") as handle:
            handle.writelines(f"{line}\n" for line in lines)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.server_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no fail2ban log)"
        return "fail2ban log:\n" + "\n".join(text.splitlines()[-lines:])

    def action_errors(self) -> list[str]:
        """Lines where fail2ban reports that an action command failed."""
        try:
            text = self.server_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if " ERROR " in line]


class Process(NamedTuple):
    """One process: its pid and the clock tick it started at. The kernel hands a dead process's
    pid to the next one (pid_max is 32768 on these machines, and Ansible forks thousands), so a
    pid alone may name fail2ban-server of the machine by the time a test acts on it."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Process | None:
        started = _start_tick(pid)
        return None if started is None else cls(pid, started)

    def alive(self) -> bool:
        return _start_tick(self.pid) == self.started


def _start_tick(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # proc(5): field 22 is starttime; the command name (field 2) may hold spaces and ")".
    return int(stat.rsplit(")", 1)[1].split()[19])


# fail2ban-server processes told to stop, not yet seen gone.
LINGERING: list[Process] = []


def reap_lingering(timeout: float = 15.0) -> None:
    """Wait for stopped servers to exit; kill the ones that do not (only ours: same pid and start)."""
    deadline = time.monotonic() + timeout
    while LINGERING:
        process = LINGERING[0]
        if not process.alive():
            LINGERING.pop(0)
        elif time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                handle = os.pidfd_open(process.pid)  # holds that pid to one process from here on
                try:
                    if process.alive():
                        signal.pidfd_send_signal(handle, signal.SIGKILL)
                finally:
                    os.close(handle)
            LINGERING.pop(0)
        else:
            time.sleep(0.05)


@contextlib.contextmanager
def running_fail2ban(root: Path, helper_config: Path) -> Iterator[Fail2ban]:
    server = Fail2ban(root, helper_config)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def run_whole(args: Sequence[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run(args, text=True, …) in a process group of its own, all of which is killed
    at the timeout (or pytest-timeout's, or ^C): Molecule's and Ansible's children would otherwise
    go on changing the machine after the test has given up on them (and the next run adopted
    their fixture)."""
    with subprocess.Popen(list(args), text=True, start_new_session=True, **kw) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def fixture_env(owner: str) -> dict[str, str]:
    """The environment to run Ansible in on the fixture (MOLECULE_RESOURCES) as `owner`: the
    modules on the distro python, and this process as the owner's process in the fixture's lock
    (molecule/resources/tasks/lock.yml), so that the next run adopts the lock, and puts the
    machine back, if this one is killed halfway."""
    return {
        **os.environ,
        "ANSIBLE_PYTHON_INTERPRETER": SYSTEM_PYTHON,
        "ANSIBLE_NOCOLOR": "1",
        "F2BSQL_FIXTURE_OWNER": owner,
        "F2BSQL_FIXTURE_PID": str(os.getpid()),
    }


def fixture_playbook(name: str, owner: str, *extra: str, timeout: int = 2400) -> subprocess.CompletedProcess[str]:
    """Run one of the fixture's playbooks (prepare.yml, cleanup.yml) on this machine as `owner`."""
    return run_whole(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            *("-i", "localhost,", "-c", "local", str(MOLECULE_RESOURCES / name)),
            *extra,
        ],
        timeout,
        env=fixture_env(owner),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def put_back_stale_fixture() -> str | None:
    """When a killed run left this machine as the fixture (its lock's process is gone), put it
    back: cleanup.yml, on the backend prepare noted, adopts the lock, uninstalls (dropping the
    database), proves it, restores what prepare saved and releases the lock. Returns what it
    did, or None when there is no lock or its owner is alive (the tests wait for that one, as
    any second run does). Raises RuntimeError when the machine could not be put back."""
    if not FIXTURE_LOCK.exists():
        return None
    noted = Path(FIXTURE_VARS["f2bsql_molecule_state"]) / "backend"
    backend = noted.read_text().strip() if noted.exists() else "mysql"
    try:
        done = fixture_playbook(
            "cleanup.yml",
            f"f2bsql-tests-{os.getpid()}",
            *("-v", "-e", f"f2bsql_database_backend={backend}", "-e", "f2bsql_database_drop=true"),
            *("-e", "f2bsql_molecule_lock_retries=0"),  # a live owner: leave it, do not wait here
            timeout=900,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"cleanup.yml ({backend}) took over {exc.timeout} s") from exc
    # What the lock task said (-v shows its result; its command line holds the same words).
    said = re.search(r'"stdout": "((?:adopted from|held by|held)\b[^"]*)"', done.stdout)
    if said and said[1].startswith("held by"):
        return None
    if done.returncode != 0 or FIXTURE_LOCK.exists():
        raise RuntimeError(f"cleanup.yml ({backend}) failed:\n{ansible_failures(done.stdout)}")
    return f"put the machine back from a killed run's fixture ({backend}; lock {said[1] if said else 'gone'})"


def ansible_failures(output: str, context: int = 25, limit: int = 25000) -> str:
    """The parts of an Ansible/Molecule log that say what failed, then its tail.

    A failing task's message sits far above the end of a Molecule run (cleanup follows it), so
    the tail alone does not show it. Each long line is cut to 4000 characters.
    """
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)  # Molecule colours its output even into a pipe
    lines = [line[:4000] for line in plain.splitlines()]
    marks = re.compile(r"fatal:|FAILED!|failed: \[|^\W*ERROR|Executed: Failed|Traceback")
    keep: set[int] = set()
    for number, line in enumerate(lines):
        if marks.search(line):
            keep.update(range(max(0, number - context), min(len(lines), number + context)))
    shown, previous = [], -2
    for number in sorted(keep):
        if number != previous + 1:
            shown.append("[…]")
        shown.append(lines[number])
        previous = number
    excerpt = "\n".join(shown)[:limit]
    return f"{excerpt}\n--- tail ---\n" + "\n".join(lines[-60:])
