"""tests/aside.py: an installation on this machine is set aside and put back with nothing lost.

The test suite runs on a machine the README's quick start has provisioned, and its machine lane
sets that installation aside; these tests prove the move on a `fail2ban` database, users, role
and credentials made here (no installer run: the jail overlay is absent), on MariaDB and on the
machine's PostgreSQL. They run in the machine lane: they use the machine-wide names.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aside import NAME, Aside, AsideError, _mysql, _pg_home, _psql, _rows

pytestmark = pytest.mark.xdist_group("machine")

TEST_NAME = "f2bsql_aside_test"
ROWS = [("192.0.2.1", "sshd"), ("2001:db8::1", "dovecot")]
PG_VALUES = "('192.0.2.1'), ('2001:db8::1')"
ROWS_OF = "SELECT ip, jail FROM `{}`.banned ORDER BY ip"  # a database of the two names above
PGPASS_LINE = f"127.0.0.1:5432:{NAME}:{NAME}:pw-of-the-test\n"


def mysql_snapshot() -> dict[str, object]:
    with _mysql() as cursor:
        assert cursor is not None, "MariaDB does not answer as root"
        users = _rows(cursor, "SELECT Host FROM mysql.user WHERE User = %s ORDER BY Host", NAME)
        created = [_rows(cursor, "SHOW CREATE USER %s@%s", NAME, host)[0][0] for (host,) in users]
        grants = [_rows(cursor, "SHOW GRANTS FOR %s@%s", NAME, host) for (host,) in users]
        schema = _rows(cursor, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", NAME)
        rows = _rows(cursor, ROWS_OF.format(NAME)) if schema else []
    return {"users": users, "created": created, "grants": grants, "rows": rows}


def pgsql_snapshot() -> dict[str, object]:
    return {
        "role": _psql("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = :'name'", name=NAME),
        "owner": _psql("SELECT datdba::regrole FROM pg_database WHERE datname = :'name'", name=NAME),
    }


def pg_rows() -> list[str]:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-d", NAME, "-c", "SELECT ip FROM banned ORDER BY ip"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.split() if done.returncode == 0 else []


def drop_all() -> None:
    with _mysql() as cursor:
        if cursor is not None:
            for name in (NAME, TEST_NAME):
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
                for (host,) in _rows(cursor, "SELECT Host FROM mysql.user WHERE User = %s", name):
                    cursor.execute("DROP USER %s@%s", (name, host))
    for name in (NAME, TEST_NAME):
        _psql('DROP DATABASE IF EXISTS :"name";\nDROP ROLE IF EXISTS :"name";', name=name)
    home = _pg_home()
    if home and (home / ".pgpass").exists():
        pgpass = home / ".pgpass"
        pgpass.write_text("".join(line for line in pgpass.read_text().splitlines(True) if line != PGPASS_LINE))


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Aside]:
    """A `fail2ban` installation's database side on both servers, and an Aside of the test's own."""
    if os.geteuid() != 0:
        pytest.fail("these tests rename databases and users of this machine: run them as root")
    if Aside().found():
        pytest.fail(f"this machine holds {Aside().found()} outside the machine lane's set-aside")
    drop_all()
    home = _pg_home()
    assert home is not None, "no postgres OS user"
    pgpass = home / ".pgpass"
    pgpass_before = pgpass.read_text() if pgpass.exists() else None
    with _mysql() as cursor:
        assert cursor is not None
        cursor.execute(f"CREATE DATABASE `{NAME}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        cursor.execute(f"CREATE TABLE `{NAME}`.banned (ip VARCHAR(46), jail VARCHAR(64)) ENGINE=InnoDB")
        cursor.executemany(f"INSERT INTO `{NAME}`.banned VALUES (%s, %s)", ROWS)  # noqa: S608 - a constant name
        for host in ("localhost", "127.0.0.1"):
            cursor.execute("CREATE USER %s@%s IDENTIFIED BY %s", (NAME, host, "pw-of-the-test"))
            cursor.execute(f"GRANT ALL ON `{NAME}`.* TO %s@%s", (NAME, host))
    _psql('CREATE ROLE :"name" LOGIN PASSWORD \'pw-of-the-test\';\nCREATE DATABASE :"name" OWNER :"name";', name=NAME)
    subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-d", NAME, "-v", "ON_ERROR_STOP=1"],
        input=f"SET ROLE {NAME};\nCREATE TABLE banned (ip TEXT);\nINSERT INTO banned VALUES {PG_VALUES};",
        text=True, check=True,
    )  # fmt: skip
    with pgpass.open("a") as out:
        out.write(PGPASS_LINE)
    os.chown(pgpass, home.stat().st_uid, home.stat().st_gid)
    pgpass.chmod(0o600)
    (tmp_path / "spool" / "rejected").mkdir(parents=True)
    (tmp_path / "spool" / "1765000000.000001-ban.json").write_text('{"ip": "192.0.2.3"}\n')
    mycnf = tmp_path / "my.cnf-fail2ban"
    mycnf.write_text("[client]\nuser=fail2ban\npassword=pw-of-the-test\n")
    mycnf.chmod(0o600)
    try:
        yield Aside(
            state=tmp_path / "aside",
            name=TEST_NAME,
            config=tmp_path / "etc-fail2ban",
            mycnf=mycnf,
            spool=tmp_path / "spool",
        )
    finally:
        drop_all()
        if pgpass_before is None:
            pgpass.unlink(missing_ok=True)


def spooled(machine: Aside) -> list[str]:
    return sorted(str(path.relative_to(machine.spool)) for path in machine.spool.rglob("*"))


def test_set_aside_and_put_back_lose_nothing(machine: Aside) -> None:
    before = (mysql_snapshot(), pgsql_snapshot(), pg_rows(), machine.mycnf.read_text(), spooled(machine))
    assert before[0]["rows"] == [tuple(row) for row in sorted(ROWS)] and before[2] == ["192.0.2.1", "2001:db8::1"]

    done = machine.set_aside()
    assert done is not None and "database fail2ban on MariaDB" in done and "role fail2ban on PostgreSQL" in done
    assert machine.found() == [], "nothing named fail2ban is left where the fixture goes"
    with _mysql() as cursor:
        assert _rows(cursor, ROWS_OF.format(TEST_NAME)) == before[0]["rows"]
        assert len(_rows(cursor, "SELECT Host FROM mysql.user WHERE User = %s", TEST_NAME)) == 2
    assert _psql("SELECT 1 FROM pg_database WHERE datname = :'name'", name=TEST_NAME) == [["1"]]
    assert PGPASS_LINE not in (_pg_home() / ".pgpass").read_text()
    assert (machine.state / "state.json").stat().st_mode & 0o777 == 0o600
    assert machine.state.stat().st_mode & 0o777 == 0o700
    assert machine.set_aside() is None, "a second call of the same run moves nothing"

    assert not machine.spool.exists(), "the events the uninstall kept are aside too"
    assert machine.put_back() is not None
    assert (mysql_snapshot(), pgsql_snapshot(), pg_rows(), machine.mycnf.read_text(), spooled(machine)) == before
    assert (_pg_home() / ".pgpass").read_text().count(PGPASS_LINE) == 1
    assert not machine.state.exists()


def test_a_killed_runs_installation_is_put_back_by_the_next_run(machine: Aside) -> None:
    before = (mysql_snapshot(), pgsql_snapshot(), pg_rows())
    assert machine.set_aside() is not None
    gone = subprocess.run(["sh", "-c", "echo $$ $(cut -d' ' -f22 /proc/$$/stat)"], capture_output=True, text=True)
    state = json.loads((machine.state / "state.json").read_text())
    state["owner"] = [int(field) for field in gone.stdout.split()]  # a process that has ended
    (machine.state / "state.json").write_text(json.dumps(state))

    assert machine.put_back() is None, "only the run that set it aside puts it back as it ends"
    assert machine.put_back(killed=True) is not None, "a dead run's is put back at the next run's start"
    assert (mysql_snapshot(), pgsql_snapshot(), pg_rows()) == before


def test_nothing_is_put_back_over_a_database_the_tests_left(machine: Aside) -> None:
    before = mysql_snapshot()
    assert machine.set_aside() is not None
    with _mysql() as cursor:  # what a fixture whose cleanup failed leaves
        cursor.execute(f"CREATE DATABASE `{NAME}`")
        cursor.execute(f"CREATE TABLE `{NAME}`.leftover (x INT)")
    with pytest.raises(AsideError, match=r"holds a database fail2ban with tables again.*stays aside"):
        machine.put_back()
    assert (machine.state / "state.json").exists(), "the state stays: the installation is still aside"
    assert machine.found() == [f"database {NAME} on MariaDB"], "and nothing of it moved back"
    with _mysql() as cursor:
        cursor.execute(f"DROP DATABASE `{NAME}`")
    assert machine.put_back() is not None
    assert mysql_snapshot() == before


def test_a_run_killed_halfway_through_the_move_is_put_back(machine: Aside) -> None:
    """Killed after MariaDB's aside database was created, before the tables moved into it."""
    before = mysql_snapshot()
    with _mysql() as cursor:
        cursor.execute(f"CREATE DATABASE `{TEST_NAME}`")
    state = {"owner": "manual", "installed": False, "jails": [], "mysql": {"hosts": ["localhost", "127.0.0.1"],
             "schema": ["utf8mb4", "utf8mb4_unicode_ci"]}}  # fmt: skip
    machine.state.mkdir(mode=0o700)
    (machine.state / "state.json").write_text(json.dumps(state))

    assert machine.put_back(killed=True) is None, "set aside by hand: only put back by hand"
    assert machine.put_back(killed=True, manual=True) is not None
    assert mysql_snapshot() == before
    with _mysql() as cursor:
        assert _rows(cursor, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", TEST_NAME) == []
