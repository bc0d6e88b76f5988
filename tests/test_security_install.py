"""Secrets, permissions, idempotency and undo of a real install (playbooks/site.yml) on this machine.

On the Molecule fixture (molecule/resources/prepare.yml, held with the fixture's lock, put back
by cleanup.yml): an iRedMail host with its SQL integration, whose `fail2ban` database iRedMail's
own schema made, with rows, a user and its credential file:

- install: every row is kept and upgraded, iRedMail's password is kept; every file holding the
  password is 0600/0400 and root- or postgres-owned (iRedAdmin-Pro's settings.py is the one
  exception: the panel reads it, www-data 0640 as iRedMail installs it); the password is in no
  process command line (sampled every 10 ms through the runs and a ban) and not in Ansible's
  output at default verbosity; the database user can do nothing outside its own database;
- install again: 0 changes;
- uninstall (iRedMail's helper is back), crash fail2ban, install again with no hand work (the
  password comes back with iRedMail's credential file): the same state as after the first
  install (files, modes, owners, cron, grants, schema and rows).

f2bsql-install's own log is checked by test_installer.py's end-to-end test. Slow: five
playbook runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.sql
import pymysql
import pytest
from aside import require_bare_machine
from testbed import (
    MOLECULE_RESOURCES,
    REPO,
    Database,
    MysqlDatabase,
    PgsqlDatabase,
    Server,
    fixture_env,
    host_module,
    record_figure,
    run_whole,
    wait_for,
)

# Provisions this machine: one pytest-xdist lane with the other such tests (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("machine")

PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")

OWNER = f"f2bsql-security-install-{os.getpid()}"
MYSQL_CREDENTIALS = Path("/root/.my.cnf-fail2ban")
PGPASS = Path("/var/lib/postgresql/.pgpass")
SETTINGS = Path("/opt/www/iredadmin/settings.py")
SPOOL = "/var/spool/f2bsql"
FAIL2BAN_PIDFILE = Path("/var/run/fail2ban/fail2ban.pid")
FAIL2BAN_SOCKET = Path("/var/run/fail2ban/fail2ban.sock")
# Where an install writes, and where a leaked password would land.
SCANNED = [
    "/etc",
    "/root",
    "/var/lib/postgresql",
    "/opt/www",
    "/usr/local",
    "/var/spool",
    "/var/log",
    "/tmp",
    "/var/tmp",
]
# What makes up "the state of an installed host" (beside cron, grants, schema and rows).
STATE_TREES = ["/etc/fail2ban", "/usr/local/bin", "/opt/www/iredadmin", "/var/spool/f2bsql"]
#: The columns of iRedMail's rows (the fixture's) that must come through the install unchanged.
ROW_COLUMNS = ("ip", "ports", "protocol", "jail", "hostname", "country", "rdns", "failures", "loglines", "remove")


def run(*cmd: str, timeout: int = 2400, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**fixture_env(OWNER), "ANSIBLE_FORCE_COLOR": "0"}
    done = run_whole(cmd, timeout, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done


def playbook(path: Path, backend: str, *extra: str) -> subprocess.CompletedProcess[str]:
    done = run(
        PLAYBOOK, "-i", "localhost,", "-c", "local", str(path), "-e", f"f2bsql_database_backend={backend}", *extra
    )
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return done


def changed(done: subprocess.CompletedProcess[str]) -> int:
    [count] = re.findall(r"^localhost\s+:\s+ok=\d+\s+changed=(\d+)", done.stdout, re.MULTILINE)
    return int(count)


class CommandLines:
    """Every process command line on this machine, sampled every 10 ms while it runs."""

    def __init__(self) -> None:
        self.seen: dict[bytes, None] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        self.seen[Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")] = None
            self.samples += 1
            self._stop.wait(0.01)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def holding(self, password: str) -> list[bytes]:
        return [line for line in self.seen if password.encode() in line]


# --------------------------------------------------------------------------- the databases


def machine_server(backend: str) -> Server:
    """The machine's own database server (the one site.yml provisions), as its administrator."""
    if backend == "mysql":
        return Server("mysql", "127.0.0.1", 3306, "root", "", "/run/mysqld/mysqld.sock", admin_via_socket=True)
    return Server("pgsql", "127.0.0.1", 5432, "postgres", "")  # pg_hba: trust on 127.0.0.1


def fail2ban_db(backend: str, password: str) -> Database:
    kind = MysqlDatabase if backend == "mysql" else PgsqlDatabase
    return kind(machine_server(backend), "fail2ban", password)


def installed_password(backend: str) -> str:
    if backend == "mysql":
        [password] = re.findall(r"^\s*password\s*=\s*\"?([^\"\n]*)\"?\s*$", MYSQL_CREDENTIALS.read_text(), re.M)
    else:
        [password] = [line.split(":", 4)[4] for line in PGPASS.read_text().splitlines() if ":fail2ban:" in line]
    return str(password)


def admin_rows(backend: str, table: str = "banned") -> list[dict[str, Any]]:
    """The rows of a table of the machine's `fail2ban` database, read as its administrator."""
    assert table in ("banned", "jails")
    server = machine_server(backend)
    if backend == "mysql":
        conn = pymysql.connect(unix_socket=server.unix_socket, user="root", database="fail2ban")
    else:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="fail2ban")
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608 - one of two names
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        conn.close()


def drop_machine_database(backend: str) -> None:
    db = fail2ban_db(backend, "")
    with contextlib.suppress(pymysql.err.MySQLError, psycopg2.Error):
        db.drop()


# --------------------------------------------------------------------------- checks


def check_files_holding(*passwords: str) -> list[str]:
    """Every file under SCANNED holding a password: 0600/0400, root/postgres; settings.py apart."""
    found, problems = [], []
    needles = [password.encode() for password in passwords]
    for top in SCANNED:
        for folder, dirs, files in os.walk(top):
            dirs[:] = [name for name in dirs if not os.path.islink(os.path.join(folder, name))]
            for name in files:
                path = Path(folder, name)
                try:
                    info = path.lstat()
                    if not stat.S_ISREG(info.st_mode) or info.st_size > 8 * 1024 * 1024:
                        continue
                    content = path.read_bytes()
                    if not any(needle in content for needle in needles):
                        continue
                except OSError:
                    continue
                found.append(str(path))
                mode, owner = stat.S_IMODE(info.st_mode), _user(info.st_uid)
                if path == SETTINGS:  # iRedAdmin-Pro reads it as www-data: never world-readable
                    if mode & 0o007:
                        problems.append(f"{path}: {mode:o} is world-readable")
                elif mode not in (0o600, 0o400) or owner not in ("root", "postgres"):
                    problems.append(f"{path}: mode {mode:o}, owner {owner}")
    assert not problems, "files holding the password:\n" + "\n".join(problems)
    return found


def _user(uid: int) -> str:
    try:
        return str(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return str(uid)


def check_rights_end_at_its_database(backend: str, password: str) -> None:
    """The fail2ban user works in `fail2ban` and nowhere else."""
    other = f"f2bsql_other_{secrets.token_hex(4)}"
    server = machine_server(backend)
    if backend == "mysql":
        admin = pymysql.connect(unix_socket=server.unix_socket, user="root", autocommit=True)
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{other}`")
            cursor.execute(f"CREATE TABLE `{other}`.secret (v INT)")
        try:
            own = pymysql.connect(host="127.0.0.1", user="fail2ban", password=password, database="fail2ban")
            with own.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM banned")
                cursor.execute("SHOW DATABASES")
                assert {row[0] for row in cursor.fetchall()} == {"fail2ban", "information_schema"}
                # The other database's name is made here (f2bsql_other_<hex>), never taken from input.
                for statement in (f"SELECT * FROM `{other}`.secret", "SELECT * FROM mysql.user",  # noqa: S608
                                  "CREATE DATABASE f2bsql_not_allowed"):  # fmt: skip
                    with pytest.raises(pymysql.err.OperationalError, match="denied"):
                        cursor.execute(statement)
            own.close()
            for database in (other, "mysql"):
                with pytest.raises(pymysql.err.OperationalError, match="denied"):
                    pymysql.connect(host="127.0.0.1", user="fail2ban", password=password, database=database)
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE `{other}`")
            admin.close()
        return
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(psycopg2.sql.SQL("CREATE DATABASE {}").format(psycopg2.sql.Identifier(other)))
    try:
        setup = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=other)
        setup.autocommit = True
        with setup.cursor() as cursor:
            cursor.execute("CREATE TABLE secret (v INT)")
        setup.close()
        # PostgreSQL lets any role connect to any database (PUBLIC's CONNECT); it must find
        # nothing it may read or write there, nor create databases or roles.
        own = psycopg2.connect(host="127.0.0.1", port=5432, user="fail2ban", password=password, dbname=other)
        own.autocommit = True
        with own.cursor() as cursor:
            for statement in ("SELECT * FROM secret", "CREATE TABLE public.mine (v INT)",
                              "CREATE DATABASE f2bsql_not_allowed", "CREATE ROLE f2bsql_not_allowed"):  # fmt: skip
                with pytest.raises(psycopg2.Error, match="permission denied"):
                    cursor.execute(statement)
        own.close()
    finally:
        with admin.cursor() as cursor:
            cursor.execute(psycopg2.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg2.sql.Identifier(other)))
        admin.close()


def snapshot(backend: str, password: str) -> dict[str, Any]:
    """The installed state, with the password masked: files, cron, grants, schema and rows."""
    state: dict[str, Any] = {}
    for top in STATE_TREES:
        for folder, _dirs, files in os.walk(top):
            # The spool's own files come and go with cron's runs: only the directory counts.
            for name in [".", *([] if folder.startswith("/var/spool/f2bsql") else files)]:
                path = Path(folder, name)
                info = path.lstat()
                digest = ""
                if stat.S_ISREG(info.st_mode) and path.suffix not in (".pyc",):
                    content = path.read_bytes().replace(password.encode(), b"<password>")
                    digest = hashlib.sha256(content).hexdigest()
                state[str(path)] = (stat.S_IMODE(info.st_mode), _user(info.st_uid), digest)
    credential = MYSQL_CREDENTIALS if backend == "mysql" else PGPASS
    info = credential.lstat()
    masked = credential.read_text().replace(password, "<password>")
    state[str(credential)] = (stat.S_IMODE(info.st_mode), _user(info.st_uid), masked)
    state["crontab"] = run("crontab", "-l", "-u", "root").stdout
    db = fail2ban_db(backend, password)
    state["schema"] = db.fingerprint()
    state["rows"] = [row for row in db.banned() if row["hostname"] == "mx.example.test"]
    if backend == "mysql":
        admin = pymysql.connect(unix_socket="/run/mysqld/mysqld.sock", user="root")
        with admin.cursor() as cursor:
            cursor.execute("SELECT Host FROM mysql.user WHERE User = 'fail2ban' ORDER BY Host")
            hosts = [row[0] for row in cursor.fetchall()]
            grants = []
            for host in hosts:
                cursor.execute("SHOW GRANTS FOR %s@%s", ("fail2ban", host))
                grants += [re.sub(r"PASSWORD '[^']*'", "PASSWORD <hash>", row[0]) for row in cursor.fetchall()]
        admin.close()
        state["grants"] = grants
    else:
        state["grants"] = db.query(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolinherit, rolreplication, rolbypassrls"
            " FROM pg_roles WHERE rolname = 'fail2ban'"
        )
    db.close()
    return state


def crash_fail2ban() -> None:
    """Kill the machine's fail2ban-server as the OOM killer would: its socket stays behind, and
    Debian's init script refuses to start fail2ban beside it."""
    pid = int(FAIL2BAN_PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), "fail2ban-server to die", timeout=30)
    assert FAIL2BAN_SOCKET.is_socket()
    refused = run("service", "fail2ban", "start")
    assert "is present" in refused.stdout + refused.stderr, refused


# --------------------------------------------------------------------------- the test


@contextlib.contextmanager
def iredmail_fixture(backend: str) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("the install tests provision this machine: run them as root")
    require_bare_machine()  # before the finally below, which drops the machine's database
    try:
        playbook(MOLECULE_RESOURCES / "prepare.yml", backend)  # waits while another run holds the fixture
        yield
    finally:
        playbook(MOLECULE_RESOURCES / "cleanup.yml", backend, "-e", "f2bsql_database_drop=true")
        drop_machine_database(backend)


@pytest.mark.slow
# MariaDB, the backend where the password also goes into iRedAdmin-Pro's settings.py. The same
# roles on PostgreSQL are checked by test_installer.py's end-to-end test (.pgpass 0600, the
# password in no output or log, install again changes nothing, uninstall) and by Molecule's
# postgresql scenario; this cycle for both would take CI over its time (about 5 minutes each).
@pytest.mark.parametrize("backend", ["mysql"])
def test_install_twice_uninstall_install_keeps_secrets_and_state(backend: str) -> None:
    timings: dict[str, float] = {}

    def timed(name: str, *extra: str, path: Path = REPO / "playbooks" / "site.yml") -> subprocess.CompletedProcess[str]:
        began = time.monotonic()
        done = playbook(path, backend, *extra)
        timings[name] = time.monotonic() - began
        return done

    with iredmail_fixture(backend), CommandLines() as watch:
        password = installed_password(backend)  # iRedMail's, from the file its installer wrote
        # As the administrator: iRedMail's user is 'fail2ban'@'localhost', which a TCP login from
        # 127.0.0.1 does not match where the server skips name resolution (the install adds it).
        iredmail_rows = [{key: row[key] for key in ROW_COLUMNS} for row in admin_rows(backend)]
        assert len(iredmail_rows) == 3, "the fixture lacks iRedMail's rows"
        first = timed("install")
        assert changed(first) > 0
        assert installed_password(backend) == password, "the install did not keep iRedMail's password"
        db = fail2ban_db(backend, password)
        kept = [{key: row[key] for key in ROW_COLUMNS} for row in db.banned() if row["hostname"] == "mx.example.test"]
        assert kept == [{**row, "remove": row["remove"] or 0} for row in iredmail_rows], "iRedMail's rows changed"
        db.close()
        check_rights_end_at_its_database(backend, password)

        again = timed("install again")
        assert changed(again) == 0, f"the second install changed things:\n{again.stdout[-3000:]}"
        state = snapshot(backend, password)

        # Events in the spool: one waiting (the database was away), one the database refused for
        # good (set aside in rejected/). The uninstall keeps the spool, and says how many it holds.
        hostname = host_module("settings").load_settings(None, None).hostname
        spool = host_module("spool").Spool(SPOOL)
        start = host_module("events").Start
        spool.put(start("f2bt-waiting", hostname))
        spool.put(start("f2bt-refused", hostname), rejected=True)
        gone = timed("uninstall", path=REPO / "playbooks" / "uninstall.yml")
        assert b"f2bsql" not in Path("/usr/local/bin/fail2ban_banned_db").read_bytes(), "iRedMail's helper is not back"
        # fail2ban's stop, before the uninstall changes a file, may replay the waiting one (the
        # actions' stop does): in the spool still, or in the table, never lost. The refused one stays.
        waiting = list(Path(SPOOL).glob("*.json"))
        rejected = list(Path(SPOOL, "rejected").glob("*.json"))
        delivered = [row for row in admin_rows(backend, "jails") if row["name"] == "f2bt-waiting"]
        assert len(waiting) + len(delivered) == 1, "the uninstall lost a waiting event"
        assert len(rejected) == 1, "the uninstall lost an event set aside"
        said = re.search(
            r"Spool: kept, with (\d+) event\(s\) still waiting in /var/spool/f2bsql \(replay them\)"
            r" and (\d+) the database refused, set aside in /var/spool/f2bsql/rejected",
            gone.stdout,
        )
        assert said, "the uninstall did not say what it kept"
        assert len(waiting) <= int(said[1]) <= 1 and int(said[2]) == 1, said[0]
        crash_fail2ban()  # the install's restart must cope with the socket the crash leaves
        # The user is still there (its database stays); its password came back with iRedMail's file.
        third = timed("install after uninstall")
        password_now = installed_password(backend)
        assert password_now == password
        run("/usr/bin/python3", "/usr/local/bin/fail2ban_banned_db", "replay", check=True)  # what cron would do
        assert list(Path(SPOOL).glob("*.json")) == []
        assert "f2bt-waiting" in [row["name"] for row in admin_rows(backend, "jails")]
        waited = fail2ban_db(backend, password)
        waited.execute("DELETE FROM jails WHERE name = %s", ("f2bt-waiting",))
        waited.close()
        shutil.rmtree(SPOOL)  # made for the test's event (locks only now): the first install had none
        assert snapshot(backend, password_now) == state, "uninstall + install did not give back the same state"

        # A ban through the installed action, watched like the runs.
        run("fail2ban-client", "set", "dovecot", "banip", "192.0.2.99")
        db = fail2ban_db(backend, password_now)
        wait_for(lambda: db.banned(ip="192.0.2.99"), "the ban's row", timeout=30)
        db.close()
        holders = check_files_holding(password, password_now)
        credential = MYSQL_CREDENTIALS if backend == "mysql" else PGPASS
        assert {str(credential), str(SETTINGS)} <= set(holders), f"the scan missed the known holders: {holders}"
    outputs = first.stdout + first.stderr + again.stdout + again.stderr + third.stdout + third.stderr
    for secret in (password, password_now):
        assert secret not in outputs, "a password is in Ansible's output"
        assert watch.holding(secret) == [], f"a password was on a command line: {watch.holding(secret)[:2]}"
    left = check_files_holding(password, password_now)
    assert left == [], f"the password outlived the uninstall (drop) in {left}"
    record_figure(
        f"install cycle ({backend}): install {changed(first)} changes {timings['install']:.0f} s, again 0 changes"
        f" {timings['install again']:.0f} s, uninstall + install = same state (files, modes, cron, grants, schema,"
        f" rows); {len(iredmail_rows)} iRedMail rows kept; password in {len(holders)} files ({', '.join(holders)}),"
        f" all 0600 root/postgres but settings.py (0640 www-data), none after uninstall; in 0 of"
        f" {len(watch.seen)} command lines ({watch.samples} samples) and not in Ansible's output; other"
        f" databases denied"
    )
