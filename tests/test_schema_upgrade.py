"""files/sql upgrades databases made by iRedMail's own schema in place, and is idempotent.

tests/fixtures/schema/ holds the shapes iRedMail created (<= 1.6: `banned` only; 1.7+: plus
`jails`), written for these tests. The upgrade runs twice: rows survive, the second run changes
nothing, and the helper then works on the result.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from testbed import DOVECOT_PORTS, FIXTURES, POSTFIX_PORTS, REPO, SQL_DIR, b64

if TYPE_CHECKING:
    from testbed import Database, Host

OLD_COLUMNS = (
    "id",
    "ip",
    "ports",
    "protocol",
    "jail",
    "hostname",
    "country",
    "rdns",
    "failures",
    "loglines",
    "timestamp",
    "remove",
)

# Rows as iRedMail's bash helper and iRedAdmin-Pro left them.
OLD_ROWS: list[dict[str, Any]] = [
    {
        "ip": "192.0.2.1",
        "ports": "22",
        "protocol": "tcp",
        "jail": "sshd",
        "hostname": "ob66.localdomain",
        "country": "AU, Australia",
        "rdns": "one.one.one.one",
        "failures": 5,
        "loglines": b64(b"Failed password for root from 192.0.2.1 port 4242 ssh2"),
        "timestamp": datetime.datetime(2020, 4, 15, 13, 34, 57),
        "remove": 0,
    },
    {
        "ip": "2001:db8::1",
        "ports": DOVECOT_PORTS,
        "protocol": "tcp",
        "jail": "dovecot",
        "hostname": "ob66.localdomain",
        "country": "",
        "rdns": "",
        "failures": 0,
        "loglines": "",
        "timestamp": datetime.datetime(2020, 4, 15, 13, 34, 58),
        "remove": 1,
    },
]
OLD_JAILS = [("sshd", 1), ("dovecot", 0)]


def _old_view(db: Database) -> list[tuple[Any, ...]]:
    return [tuple(row[column] for column in OLD_COLUMNS) for row in db.banned()]


@pytest.mark.parametrize("version", ["1.6", "1.7"])
def test_upgrade_from_iredmail_schema(
    make_db: Callable[..., Database], make_host: Callable[..., Host], backend: str, version: str
) -> None:
    db = make_db(backend, schema=False)
    db.apply_sql((FIXTURES / "schema" / f"iredmail-{version}.{backend}").read_text(encoding="utf-8"))
    for row in OLD_ROWS:
        db.insert_banned(**row)
    # iRedMail's `remove` was nullable; a NULL must become 0, or unban/stop would never match it.
    db.insert_banned(**{**OLD_ROWS[0], "ip": "192.0.2.9", "remove": None})
    if version == "1.7":
        for name, enabled in OLD_JAILS:
            db.execute("INSERT INTO jails (name, enabled) VALUES (%s, %s)", (name, enabled))
    assert db.unique_keys("banned") == {("ip", "ports", "protocol")}
    rows_before = _old_view(db)
    jails_before = [(row["id"], row["name"], row["enabled"]) for row in db.jails()] if version == "1.7" else []

    db.apply_schema()
    upgraded = db.fingerprint()
    db.apply_schema()
    assert db.fingerprint() == upgraded, "applying the schema a second time changed it"

    remove_at = OLD_COLUMNS.index("remove")
    assert _old_view(db) == [
        (*row[:remove_at], 0 if row[remove_at] is None else row[remove_at], *row[remove_at + 1 :])
        for row in rows_before
    ]
    assert db.columns("banned")["remove"]["nullable"] == "NO"
    assert db.unique_keys("banned") == {("ip", "ports", "protocol", "jail", "hostname")}
    assert db.unique_keys("jails") == {("name", "hostname")}
    assert db.columns("banned")["country"]["length"] == 255
    jails = db.jails()
    assert [(row["id"], row["name"], row["enabled"]) for row in jails] == jails_before
    assert all(row["hostname"] == "" for row in jails)

    # Every column a fresh install has, the upgraded database has too.
    fresh = make_db(backend)
    for table in ("banned", "jails"):
        assert set(db.columns(table)) == set(fresh.columns(table)), table
    if backend == "pgsql":
        assert set(db.owners().values()) == {db.user}

    # The helper on the upgraded database: the old key would have refused all of these.
    host = make_host(db)
    host.ban("192.0.2.1", jail="dovecot")
    host.ban("192.0.2.1", jail="postfix", ports=POSTFIX_PORTS)
    host.ban("192.0.2.1", jail="sshd", ports="22")  # the old row's (ip, ports, protocol), another host
    assert sorted((row["jail"], row["hostname"]) for row in db.banned(ip="192.0.2.1")) == [
        ("dovecot", host.name),
        ("postfix", host.name),
        ("sshd", host.name),
        ("sshd", "ob66.localdomain"),
    ]
    host.ok("start", "dovecot")
    assert {(row["name"], row["hostname"]) for row in db.jails(name="dovecot")} == (
        {("dovecot", ""), ("dovecot", host.name)} if version == "1.7" else {("dovecot", host.name)}
    )
    # Old rows carry another host's name: this host's unban_db leaves them alone.
    host.ok("unban_db")
    assert [row["ip"] for row in db.banned(hostname="ob66.localdomain", remove=1)] == ["2001:db8::1"]


def test_fresh_schema_twice_is_a_no_op(db: Database) -> None:
    first = db.fingerprint()
    db.apply_schema()
    assert db.fingerprint() == first
    assert db.unique_keys("banned") == {("ip", "ports", "protocol", "jail", "hostname")}
    assert db.unique_keys("jails") == {("name", "hostname")}
    # DESIGN.md rule 5: every column iRedAdmin-Pro reads.
    assert set(OLD_COLUMNS) <= set(db.columns("banned"))
    assert {"id", "name", "enabled"} <= set(db.columns("jails"))
    if db.backend == "pgsql":
        assert set(db.owners().values()) == {db.user}


def _schema_module(db: Database, check: bool, login: tuple[str, str] | None = None) -> dict[str, Any]:
    """Role f2bsql_database's f2bsql_mysql_db on this database, as a play runs it."""
    role = REPO / "roles" / "f2bsql_database"
    args = {
        "name": db.name,
        "schema": (SQL_DIR / "fail2ban.mysql").read_text(encoding="utf-8"),
        "login_host": db.server.host,
        "login_port": db.server.port,
        "login_user": login[0] if login else db.server.admin_user,
        "login_password": login[1] if login else db.server.admin_password,  # a test user's, or none
        "login_config_file": "/nonexistent",
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "ANSIBLE_LIBRARY": str(role / "library"),
        "ANSIBLE_MODULE_UTILS": str(role / "module_utils"),
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
    }
    argv = [str(Path(sys.executable).parent / "ansible"), "localhost", "-i", "localhost,", "-c", "local"]
    argv += ["-m", "f2bsql_mysql_db", "-a", json.dumps(args), *(["--check"] if check else [])]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.split(" => ", 1)[1])  # "localhost | CHANGED => {\n...}"
    return result


@pytest.mark.parametrize("start", ["iredmail-1.6", "iredmail-1.7", "fresh"])
def test_check_mode_predicts_the_schema_and_writes_nothing(make_db: Callable[..., Database], start: str) -> None:
    db = make_db("mysql", schema=start == "fresh")
    if start != "fresh":
        db.apply_sql((FIXTURES / "schema" / f"{start}.mysql").read_text(encoding="utf-8"))
        db.insert_banned(**OLD_ROWS[0])
        db.insert_banned(**{**OLD_ROWS[0], "ip": "192.0.2.9", "remove": None})
    import secrets

    import pymysql

    # Check mode runs as an admin who may read and make temporary tables, nothing else: a
    # CREATE DATABASE or TABLE, an ALTER or a write would fail the run.
    server = db.server
    admin = pymysql.connect(host=server.host, port=server.port, user=server.admin_user, password=server.admin_password)
    reader, password = f"f2bro_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    try:
        with admin.cursor() as cursor:
            cursor.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (reader, password))
            cursor.execute(f"GRANT SELECT, CREATE TEMPORARY TABLES ON `{db.name}`.* TO %s@'127.0.0.1'", (reader,))
        before = db.fingerprint()
        predicted = _schema_module(db, check=True, login=(reader, password))
        assert db.fingerprint() == before, "check mode changed the database"
    finally:
        with admin.cursor() as cursor:
            cursor.execute("DROP USER IF EXISTS %s@'127.0.0.1'", (reader,))
        admin.close()
    applied = _schema_module(db, check=False)
    assert predicted["changed"] == applied["changed"] == (start != "fresh")
    would = [line for line in predicted["fingerprint"] if line.startswith("would run: ")]
    if start == "iredmail-1.6":  # no jails, no history, the old unique key, a NULL remove
        assert {"would run: CREATE TABLE `jails`", "would run: CREATE TABLE `banned_history`"} <= set(would)
        assert any(line.startswith("would run: ALTER TABLE `banned` DROP INDEX `ip`") for line in would), would
        assert any(line.startswith("would run: UPDATE `banned` SET `remove` = 0") for line in would)
    assert bool(would) == applied["changed"]
    if not would:
        assert predicted["fingerprint"] == applied["fingerprint"]
    again = _schema_module(db, check=True)
    assert not again["changed"] and again["fingerprint"] == applied["fingerprint"]
