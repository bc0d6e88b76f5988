"""Database servers a test owns: its own MariaDB or PostgreSQL, which it may crash and restart.

The machine's MariaDB and the session's PostgreSQL cluster are shared by every test and stay
up; a test that stops its database mid-burst starts one of these instead. Both are the
machine's own server binaries on a free loopback port, with real users and passwords:
MariaDB from mariadb-install-db, PostgreSQL from initdb with scram-sha-256, run as the OS users
the packages run them as.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pymysql
from testbed import Server, free_port, wait_for, write_private


class ServiceMissing(Exception):
    """What the machine lacks to run the server (the caller decides: fail in CI, skip elsewhere)."""


def _owner(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServiceMissing(f"no {name} OS user to run the server as") from None


class OwnServer:
    """A server in a directory of its own; start(), crash() and stop() as often as wanted."""

    backend = ""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"f2bsql-own-{self.backend}-"))
        self.port = free_port()
        self.log = self.root / "server.log"

    def server(self) -> Server:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def crash(self) -> None:
        """Die at once, as on a power cut of the server process: no shutdown, no goodbye."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The server's processes (PostgreSQL: the postmaster and its children)."""
        raise NotImplementedError

    def freeze(self) -> None:
        """Stop answering, connections left open: a server stuck on its disk, or swapping hard."""
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.pids():
            os.kill(pid, signal.SIGCONT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


class OwnMariadb(OwnServer):
    backend = "mysql"

    def __init__(self) -> None:
        for program in ("mariadb-install-db", "mariadbd"):
            if shutil.which(program, path="/usr/bin:/usr/sbin") is None:
                raise ServiceMissing(f"{program} is not installed (Debian package mariadb-server)")
        owner = _owner("mysql")
        super().__init__()
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        install = subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={self.data}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if install.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise ServiceMissing(f"mariadb-install-db failed: {install.stderr.strip()[-2000:]}")

    def server(self) -> Server:
        # root@localhost without a password, through the socket (as Debian's root reaches MariaDB).
        return Server("mysql", "127.0.0.1", self.port, "root", "", str(self.socket), admin_via_socket=True)

    def start(self) -> None:
        assert self.proc is None, "already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", f"--datadir={self.data}",
                 f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
                 f"--pid-file={self.root / 'mysqld.pid'}", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                 "--max-connections=500"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(self.answers, f"the own MariaDB on port {self.port}\n{self.log_tail()}", timeout=60)

    def answers(self) -> bool:
        try:
            pymysql.connect(
                unix_socket=str(self.socket), user="root", password="", connect_timeout=2, autocommit=True
            ).close()
        except pymysql.err.MySQLError:
            return False
        return True

    def pids(self) -> list[int]:
        return [] if self.proc is None else [self.proc.pid]

    def crash(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self.proc = None


class OwnPostgres(OwnServer):
    """A cluster with scram-sha-256 everywhere, so that passwords are really checked."""

    backend = "pgsql"

    def __init__(self) -> None:
        bindir = self.bindir()
        if bindir is None:
            raise ServiceMissing("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
        self.as_postgres: list[str] = []
        owner = None
        if os.geteuid() == 0:
            owner = _owner("postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        super().__init__()
        self.pg_ctl = str(bindir / "pg_ctl")
        self.data = self.root / "data"
        self.password = secrets.token_hex(18)
        pwfile = self.root / "pwfile"
        write_private(pwfile, self.password + "\n")
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        initdb = subprocess.run(
            [*self.as_postgres, str(bindir / "initdb"), "-D", str(self.data), "--auth=scram-sha-256",
             f"--pwfile={pwfile}", "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        pwfile.unlink()
        if initdb.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise ServiceMissing(f"initdb failed: {initdb.stderr.strip()[-2000:]}")

    @staticmethod
    def bindir() -> Path | None:
        def version(path: str) -> int:
            name = Path(path).parent.name
            return int(name) if name.isdigit() else 0

        for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
            if os.access(os.path.join(path, "initdb"), os.X_OK) and os.access(os.path.join(path, "pg_ctl"), os.X_OK):
                return Path(path)
        return None

    def server(self) -> Server:
        return Server("pgsql", "127.0.0.1", self.port, "postgres", self.password, unix_socket=str(self.root))

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_postgres, self.pg_ctl, "-D", str(self.data), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300"
        done = self._pg_ctl("-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        assert done.returncode == 0, f"pg_ctl start: {done.stderr}\n{self.log_tail()}"
        wait_for(self.answers, f"the own PostgreSQL on port {self.port}", timeout=60)

    def answers(self) -> bool:
        try:
            psycopg2.connect(
                host="127.0.0.1", port=self.port, user="postgres", password=self.password,
                dbname="postgres", connect_timeout=2,
            ).close()  # fmt: skip
        except psycopg2.Error:
            return False
        return True

    def pids(self) -> list[int]:
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False)
        return [postmaster, *(int(pid) for pid in children.stdout.split())]

    def crash(self) -> None:
        # Immediate mode: every server process quits without a checkpoint; recovery at the next start.
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("-m", "fast", "-w", "stop")


OWN_SERVERS: dict[str, type[OwnServer]] = {"mysql": OwnMariadb, "pgsql": OwnPostgres}
