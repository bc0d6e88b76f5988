"""An installation of f2bsql on this machine, set aside while the machine-lane tests run.

The README's quick start provisions this machine (`f2bsql-install --yes`), then runs the tests.
Their machine lane (tests/conftest.py) turns the machine into iRedMail's fixture, with its own
`fail2ban` database and user, which its cleanup drops: over an installation, the fixture would
take that installation's place and then drop its database. So before the first machine-lane test:

1. f2bsql's installer uninstalls it, keeping the database, its rows and the credentials;
2. the `fail2ban` database and users of the machine's MariaDB and PostgreSQL move out of the way
   under another name (MariaDB: the tables renamed into a database of that name and the users
   renamed; PostgreSQL: database and role renamed), so no row is copied and none can be lost;
3. f2bsql's credential file and .pgpass lines move into the state directory (0700, root).

After the last one the same steps run backwards, and `f2bsql-install --yes --jails <the jails it
had>` installs it again (its other options are the installer's defaults, which the quick start
uses). state.json (0600) says what was moved and by which process: a run killed in between leaves
it, and the next run's start puts the installation back (tests/conftest.py).

By hand:  .venv/bin/python tests/aside.py status|put-back
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql

if __package__ in (None, ""):  # run as a script: testbed is beside it
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from testbed import Process

NAME = "fail2ban"  # database and user, as iRedMail's how-to names them
MARIADB_SOCKET = "/run/mysqld/mysqld.sock"
PG_OS_USER = "postgres"
ANY_NAMED = "SELECT 1 FROM pg_database WHERE datname = :'name' UNION ALL SELECT 1 FROM pg_roles WHERE rolname = :'name'"


class AsideError(RuntimeError):
    """The installation could not be set aside or put back; the state directory says where it is."""


def _run(argv: Sequence[str], stdin: str = "", timeout: int = 1800) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AsideError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return done.stdout


@contextmanager
def _mysql() -> Iterator[Any | None]:
    """A cursor of MariaDB's root (unix_socket authentication, else TCP without a password), or
    None when no MariaDB answers."""
    conn = None
    for where in ({"unix_socket": MARIADB_SOCKET}, {"host": "127.0.0.1", "port": 3306}):
        try:
            conn = pymysql.connect(user="root", password="", autocommit=True, connect_timeout=5, **where)
            break
        except pymysql.err.MySQLError:
            continue
    if conn is None:
        yield None
        return
    try:
        with conn.cursor() as cursor:
            yield cursor
    finally:
        conn.close()


def _rows(cursor: Any, query: str, *params: Any) -> list[tuple[Any, ...]]:
    cursor.execute(query, params)
    return list(cursor.fetchall())


def _ident(name: str) -> str:
    """A MariaDB identifier read from its own catalog, quoted."""
    return "`" + name.replace("`", "``") + "`"


def _psql(sql: str, **names: str) -> list[list[str]] | None:
    """Rows of the machine's PostgreSQL as its OS user over the socket, or None when it does not
    answer. `names` are psql variables: :'name' in `sql` is a quoted literal, :"name" an identifier."""
    if shutil.which("psql") is None:
        return None
    runas = ["runuser", "-u", PG_OS_USER, "--"] if os.geteuid() == 0 else []
    argv = [*runas, "psql", "-X", "-A", "-t", "-q", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", "template1"]
    argv += [arg for name, value in names.items() for arg in ("-v", f"{name}={value}")]
    try:
        out = _run(argv, sql, timeout=120)
    except AsideError:
        if subprocess.run([*argv, "-c", "SELECT 1"], capture_output=True, check=False).returncode != 0:
            return None
        raise
    return [line.split("\t") for line in out.splitlines() if line]


def _pg_home() -> Path | None:
    try:
        return Path(pwd.getpwnam(PG_OS_USER).pw_dir)
    except KeyError:
        return None


def _is_credential_line(line: str) -> bool:
    """A .pgpass line (host:port:database:username:password) of user fail2ban in database fail2ban."""
    fields = re.split(r"(?<!\\):", line.rstrip("\n"))
    return len(fields) >= 5 and fields[2] == NAME and fields[3] == NAME


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


@dataclasses.dataclass(frozen=True)
class Aside:
    """Where an installation goes while it is aside: `state` (its files) and `name` (its
    database, users and role on the servers)."""

    state: Path = Path("/var/lib/f2bsql-tests/aside")
    name: str = "f2bsql_aside"
    config: Path = Path("/etc/fail2ban")
    mycnf: Path = Path("/root/.my.cnf-fail2ban")

    @property
    def overlay(self) -> Path:
        """The file only an f2bsql installation has: its jail overlay, one section per jail."""
        return self.config / "jail.d" / "zz-f2bsql.local"

    # ----------------------------------------------------------------------- state

    def load(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state / "state.json").read_text())
        except FileNotFoundError:
            return None

    def _save(self, state: dict[str, Any]) -> None:
        self.state.mkdir(parents=True, mode=0o700, exist_ok=True)
        _write_private(self.state / "state.json.part", json.dumps(state, indent=2))
        (self.state / "state.json.part").replace(self.state / "state.json")

    @staticmethod
    def _me() -> list[int]:
        me = Process.of(os.getpid())
        assert me is not None
        return [me.pid, me.started]

    @staticmethod
    def _owner_alive(state: dict[str, Any]) -> bool:
        return Process(*state["owner"]).alive()

    def found(self) -> list[str]:
        """What this machine holds of an installation (empty: nothing to set aside)."""
        what = []
        if self.overlay.exists():
            what.append(f"f2bsql's jail overlay {self.overlay}")
        with _mysql() as cursor:
            if cursor is not None:
                if _rows(cursor, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", NAME):
                    what.append(f"database {NAME} on MariaDB")
                if _rows(cursor, "SELECT 1 FROM mysql.user WHERE User = %s", NAME):
                    what.append(f"user {NAME} on MariaDB")
        if _psql("SELECT 1 FROM pg_database WHERE datname = :'name'", name=NAME):
            what.append(f"database {NAME} on PostgreSQL")
        if _psql("SELECT 1 FROM pg_roles WHERE rolname = :'name'", name=NAME):
            what.append(f"role {NAME} on PostgreSQL")
        if self.mycnf.exists():
            what.append(f"the credential file {self.mycnf}")
        home = _pg_home()
        if (
            home
            and (home / ".pgpass").exists()
            and any(map(_is_credential_line, (home / ".pgpass").read_text().splitlines()))
        ):
            what.append(f"a line of user {NAME} in {home}/.pgpass")
        return what

    # ----------------------------------------------------------------------- MariaDB

    def _mysql_aside(self, state: dict[str, Any]) -> None:
        with _mysql() as cursor:
            if cursor is None:
                return
            hosts = [row[0] for row in _rows(cursor, "SELECT Host FROM mysql.user WHERE User = %s", NAME)]
            schema = _rows(
                cursor,
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                "WHERE SCHEMA_NAME = %s",
                NAME,
            )
            if not hosts and not schema:
                return
            if _rows(cursor, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", self.name) or _rows(
                cursor, "SELECT 1 FROM mysql.user WHERE User = %s", self.name
            ):
                raise AsideError(f"MariaDB already holds a database or user {self.name}: put it back or remove it")
            if schema:
                others = _rows(
                    cursor,
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_TYPE <> 'BASE TABLE' "
                    "UNION ALL SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s "
                    "UNION ALL SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
                    NAME, NAME, NAME,
                )  # fmt: skip
                if others:
                    raise AsideError(f"database {NAME} on MariaDB holds views, triggers or routines: {others}")
            # First what will move, then the move: a run killed in between is put back from it.
            state["mysql"] = {"hosts": hosts, "schema": list(schema[0]) if schema else None}
            self._save(state)
            if schema:
                cursor.execute(
                    f"CREATE DATABASE {_ident(self.name)} CHARACTER SET {schema[0][0]} COLLATE {schema[0][1]}"
                )
                self._move_tables(cursor, NAME, self.name)
                cursor.execute(f"DROP DATABASE {_ident(NAME)}")
            for host in hosts:
                cursor.execute("RENAME USER %s@%s TO %s@%s", (NAME, host, self.name, host))

    @staticmethod
    def _move_tables(cursor: Any, source: str, target: str) -> None:
        tables = [
            row[0]
            for row in _rows(cursor, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", source)
        ]
        if tables:  # one statement: all of them move, or none (names from the server's own catalog)
            pairs = (f"{_ident(source)}.{_ident(t)} TO {_ident(target)}.{_ident(t)}" for t in tables)
            cursor.execute(f"RENAME TABLE {', '.join(pairs)}")

    def _mysql_back(self, moved: dict[str, Any]) -> None:
        # Object by object, so that a run killed halfway through the move is put back too.
        with _mysql() as cursor:
            if cursor is None:
                raise AsideError("MariaDB does not answer")
            if moved["schema"] and _rows(
                cursor, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", self.name
            ):
                if _rows(cursor, "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", NAME):
                    raise AsideError(f"MariaDB holds a database {NAME} with tables again (a test's fixture left?)")
                charset, collation = moved["schema"]
                cursor.execute(
                    f"CREATE DATABASE IF NOT EXISTS {_ident(NAME)} CHARACTER SET {charset} COLLATE {collation}"
                )
                self._move_tables(cursor, self.name, NAME)
                cursor.execute(f"DROP DATABASE {_ident(self.name)}")
            aside = {row[0] for row in _rows(cursor, "SELECT Host FROM mysql.user WHERE User = %s", self.name)}
            named = {row[0] for row in _rows(cursor, "SELECT Host FROM mysql.user WHERE User = %s", NAME)}
            for host in moved["hosts"]:
                if host in aside and host in named:
                    raise AsideError(f"MariaDB holds a user {NAME}@{host} again (a test's fixture left?)")
                if host in aside:
                    cursor.execute("RENAME USER %s@%s TO %s@%s", (self.name, host, NAME, host))

    # ----------------------------------------------------------------------- PostgreSQL

    def _pgsql_aside(self, state: dict[str, Any]) -> None:
        database = bool(_psql("SELECT 1 FROM pg_database WHERE datname = :'name'", name=NAME))
        role = _psql("SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = :'name'", name=NAME)
        if not database and not role:
            return
        if _psql(ANY_NAMED, name=self.name):
            raise AsideError(f"PostgreSQL already holds a database or role {self.name}: put it back or remove it")
        if role and role[0][0] == "t":
            # PostgreSQL salts an MD5 password with the role's name, and clears it on a rename.
            raise AsideError(f"role {NAME} on PostgreSQL has an MD5 password, which a rename would clear")
        state["pgsql"] = {"database": database, "role": bool(role)}
        self._save(state)
        self._pg_rename(state["pgsql"], NAME, self.name)

    def _pg_rename(self, moved: dict[str, Any], source: str, target: str) -> None:
        if _psql("SELECT 1") is None:
            raise AsideError("PostgreSQL does not answer")
        statements = []
        for kind, catalog, column in (("database", "pg_database", "datname"), ("role", "pg_roles", "rolname")):
            exists = f"SELECT 1 FROM {catalog} WHERE {column} = :'name'"  # noqa: S608 - constant names
            if moved[kind] and _psql(exists, name=source):
                if _psql(exists, name=target):
                    raise AsideError(f"PostgreSQL holds a {kind} {target} already (a test's fixture left?)")
                if kind == "database":  # no session may be open in it: the helper's cron run, a panel
                    statements.append(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :'source';"
                    )
                statements.append(f'ALTER {kind.upper()} :"source" RENAME TO :"target";')
        if statements:
            _psql("\n".join(statements), source=source, target=target)

    # ----------------------------------------------------------------------- credentials

    def _files_aside(self, state: dict[str, Any]) -> None:
        home = _pg_home()
        pgpass = home / ".pgpass" if home else None
        lines = pgpass.read_text().splitlines(keepends=True) if pgpass and pgpass.exists() else []
        ours = [line for line in lines if _is_credential_line(line)]
        state["files"] = {"mycnf": self.mycnf.exists(), "pgpass": bool(ours)}
        self._save(state)
        if self.mycnf.exists():
            shutil.move(self.mycnf, self.state / self.mycnf.name)
        if pgpass and ours:
            _write_private(
                self.state / "pgpass", "".join(line if line.endswith("\n") else line + "\n" for line in ours)
            )
            pgpass.write_text("".join(line for line in lines if line not in ours))  # keeps its owner and mode

    def _files_back(self, moved: dict[str, Any]) -> None:
        if moved["mycnf"] and (self.state / self.mycnf.name).exists():
            if self.mycnf.exists():
                raise AsideError(f"{self.mycnf} exists again (a test's fixture left?)")
            shutil.move(self.state / self.mycnf.name, self.mycnf)
        saved, home = self.state / "pgpass", _pg_home()
        if moved["pgpass"] and saved.exists() and home:
            pgpass = home / ".pgpass"
            kept = pgpass.read_text() if pgpass.exists() else ""
            if any(map(_is_credential_line, kept.splitlines())):
                raise AsideError(f"{pgpass} holds a line of user {NAME} again (a test's fixture left?)")
            _write_private(pgpass, kept + ("\n" if kept and not kept.endswith("\n") else "") + saved.read_text())
            os.chown(pgpass, home.stat().st_uid, home.stat().st_gid)
            saved.unlink()

    # ----------------------------------------------------------------------- the two steps

    def set_aside(self) -> str | None:
        """Set aside what this machine holds of an installation, for this process. Returns what
        it did, or None when there was nothing (or another live run has it aside)."""
        state = self.load()
        if state is not None:
            if self._owner_alive(state):
                return None  # aside already, by a run that puts it back when it ends
            state["owner"] = self._me()  # a killed run's: adopted, put back at this run's end
            self._save(state)
            return "adopted the installation a killed run had set aside"
        what = self.found()
        if not what:
            return None
        installed = self.overlay.exists()
        jails = re.findall(r"(?m)^\[([^\]\s]+)\]", self.overlay.read_text()) if installed else []
        state = {"owner": self._me(), "installed": installed, "jails": jails}
        self._save(state)
        if installed:
            _run([sys.executable, "-m", "f2bsql", "--uninstall", "--yes"])
        self._mysql_aside(state)
        self._pgsql_aside(state)
        self._files_aside(state)
        return f"set aside {', '.join(what)}"

    def put_back(self, *, killed: bool = False) -> str | None:
        """Put back what set_aside() moved: this process's, or with `killed` a dead process's."""
        state = self.load()
        if state is None:
            return None
        if state["owner"] != self._me() and not (killed and not self._owner_alive(state)):
            return None
        if "mysql" in state:
            self._mysql_back(state["mysql"])
        if "pgsql" in state:
            self._pg_rename(state["pgsql"], self.name, NAME)
        if "files" in state:
            self._files_back(state["files"])
        if state["installed"]:
            jails = ("--jails", ",".join(state["jails"])) if state["jails"] else ()
            _run([sys.executable, "-m", "f2bsql", "--yes", *jails])
        shutil.rmtree(self.state)
        return f"put back the installation set aside (jails: {', '.join(state['jails']) or 'none'})"


MACHINE = Aside()


def require_bare_machine() -> None:
    """Before a test makes this machine iRedMail's fixture (whose cleanup drops database
    fail2ban): stop the test if an installation is still here, instead of replacing it."""
    left = MACHINE.found()
    if left:
        raise AsideError(f"this machine still holds {', '.join(left)}: the fixture would replace it")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) == 2 else ""
    if command == "status":
        state = MACHINE.load()
        print(json.dumps(state, indent=2) if state else f"nothing aside; found here: {MACHINE.found() or 'nothing'}")
    elif command == "put-back":
        print(MACHINE.put_back(killed=True) or "nothing aside, or the run that set it aside is alive")
    else:
        sys.exit(f"usage: {sys.argv[0]} status|put-back")
