"""The host code's own PostgreSQL client (pgwire) against the real server, with psycopg2 as the yardstick.

Every PostgreSQL test of the suite goes through this client already (db.Database connects with
it); these pin down what the others take for granted: the values psycopg2 would return, the
values kept apart from the SQL, the SQLSTATEs the helper spools on, each login it speaks (trust,
password, md5, SCRAM-SHA-256, over TCP, TLS and the socket), its timeout, and the fallback to
psycopg2 for what it does not speak. The cluster is the tests' own (conftest.pgsql_server:
scram-sha-256 everywhere), so passwords are really checked.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from testbed import Database, Server, host_module, wire_connect
from testbed import wire_run as run

VALUES: list[Any] = [
    "plain",
    "quote ' double \" backslash \\ end",
    "x'); DROP TABLE wire; -- %s $1 ? %%s",
    "Grüße 🙂 漢字",
    "",
]


@pytest.fixture
def pg_db(make_db: Callable[..., Database]) -> Database:
    return make_db("pgsql", schema=False)


@pytest.fixture
def wire(pg_db: Database) -> Iterator[Any]:
    conn = wire_connect(pg_db)
    yield conn
    conn.close()


def admin(server: Server, statement: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(
        dbname="postgres", user=server.admin_user, password=server.admin_password, host=server.host, port=server.port
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        conn.close()


def test_rows_read_back_are_what_psycopg2_reads(pg_db: Database, wire: Any) -> None:
    run(wire, "CREATE TABLE t (id SERIAL PRIMARY KEY, s VARCHAR(100), txt TEXT, raw BYTEA, big BIGINT,"
              " neg SMALLINT, flag BOOLEAN, f DOUBLE PRECISION, stamp TIMESTAMP, tz TIMESTAMPTZ, d DATE,"
              " dec_ NUMERIC(10, 2))")  # fmt: skip
    stamp = datetime.datetime(2026, 12, 1, 10, 0, 5)
    for index, value in enumerate(VALUES):
        params = (value, value * 300, value.encode("utf-8") + b"\0\xff", 2**63 - 1 - index, -32768 + index,
                  index % 2 == 0, index / 3, stamp + datetime.timedelta(microseconds=index * 100_000),
                  datetime.datetime(2038, 1, 19, 3, 14, 7, 123456, tzinfo=datetime.timezone.utc),
                  datetime.date(1970, 1, 2), decimal.Decimal(index) / 4)  # fmt: skip
        with wire.cursor() as cursor:
            cursor.execute("INSERT INTO t (s, txt, raw, big, neg, flag, f, stamp, tz, d, dec_)"
                           " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", params)  # fmt: skip
            assert cursor.rowcount == 1
    run(wire, "INSERT INTO t (s) VALUES (%s)", (None,))
    queries = [
        "SELECT id, s, txt, raw, big, neg, flag, f, stamp, d, dec_ FROM t ORDER BY id",
        "SELECT COUNT(*), SUM(neg), SUM(big), MAX(stamp), MIN(d), AVG(f), tz AT TIME ZONE 'UTC' FROM t GROUP BY tz",
        "SELECT s FROM t WHERE s = %s UNION SELECT txt FROM t WHERE id = %s",
        "SELECT 'infinity'::timestamp, '2000-01-01 00:00:00.5'::timestamp, 1.5::real, NULL",
    ]
    theirs = pg_db.conn
    for query in queries:
        params = (VALUES[1], 2) if "%s" in query else ()
        with theirs.cursor() as cursor:
            cursor.execute(query, params)
            # psycopg2 hands bytea out as a memoryview of the bytes; ours are the bytes.
            expected = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cursor.fetchall()]
        assert run(wire, query, params) == expected, query
    # Stored as sent, whatever the value holds; an aware time read back is the same instant.
    assert [row[0] for row in run(wire, "SELECT s FROM t ORDER BY id")] == [*VALUES, None]
    [(tz,)] = run(wire, "SELECT tz FROM t WHERE id = 1")
    assert tz == datetime.datetime(2038, 1, 19, 3, 14, 7, 123456, tzinfo=datetime.timezone.utc)


def test_values_are_bound_by_the_server_never_spliced_into_the_sql(wire: Any) -> None:
    run(wire, "CREATE TABLE wire (v VARCHAR(100))")
    for value in VALUES:
        run(wire, "INSERT INTO wire (v) VALUES (%s)", (value,))
    assert [row[0] for row in run(wire, "SELECT v FROM wire")] == VALUES
    # The server saw the placeholder, not the value, in the statement it ran.
    [(seen,)] = run(wire, "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid() AND %s <> ''", (VALUES[2],))
    assert "$1" in seen and "DROP" not in seen
    # A wrong number of parameters, or a % that is no placeholder, is the caller's mistake
    # (psycopg2's TypeError), never sent; so is a NUL, which PostgreSQL cannot store.
    with pytest.raises(TypeError, match="parameters"):
        run(wire, "INSERT INTO wire (v) VALUES (%s)", ())
    with pytest.raises(TypeError, match="placeholder"):
        run(wire, "SELECT v FROM wire WHERE v LIKE 'a%' AND v = %s", ("a",))
    with pytest.raises(ValueError, match="NUL"):
        run(wire, "INSERT INTO wire (v) VALUES (%s)", ("a\0b",))
    assert run(wire, "SELECT COUNT(*) FROM wire") == [(len(VALUES),)]


def test_errors_carry_the_sqlstate_and_a_lost_connection_none(pg_db: Database, wire: Any) -> None:
    pgwire = host_module("pgwire")
    run(wire, "CREATE TABLE u (k INT PRIMARY KEY)")
    run(wire, "INSERT INTO u VALUES (%s)", (1,))
    for statement, code in [
        ("INSERT INTO u VALUES (1)", "23505"),
        ("SELECT * FROM missing", "42P01"),
        ("SELEC 1", "42601"),
        ("SELECT 1 / 0", "22012"),
    ]:
        with pytest.raises(pgwire.PgError) as caught:
            run(wire, statement)
        assert caught.value.pgcode == code, statement
        assert run(wire, "SELECT COUNT(*) FROM u") == [(1,)]  # the connection goes on
    [(pid,)] = run(wire, "SELECT pg_backend_pid()")
    assert wire.get_backend_pid() == pid  # psycopg2's name: the tests terminate the action's connection with it
    with pg_db.conn.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(pgwire.PgError) as caught:
        run(wire, "SELECT 1")
    assert caught.value.pgcode is None  # what db._transient reads as "try again later": spooled


def test_the_session_has_the_startup_parameters(pg_db: Database) -> None:
    conn = wire_connect(pg_db, parameters={"application_name": "f2bsql-test", "options": "-c statement_timeout=7000"})
    try:
        assert run(conn, "SELECT current_setting('application_name'), current_setting('statement_timeout'),"
                         " current_setting('DateStyle'), current_setting('client_encoding')") == [
            ("f2bsql-test", "7s", "ISO, MDY", "UTF8")
        ]  # fmt: skip
    finally:
        conn.close()


def test_a_server_that_does_not_answer_is_given_up_after_the_read_timeout(wire: Any, pg_db: Database) -> None:
    pgwire = host_module("pgwire")
    slow = wire_connect(pg_db, read_timeout=1)
    started = time.monotonic()
    with pytest.raises(pgwire.PgError, match="timed out") as caught:
        run(slow, "SELECT pg_sleep(5)")
    assert time.monotonic() - started < 3 and caught.value.pgcode is None
    with pytest.raises(pgwire.PgError, match="closed"):
        run(slow, "SELECT 1")


def test_the_scram_login_checks_the_password_over_tcp_and_the_socket(pg_db: Database) -> None:
    pgwire = host_module("pgwire")
    for where in ({"host": pg_db.server.host}, {"host": pg_db.server.unix_socket}):
        conn = wire_connect(pg_db, **where)
        try:
            assert run(conn, "SELECT current_user") == [(pg_db.user,)]
        finally:
            conn.close()
        with pytest.raises(pgwire.PgError) as caught:
            wire_connect(pg_db, password=pg_db.password + "x", **where)
        assert caught.value.pgcode == "28P01" and pg_db.password not in str(caught.value)


@pytest.fixture
def hba_lines(pgsql_server: Server) -> Iterator[Callable[[str], None]]:
    """Put lines first in the test cluster's pg_hba.conf (and reload); taken out afterwards."""
    [(path,)] = admin(pgsql_server, "SHOW hba_file")
    hba = Path(path)
    original = hba.read_text()

    def put(lines: str) -> None:
        hba.write_text(lines + original)
        admin(pgsql_server, "SELECT pg_reload_conf()")

    yield put
    hba.write_text(original)
    admin(pgsql_server, "SELECT pg_reload_conf()")


def test_md5_and_password_logins(pgsql_server: Server, pg_db: Database, hba_lines: Callable[[str], None]) -> None:
    """Servers set up before scram-sha-256 ask for md5 (or the password itself): both are spoken."""
    pgwire = host_module("pgwire")
    secret = os.urandom(12).hex()
    users = {"md5": f"{pg_db.user}_md5", "password": f"{pg_db.user}_clear"}
    for user in users.values():
        admin(pgsql_server, f"SET password_encryption = 'md5'; CREATE ROLE {user} LOGIN PASSWORD '{secret}'")
    try:
        hba_lines("".join(f"host all {user} 127.0.0.1/32 {method}\n" for method, user in users.items()))
        for user in users.values():
            conn = wire_connect(pg_db, user=user, password=secret)
            try:
                assert run(conn, "SELECT current_user") == [(user,)]
            finally:
                conn.close()
            with pytest.raises(pgwire.PgError) as caught:
                wire_connect(pg_db, user=user, password=secret + "x")
            assert caught.value.pgcode == "28P01"
    finally:
        for user in users.values():
            admin(pgsql_server, f"DROP ROLE IF EXISTS {user}")


def test_tls_is_used_where_the_server_offers_it(pgsql_server: Server, pg_db: Database) -> None:
    """As libpq's default (sslmode=prefer): a server with TLS on gets an encrypted connection."""
    # In the cluster's own directory: the server runs as postgres and must read the key.
    folder = Path(pgsql_server.unix_socket) / f"tls-{pg_db.name}"
    folder.mkdir(mode=0o700)
    key, cert = folder / "server.key", folder / "server.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True,
    )  # fmt: skip
    owner = Path(pgsql_server.unix_socket).stat()
    for path in (folder, key, cert):
        os.chown(path, owner.st_uid, owner.st_gid)
    key.chmod(0o600)
    for statement in (f"ALTER SYSTEM SET ssl_cert_file = '{cert}'", f"ALTER SYSTEM SET ssl_key_file = '{key}'",
                      "ALTER SYSTEM SET ssl = on", "SELECT pg_reload_conf()"):  # fmt: skip
        admin(pgsql_server, statement)
    try:
        time.sleep(0.5)
        assert admin(pgsql_server, "SHOW ssl") == [("on",)]
        conn = wire_connect(pg_db)
        try:
            assert run(conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [(True,)]
            assert run(conn, "SELECT %s::text", ("over TLS",)) == [("over TLS",)]
        finally:
            conn.close()
    finally:
        for statement in ("ALTER SYSTEM RESET ssl", "ALTER SYSTEM RESET ssl_cert_file",
                          "ALTER SYSTEM RESET ssl_key_file", "SELECT pg_reload_conf()"):  # fmt: skip
            admin(pgsql_server, statement)


def test_what_it_does_not_speak_goes_through_psycopg2(pg_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """No password in the settings where the server asks for one (libpq would look in ~/.pgpass),
    or libpq's environment: Unsupported, and db.Database connects with psycopg2 instead."""
    pgwire = host_module("pgwire")
    with pytest.raises(pgwire.Unsupported, match="password"):
        wire_connect(pg_db, password=None)
    monkeypatch.setenv("PGSSLMODE", "disable")
    with pytest.raises(pgwire.Unsupported, match="environment"):
        wire_connect(pg_db)
    pg_db.apply_schema()
    settings = host_module("settings").Settings("the test")
    settings.backend, settings.host, settings.port = "pgsql", pg_db.server.host, pg_db.server.port
    settings.database, settings.user, settings.password = pg_db.name, pg_db.user, pg_db.password
    database = host_module("db").Database(settings).connect()
    try:
        assert type(database._conn).__module__.startswith("psycopg2")
        assert database.execute("jail_names", (), fetch=True) == []
    finally:
        database.close()


class FakeServer:
    """A loopback listener that plays one scripted answer to the client: what a broken server, a
    stalled one or one that does not hold the password does. `script(conn)` runs in a thread."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._script = script
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            self._script(conn)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(10)


def _read_message(conn: socket.socket, typed: bool = True) -> bytes:
    head = conn.recv(5 if typed else 4, socket.MSG_WAITALL)
    length = struct.unpack("!i", head[-4:])[0]
    return conn.recv(length - 4, socket.MSG_WAITALL) if length > 4 else b""


def _auth(code: int, data: bytes = b"") -> bytes:
    return b"R" + struct.pack("!ii", 8 + len(data), code) + data


def fake_connect(server: FakeServer, **extra: Any) -> Any:
    login: dict[str, Any] = {
        "user": "fail2ban", "password": "secret", "database": "fail2ban", "host": "127.0.0.1",
        "port": server.port, "connect_timeout": 1, "read_timeout": 1,
    }  # fmt: skip
    return host_module("pgwire").connect(**{**login, **extra})


def test_a_server_that_stalls_in_the_tls_handshake_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """It said yes to TLS and then nothing: the handshake waits the read timeout, not for ever
    (inside fail2ban-server that would be the jail's writer thread)."""
    pgwire = host_module("pgwire")

    def stall(conn: socket.socket) -> None:
        _read_message(conn, typed=False)
        conn.sendall(b"S")
        time.sleep(5)

    server = FakeServer(stall)
    try:
        started = time.monotonic()
        with pytest.raises(pgwire.PgError) as caught:
            fake_connect(server)
        assert time.monotonic() - started < 3 and caught.value.pgcode is None
    finally:
        server.close()


def test_a_server_that_closes_before_the_login_is_a_transient_failure() -> None:
    """Not Unsupported: falling back to psycopg2 would load libpq into fail2ban-server for good."""
    pgwire = host_module("pgwire")
    server = FakeServer(lambda conn: _read_message(conn, typed=False))
    try:
        with pytest.raises(pgwire.PgError) as caught:
            fake_connect(server)
        assert caught.value.pgcode is None
    finally:
        server.close()


def test_a_scram_server_must_prove_it_holds_the_password() -> None:
    """A server that answers the client's proof with AuthenticationOk, skipping its own signature,
    or with a wrong signature, is not talked to."""
    pgwire = host_module("pgwire")

    def impostor(final: bytes | None) -> Callable[[socket.socket], None]:
        def script(conn: socket.socket) -> None:
            _read_message(conn, typed=False)  # the TLS request
            conn.sendall(b"N")
            _read_message(conn, typed=False)  # the startup message
            conn.sendall(_auth(10, b"SCRAM-SHA-256\0\0"))
            first = _read_message(conn)
            nonce = first.split(b"r=", 1)[1].decode("ascii")
            salt = base64.b64encode(b"0123456789abcdef").decode("ascii")
            conn.sendall(_auth(11, f"r={nonce}server,s={salt},i=4096".encode("ascii")))
            _read_message(conn)  # the client's proof
            if final is not None:
                conn.sendall(_auth(12, final))
            conn.sendall(_auth(0) + b"Z\0\0\0\5I")
            time.sleep(1)

        return script

    for final in (None, b"v=" + base64.b64encode(b"\0" * 32)):
        server = FakeServer(impostor(final))
        try:
            with pytest.raises(pgwire.PgError, match="SCRAM") as caught:
                fake_connect(server)
            assert "secret" not in str(caught.value)
        finally:
            server.close()
