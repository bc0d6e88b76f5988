"""Where the database is and who this host is: the helper's settings and where they come from.

Found where iRedMail's helper looked (/root/.my.cnf-fail2ban, /root/.my.cnf, .pgpass in the
PostgreSQL home), or in the file --config / $F2BSQL_CONFIG names (docs/helper.md, "Settings").
"""

from __future__ import annotations

import os
import sys
from _socket import gethostname  # socket.py's enums cost a `ban` process more than its statement

from .checks import InvalidValue, check_hostname, check_jail
from .report import ConfigError

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from typing import Optional

    Sections = dict[str, dict[str, Optional[str]]]  # section, key: value (None: a key without one)

MYSQL_CREDENTIAL_FILES = ("/root/.my.cnf-fail2ban", "/root/.my.cnf")
PGSQL_HOMES = ("/var/lib/pgsql", "/var/lib/postgresql", "/var/db/postgres", "/var/postgresql")
DEFAULT_SPOOL_DIR = "/var/spool/f2bsql"
GEOIP_BACKENDS = ("mmdb", "libloc", "geoiplookup")
DEFAULT_DATABASE = "fail2ban"
DEFAULT_USER = "fail2ban"
DEFAULT_TIMEOUT = 5
# Seconds an event's own run may spend replaying the spool before it stores (or spools) its event,
# well inside fail2ban's 60 s action timeout; settings key replay_budget. Cron's run, which has a
# minute, takes longer; `replay` run by hand takes as long as it needs.
DEFAULT_REPLAY_BUDGET = 10
DEFAULT_HISTORY_DAYS = 90
DEFAULT_METRICS_DIR = "/var/lib/prometheus/node-exporter"  # Debian's prometheus-node-exporter
# Shared bans: at most this many new addresses banned in the fleet jail per cron run.
DEFAULT_FLEET_LIMIT = 1000
# Shared bans: rows older than this many seconds do not travel (a host retired without its
# uninstall leaves rows nobody lifts); 0 = no limit.
DEFAULT_FLEET_MAX_AGE = 7 * 86400


class Settings:
    """Where the database is, who this host is, and where the spool lives.

    The loaders below fill it in; a plain class, not a dataclass: see record.py for why.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.backend = "mysql"  # mysql or pgsql
        self.host = ""
        self.port = 0
        self.socket = ""
        self.user = DEFAULT_USER
        self.password: Optional[str] = None  # never shown (__repr__)
        self.database = DEFAULT_DATABASE
        self.hostname = gethostname()
        self.spool_dir = DEFAULT_SPOOL_DIR
        self.fail2ban_socket = ""
        self.timeout = DEFAULT_TIMEOUT
        self.geoip: tuple[str, ...] = GEOIP_BACKENDS
        self.mmdb = ""
        self.rdns = True
        self.rdns_budget = 20
        self.replay_budget = DEFAULT_REPLAY_BUDGET
        # Days the cron run keeps this host's rows of banned_history (0: for ever).
        self.history_days = DEFAULT_HISTORY_DAYS
        # Where the cron run writes its metrics for node_exporter's textfile collector ('' = nowhere).
        self.metrics_dir = DEFAULT_METRICS_DIR
        # Shared bans (docs/helper.md, "Shared bans"): the jail that holds the other hosts' bans
        # ('' = off), the jails whose bans travel (empty: all) and the new bans a run applies.
        self.fleet_jail = ""
        self.fleet_from: tuple[str, ...] = ()
        self.fleet_limit = DEFAULT_FLEET_LIMIT
        self.fleet_max_age = DEFAULT_FLEET_MAX_AGE

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in vars(self).items() if name != "password")
        return f"Settings({shown})"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


#: --config's name for settings read from standard input: a password never in argv, nor in a file
#: (Ansible's login check before the credential file is written, f2bsql_fail2ban's tasks/main.yml).
STDIN = "-"


def _read_ini(path: str) -> Sections:
    try:
        if path == STDIN:
            # UTF-8 as a file is read, whatever the locale of the session that runs the helper.
            lines = sys.stdin.buffer.read().decode("utf-8").splitlines(keepends=True)
        else:
            with open(path, encoding="utf-8") as handle:
                lines = handle.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {_name(path)}: {exc}") from None
    # MySQL option files may carry !include lines, which configparser cannot read: empty lines
    # in their place, so that the line numbers of a message stay the file's.
    text = "".join("\n" if line.lstrip().startswith("!") else line for line in lines)
    sections = plain_ini(text)
    return sections if sections is not None else _configparser_ini(text, _name(path))


def plain_ini(text: str) -> Sections | None:
    """The sections of an INI text as configparser reads it, where the text has only the plain
    forms: `[section]`, `key = value`, `key: value`, `key`, comments, blank lines; else None.

    configparser imports re and compiles its patterns: a `ban` process would pay for both. Other
    forms (a value continued on an indented line, [DEFAULT], a line it refuses, ...) are left to
    it (_configparser_ini); tests/test_helper_readers.py holds the two to the same reading.
    """
    sections: Sections = {}
    current: dict[str, str | None] | None = None
    for line in text.split("\n"):  # configparser's lines: "\n" alone ends one
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if line[0].isspace():
            return None  # a continuation of the value before it, for configparser
        if stripped.startswith("["):
            name = stripped[1:-1]
            if not stripped.endswith("]") or not name or "[" in name or "]" in name or name == "DEFAULT":
                return None
            current = sections.setdefault(name, {})
            continue
        cut = min((at for at in (stripped.find("="), stripped.find(":")) if at >= 0), default=-1)
        key = (stripped if cut < 0 else stripped[:cut]).rstrip()
        if current is None or not key:
            return None
        current[key.lower()] = None if cut < 0 else stripped[cut + 1 :].strip()
    return sections


def _configparser_ini(text: str, path: str) -> Sections:
    import configparser

    parser = configparser.RawConfigParser(allow_no_value=True, strict=False)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        # Never configparser's own message: it quotes the lines it refuses, the password's too.
        if isinstance(exc, configparser.MissingSectionHeaderError):
            what = f"line {exc.lineno}: a setting before any [section]"
        elif isinstance(exc, configparser.ParsingError):
            numbers = ", ".join(str(number) for number, _line in exc.errors)
            what = f"line {numbers}: not a setting (key = value), a [section] or a comment"
        else:
            what = type(exc).__name__
        raise ConfigError(f"cannot read {path}: {what} (the line is not shown: it may hold a password)") from None
    return {name: dict(parser.items(name, raw=True)) for name in parser.sections()}


def _ini_value(sections: Sections, section: str, key: str) -> str | None:
    value = sections.get(section, {}).get(key)
    return None if value is None else _unquote(value)


def _port(value: str, source: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{source}: invalid port {value!r}")
    return int(value)


def settings_from_ini(path: str) -> Settings:
    sections = _read_ini(path)
    path = _name(path)
    settings = Settings(path)
    backend = _ini_value(sections, "f2bsql", "backend")
    if backend:
        if backend not in ("mysql", "pgsql"):
            raise ConfigError(f"{path}: backend must be mysql or pgsql, not {backend!r}")
        settings.backend = backend
    settings.host = _ini_value(sections, "client", "host") or ""
    settings.socket = _ini_value(sections, "client", "socket") or ""
    port = _ini_value(sections, "client", "port")
    if port:
        settings.port = _port(port, path)
    settings.user = _ini_value(sections, "client", "user") or DEFAULT_USER
    settings.password = _ini_value(sections, "client", "password")
    settings.database = _ini_value(sections, "client", "database") or DEFAULT_DATABASE
    for key in ("hostname", "spool_dir", "fail2ban_socket", "metrics_dir"):
        value = _ini_value(sections, "f2bsql", key)
        if value:
            setattr(settings, key, "" if key == "metrics_dir" and value == "off" else value)
    history_days = _ini_value(sections, "f2bsql", "history_days")
    if history_days:
        if not history_days.isdigit():
            raise ConfigError(f"{path}: history_days must be a whole number of days (0: for ever)")
        settings.history_days = int(history_days)
    _read_fleet(sections, settings, path)
    for key in ("timeout", "rdns_budget", "replay_budget"):
        value = _ini_value(sections, "f2bsql", key)
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"{path}: {key} must be a whole number of seconds")
            setattr(settings, key, int(value))
    geoip = _ini_value(sections, "f2bsql", "geoip")
    if geoip:
        names = tuple(name.strip() for name in geoip.split(",") if name.strip())
        if names in (("off",), ("no",), ("false",)):
            names = ()
        elif names != ("auto",) and not set(names) <= set(GEOIP_BACKENDS):
            raise ConfigError(f"{path}: geoip must be auto, off or some of {', '.join(GEOIP_BACKENDS)}")
        settings.geoip = GEOIP_BACKENDS if names == ("auto",) else names
    settings.mmdb = _ini_value(sections, "f2bsql", "mmdb") or ""
    rdns = _ini_value(sections, "f2bsql", "rdns")
    if rdns:
        if rdns.lower() not in ("yes", "no", "true", "false", "on", "off", "1", "0"):
            raise ConfigError(f"{path}: rdns must be yes or no")
        settings.rdns = rdns.lower() in ("yes", "true", "on", "1")
    if settings.backend == "pgsql" and settings.password is None:
        found = find_pgpass()
        if found:
            entry = pgpass_entry(found, settings.user)
            if entry:
                settings.password = entry[4]
    return settings


def _read_fleet(sections: Sections, settings: Settings, path: str) -> None:
    """The shared bans' keys: fleet_jail, fleet_from (jail names, comma-separated), fleet_limit,
    fleet_max_age (seconds)."""
    jail = _ini_value(sections, "f2bsql", "fleet_jail")
    try:
        settings.fleet_jail = check_jail(jail) if jail else ""
        names = (_ini_value(sections, "f2bsql", "fleet_from") or "").split(",")
        settings.fleet_from = tuple(check_jail(name.strip()) for name in names if name.strip())
    except InvalidValue as exc:
        raise ConfigError(f"{path}: fleet_jail, fleet_from: {exc}") from None
    limit = _ini_value(sections, "f2bsql", "fleet_limit")
    if limit:
        if not limit.isdigit() or int(limit) < 1:
            raise ConfigError(f"{path}: fleet_limit must be a whole number of addresses (at least 1)")
        settings.fleet_limit = int(limit)
    max_age = _ini_value(sections, "f2bsql", "fleet_max_age")
    if max_age:
        if not max_age.isdigit():
            raise ConfigError(f"{path}: fleet_max_age must be a whole number of seconds (0: no limit)")
        settings.fleet_max_age = int(max_age)


def _split_pgpass_line(line: str) -> list[str]:
    """Fields of one .pgpass line, with libpq's backslash escapes for ':' and '\\'."""
    fields, current, escaped = [], [], False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def pgpass_entry(path: str, user: str = DEFAULT_USER, exact: bool = False) -> list[str] | None:
    """The first line of a .pgpass file for this user: [host, port, database, user, password].

    A line for any user (`*`) counts too, unless `exact`.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _split_pgpass_line(line)
        if len(fields) == 5 and fields[3] in ((user,) if exact else (user, "*")):
            return fields
    return None


def find_pgpass(exact: bool = False) -> str | None:
    """The .pgpass in the PostgreSQL home; with `exact`, only one that names user fail2ban."""
    for home in PGSQL_HOMES:
        path = os.path.join(home, ".pgpass")
        if os.path.isfile(path) and (not exact or pgpass_entry(path, exact=True)):
            return path
    return None


def settings_from_pgpass(path: str) -> Settings:
    entry = pgpass_entry(path)
    if entry is None:
        raise ConfigError(f"{path}: no line for user {DEFAULT_USER!r}")
    host, port, database, _user, password = entry
    settings = Settings(path)
    settings.backend = "pgsql"
    settings.host = "" if host in ("*", "localhost") else host
    settings.port = 5432 if port == "*" else _port(port, path)
    settings.database = DEFAULT_DATABASE if database == "*" else database
    settings.password = password
    return settings


def _name(path: str) -> str:
    return "the settings on standard input" if path == STDIN else path


def load_settings(config: str | None, hostname: str | None) -> Settings:
    if not config and os.environ.get("F2BSQL_CONFIG") == STDIN:
        # Only the command line's --config - means standard input (fail2ban's actions have none).
        raise ConfigError("F2BSQL_CONFIG names no file: only --config - reads the settings from standard input")
    config = config or os.environ.get("F2BSQL_CONFIG") or None
    if config:
        if config != STDIN and not os.path.isfile(config):
            raise ConfigError(f"config file {config} does not exist")
        settings = settings_from_ini(config)
    else:
        # Files made for fail2ban first, root's general ones after: a PostgreSQL host that also
        # has MariaDB's /root/.my.cnf still finds its .pgpass line for user fail2ban.
        dedicated_mysql, root_mysql = MYSQL_CREDENTIAL_FILES
        dedicated_pgpass = find_pgpass(exact=True)
        if os.path.isfile(dedicated_mysql):
            settings = settings_from_ini(dedicated_mysql)
        elif dedicated_pgpass:
            settings = settings_from_pgpass(dedicated_pgpass)
        elif os.path.isfile(root_mysql):
            settings = settings_from_ini(root_mysql)
        else:
            pgpass = find_pgpass()
            if not pgpass:
                raise ConfigError(
                    "no database settings found: "
                    + ", ".join(MYSQL_CREDENTIAL_FILES)
                    + " (MySQL/MariaDB) or .pgpass in "
                    + ", ".join(PGSQL_HOMES)
                    + " (PostgreSQL)"
                )
            settings = settings_from_pgpass(pgpass)
    hostname = hostname or os.environ.get("F2BSQL_HOSTNAME") or None
    if hostname:
        settings.hostname = hostname
    check_hostname(settings.hostname)
    return settings
