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

from testbed import FIXTURE_LOCK, FIXTURE_VARS, Process, run_whole

NAME = "fail2ban"  # database and user, as iRedMail's how-to names them
MARIADB_SOCKET = "/run/mysqld/mysqld.sock"
PG_OS_USER = "postgres"
FIXTURE_STATE = Path(FIXTURE_VARS["f2bsql_molecule_state"])
ANY_NAMED = "SELECT 1 FROM pg_database WHERE datname = :'name' UNION ALL SELECT 1 FROM pg_roles WHERE rolname = :'name'"


class AsideError(RuntimeError):
    """The installation could not be set aside or put back; the state directory says where it is."""


def _failed(done: subprocess.CompletedProcess[str]) -> AsideError:
    argv = done.args if isinstance(done.args, str) else " ".join(done.args)
    return AsideError(f"{argv} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")


def _run(argv: Sequence[str], stdin: str, timeout: int = 120) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise _failed(done)
    return done.stdout


def _installer(*args: str) -> None:
    """f2bsql-install of this checkout, killed with its ansible-playbook at the timeout."""
    done = run_whole(
        [sys.executable, "-m", "f2bsql", *args], 600, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/"
    )
    if done.returncode != 0:
        raise _failed(done)


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
        out = _run(argv, sql)
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
    spool: Path = Path("/var/spool/f2bsql")  # f2bsql_fail2ban_spool_dir; uninstall keeps it with events

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
        # "manual": set aside by hand (`tests/aside.py set-aside`), put back only by hand.
        return state["owner"] == "manual" or Process(*state["owner"]).alive()

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
        if self._pgpass_lines():
            what.append(f"a line of user {NAME} in {PG_OS_USER}'s .pgpass")
        return what

    @staticmethod
    def _pgpass_lines() -> list[str]:
        home = _pg_home()
        pgpass = home / ".pgpass" if home else None
        lines = pgpass.read_text().splitlines(keepends=True) if pgpass and pgpass.exists() else []
        return [line if line.endswith("\n") else line + "\n" for line in lines if _is_credential_line(line)]

    # ----------------------------------------------------------------------- aside

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
                    "UNION ALL SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s "
                    "UNION ALL SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s",
                    NAME, NAME, NAME, NAME,
                )  # fmt: skip
                if others:
                    raise AsideError(f"database {NAME} on MariaDB holds views, triggers, routines or events: {others}")
            # First what will move, then the move: a run killed in between is put back from it.
            state["mysql"] = {"hosts": hosts, "schema": list(schema[0]) if schema else None}
            self._save(state)
            if schema:
                self._move_database(cursor, state["mysql"]["schema"], NAME, self.name)
            for host in hosts:
                cursor.execute("RENAME USER %s@%s TO %s@%s", (NAME, host, self.name, host))

    @staticmethod
    def _move_database(cursor: Any, schema: list[str], source: str, target: str) -> None:
        """Database `source` becomes `target`: created (with the same character set), its tables
        renamed into it in one statement (all of them move, or none), `source` dropped. Where a
        killed run left `target` already, with or without the tables, this finishes the move."""
        charset, collation = schema
        cursor.execute(f"CREATE DATABASE IF NOT EXISTS {_ident(target)} CHARACTER SET {charset} COLLATE {collation}")
        tables = [
            row[0]
            for row in _rows(cursor, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", source)
        ]
        if tables:  # names from the server's own catalog
            pairs = (f"{_ident(source)}.{_ident(t)} TO {_ident(target)}.{_ident(t)}" for t in tables)
            cursor.execute(f"RENAME TABLE {', '.join(pairs)}")
        cursor.execute(f"DROP DATABASE IF EXISTS {_ident(source)}")

    def _pgsql_aside(self, state: dict[str, Any]) -> None:
        database = bool(_psql("SELECT 1 FROM pg_database WHERE datname = :'name'", name=NAME))
        role = _psql(
            "SELECT coalesce(rolpassword LIKE 'md5%', false) FROM pg_authid WHERE rolname = :'name'", name=NAME
        )
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

    @staticmethod
    def _pg_rename(moved: dict[str, Any], source: str, target: str) -> None:
        statements = []
        for kind, catalog, column in (("database", "pg_database", "datname"), ("role", "pg_roles", "rolname")):
            exists = f"SELECT 1 FROM {catalog} WHERE {column} = :'name'"  # noqa: S608 - constant names
            if moved[kind] and _psql(exists, name=source):
                if kind == "database":  # no session may be open in it: the helper's cron run, a panel
                    statements.append(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :'source';"
                    )
                statements.append(f'ALTER {kind.upper()} :"source" RENAME TO :"target";')
        if statements:
            _psql("\n".join(statements), source=source, target=target)

    def _files_aside(self, state: dict[str, Any]) -> None:
        ours = self._pgpass_lines()
        state["files"] = {"mycnf": self.mycnf.exists(), "pgpass": bool(ours), "spool": self.spool.exists()}
        self._save(state)
        if self.mycnf.exists():
            shutil.move(self.mycnf, self.state / self.mycnf.name)
        if self.spool.exists():  # events the uninstall kept: the fixture's install would replay them
            shutil.move(self.spool, self.state / "spool")
        home = _pg_home()
        if ours and home:
            _write_private(self.state / "pgpass", "".join(ours))
            pgpass = home / ".pgpass"
            kept = [line for line in pgpass.read_text().splitlines(keepends=True) if not _is_credential_line(line)]
            pgpass.write_text("".join(kept))  # keeps its owner and mode

    # ----------------------------------------------------------------------- back

    def _in_the_way(self, state: dict[str, Any]) -> list[str]:
        """What stands where the installation goes back: then nothing moves."""
        problems = []
        if FIXTURE_LOCK.exists() or FIXTURE_STATE.exists():
            problems.append(f"a test's fixture is still on this machine ({FIXTURE_LOCK}, {FIXTURE_STATE})")
        if "mysql" in state:
            with _mysql() as cursor:
                if cursor is None:
                    problems.append("MariaDB does not answer")
                else:
                    tables = "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                    if _rows(cursor, tables, self.name) and _rows(cursor, tables, NAME):
                        problems.append(f"MariaDB holds a database {NAME} with tables again")
                    users = "SELECT Host FROM mysql.user WHERE User = %s"
                    both = {row[0] for row in _rows(cursor, users, self.name)} & {
                        row[0] for row in _rows(cursor, users, NAME)
                    }
                    problems += [f"MariaDB holds a user {NAME}@{host} again" for host in sorted(both)]
        if "pgsql" in state:
            if _psql("SELECT 1") is None:
                problems.append("PostgreSQL does not answer")
            for kind, catalog, column in (("database", "pg_database", "datname"), ("role", "pg_roles", "rolname")):
                exists = f"SELECT 1 FROM {catalog} WHERE {column} = :'name'"  # noqa: S608 - constant names
                if state["pgsql"][kind] and _psql(exists, name=self.name) and _psql(exists, name=NAME):
                    problems.append(f"PostgreSQL holds a {kind} {NAME} again")
        if (self.state / self.mycnf.name).exists() and self.mycnf.exists():
            problems.append(f"{self.mycnf} exists again")
        saved = self.state / "pgpass"
        if saved.exists() and set(self._pgpass_lines()) - set(saved.read_text().splitlines(keepends=True)):
            problems.append(f"{PG_OS_USER}'s .pgpass holds another line of user {NAME}")
        if (self.state / "spool").exists() and self.spool.exists() and any(p.is_file() for p in self.spool.rglob("*")):
            problems.append(f"{self.spool} holds events again")
        return problems

    def _files_back(self) -> None:
        if (self.state / self.mycnf.name).exists():
            shutil.move(self.state / self.mycnf.name, self.mycnf)
        if (self.state / "spool").exists():
            if self.spool.exists():
                shutil.rmtree(self.spool)  # without a file: _in_the_way said so
            shutil.move(self.state / "spool", self.spool)
        saved, home = self.state / "pgpass", _pg_home()
        if saved.exists() and home:
            missing = [line for line in saved.read_text().splitlines(keepends=True) if line not in self._pgpass_lines()]
            if missing:  # (a run killed while moving them out may have left them in place)
                pgpass = home / ".pgpass"
                kept = pgpass.read_text() if pgpass.exists() else ""
                _write_private(pgpass, kept + ("\n" if kept and not kept.endswith("\n") else "") + "".join(missing))
                os.chown(pgpass, home.stat().st_uid, home.stat().st_gid)
            saved.unlink()

    # ----------------------------------------------------------------------- the two steps

    def set_aside(self, *, manual: bool = False) -> str | None:
        """Set aside what this machine holds of an installation, for this process (or, with
        `manual`, until put back by hand). Returns what it did, or None when there was nothing to
        do: nothing here, or it is aside already for a live run or by hand. What a killed run set
        aside is put back first, then set aside again. Should a step fail, what moved goes back."""
        state = self.load()
        if state is not None:
            if self._owner_alive(state):
                return None
            self.put_back(killed=True)
        what = self.found()
        if not what:
            return None
        installed = self.overlay.exists()
        jails = re.findall(r"(?m)^\[([^\]\s]+)\]", self.overlay.read_text()) if installed else []
        state = {"owner": "manual" if manual else self._me(), "installed": installed, "jails": jails}
        self._save(state)
        try:
            if installed:
                _installer("--uninstall", "--yes")
            self._mysql_aside(state)
            self._pgsql_aside(state)
            self._files_aside(state)
        except BaseException as exc:
            try:
                self._put_back(state)
            except Exception as undo:  # both are reported
                raise AsideError(f"{exc}\nand putting back what had moved failed too: {undo}") from exc
            raise
        return f"set aside {', '.join(what)}"

    def put_back(self, *, killed: bool = False, manual: bool = False) -> str | None:
        """Put back what set_aside() moved: this process's; with `killed`, a dead process's; with
        `manual`, also one set aside by hand. None when there is none of those."""
        state = self.load()
        if state is None:
            return None
        mine = state["owner"] == self._me()
        if not (mine or (killed and not self._owner_alive(state)) or (manual and state["owner"] == "manual")):
            return None
        return self._put_back(state)

    def _put_back(self, state: dict[str, Any]) -> str:
        problems = self._in_the_way(state)
        if problems:
            raise AsideError(f"{'; '.join(problems)}: the installation stays aside in {self.state}")
        if "mysql" in state:
            with _mysql() as cursor:
                if state["mysql"]["schema"] and _rows(
                    cursor, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", self.name
                ):
                    self._move_database(cursor, state["mysql"]["schema"], self.name, NAME)
                for (host,) in _rows(cursor, "SELECT Host FROM mysql.user WHERE User = %s", self.name):
                    if host in state["mysql"]["hosts"]:
                        cursor.execute("RENAME USER %s@%s TO %s@%s", (self.name, host, NAME, host))
        if "pgsql" in state:
            self._pg_rename(state["pgsql"], self.name, NAME)
        self._files_back()
        if state["installed"]:
            _installer("--yes", *(("--jails", ",".join(state["jails"])) if state["jails"] else ()))
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
    elif command == "set-aside":  # for Molecule's localhost scenarios by hand
        print(MACHINE.set_aside(manual=True) or "nothing to set aside, or it is aside already")
    elif command == "put-back":
        print(MACHINE.put_back(killed=True, manual=True) or "nothing aside, or the run that set it aside is alive")
    else:
        sys.exit(f"usage: {sys.argv[0]} status|set-aside|put-back")
