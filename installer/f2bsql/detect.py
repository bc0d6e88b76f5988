"""Read-only facts about this host, gathered before anything changes.

Every file is read below `root` (normally `/`; tests point it at a fixture tree with the
environment variable `F2BSQL_ROOT`), and every parser takes text, so each one can be tested
against a fixture file. Probes that need a running service (fail2ban's merged config, the
database servers) run programs with argument lists and change nothing.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from f2bsql.data import data_dir
from f2bsql.errors import PreconditionError

#: Where fail2ban keeps its configuration, per OS family; the first that exists wins.
FAIL2BAN_CONFIG_DIRS = ("etc/fail2ban", "usr/local/etc/fail2ban")
#: The credential file of the MySQL/MariaDB backend (the how-to's path, read by the helper).
MYSQL_CREDENTIAL_FILE = "root/.my.cnf-fail2ban"
#: MySQL root's option file on iRedMail hosts.
MYSQL_ROOT_CNF = "root/.my.cnf"
#: Unix sockets of a local MySQL/MariaDB server: Debian/Ubuntu, RHEL, OpenBSD, FreeBSD.
MYSQL_SOCKETS = (
    "run/mysqld/mysqld.sock",
    "var/run/mysqld/mysqld.sock",
    "var/lib/mysql/mysql.sock",
    "var/run/mysql/mysql.sock",
    "tmp/mysql.sock",
)
#: The PostgreSQL OS user: Linux, OpenBSD, FreeBSD.
PGSQL_OS_USERS = ("postgres", "_postgresql", "postgres")
#: Homes of the PostgreSQL OS user when /etc/passwd does not say (same list as the helper).
PGSQL_HOMES = ("var/lib/postgresql", "var/lib/pgsql", "var/db/postgres", "var/postgresql")
#: iRedAdmin(-Pro)'s settings file on iRedMail hosts: iRedMail's HTTPD_SERVERROOT is /opt/www,
#: /usr/local/www on FreeBSD (its conf/web_server), and iRedAdmin is linked there as `iredadmin`.
IREDADMIN_SETTINGS = ("opt/www/iredadmin/settings.py", "usr/local/www/iredadmin/settings.py")
#: The name of the database and of its user (fixed by the how-to and iRedAdmin-Pro).
DB_NAME = "fail2ban"
DB_USER = "fail2ban"
DEFAULT_PORTS = {"mysql": 3306, "pgsql": 5432}
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})
PROBE_TIMEOUT = 15


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class OsInfo:
    id: str  # debian, ubuntu, rocky, openbsd …
    version: str  # VERSION_ID, or `uname -r` on the BSDs
    pretty: str
    family: str  # debian | redhat | openbsd | freebsd | other


@dataclasses.dataclass(frozen=True)
class Jail:
    name: str
    actions: tuple[str, ...]
    port: str | None  # of the jail's first action that names one
    protocol: str | None

    @property
    def logs_to_sql(self) -> bool:
        return "banned_db" in self.actions


@dataclasses.dataclass(frozen=True)
class Fail2banInfo:
    client: str | None  # path of fail2ban-client, None when not installed
    config_dir: Path | None
    jails: tuple[Jail, ...]  # enabled jails of the merged config
    error: str = ""  # why the jails could not be read

    @property
    def present(self) -> bool:
        return self.client is not None and self.config_dir is not None


@dataclasses.dataclass(frozen=True)
class Credential:
    """Settings of the `fail2ban` database user found on the host; the password never prints."""

    source: Path
    host: str
    port: int
    user: str
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str  # mysql | pgsql
    installed: bool  # a local server (or its admin access) is there
    reachable: bool  # the admin probe answered
    detail: str  # how it was reached, or why not
    has_database: bool | None  # database `fail2ban` exists (None: unknown)
    credential: Credential | None  # existing credential file of the fail2ban user
    has_user: bool | None = None  # SQL user `fail2ban` exists (None: unknown)


@dataclasses.dataclass(frozen=True)
class IRedMail:
    release: str | None  # /etc/iredmail-release
    backend: str | None  # mysql | pgsql | ldap, as iRedMail's own configuration names it
    backend_source: str  # where that came from
    iredadmin_settings: Path | None
    iredadmin_fail2ban: Mapping[str, object]  # the fail2ban_* keys already in settings.py

    @property
    def is_iredmail(self) -> bool:
        return self.release is not None or self.backend is not None

    @property
    def sql_backend(self) -> str | None:
        """The backend the fail2ban database should use: ldap hosts run MySQL/MariaDB."""
        if self.backend is None:
            return None
        return "pgsql" if self.backend == "pgsql" else "mysql"


@dataclasses.dataclass(frozen=True)
class Facts:
    root: Path
    os: OsInfo
    fail2ban: Fail2banInfo
    backends: Mapping[str, Backend]
    iredmail: IRedMail

    def lines(self) -> list[str]:
        """What was found, one fact per line, for the user to see before anything changes."""
        out = [f"OS:          {self.os.pretty} ({self.os.family})"]
        if self.fail2ban.present:
            names = ", ".join(j.name + (" [sql]" if j.logs_to_sql else "") for j in self.fail2ban.jails)
            out.append(f"fail2ban:    {self.fail2ban.config_dir}; enabled jails: {names or 'none'}")
            if self.fail2ban.error:
                out.append(f"             ({self.fail2ban.error})")
        else:
            out.append("fail2ban:    not installed")
        for backend in self.backends.values():
            state = "reachable" if backend.reachable else "not reachable"
            if not backend.installed:
                state = "not installed"
            db = "; database fail2ban exists" if backend.has_database else ""
            db += "; user fail2ban exists" if backend.has_user else ""
            out.append(f"{_LABELS[backend.name] + ':':<13}{state} ({backend.detail}){db}")
            if backend.credential is not None:
                out.append(f"             credentials of user fail2ban: {backend.credential.source}")
        im = self.iredmail
        if im.is_iredmail:
            release = im.release or "unknown version"
            out.append(f"iRedMail:    {release}; backend {im.backend or 'unknown'} ({im.backend_source})")
        if im.iredadmin_settings is not None:
            keys = "fail2ban keys present" if im.iredadmin_fail2ban else "no fail2ban keys yet"
            out.append(f"iRedAdmin:   {im.iredadmin_settings} ({keys})")
        return out


_LABELS = {"mysql": "MariaDB", "pgsql": "PostgreSQL"}


# --------------------------------------------------------------------------- parsers


def parse_os_release(text: str) -> dict[str, str]:
    """`/etc/os-release`: KEY=value lines, values optionally quoted."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def os_family(os_id: str, id_like: str = "") -> str:
    ids = {os_id.lower(), *id_like.lower().split()}
    if ids & {"debian", "ubuntu"}:
        return "debian"
    if ids & {"rhel", "fedora", "centos", "rocky", "almalinux", "ol"}:
        return "redhat"
    if "openbsd" in ids:
        return "openbsd"
    if "freebsd" in ids:
        return "freebsd"
    return "other"


def parse_fail2ban_dump(text: str) -> list[Jail]:
    """Enabled jails from `fail2ban-client -d`, in fail2ban's order.

    The parsing is the role's own (roles/f2bsql_fail2ban/library/f2bsql_fail2ban_jails.py),
    loaded from the bundled roles, so what the installer shows is what the role will do. Port
    and protocol are those of the jail's first action that names them, banned_db left aside.
    """
    jails: dict[str, list[tuple[str, dict[str, Any]]]] = _jail_probe().parse_dump(text)
    result = []
    for name, actions in jails.items():
        own = [params for action, params in actions if action != "banned_db" and params.get("actname") != "banned_db"]
        with_port = [params for params in own if params.get("port")]
        params = (with_port or own or [{}])[0]
        result.append(
            Jail(
                name=str(name),
                actions=tuple(str(action) for action, _params in actions),
                port=str(params["port"]) if params.get("port") else None,
                protocol=str(params["protocol"]) if params.get("protocol") else None,
            )
        )
    return result


def _jail_probe() -> ModuleType:
    """The role's jail probe module (it imports ansible-core, which the installer depends on)."""
    path = data_dir() / "roles" / "f2bsql_fail2ban" / "library" / "f2bsql_fail2ban_jails.py"
    loader = importlib.machinery.SourceFileLoader("f2bsql_fail2ban_jails", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    if spec is None:
        raise PreconditionError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def parse_fail2ban_status(text: str) -> list[str]:
    """Jail names from `fail2ban-client status` of a running server."""
    for line in text.splitlines():
        if "Jail list:" in line:
            names = line.split("Jail list:", 1)[1]
            return [n.strip() for n in names.split(",") if n.strip()]
    return []


def parse_mysql_option_file(text: str, section: str = "client", source: str = "a MySQL option file") -> dict[str, str]:
    """One section of a MySQL option file (`/root/.my.cnf`, `/root/.my.cnf-fail2ban`).

    Values may be quoted; `!include` directives and options without a value are ignored. A file
    configparser refuses is a PreconditionError that names the line, never shows it (it may be
    the password's).
    """
    # The !include lines as empty ones: the line numbers stay the file's.
    kept = "\n".join("" if line.lstrip().startswith("!") else line for line in text.splitlines())
    parser = configparser.ConfigParser(allow_no_value=True, interpolation=None, strict=False)
    try:
        parser.read_string(kept)
    except configparser.Error as exc:
        if isinstance(exc, configparser.MissingSectionHeaderError):  # a ParsingError too
            where = f"line {exc.lineno}"
        elif isinstance(exc, configparser.ParsingError):
            where = "line " + ", ".join(str(number) for number, _line in exc.errors)
        else:
            where = type(exc).__name__
        raise PreconditionError(f"cannot read {source}: {where} is not a setting under a [section]") from None
    if not parser.has_section(section):
        return {}
    values: dict[str, str] = {}
    for key, value in parser.items(section):
        if value is None:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.replace("_", "-") if key != "password" else key] = value
    return values


def parse_pgpass(text: str) -> list[tuple[str, str, str, str, str]]:
    """`.pgpass` lines as (host, port, database, user, password); `\\:` and `\\\\` unescaped."""
    entries = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields: list[str] = []
        current: list[str] = []
        chars = iter(raw)
        for ch in chars:
            if ch == "\\":
                current.append(next(chars, ""))
            elif ch == ":" and len(fields) < 4:
                fields.append("".join(current))
                current = []
            else:
                current.append(ch)
        fields.append("".join(current))
        if len(fields) == 5:
            entries.append((fields[0], fields[1], fields[2], fields[3], fields[4]))
    return entries


def parse_python_settings(text: str) -> dict[str, object]:
    """Top-level `name = <literal>` assignments of a Python settings file, never executed."""
    values: dict[str, object] = {}
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return values
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    continue
    return values


def parse_iredmail_config(text: str) -> str | None:
    """The backend from iRedMail's installer `config` (`export BACKEND='MYSQL'`)."""
    for line in text.splitlines():
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key.strip() == "BACKEND":
            return normalise_iredmail_backend(value.strip().strip("'\""))
    return None


def normalise_iredmail_backend(value: str) -> str | None:
    """iRedMail's names of its backend → mysql | pgsql | ldap."""
    v = value.strip().lower()
    if v in {"mysql", "mariadb"}:
        return "mysql"
    if v in {"pgsql", "postgresql", "postgres"}:
        return "pgsql"
    if v in {"ldap", "openldap", "ldapd"}:
        return "ldap"
    return None


def parse_passwd_home(text: str, users: Iterable[str]) -> tuple[str, str] | None:
    """(user, home) of the first of `users` found in passwd-format text."""
    homes: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7:
            homes.setdefault(fields[0], fields[5])
    for user in users:
        if user in homes:
            return user, homes[user]
    return None


# --------------------------------------------------------------------------- probes


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _run(cmd: list[str], *, timeout: int = PROBE_TIMEOUT) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def detect_os(root: Path) -> OsInfo:
    text = _read(root / "etc/os-release") or _read(root / "usr/lib/os-release")
    if text is not None:
        values = parse_os_release(text)
        os_id = values.get("ID", "unknown")
        version = values.get("VERSION_ID", "")
        pretty = values.get("PRETTY_NAME") or f"{values.get('NAME', os_id)} {version}".strip()
        return OsInfo(os_id, version, pretty, os_family(os_id, values.get("ID_LIKE", "")))
    # The BSDs have no os-release: uname says it (only meaningful for the real root).
    system = platform.system() if root == Path("/") else "unknown"
    release = platform.release() if root == Path("/") else ""
    return OsInfo(system.lower(), release, f"{system} {release}".strip(), os_family(system))


def detect_fail2ban(root: Path) -> Fail2banInfo:
    client = shutil.which("fail2ban-client")
    config_dir = next((root / d for d in FAIL2BAN_CONFIG_DIRS if (root / d / "jail.conf").is_file()), None)
    if client is None or config_dir is None:
        return Fail2banInfo(client, config_dir, ())
    # The merged configuration: what fail2ban will run after the next reload.
    dump = _run([client, "-c", str(config_dir), "-d"])
    if dump is not None and dump.returncode == 0:
        return Fail2banInfo(client, config_dir, tuple(parse_fail2ban_dump(dump.stdout)))
    reason = (dump.stderr.strip().splitlines() or ["no output"])[-1] if dump is not None else "timed out"
    # A broken configuration can still leave a server running with its jails.
    status = _run([client, "status"])
    if status is not None and status.returncode == 0:
        names = parse_fail2ban_status(status.stdout)
        jails = tuple(Jail(n, (), None, None) for n in names)
        return Fail2banInfo(client, config_dir, jails, f"config unreadable, jails of the running server: {reason}")
    return Fail2banInfo(client, config_dir, (), f"fail2ban-client -d failed: {reason}")


def _mysql_credential(root: Path) -> Credential | None:
    path = root / MYSQL_CREDENTIAL_FILE
    text = _read(path)
    if text is None:
        return None
    values = parse_mysql_option_file(text, source=str(path))
    if not values.get("password"):
        return None
    return Credential(
        source=path,
        host=values.get("host", "127.0.0.1"),
        port=int(values.get("port", "3306") or 3306),
        user=values.get("user", DB_USER),
        password=values["password"],
    )


def pgsql_home(root: Path) -> tuple[str, Path] | None:
    """The PostgreSQL OS user and its home, from passwd or the usual paths."""
    passwd = _read(root / "etc/passwd")
    found = parse_passwd_home(passwd, PGSQL_OS_USERS) if passwd else None
    if found is not None:
        return found[0], root / found[1].lstrip("/")
    for home in PGSQL_HOMES:
        if (root / home).is_dir():
            return "postgres", root / home
    return None


def _pgsql_credential(root: Path) -> Credential | None:
    home = pgsql_home(root)
    if home is None:
        return None
    path = home[1] / ".pgpass"
    text = _read(path)
    if text is None:
        return None
    for host, port, _db, user, password in parse_pgpass(text):
        if user in (DB_USER, "*") and password:
            return Credential(
                source=path,
                host="" if host == "*" else host,
                port=int(port) if port.isdigit() else 5432,
                user=DB_USER,
                password=password,
            )
    return None


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def detect_mysql(root: Path, host: str | None = None, port: int | None = None) -> Backend:
    credential = _mysql_credential(root)
    root_cnf_text = _read(root / MYSQL_ROOT_CNF)
    root_cnf = (
        parse_mysql_option_file(root_cnf_text, source=str(root / MYSQL_ROOT_CNF)) if root_cnf_text is not None else {}
    )
    sockets = [root / s for s in MYSQL_SOCKETS if (root / s).exists()]
    server = root == Path("/") and bool(shutil.which("mariadbd") or shutil.which("mysqld"))
    installed = bool(server or sockets or root_cnf_text is not None)
    remote = host is not None and host not in LOCAL_HOSTS
    if remote:
        return _probe_remote("mysql", host or "", port or DEFAULT_PORTS["mysql"], credential)
    if not installed:
        return Backend("mysql", False, False, "no server, socket or /root/.my.cnf", None, credential)
    if root != Path("/"):
        # A fixture tree has no server behind it: report what the files say.
        return Backend("mysql", installed, False, "not probed below F2BSQL_ROOT", None, credential)
    try:
        import pymysql  # type: ignore[import-untyped]  # no stubs; a dependency, needed only here
    except ImportError:
        return Backend("mysql", installed, False, "PyMySQL missing", None, credential)
    # Admin access as iRedMail hosts have it: root's option file, else root over the socket.
    kwargs: dict[str, object] = {
        "user": root_cnf.get("user", "root"),
        "password": root_cnf.get("password", ""),
        "connect_timeout": 5,
    }
    who = "root via /root/.my.cnf" if root_cnf_text is not None else "root"
    if root_cnf.get("host") not in (None, "", "localhost") or not sockets:
        kwargs["host"] = root_cnf.get("host") or "127.0.0.1"
        kwargs["port"] = int(root_cnf.get("port", "3306") or 3306)
        how = f"{who} at {kwargs['host']}:{kwargs['port']}"
    else:
        kwargs["unix_socket"] = root_cnf.get("socket") or str(sockets[0])
        how = f"{who} via {kwargs['unix_socket']}"
    try:
        conn = pymysql.connect(**kwargs)
    except Exception as exc:  # any driver error means "not reachable", said in one line
        reason = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        return Backend("mysql", installed, False, f"{how}: {reason}", None, credential)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (DB_NAME,))
            has_db = cur.fetchone() is not None
            cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s", (DB_USER,))
            users = cur.fetchone()
            cur.execute("SELECT VERSION()")
            row = cur.fetchone()
            version = str(row[0]) if row else "?"
    finally:
        conn.close()
    has_user = bool(users and users[0])
    return Backend("mysql", True, True, f"{version}, {how}", has_db, credential, has_user)


def _probe_remote(backend: str, host: str, port: int, credential: Credential | None) -> Backend:
    """A database on another host: this one is only its client, so log in as user fail2ban."""
    where = f"{host}:{port}"
    if not _tcp_open(host, port):
        return Backend(backend, True, False, f"{where} refuses connections or does not answer", None, credential)
    if credential is None:
        return Backend(backend, True, True, f"{where} accepts connections", None, None)
    try:
        if backend == "mysql":
            import pymysql  # a dependency

            conn = pymysql.connect(
                host=host, port=port, user=DB_USER, password=credential.password, database=DB_NAME, connect_timeout=5
            )
        else:
            import psycopg2  # type: ignore[import-untyped]  # no stubs; a dependency

            conn = psycopg2.connect(
                host=host, port=port, user=DB_USER, password=credential.password, dbname=DB_NAME, connect_timeout=5
            )
        conn.close()
    except Exception as exc:  # any driver error means "not usable", said in one line
        reason = (str(exc.args[1]) if len(exc.args) > 1 else str(exc)).strip().splitlines()[0]
        return Backend(backend, True, False, f"{where}, as {DB_USER}: {reason}", None, credential)
    return Backend(backend, True, True, f"{where}, logged in as {DB_USER}", True, credential, True)


def detect_pgsql(root: Path, host: str | None = None, port: int | None = None) -> Backend:
    credential = _pgsql_credential(root)
    home = pgsql_home(root)
    psql = shutil.which("psql")
    remote = host is not None and host not in LOCAL_HOSTS
    if remote:
        return _probe_remote("pgsql", host or "", port or DEFAULT_PORTS["pgsql"], credential)
    if home is None or psql is None:
        return Backend("pgsql", False, False, "no PostgreSQL user or psql", None, credential)
    if root != Path("/"):
        return Backend("pgsql", True, False, "not probed below F2BSQL_ROOT", None, credential)
    user = home[0]
    # psql -c takes no parameters: the database name is spelled out (DB_NAME), never input.
    query = (
        "SELECT current_setting('server_version'),"
        " (SELECT count(*) FROM pg_database WHERE datname = 'fail2ban'),"
        " (SELECT count(*) FROM pg_roles WHERE rolname = 'fail2ban')"
    )
    runuser = shutil.which("runuser")
    # The admin role is the postgres OS user (peer auth), as on iRedMail hosts.
    cmd = [runuser, "-u", user, "--"] if runuser else ["su", "-m", user, "-c"]
    args = [psql, "-X", "-A", "-t", "-q", "-d", "template1", "-c", query]
    probe = _run([*cmd, *args] if runuser else [*cmd, " ".join(_quote(a) for a in args)])
    if probe is None or probe.returncode != 0:
        reason = "timed out" if probe is None else (probe.stderr.strip().splitlines() or ["failed"])[-1]
        return Backend("pgsql", True, False, f"as {user}: {reason}", None, credential)
    version, _, counts = probe.stdout.strip().partition("|")
    databases, _, roles = counts.partition("|")
    detail = f"{version}, as OS user {user}"
    return Backend("pgsql", True, True, detail, databases.strip() == "1", credential, roles.strip() == "1")


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def detect_iredmail(root: Path) -> IRedMail:
    release_text = _read(root / "etc/iredmail-release")
    release = release_text.split("#", 1)[0].strip() if release_text else None
    candidates = [root / path for path in IREDADMIN_SETTINGS]
    settings_path = next((path for path in candidates if path.exists()), candidates[0])
    settings_text = _read(settings_path)
    settings = parse_python_settings(settings_text) if settings_text is not None else {}
    backend: str | None = None
    source = ""
    if isinstance(settings.get("backend"), str):
        backend = normalise_iredmail_backend(str(settings["backend"]))
        source = f"backend in {settings_path}"
    if backend is None:
        # iRedMail's installer keeps its answers in <unpacked dir>/config, usually under /root.
        for config in sorted((root / "root").glob("iRedMail-*/config"), reverse=True):
            text = _read(config)
            backend = parse_iredmail_config(text) if text else None
            if backend is not None:
                source = str(config)
                break
    fail2ban_keys = {k: v for k, v in settings.items() if k.startswith("fail2ban_")}
    return IRedMail(
        release=release or (None if release_text is None else "unknown version"),
        backend=backend,
        backend_source=source or "not found",
        iredadmin_settings=settings_path if settings_text is not None else None,
        iredadmin_fail2ban=fail2ban_keys,
    )


def detect_root() -> Path:
    """`/`, or the tree named by F2BSQL_ROOT (tests and inspection of a mounted system)."""
    return Path(os.environ.get("F2BSQL_ROOT") or "/")


def detect(root: Path, *, backend: str | None = None, db_host: str | None = None, db_port: int | None = None) -> Facts:
    """All facts. A remote `db_host` applies to the chosen backend (or iRedMail's, or mysql)."""
    iredmail = detect_iredmail(root)
    remote = backend or iredmail.sql_backend or "mysql"
    mysql_at = (db_host, db_port) if remote == "mysql" else (None, None)
    pgsql_at = (db_host, db_port) if remote == "pgsql" else (None, None)
    return Facts(
        root=root,
        os=detect_os(root),
        fail2ban=detect_fail2ban(root),
        backends={"mysql": detect_mysql(root, *mysql_at), "pgsql": detect_pgsql(root, *pgsql_at)},
        iredmail=iredmail,
    )
