"""A PostgreSQL client made of the standard library: the host code's PostgreSQL connections.

psycopg2 loads libpq, and libpq loads Kerberos, LDAP, GnuTLS, p11-kit and a dozen more
libraries: about 8 MB and 120 more memory mappings in fail2ban-server once the Python action
has connected. fail2ban forks fail2ban-server for every firewall action call, and every fork
copies those mappings: with psycopg2 loaded and the action's ban() doing nothing at all, a
burst through a jail's firewall action took 1.30x what it took without banned_db (bench/README,
2026-12-07). This client loads none of it. It speaks what a host's `fail2ban` login needs:

- protocol 3.0 over the unix socket or TCP; over TCP it asks for TLS first and uses it where
  the server offers it, without checking the certificate (libpq's default, sslmode=prefer);
- trust and peer, password, md5 and SCRAM-SHA-256 logins;
- the extended query protocol: the values travel apart from the SQL text (Bind), never in it;
  every statement is its own transaction (psycopg2's autocommit);
- text results decoded to the Python types psycopg2 returns.

What it does not speak raises Unsupported before any statement is sent, and db.Database connects
with psycopg2 instead: a login it does not know (GSSAPI, SSPI, a client certificate in
~/.postgresql), a password the server asks for where the settings hold none (libpq would look for
it in ~/.pgpass and PGPASSWORD), a non-ASCII password for SCRAM (libpq normalises it with
SASLprep) or more than 100,000 SCRAM rounds, a login refused over TLS (libpq's prefer tries again
without), libpq's PG* environment variables, and a host list. Errors are PgError with psycopg2's
attributes: `pgcode` (the SQLSTATE; None where the connection failed or was lost, which db reads
as "try again later") and `pgerror`.
"""

from __future__ import annotations

import binascii
import os
import struct
from _operator import _compare_digest as compare_digest  # hmac.compare_digest, without hmac's imports

from .cdatetime import datetime
from .wire import Stream, connect_tcp, connect_unix, host_bytes

# The builtin module (_sha2 since Python 3.12): hashlib loads OpenSSL, 5 ms of a `ban` process.
try:
    from _sha2 import sha256  # type: ignore[import-not-found]
except ImportError:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:  # a build without either
        from hashlib import sha256

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

_PROTOCOL = 196608  # 3.0
_SSL_REQUEST = 80877103
# Where distros put the server's socket when no host is given (libpq's compiled-in default).
SOCKET_DIRS = ("/var/run/postgresql", "/run/postgresql", "/tmp")  # noqa: S108 -- OpenBSD/FreeBSD's

# Authentication requests ('R').
_AUTH_OK, _AUTH_CLEARTEXT, _AUTH_MD5, _AUTH_SASL, _AUTH_SASL_CONTINUE, _AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12

# Type OIDs of parameters and of result columns.
_BOOL, _BYTEA, _INT8, _INT2, _INT4, _OID = 16, 17, 20, 21, 23, 26
_FLOAT4, _FLOAT8, _NUMERIC = 700, 701, 1700
_DATE, _TIMESTAMP, _TIMESTAMPTZ = 1082, 1114, 1184
_UNKNOWN = 0  # a string: the server takes the type the statement needs, as for psycopg2's quoted literal
_INTEGERS = frozenset({_INT8, _INT2, _INT4, _OID})
_NO_HBA_ENTRY = "28000"  # invalid_authorization_specification: pg_hba.conf has no line for this login
_MAX_MESSAGE = 1 << 30  # PostgreSQL's own limit for a message; a larger length is not a server talking
_MAX_ROUNDS = 100_000  # PBKDF2 rounds done here (PostgreSQL's default is 4,096); more are left to libpq's C
_MAX_PARAMETERS = 32767  # the protocol counts them in 16 bits


class PgError(Exception):
    """What the server answered (pgcode: its SQLSTATE), or what went wrong on the way (pgcode None)."""

    def __init__(self, message: str, pgcode: str | None = None) -> None:
        super().__init__(message)
        self.pgcode = pgcode
        self.pgerror = message


class Unsupported(Exception):
    """The server or the login needs what this client does not speak: use psycopg2."""


def _server_error(body: bytes) -> PgError:
    """An ErrorResponse: its fields are a type byte and a NUL-ended string each."""
    fields: dict[str, str] = {}
    for field in body.split(b"\0"):
        if field:
            fields[chr(field[0])] = field[1:].decode("utf-8", "replace")
    message = f"{fields.get('S', 'ERROR')}:  {fields.get('M', 'unknown error')}"
    if "D" in fields:
        message += f"\nDETAIL:  {fields['D']}"
    return PgError(message, fields.get("C"))


def _cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\0"


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


class Connection(Stream):
    """One connection; every statement commits on its own (autocommit)."""

    _PASSED = (PgError, Unsupported)
    _GOODBYE = b"X\0\0\0\4"  # Terminate

    _backend_pid = 0

    def get_backend_pid(self) -> int:
        """The server process of this connection (what pg_terminate_backend takes), as psycopg2's."""
        return self._backend_pid

    def _lost_error(self, why: str) -> PgError:
        return PgError(f"server closed the connection unexpectedly ({why})")

    def _unreadable_error(self, message: str) -> PgError:
        return PgError(message)

    # Messages.

    def _send(self, data: bytes) -> None:
        if not self._open:
            raise PgError("the connection is closed")
        self._sendall(data)

    def _read(self) -> tuple[bytes, bytes]:
        """The next message the caller needs: (type, body). Notices, parameter changes and
        notifications are read past; a FATAL error ends the connection."""
        while True:
            header = self._recv(5)
            length = struct.unpack("!i", header[1:])[0]
            if not 4 <= length <= _MAX_MESSAGE:
                self.close()
                raise PgError("malformed message from the server")
            kind, body = header[:1], self._recv(length - 4)
            if kind in (b"N", b"S", b"A"):
                continue
            return kind, body

    # The login.

    def login(self, user: str, password: str | None, database: str, parameters: dict[str, str]) -> None:
        self._guarded(lambda: self._login(user, password, database, parameters))

    def _login(self, user: str, password: str | None, database: str, parameters: dict[str, str]) -> None:
        startup = {"user": user, "database": database, **parameters}
        body = struct.pack("!i", _PROTOCOL) + b"".join(_cstring(k) + _cstring(v) for k, v in startup.items()) + b"\0"
        self._send(struct.pack("!i", len(body) + 4) + body)
        scram: Any = None
        while True:
            kind, body = self._read()
            if kind == b"E":
                self.close()
                raise _server_error(body)
            if kind == b"Z":
                return
            if kind == b"K":  # BackendKeyData: the server process's id (and a cancel key, unused)
                self._backend_pid = struct.unpack_from("!i", body)[0]
                continue
            if kind != b"R":
                continue
            code = struct.unpack_from("!i", body)[0]
            if code == _AUTH_OK:
                if scram is not None and not scram.verified:
                    raise PgError("the server let the SCRAM login in without proving it knew the password")
                continue
            if password is None:
                raise Unsupported("the server asks for a password and the settings hold none")
            if code == _AUTH_CLEARTEXT:
                self._send(_message(b"p", _cstring(password)))
            elif code == _AUTH_MD5:
                self._send(_message(b"p", _cstring(_md5_password(user, password, body[4:8]))))
            elif code == _AUTH_SASL:
                mechanisms = body[4:].split(b"\0")
                if b"SCRAM-SHA-256" not in mechanisms:
                    raise Unsupported(f"SASL mechanisms {mechanisms!r}")
                if not password.isascii():
                    raise Unsupported("a non-ASCII password for SCRAM (libpq normalises it with SASLprep)")
                scram = _Scram(password)
                first = scram.first()
                self._send(_message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
            elif code == _AUTH_SASL_CONTINUE and scram is not None:
                self._send(_message(b"p", scram.final(body[4:])))
            elif code == _AUTH_SASL_FINAL and scram is not None:
                scram.verify(body[4:])
            else:
                raise Unsupported(f"authentication request {code}")

    # Statements.

    def execute(self, statement: str, params: Sequence[Any]) -> tuple[int, list[tuple[Any, ...]]]:
        """Parse, bind and execute one statement whose parameters are written %s (psycopg2's
        placeholders): (rows affected or read, the rows)."""
        parts = statement.split("%s")
        if len(parts) - 1 != len(params):  # the caller's mistake, as psycopg2's TypeError
            raise TypeError(f"{len(params)} parameters for {len(parts) - 1} placeholders")
        if len(params) > _MAX_PARAMETERS:
            raise TypeError(f"{len(params)} parameters: the protocol takes {_MAX_PARAMETERS} at most")
        if any("%" in part for part in parts):
            raise TypeError("a % in the statement that is not a %s placeholder")
        sql = parts[0] + "".join(f"${index}{part}" for index, part in enumerate(parts[1:], 1))
        oids, values = _parameters(params)  # a value it cannot send raises here, before anything is sent
        message = (
            _message(b"P", b"\0" + _cstring(sql) + struct.pack(f"!h{len(oids)}i", len(oids), *oids))
            + _message(b"B", b"\0\0" + struct.pack("!hh", 0, len(values)) + b"".join(values) + struct.pack("!h", 0))
            + _message(b"D", b"P\0")
            + _message(b"E", b"\0" + struct.pack("!i", 0))
            + _message(b"S", b"")
        )  # fmt: skip
        return self._guarded(lambda: self._execute(message))

    def _execute(self, message: bytes) -> tuple[int, list[tuple[Any, ...]]]:
        self._send(message)
        columns: list[int] = []
        rows: list[tuple[Any, ...]] = []
        count, error = -1, None
        while True:
            kind, body = self._read()
            if kind == b"T":
                columns = _row_description(body)
            elif kind == b"D":
                rows.append(_data_row(body, columns))
            elif kind == b"C":
                tag = body.rstrip(b"\0").split(b" ")
                count = int(tag[-1]) if tag[-1].isdigit() else -1
            elif kind == b"E":
                error = _server_error(body)  # the server skips to the Sync's ReadyForQuery
            elif kind == b"Z":
                if error is not None:
                    raise error
                return count, rows


def _md5_password(user: str, password: str, salt: bytes) -> str:
    try:  # the builtin module: hashlib loads OpenSSL for this one hash
        from _md5 import md5  # type: ignore[import-not-found]
    except ImportError:  # a build without it
        from hashlib import md5

    inner: str = md5((password + user).encode("utf-8")).hexdigest()  # noqa: S324 -- the protocol's own hash
    outer: str = md5(inner.encode("ascii") + salt).hexdigest()  # noqa: S324
    return "md5" + outer


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


class _Hmac:
    """HMAC-SHA-256 with the key's two padded states made once: PBKDF2 runs it thousands of times."""

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = sha256(bytes(b ^ 0x36 for b in key))
        self._outer = sha256(bytes(b ^ 0x5C for b in key))

    def __call__(self, message: bytes) -> bytes:
        inner, outer = self._inner.copy(), self._outer.copy()
        inner.update(message)
        outer.update(inner.digest())
        return bytes(outer.digest())


def _pbkdf2(password: bytes, salt: bytes, rounds: int) -> bytes:
    """PBKDF2-HMAC-SHA-256, one block (RFC 8018): the 4,096 rounds PostgreSQL asks for take about
    3 ms, less than importing hashlib (OpenSSL) takes a `ban` process."""
    mac = _Hmac(password)
    block = mac(salt + b"\0\0\0\1")
    result = int.from_bytes(block, "big")
    for _ in range(rounds - 1):
        block = mac(block)
        result ^= int.from_bytes(block, "big")
    return result.to_bytes(32, "big")


class _Scram:
    """SCRAM-SHA-256 (RFC 5802, 7677) without channel binding, as PostgreSQL speaks it."""

    def __init__(self, password: str) -> None:
        self._password = password.encode("ascii")
        self._nonce = _b64(os.urandom(18))
        self._bare = f"n=,r={self._nonce}"  # PostgreSQL takes the user from the startup message
        self._auth = b""
        self._server_key = b""
        self.verified = False

    def first(self) -> bytes:
        return f"n,,{self._bare}".encode("ascii")

    def final(self, server_first: bytes) -> bytes:
        fields = dict(item.split("=", 1) for item in server_first.decode("ascii").split(",") if "=" in item)
        nonce, salt, rounds = fields["r"], binascii.a2b_base64(fields["s"]), int(fields["i"])
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce) or rounds < 1:
            raise PgError("the server's SCRAM answer does not follow the client's")
        if rounds > _MAX_ROUNDS:
            raise Unsupported(f"{rounds} SCRAM rounds")
        salted = _pbkdf2(self._password, salt, rounds)
        client_key = _Hmac(salted)(b"Client Key")
        without_proof = f"c=biws,r={nonce}"  # biws: "n,," in base64
        self._auth = f"{self._bare},{server_first.decode('ascii')},{without_proof}".encode("ascii")
        signature = _Hmac(sha256(client_key).digest())(self._auth)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self._server_key = _Hmac(salted)(b"Server Key")
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify(self, server_final: bytes) -> None:
        """The server proves it knew the password too: a server that did not is not talked to."""
        expected = b"v=" + _b64(_Hmac(self._server_key)(self._auth)).encode("ascii")
        if not self._auth or not compare_digest(server_final.strip(), expected):
            raise PgError("the server's SCRAM signature is wrong: not the server that holds the password")
        self.verified = True


def _parameters(params: Sequence[Any]) -> tuple[list[int], list[bytes]]:
    """The type OIDs and the Bind values (length and text) of these parameters."""
    oids: list[int] = []
    values: list[bytes] = []
    for value in params:
        if value is None:
            oids.append(_UNKNOWN)
            values.append(struct.pack("!i", -1))
            continue
        if isinstance(value, bool):
            oid, text = _BOOL, "t" if value else "f"
        elif isinstance(value, int):
            oid, text = _INT8, str(value)
        elif isinstance(value, float):
            oid, text = _FLOAT8, repr(value).replace("inf", "Infinity").replace("nan", "NaN")
        elif isinstance(value, datetime.datetime):
            oid, text = (_TIMESTAMP if value.tzinfo is None else _TIMESTAMPTZ), value.isoformat(" ")
        elif isinstance(value, datetime.date):
            oid, text = _DATE, value.isoformat()
        elif isinstance(value, str):
            oid, text = _UNKNOWN, value
        elif isinstance(value, (bytes, bytearray, memoryview)):
            oid, text = _BYTEA, "\\x" + bytes(value).hex()
        elif type(value).__name__ == "Decimal":
            oid, text = _NUMERIC, str(value)
        else:
            raise TypeError(f"no PostgreSQL parameter type for {type(value).__name__}")
        raw = text.encode("utf-8")
        if b"\0" in raw:  # the protocol's text values end at NUL: psycopg2 refuses it too
            raise ValueError("a string parameter holds a NUL character, which PostgreSQL cannot store")
        oids.append(oid)
        values.append(struct.pack("!i", len(raw)) + raw)
    return oids, values


def _row_description(body: bytes) -> list[int]:
    """The type OID of each column of the result."""
    count = struct.unpack_from("!h", body)[0]
    pos, oids = 2, []
    for _ in range(count):
        pos = body.index(b"\0", pos) + 1  # the column's name
        oids.append(struct.unpack_from("!ihih", body, pos)[2])
        pos += 18  # table OID, column number, type OID, type size, type modifier, format
    return oids


def _data_row(body: bytes, columns: Sequence[int]) -> tuple[Any, ...]:
    count = struct.unpack_from("!h", body)[0]
    pos, row = 2, []  # type: tuple[int, list[Any]]
    for index in range(count):
        length = struct.unpack_from("!i", body, pos)[0]
        pos += 4
        if length < 0:
            row.append(None)
            continue
        row.append(_value(body[pos : pos + length].decode("utf-8", "surrogateescape"), columns[index]))
        pos += length
    return tuple(row)


def _value(text: str, oid: int) -> Any:
    """A column's text as psycopg2 returns it."""
    if oid in _INTEGERS:
        return int(text)
    if oid == _BOOL:
        return text == "t"
    if oid in (_FLOAT4, _FLOAT8):
        return float(text)
    if oid == _NUMERIC:
        import decimal

        return decimal.Decimal(text)
    if oid in (_TIMESTAMP, _TIMESTAMPTZ, _DATE):
        kind = datetime.date if oid == _DATE else datetime.datetime
        if text in ("infinity", "-infinity"):  # psycopg2's stand-ins
            return kind.max if text == "infinity" else kind.min
        return _timestamp(text) if kind is datetime.datetime else _date(text)
    if oid == _BYTEA:
        return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode("utf-8", "surrogateescape")
    return text


def _date(text: str) -> Any:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:  # a year BC: as text
        return text


def _timestamp(text: str) -> Any:
    """ISO output ("2026-12-07 03:35:59.5+01"), for Python 3.9's fromisoformat too: the fraction
    to six digits and the offset to hh:mm. One Python cannot hold (a year BC) stays text."""
    stamp, sign, offset = text, "", ""
    for mark in ("+", "-"):
        at = text.rfind(mark)
        if at > 10:
            stamp, sign, offset = text[:at], mark, text[at + 1 :]
    if "." in stamp:
        whole, fraction = stamp.split(".", 1)
        stamp = f"{whole}.{fraction[:6]:0<6}"
    if offset:
        hours, _, rest = offset.partition(":")
        stamp += f"{sign}{hours:0>2}:{rest or '00'}"[:10]
    try:
        return datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return text


def _tls(sock: Any, timeout: float) -> tuple[Any, bool]:
    """Ask for TLS and use it where the server offers it, as libpq's sslmode=prefer does (which
    checks no certificate either). ssl is imported only for a server that says yes."""
    sock.sendall(struct.pack("!ii", 8, _SSL_REQUEST))
    answer = sock.recv(1)
    if answer == b"N":
        return sock, False
    if answer in (b"", b"E"):  # closed, or refused (too many clients, shutting down): try again later
        raise OSError("the server closed the connection before the login")
    if answer != b"S":
        raise Unsupported(f"answer {answer!r} to the TLS request")
    try:
        import socket
        import ssl
    except ImportError:  # a Python built without ssl: libpq has its own
        raise Unsupported("no ssl module for the TLS the server offers") from None

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    plain = socket.socket(fileno=sock.detach())
    plain.settimeout(timeout)  # detach() forgets it, and the handshake must not wait for ever
    return context.wrap_socket(plain), True


def socket_path(directory: str, port: int) -> str:
    return os.path.join(directory, f".s.PGSQL.{port}")


def connect(
    *,
    user: str,
    password: str | None,
    database: str,
    host: str = "",
    port: int = 5432,
    connect_timeout: float,
    read_timeout: float,
    parameters: dict[str, str] | None = None,
) -> Connection:
    """A logged-in connection. `host` as libpq takes it: a name or address (TCP), a directory (the
    unix socket in it), or "" for the distro's socket. `parameters`: the startup message's
    (application_name, options, ...). Unsupported if psycopg2 must do it."""
    if any(name.startswith("PG") for name in os.environ):
        raise Unsupported("libpq's PG* environment variables")
    if "," in host:
        raise Unsupported("a list of hosts")
    if not host:
        found = [path for path in (socket_path(d, port) for d in SOCKET_DIRS) if os.path.exists(path)]
        if not found:
            raise Unsupported("no server socket where the distros put it")
        where = found[0]
    else:
        where = socket_path(host, port) if host.startswith("/") else ""
    if not where and os.path.exists(os.path.expanduser("~/.postgresql/postgresql.crt")):
        raise Unsupported("a client certificate for libpq to present")
    tls = False
    try:
        if where:
            sock = connect_unix(where, connect_timeout)
        else:
            sock = connect_tcp(host_bytes(host), port, connect_timeout)
            try:
                # From the first answer on the read timeout holds, as mysqlwire waits for the greeting.
                sock.settimeout(read_timeout)
                sock, tls = _tls(sock, read_timeout)
            except BaseException:
                sock.close()
                raise
    except (OSError, UnicodeError) as exc:  # UnicodeError: a host name idna cannot encode
        shown = where or f"{host}:{port}"
        raise PgError(f"connection to server at {shown!r} failed: {exc}") from None
    sock.settimeout(read_timeout)
    conn = Connection(sock)
    try:
        conn.login(user, password, database, {"client_encoding": "UTF8", "DateStyle": "ISO", **(parameters or {})})
    except PgError as exc:
        conn.close()
        if tls and exc.pgcode == _NO_HBA_ENTRY:  # e.g. hostnossl only: libpq's prefer tries again without TLS
            raise Unsupported("the server refused the login over TLS") from None
        raise
    except BaseException:
        conn.close()
        raise
    return conn
