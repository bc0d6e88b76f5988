"""Fixtures on real services: MariaDB, a scram-sha-256 PostgreSQL cluster of our own, fail2ban.

In CI (CI=true) a missing service fails the test that needs it, and any skipped test turns the
run's exit status into a failure: green must mean "everything ran". On a developer's machine a
missing service skips with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import aside
import psycopg2
import pymysql
import pytest
from servers import OWN_SERVERS, OwnServer, ServiceMissing
from testbed import (
    BACKENDS,
    FIGURES,
    HELPER,
    Database,
    Fail2ban,
    Host,
    Server,
    free_port,
    mysql_admin,
    new_database,
    put_back_stale_fixture,
    reap_lingering,
    write_private,
)

IN_CI = os.environ.get("CI", "").lower() == "true"

MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 3306
MARIADB_SOCKET = "/run/mysqld/mysqld.sock"


def need_service(reason: str) -> NoReturn:
    """A service the test needs is missing: a failure in CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------- CI: skips fail

_skipped: list[str] = []


_figures: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # xfail is reported through `skipped` too, but pytest counts it apart ("xfailed"): so do we.
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)
    _figures.extend(value for name, value in report.user_properties if name == "f2bsql figure")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # A figure travels in the report of the phase that recorded it: pytest-xdist's workers send
    # reports, not module globals, to the process that prints the summary.
    outcome = yield
    report = outcome.get_result()
    report.user_properties.extend(("f2bsql figure", FIGURES.pop(0)) for _ in range(len(FIGURES)))


# --------------------------------------------------------------------------- two lanes
# pytest-xdist runs two workers (pyproject's addopts: -n 2 --dist loadgroup). Tests that provision
# this machine (its /etc/fail2ban, cron, iRedAdmin-Pro's settings.py, the `fail2ban` database)
# run one after the other in one lane; molecule/fresh runs in containers and the rest on their
# own databases, fail2ban-servers and directories, so they go beside it. The machine-wide tests
# also take the fixture's lock (molecule/resources/tasks/lock.yml): a second pytest waits.
# The modules mark their tests with xdist_group("machine") or xdist_group("containers").
LANES = {"machine": 0, "containers": 1}


def _lane(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    return str(mark.args[0]) if mark is not None else None


#: pytest-timeout's limit for a test marked slow (pyproject's `timeout` for the others): above
#: the timeouts such a test gives its own Ansible and Molecule runs.
SLOW_TIMEOUT = 2700


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The long lanes first, so that the short tests fill the gaps beside them, not before them.
    items.sort(key=lambda item: LANES.get(_lane(item) or "", len(LANES)))
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    # In a worker, pytest-xdist has put each test's group into its id ("…@machine"); if it did not,
    # the lanes would mix and two tests would provision this machine at once.
    if os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup"):
        lost = [item.nodeid for item in session.items if _lane(item) and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist did not group {lost[0]} (see pyproject.toml's pin of pytest)")


def pytest_sessionstart(session: pytest.Session) -> None:
    # A run killed halfway (a CI job cut off, a session ended) leaves this machine as the
    # iRedMail fixture, its lock held by a process that is gone: put the machine back first, so
    # that no test starts on the fixture's leftovers. Once, in the process that runs the session.
    if os.environ.get("PYTEST_XDIST_WORKER") or os.geteuid() != 0:
        return
    try:
        done = put_back_stale_fixture()
    except RuntimeError as exc:
        raise pytest.UsageError(f"this machine is still a killed run's fixture: {exc}") from exc
    if done:
        print(f"f2bsql tests: {done}")
    # Then the installation such a run had set aside (tests/aside.py).
    try:
        done = aside.MACHINE.put_back(killed=True)
    except aside.AsideError as exc:
        raise pytest.UsageError(f"a killed run's set-aside installation could not be put back: {exc}") from exc
    if done:
        print(f"f2bsql tests: {done}")


@pytest.fixture(scope="session")
def installation_set_aside() -> Iterator[None]:
    """An installation of f2bsql on this machine (the README's quick start makes one) set aside
    while the machine lane provisions the machine, and put back after its last test (tests/aside.py)."""
    if os.geteuid() != 0:
        yield  # the machine-lane tests fail on their own: they provision as root
        return
    try:
        done = aside.MACHINE.set_aside()
    except aside.AsideError as exc:
        pytest.fail(f"the installation on this machine could not be set aside: {exc}", pytrace=False)
    if done:
        print(f"f2bsql tests: {done}")
    yield
    try:
        done = aside.MACHINE.put_back()
    except aside.AsideError as exc:
        pytest.fail(
            f"the installation set aside could not be put back ({aside.MACHINE.state} keeps it): {exc}", pytrace=False
        )
    if done:
        print(f"f2bsql tests: {done}")


@pytest.fixture(autouse=True)
def _machine_lane(request: pytest.FixtureRequest) -> None:
    # Before any other fixture of the test (autouse comes first in its scope) provisions anything.
    if _lane(request.node) == "machine":
        request.getfixturevalue("installation_set_aside")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _figures:
        terminalreporter.section("f2bsql figures")
        for line in _figures:
            terminalreporter.write_line(line)
    if IN_CI and _skipped:
        terminalreporter.section("CI=true: skipped tests fail the run", red=True)
        for nodeid in _skipped:
            terminalreporter.write_line(f"SKIPPED counts as FAILED: {nodeid}", red=True)


# --------------------------------------------------------------------------- services


@pytest.fixture(scope="session")
def helper() -> Path:
    """The helper under test: files/fail2ban_banned_db itself, never a copy."""
    if not HELPER.is_file():
        pytest.fail(f"{HELPER} does not exist", pytrace=False)
    for module in ("pymysql", "psycopg2"):
        probe = subprocess.run(["/usr/bin/python3", "-c", f"import {module}"], capture_output=True, check=False)
        if probe.returncode != 0:
            need_service(f"/usr/bin/python3 cannot import {module} (python3-pymysql / python3-psycopg2)")
    return HELPER


@pytest.fixture(scope="session")
def mysql_server() -> Server:
    """The machine's MariaDB: root with no password over TCP (DESIGN.md), or root by unix_socket
    authentication (Debian's default) when TCP refuses root. Test users always use TCP."""
    problems = []
    for via_socket in (False, True):
        server = Server("mysql", MARIADB_HOST, MARIADB_PORT, "root", "", MARIADB_SOCKET, via_socket)
        try:
            mysql_admin(server).close()
        except pymysql.err.MySQLError as exc:
            problems.append(str(exc))
            continue
        return server
    need_service(f"MariaDB is not reachable as root at {MARIADB_HOST}:{MARIADB_PORT} or {MARIADB_SOCKET}: {problems}")


def _pg_bindir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0,
    )
    for path in reversed(candidates):
        if os.access(os.path.join(path, "initdb"), os.X_OK) and os.access(os.path.join(path, "pg_ctl"), os.X_OK):
            return Path(path)
    return None


@pytest.fixture(scope="session")
def pgsql_server() -> Iterator[Server]:
    """A PostgreSQL cluster of the tests' own with scram-sha-256, so passwords are really checked.

    The machine's cluster trusts local connections; a helper that forgot the password would pass
    there. This one runs as the postgres user from a temp dir it owns, on a free port.
    """
    bindir = _pg_bindir()
    if bindir is None:
        need_service("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    as_postgres: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            need_service("no postgres OS user to run a PostgreSQL cluster as")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="f2bsql-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    superuser_password = os.urandom(18).hex()
    pwfile = root / "pwfile"
    write_private(pwfile, superuser_password + "\n")
    if owner is not None:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    data, logfile = root / "data", root / "server.log"
    initdb = subprocess.run(
        [
            *as_postgres,
            str(bindir / "initdb"),
            "-D", str(data),
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-U", "postgres",
            "-E", "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    pwfile.unlink()
    if initdb.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        need_service(f"initdb failed: {initdb.stderr.strip()}")
    port = 0
    started = None
    for _attempt in range(3):  # a free port can be taken between the probe and the start
        port = free_port()
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "60",
             "-o", options, "start"],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if started.returncode == 0:
            break
    if started is None or started.returncode != 0:
        log = logfile.read_text(errors="replace") if logfile.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        need_service(f"the test PostgreSQL cluster did not start: {started and started.stderr}\n{log}")
    try:
        yield Server("pgsql", "127.0.0.1", port, "postgres", superuser_password, unix_socket=str(root))
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def _own_servers() -> Iterator[dict[str, OwnServer]]:
    servers: dict[str, OwnServer] = {}
    yield servers
    for server in servers.values():
        server.remove()


@pytest.fixture
def own_server(_own_servers: dict[str, OwnServer], backend: str) -> OwnServer:
    """A database server of the tests' own (tests/servers.py), running: the test may crash it.

    One per backend and session, started on first use and again for each test that finds it down.
    """
    server = _own_servers.get(backend)
    if server is None:
        try:
            server = _own_servers[backend] = OWN_SERVERS[backend]()
        except ServiceMissing as exc:
            need_service(str(exc))
    if not server.answers():
        server.stop()
        server.start()
    return server


@pytest.fixture
def own_db(own_server: OwnServer) -> Iterator[Database]:
    """A database with files/sql's schema on the test's own server."""
    database = new_database(own_server.server())
    database.create()
    database.apply_schema()
    yield database
    database.close()
    if own_server.answers():  # else it goes with the server's directory at the end
        database.drop()


# --------------------------------------------------------------------------- databases


@pytest.fixture
def make_db(request: pytest.FixtureRequest) -> Iterator[Callable[..., Database]]:
    """Factory: a uniquely named database and user with a random password; dropped afterwards."""
    made: list[Database] = []

    def make(backend: str, *, schema: bool = True) -> Database:
        server: Server = request.getfixturevalue(f"{backend}_server")
        database = new_database(server)
        try:
            database.create()
        except (pymysql.err.MySQLError, psycopg2.Error) as exc:
            need_service(f"cannot create a throwaway {backend} database: {exc}")
        made.append(database)
        if schema:
            database.apply_schema()
        return database

    yield make
    for database in reversed(made):
        database.drop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(make_db: Callable[..., Database], backend: str) -> Database:
    """A fresh database with files/sql's schema, on the backend the test is parametrized for."""
    return make_db(backend)


# --------------------------------------------------------------------------- hosts and fail2ban


@pytest.fixture
def make_host(helper: Path) -> Iterator[Callable[..., Host]]:
    """Factory: a host of the given name (config, spool, fail2ban socket path) on a database.

    Homes live in short /tmp paths: a unix socket path must stay under 108 bytes.
    """
    homes: list[Path] = []

    def make(db: Database, name: str = "mail-a.example.test", **options: Any) -> Host:
        home = Path(tempfile.mkdtemp(prefix="f2bsql-host-"))
        homes.append(home)
        return Host(db, name, home, home / "f2b" / "fail2ban.sock", **options)

    yield make
    for home in homes:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def host(make_host: Callable[..., Host], db: Database) -> Host:
    return make_host(db)


@pytest.fixture
def start_fail2ban(make_host: Callable[..., Host]) -> Iterator[Callable[..., Fail2ban]]:
    """Factory: a fail2ban-server of the host's own, whose banned_db action runs the helper
    under test with the host's config (F2BSQL_CONFIG in the server's environment)."""
    for program in ("fail2ban-server", "fail2ban-client"):
        if shutil.which(program) is None:
            need_service(f"{program} is not installed (Debian package fail2ban)")
    servers: list[Fail2ban] = []

    def start(host: Host, **options: Any) -> Fail2ban:
        server = Fail2ban(host.fail2ban_socket.parent, host.config, **options)
        servers.append(server)
        server.start()
        return server

    yield start
    errors = []
    for server in reversed(servers):
        try:
            server.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture(scope="session", autouse=True)
def _reap_fail2ban_servers() -> Iterator[None]:
    """No fail2ban-server of ours outlives the session."""
    yield
    reap_lingering()


@pytest.fixture
def fail2ban(start_fail2ban: Callable[..., Fail2ban], host: Host) -> Fail2ban:
    return start_fail2ban(host)
