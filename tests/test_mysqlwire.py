"""The host code's own MySQL client (mysqlwire) against the real MariaDB, with PyMySQL as the yardstick.

Every MySQL test of the suite goes through this client already (db.Database connects with it);
these pin down what the others take for granted: the values PyMySQL would return, the values
kept apart from the SQL, PyMySQL's error codes for what the helper spools on, and the fallback
to PyMySQL for a login the client does not speak.
"""

from __future__ import annotations

import datetime
import decimal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest
from servers import OwnServer
from testbed import Database, Host, host_module, wire_connect
from testbed import wire_run as run

VALUES: list[Any] = [
    "plain",
    "quote ' double \" backslash \\ NUL \0 end",
    "x'); DROP TABLE wire; -- %s ? %%s",
    "Grüße 🙂 漢字",
    "",
]


@pytest.fixture
def mysql_db(make_db: Callable[..., Database]) -> Database:
    return make_db("mysql", schema=False)


@pytest.fixture
def wire(mysql_db: Database) -> Iterator[Any]:
    conn = wire_connect(mysql_db)
    yield conn
    conn.close()


def test_rows_read_back_are_what_pymysql_reads(mysql_db: Database, wire: Any) -> None:
    run(wire, "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, s VARCHAR(100), txt TEXT, raw BLOB,"
              " big BIGINT UNSIGNED, neg SMALLINT, tiny TINYINT(1), f DOUBLE, stamp TIMESTAMP NULL,"
              " dt DATETIME(6), d DATE, dec_ DECIMAL(10, 2))")  # fmt: skip
    stamp = datetime.datetime(2026, 12, 1, 10, 0, 5)
    for index, value in enumerate(VALUES):
        params = (value, value * 300, value, 2**64 - 1 - index, -32768 + index, index % 2, index / 3, stamp,
                  datetime.datetime(2038, 1, 18, 3, 14, 7, 123456), datetime.datetime(1970, 1, 2), index)  # fmt: skip
        with wire.cursor() as cursor:
            assert cursor.execute("INSERT INTO t (s, txt, raw, big, neg, tiny, f, stamp, dt, d, dec_)"
                                  " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", params) == 1  # fmt: skip
    run(wire, "INSERT INTO t (s) VALUES (%s)", (None,))
    queries = [
        "SELECT * FROM t ORDER BY id",
        "SELECT COUNT(*), SUM(neg), MAX(stamp), MIN(d), AVG(f) FROM t",
        "SELECT s FROM t WHERE s = %s UNION SELECT txt FROM t WHERE id = %s",
    ]
    theirs = mysql_db.conn
    for query in queries:
        params = (VALUES[1], 2) if "%s" in query else ()
        with theirs.cursor() as cursor:
            cursor.execute(query, params)
            expected = list(cursor.fetchall())
        assert run(wire, query, params) == expected, query
    # Stored as sent, whatever the value holds.
    assert [row[0] for row in run(wire, "SELECT s FROM t ORDER BY id")] == [*VALUES, None]
    [(count, total, latest, *_)] = run(wire, "SELECT COUNT(*), SUM(neg), MAX(stamp), MIN(d), AVG(f) FROM t")
    assert (count, latest) == (len(VALUES) + 1, stamp) and isinstance(total, decimal.Decimal)


def test_values_are_bound_by_the_server_never_spliced_into_the_sql(wire: Any) -> None:
    run(wire, "CREATE TABLE wire (v VARCHAR(100))")
    [(before,)] = run(wire, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS"
                            " WHERE VARIABLE_NAME = 'COM_STMT_EXECUTE'")  # fmt: skip
    for value in VALUES:
        run(wire, "INSERT INTO wire (v) VALUES (%s)", (value,))
    assert [row[0] for row in run(wire, "SELECT v FROM wire")] == VALUES
    [(after,)] = run(wire, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS"
                           " WHERE VARIABLE_NAME = 'COM_STMT_EXECUTE'")  # fmt: skip
    # Each statement was a prepared one, executed by the server: the inserts, the SELECT of the
    # rows and this SELECT itself (a statement counts from the moment it runs).
    assert int(after) - int(before) == len(VALUES) + 2
    # A wrong number of parameters is the caller's mistake (PyMySQL's TypeError), not the server's.
    with pytest.raises(TypeError, match="parameters"):
        run(wire, "INSERT INTO wire (v) VALUES (%s)", ())
    assert run(wire, "SELECT COUNT(*) FROM wire") == [(len(VALUES),)]


def test_an_address_the_host_cannot_make_a_socket_for_gives_way_to_the_next(
    mysql_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As socket.create_connection: "localhost" may name ::1 first on a host without IPv6, whose
    kernel refuses the socket itself; the next address (127.0.0.1) is tried."""
    wire = host_module("wire")  # the socket code both own clients share
    real = wire._socket

    class NoIPv6:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def getaddrinfo(host: bytes, port: int, *args: Any) -> list[Any]:
            ipv6 = (real.AF_INET6, real.SOCK_STREAM, 6, "", ("::1", port, 0, 0))
            return [ipv6, *real.getaddrinfo(host, port, *args)]

        @staticmethod
        def socket(family: int, *args: Any) -> Any:
            if family == real.AF_INET6:
                raise OSError(97, "Address family not supported by protocol")
            return real.socket(family, *args)

    monkeypatch.setattr(wire, "_socket", NoIPv6())
    conn = wire_connect(mysql_db)
    try:
        assert run(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


def test_errors_carry_pymysqls_codes(mysql_db: Database, wire: Any) -> None:
    mysqlwire = host_module("mysqlwire")

    def code(call: Callable[[], object]) -> int:
        with pytest.raises(mysqlwire.MySQLError) as caught:
            call()
        return int(caught.value.args[0])

    assert code(lambda: wire_connect(mysql_db, password="wrong")) == 1045
    assert code(lambda: wire_connect(mysql_db, database="f2bt_none")) in (1044, 1049)
    assert code(lambda: wire_connect(mysql_db, port=1)) == 2003
    assert code(lambda: wire_connect(mysql_db, unix_socket="/nonexistent/mysqld.sock")) == 2002
    assert code(lambda: run(wire, "SELECT * FROM missing_table")) == 1146
    assert run(wire, "SELECT 1") == [(1,)], "a refused statement leaves the connection usable"

    slow = wire_connect(mysql_db, read_timeout=1)
    began = time.monotonic()
    assert code(lambda: run(slow, "SELECT SLEEP(5)")) == 2013
    assert time.monotonic() - began < 3, "the read timeout holds"
    assert code(lambda: run(slow, "SELECT 1")) == 2013, "a timed-out connection is closed, not reused"

    mysql_db.execute("KILL %s", (wire.thread_id(),))
    assert code(lambda: run(wire, "SELECT 1")) == 2013


def test_transactions_commit_and_roll_back(mysql_db: Database, wire: Any) -> None:
    run(wire, "CREATE TABLE t (v INT) ENGINE=InnoDB")
    wire.begin()
    run(wire, "INSERT INTO t VALUES (%s)", (1,))
    wire.rollback()
    wire.begin()
    run(wire, "INSERT INTO t VALUES (%s)", (2,))
    assert mysql_db.query("SELECT v FROM t") == [], "not committed yet"
    wire.commit()
    run(wire, "INSERT INTO t VALUES (%s)", (3,))  # autocommit again
    assert mysql_db.query("SELECT v FROM t ORDER BY v") == [{"v": 2}, {"v": 3}]


def test_the_session_is_in_autocommit_with_the_init_command_run(mysql_db: Database) -> None:
    conn = wire_connect(mysql_db, init_command="SET SESSION innodb_lock_wait_timeout = 3")
    try:
        run(conn, "CREATE TABLE t (v INT) ENGINE=InnoDB")
        run(conn, "INSERT INTO t VALUES (%s)", (7,))
        assert mysql_db.query("SELECT v FROM t") == [{"v": 7}], "another session sees the row: committed"
        assert run(conn, "SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.autocommit") == [(3, 1)]
    finally:
        conn.close()


@pytest.mark.parametrize("backend", ["mysql"])
def test_a_login_it_does_not_speak_goes_through_pymysql(
    own_server: OwnServer, own_db: Database, make_host: Callable[..., Host]
) -> None:
    """MariaDB's ed25519 accounts: the client says Unsupported, the helper logs in with PyMySQL
    (the distro's, with python3-nacl; the account is put back for the test bed's own reads)."""

    def identify(how: str, password: str) -> None:
        admin = pymysql.connect(unix_socket=own_server.server().unix_socket, user="root", autocommit=True)
        try:
            with admin.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'ed25519'")
                if not cursor.fetchone()[0]:
                    cursor.execute("INSTALL SONAME 'auth_ed25519'")
                for where in ("localhost", "127.0.0.1"):
                    cursor.execute(
                        f"ALTER USER %s@%s IDENTIFIED VIA {how} USING PASSWORD(%s)", (own_db.user, where, password)
                    )
        finally:
            admin.close()

    own_db.close()
    identify("ed25519", own_db.password)
    with pytest.raises(host_module("mysqlwire").Unsupported, match="client_ed25519"):
        wire_connect(own_db)
    host = make_host(own_db)
    host.ban("192.0.2.90")
    identify("mysql_native_password", own_db.password)
    assert [row["ip"] for row in own_db.banned()] == ["192.0.2.90"] and host.spooled() == []


@pytest.mark.parametrize("backend", ["mysql"])
def test_autocommit_is_turned_on_where_the_server_starts_sessions_without_it(
    own_server: OwnServer, own_db: Database
) -> None:
    admin = pymysql.connect(unix_socket=own_server.server().unix_socket, user="root", autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute("SET GLOBAL autocommit = 0")  # as a my.cnf with autocommit = 0 does
        conn = wire_connect(own_db)
        try:
            run(conn, "CREATE TABLE t (v INT) ENGINE=InnoDB")
            run(conn, "INSERT INTO t VALUES (%s)", (7,))
            # Another session (PyMySQL's, autocommit set by the driver) sees the row: committed.
            assert own_db.query("SELECT v FROM t") == [{"v": 7}]
        finally:
            conn.close()
    finally:
        with admin.cursor() as cursor:
            cursor.execute("SET GLOBAL autocommit = 1")
        admin.close()


def test_a_date_python_cannot_hold_comes_back_as_text_and_the_connection_goes_on(wire: Any) -> None:
    wire.query("SET SESSION sql_mode = ''")  # a lax server lets zero months and the zero date in
    run(wire, "CREATE TABLE t (d DATETIME, day DATE)")
    run(wire, "INSERT INTO t VALUES ('2024-00-05 10:00:00', '0000-00-00')")
    assert run(wire, "SELECT d, day FROM t") == [("2024-00-05 10:00:00", "0000-00-00")]
    assert run(wire, "SELECT 1") == [(1,)]


@pytest.mark.parametrize("backend", ["mysql"])
def test_closing_says_goodbye_so_the_server_logs_no_aborted_connection(own_server: OwnServer, own_db: Database) -> None:
    # A helper process per ban: a connection that just drops would be a warning in the
    # server's error log for every ban (Aborted_clients counts them).
    def aborted() -> int:
        [row] = own_db.query("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")
        return int(row["Value"])

    before = aborted()
    for _ in range(5):
        conn = wire_connect(own_db)
        run(conn, "SELECT 1")
        conn.close()
    assert aborted() == before
