"""Every statement the commands run reads the tables through an index, in a fleet's database.

A central database holds the rows of every host of a fleet: a host's cron run, every minute,
must find its own few rows without reading the others'. The commands run here in this process,
each statement they send is recorded as the server received it, and the server's own EXPLAIN of
it must show no full scan of a table, on both backends, with the tables filled as 50 hosts fill
them and their statistics fresh.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from testbed import DOVECOT_PORTS, Database, Fail2ban, Host, host_module, wait_for


def reads(statement: str) -> bool:
    """Whether the statement reads a table (a session setting, a transaction's end or an INSERT
    of given VALUES reads none)."""
    words = statement.lstrip().upper()
    if words.startswith("INSERT"):
        return " SELECT " in words
    return words.startswith("UPDATE") or (words.startswith(("SELECT", "DELETE", "WITH")) and " FROM " in words)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement f2bsql_host's connections send from now on, as sent (parameters bound)."""
    import psycopg2.extensions
    import pymysql.converters

    sent: list[str] = []
    wire = host_module("mysqlwire").Connection
    execute = wire.execute

    def recording_execute(self: Any, statement: str, params: Any) -> Any:
        # The server binds the values of a prepared statement: bind them the same way here.
        sent.append(statement % tuple(pymysql.converters.escape_item(value, "utf8mb4") for value in params))
        return execute(self, statement, params)

    pg_wire = host_module("pgwire").Connection
    pg_execute = pg_wire.execute

    def recording_pg_execute(self: Any, statement: str, params: Any) -> Any:
        # The server binds them (Bind): as literals here, as psycopg2 would write them.
        sent.append(statement % tuple(psycopg2.extensions.adapt(value).getquoted().decode("utf-8") for value in params))
        return pg_execute(self, statement, params)

    database = host_module("db").Database
    connect = database.connect

    def recording_connect(self: Any) -> Any:
        made = connect(self)
        if self.settings.backend == "mysql":
            assert isinstance(made._conn, wire), "this host's login is one mysqlwire speaks"
        else:
            assert isinstance(made._conn, pg_wire), "this host's login is one pgwire speaks"
        return made

    monkeypatch.setattr(wire, "execute", recording_execute)
    monkeypatch.setattr(pg_wire, "execute", recording_pg_execute)
    monkeypatch.setattr(database, "connect", recording_connect)
    return sent


def full_scans(db: Database, statement: str) -> list[str]:
    """The tables `statement` can only read in full: no index serves its conditions.

    A planner may still choose to read a table in full where an index exists (a window that
    covers most of the table, a table of a few pages): that is its cost model, not a missing
    index. So MySQL's EXPLAIN counts a full scan (type ALL, or index: all of an index) only where
    it names no possible key,
    and PostgreSQL's plan is asked for with sequential scans discouraged (enable_seqscan off),
    which leaves one in the plan (or an index read with no condition on its first column: the
    whole index) only where no index can serve.
    """
    if db.backend == "mysql":
        scans = []
        for row in db.query(f"EXPLAIN {statement}"):
            table = str(row.get("table") or "")
            # <derivedN>, <unionM,N>: a result the statement made itself, not a table.
            # ALL reads the table, index the whole of an index: with no possible key, nothing narrows them.
            if row.get("type") in ("ALL", "index") and not row.get("possible_keys") and not table.startswith("<"):
                scans.append(table)
        return scans
    db.execute("SET enable_seqscan = off")
    try:
        [[plan]] = [list(row.values()) for row in db.query(f"EXPLAIN (FORMAT JSON) {statement}")]
    finally:
        db.execute("RESET enable_seqscan")
    nodes = plan if isinstance(plan, list) else json.loads(plan)
    scans = []

    def walk(node: dict[str, Any]) -> None:
        kind = str(node.get("Node Type"))
        if kind == "Seq Scan":
            scans.append(str(node.get("Relation Name")))
        elif "Index" in kind and "Index Name" in node:
            # An index read with no condition on its first column reads the whole index.
            leading = leading_column(db, str(node["Index Name"]))
            if not re.search(rf"\b{leading}\b", str(node.get("Index Cond", ""))):
                scans.append(f"{node.get('Relation Name') or ''} (all of {node['Index Name']})")
        for child in node.get("Plans", ()):
            walk(child)

    for top in nodes:
        walk(top["Plan"])
    return scans


def leading_column(db: Database, index: str) -> str:
    [row] = db.query(
        "SELECT a.attname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE c.relname = %s",
        (index,),
    )
    return str(row["name"])


@pytest.fixture
def fleet(db: Database) -> Iterator[Database]:
    """The test's database as the central server of 50 hosts holds it (fewer rows than the
    benchmark's 100,000: enough that a planner chooses as it would with more)."""
    db.fill_fleet(hosts=50, rows=20_000, history=100_000)
    yield db


def run(main: Callable[[list[str]], int], host: Host, *argv: str) -> None:
    assert main(["--config", str(host.config), *argv]) == 0, argv


def test_every_statement_of_the_commands_uses_an_index(
    fleet: Database,
    host: Host,
    start_fail2ban: Callable[..., Fail2ban],
    statements: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    helper = host_module("helper").main
    admin = host_module("admin").main
    fail2ban = start_fail2ban(host, action="python", firewall=False)
    fail2ban.banip("198.51.100.1", "198.51.100.2", "198.51.100.3")
    wait_for(lambda: len(host.rows()) == 3, "the bans recorded by fail2ban's action")
    # What fail2ban's command action and root's cron run, in this process.
    run(helper, host, "start", "--ports", DOVECOT_PORTS, "--protocol", "tcp", "dovecot")
    run(helper, host, "ban", "198.51.100.9", DOVECOT_PORTS, "tcp", "dovecot", "3", "auth failure")
    run(helper, host, "unban", "--jail", "dovecot", "198.51.100.9")
    run(helper, host, "ban", "198.51.100.9", DOVECOT_PORTS, "tcp", "dovecot", "3", "auth failure")
    run(helper, host, "unban", "198.51.100.9")
    # What an admin runs: a panel's unban, then the cron run that lifts it.
    run(admin, host, "bans", "--host", host.name)
    run(admin, host, "bans", "--host", host.name, "--jail", "dovecot")
    run(admin, host, "show", "198.51.100.1")
    run(admin, host, "history", "198.51.100.9")
    run(admin, host, "unban", "198.51.100.1")
    run(admin, host, "stats")
    run(admin, host, "metrics")
    run(helper, host, "unban_db", "--metrics-dir", "off")
    run(helper, host, "sync")
    run(helper, host, "flush", "postfix")
    run(helper, host, "stop", "postfix")
    capsys.readouterr()
    assert not fail2ban.banned() & {"198.51.100.1"}, "unban_db did not lift the panel's unban"

    planned = [statement for statement in statements if reads(statement)]
    assert len(planned) >= 15, statements
    scans = {statement: tables for statement in planned if (tables := full_scans(fleet, statement))}
    assert scans == {}, "\n".join(f"{tables}: {statement}" for statement, tables in scans.items())
    print(f"{len(planned)} statements, {fleet.count()} rows of 51 hosts: every one read through an index")
