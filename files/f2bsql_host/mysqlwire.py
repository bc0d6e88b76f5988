"""A MySQL/MariaDB client made of the standard library: every MySQL connection of the host code.

Importing PyMySQL takes longer (20 to 35 ms: it loads ssl, and cryptography for MySQL 8's RSA
password exchange) than iRedMail's bash helper takes for a whole ban, and the helper is one
process per ban. This client speaks what a host's `fail2ban` login needs, and nothing more:

- the mysql_native_password login (MariaDB's and iRedMail's), over TCP or the unix socket;
- server-side prepared statements: the values travel apart from the SQL text, never in it;
- their binary result rows, decoded to the Python types PyMySQL returns.

What it does not speak (another authentication plugin, such as MySQL 8's caching_sha2_password
or MariaDB's ed25519) raises Unsupported before any statement is sent, and db.Database connects
with PyMySQL instead. Neither speaks TLS here: f2bsql's settings have no TLS options. Errors are
MySQLError with PyMySQL's arguments, (code, message), and its client codes: 2002/2003 cannot
connect, 2013 connection lost or timed out.
"""

from __future__ import annotations

import contextlib
import struct

from .cdatetime import datetime
from .wire import Stream, connect_tcp, connect_unix, host_bytes

try:  # the builtin module: hashlib loads OpenSSL, most of a millisecond or two, for this one hash
    from _sha1 import sha1  # type: ignore[import-not-found]
except ImportError:  # a build without it
    from hashlib import sha1

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

_MAX_PACKET = 0xFFFFFF
_UTF8MB4 = 45  # utf8mb4_general_ci
_BINARY = 63  # the charset of binary strings: returned as bytes

# Capability flags.
_LONG_PASSWORD = 0x1
_LONG_FLAG = 0x4
_CONNECT_WITH_DB = 0x8
_PROTOCOL_41 = 0x200
_TRANSACTIONS = 0x2000
_SECURE_CONNECTION = 0x8000
_MULTI_RESULTS = 0x20000
_PLUGIN_AUTH = 0x80000
_NEEDED = _PROTOCOL_41 | _SECURE_CONNECTION | _PLUGIN_AUTH
_CAPABILITIES = _LONG_PASSWORD | _LONG_FLAG | _CONNECT_WITH_DB | _TRANSACTIONS | _MULTI_RESULTS | _NEEDED
_STATUS_AUTOCOMMIT = 0x2
_UNSIGNED = 0x20  # column flag

_COM_QUIT = 0x01
_COM_QUERY = 0x03
_COM_STMT_PREPARE = 0x16
_COM_STMT_EXECUTE = 0x17
_COM_STMT_CLOSE = 0x19
_NATIVE = b"mysql_native_password"

# Column types of the binary protocol.
_INTEGERS = {0x01: ("b", 1), 0x02: ("h", 2), 0x0D: ("h", 2), 0x03: ("i", 4), 0x09: ("i", 4), 0x08: ("q", 8)}
_FLOATS = {0x04: ("<f", 4), 0x05: ("<d", 8)}
_DATE, _DATETIMES, _TIME, _NEWDECIMAL = 0x0A, (0x07, 0x0C), 0x0B, 0xF6
_PARAM_NULL, _PARAM_LONGLONG, _PARAM_DOUBLE, _PARAM_DATETIME, _PARAM_STRING = 0x06, 0x08, 0x05, 0x0C, 0xFE

CLIENT_CANNOT_CONNECT = 2003
CLIENT_SOCKET_CANNOT_CONNECT = 2002
CLIENT_LOST = 2013
CLIENT_MALFORMED = 2027


class MySQLError(Exception):
    """What the server answered, or what went wrong on the way: args are (code, message)."""


class Unsupported(Exception):
    """The server or the login needs what this client does not speak: use PyMySQL."""


def _lenenc_int(value: int) -> bytes:
    if value < 251:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + struct.pack("<H", value)
    if value < 1 << 24:
        return b"\xfd" + struct.pack("<I", value)[:3]
    return b"\xfe" + struct.pack("<Q", value)


class _Reader:
    """Reads the fields of one packet in order."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, count: int) -> bytes:
        value = self.data[self.pos : self.pos + count]
        if len(value) < count:
            raise MySQLError(CLIENT_MALFORMED, "malformed packet from the server")
        self.pos += count
        return value

    def unpack(self, fmt: str) -> Any:
        values = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return values[0] if len(values) == 1 else values

    def lenenc(self) -> int:
        first = self.take(1)[0]
        if first < 251:
            return first
        size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
        if size is None:
            raise MySQLError(CLIENT_MALFORMED, "malformed length in a packet from the server")
        return int.from_bytes(self.take(size), "little")

    def lenenc_bytes(self) -> bytes:
        return self.take(self.lenenc())

    def until_nul(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        end = len(self.data) if end < 0 else end
        value, self.pos = self.data[self.pos : end], end + 1
        return value


def _native_scramble(password: bytes, salt: bytes) -> bytes:
    """mysql_native_password: SHA1(password) XOR SHA1(salt + SHA1(SHA1(password)))."""
    if not password:
        return b""
    stage1 = sha1(password).digest()  # noqa: S324 -- the protocol's own hash, not ours to choose
    mix = sha1(salt + sha1(stage1).digest()).digest()  # noqa: S324
    return bytes(a ^ b for a, b in zip(stage1, mix))


def _error(packet: bytes) -> MySQLError:
    reader = _Reader(packet, 1)
    code = reader.unpack("<H")
    if packet[3:4] == b"#":
        reader.take(6)
    return MySQLError(code, reader.data[reader.pos :].decode("utf-8", "replace"))


class Connection(Stream):
    """One connection, always in autocommit but inside begin() ... commit()/rollback()."""

    _PASSED = (MySQLError, Unsupported, TypeError)  # TypeError: the caller's parameters
    _GOODBYE = b"\x01\x00\x00\x00" + bytes((_COM_QUIT,))

    def __init__(self, sock: Any) -> None:
        super().__init__(sock)
        self._seq = 0
        self._thread_id = 0

    def _lost_error(self, why: str) -> MySQLError:
        return MySQLError(CLIENT_LOST, f"Lost connection to MySQL server during query ({why})")

    def _unreadable_error(self, message: str) -> MySQLError:
        return MySQLError(CLIENT_MALFORMED, message)

    # Packets.

    def _send(self, payload: bytes) -> None:
        out = bytearray()
        while True:
            chunk, payload = payload[:_MAX_PACKET], payload[_MAX_PACKET:]
            out += struct.pack("<I", len(chunk))[:3] + bytes((self._seq,)) + chunk
            self._seq = (self._seq + 1) & 0xFF
            if len(chunk) < _MAX_PACKET:
                break
        self._sendall(bytes(out))

    def _read(self) -> bytes:
        data = b""
        while True:
            header = self._recv(4)
            length = int.from_bytes(header[:3], "little")
            if header[3] != self._seq:  # an answer to something else: the stream is out of step
                self.close()
                raise MySQLError(CLIENT_MALFORMED, "packet out of sequence from the server")
            self._seq = (header[3] + 1) & 0xFF
            data += self._recv(length)
            if length < _MAX_PACKET:
                return data

    def _skip(self, count: int) -> None:
        """Read and drop `count` packets. A prepared statement's answer brings one definition per
        placeholder, ten per row of a batch of bans: walked by their lengths in the buffer, not
        copied out one by one (that cost the writer more than the rest of a batch did)."""
        at, buffer = 0, self._buffer
        for _ in range(count):
            if len(buffer) < at + 4:
                self._fill(at + 4)
            length, seq = buffer[at] | buffer[at + 1] << 8 | buffer[at + 2] << 16, buffer[at + 3]
            if seq != self._seq or length >= _MAX_PACKET:  # out of step, or no definition
                self.close()
                raise MySQLError(CLIENT_MALFORMED, "packet out of sequence from the server")
            self._seq = (seq + 1) & 0xFF
            at += 4 + length
            if len(buffer) < at:
                self._fill(at)
        del buffer[:at]

    def _command(self, command: int, payload: bytes) -> None:
        if not self._open:
            raise MySQLError(CLIENT_LOST, "the connection is closed")
        self._seq = 0
        self._send(bytes((command,)) + payload)

    def _ok(self) -> int:
        """Read an OK packet (or raise the ERR): its status flags."""
        packet = self._read()
        if packet[0] == 0xFF:
            raise _error(packet)
        if packet[0] != 0x00:
            raise MySQLError(CLIENT_MALFORMED, "unexpected answer from the server")
        reader = _Reader(packet, 1)
        reader.lenenc()
        reader.lenenc()
        return int(reader.unpack("<H"))

    # The login.

    def login(self, user: str, password: str, database: str) -> None:
        self._guarded(lambda: self._login(user, password, database))

    def _login(self, user: str, password: str, database: str) -> None:
        packet = self._read()
        if packet[0] == 0xFF:
            raise _error(packet)
        if packet[0] != 10:
            raise Unsupported(f"handshake protocol {packet[0]}")
        reader = _Reader(packet, 1)
        reader.until_nul()  # server version
        self._thread_id = reader.unpack("<I")
        salt = reader.take(8)
        reader.take(1)
        caps = reader.unpack("<H")
        reader.take(3)  # charset, status
        caps |= reader.unpack("<H") << 16
        salt_len = reader.take(1)[0]
        reader.take(10)
        if caps & _NEEDED != _NEEDED:
            raise Unsupported("the server lacks the 4.1 protocol or plugin authentication")
        salt += reader.take(max(13, salt_len - 8))[:12]
        secret = password.encode("utf-8")  # as the server hashed it from a utf8mb4 session
        scramble = _native_scramble(secret, salt)
        self._send(
            struct.pack("<IIB23x", _CAPABILITIES, _MAX_PACKET, _UTF8MB4)
            + user.encode("utf-8") + b"\0"
            + bytes((len(scramble),)) + scramble
            + database.encode("utf-8") + b"\0"
            + _NATIVE + b"\0"
        )  # fmt: skip
        answer = self._read()
        if answer[0] == 0xFE:  # the account uses another plugin: switch to it
            switch = _Reader(answer, 1)
            plugin = switch.until_nul()
            if plugin != _NATIVE:
                raise Unsupported(f"the account's authentication plugin {plugin.decode('ascii', 'replace')}")
            self._send(_native_scramble(secret, switch.data[switch.pos :].rstrip(b"\0")[:20]))
            answer = self._read()
        if answer[0] == 0xFF:
            raise _error(answer)
        if answer[0] != 0x00:
            raise Unsupported("the server asked for more authentication data")
        reader = _Reader(answer, 1)
        reader.lenenc()
        reader.lenenc()
        if not reader.unpack("<H") & _STATUS_AUTOCOMMIT:
            self._query("SET AUTOCOMMIT = 1")

    # Statements.

    def query(self, statement: str) -> None:
        """A statement without parameters and without a result (SET, BEGIN, COMMIT)."""
        self._guarded(lambda: self._query(statement))

    def _query(self, statement: str) -> None:
        self._command(_COM_QUERY, statement.encode("utf-8"))
        self._ok()

    def begin(self) -> None:
        self.query("BEGIN")

    def commit(self) -> None:
        self.query("COMMIT")

    def rollback(self) -> None:
        self.query("ROLLBACK")

    def thread_id(self) -> int:
        """The server's id of this connection (what KILL and the process list name)."""
        return self._thread_id

    def execute(self, statement: str, params: Sequence[Any]) -> tuple[int, list[tuple[Any, ...]]]:
        """Prepare, execute and close one statement whose parameters are written %s (PyMySQL's
        placeholders): (affected rows or rows read, the rows)."""
        values = _parameters(params)  # a value it cannot send raises here, before anything is sent
        return self._guarded(lambda: self._execute(statement, len(params), values))

    def _execute(self, statement: str, given: int, values: bytes) -> tuple[int, list[tuple[Any, ...]]]:
        self._command(_COM_STMT_PREPARE, statement.replace("%s", "?").encode("utf-8"))
        packet = self._read()
        if packet[0] == 0xFF:
            raise _error(packet)
        stmt_id, columns, count = _Reader(packet, 1).unpack("<IHH")
        # The parameters' definitions, then EOF; the columns' definitions, then EOF.
        self._skip((count + 1 if count else 0) + (columns + 1 if columns else 0))
        try:
            if count != given:  # the caller's mistake, as PyMySQL's TypeError: never worth a retry
                raise TypeError(f"{given} parameters for {count} placeholders")
            self._command(_COM_STMT_EXECUTE, struct.pack("<IBI", stmt_id, 0, 1) + (values if count else b""))
            return self._result()
        finally:
            if self._open:  # the server does not answer; a failure here must not hide the first
                with contextlib.suppress(MySQLError):
                    self._command(_COM_STMT_CLOSE, struct.pack("<I", stmt_id))

    def _result(self) -> tuple[int, list[tuple[Any, ...]]]:
        packet = self._read()
        if packet[0] == 0xFF:
            raise _error(packet)
        if packet[0] == 0x00:
            reader = _Reader(packet, 1)
            return reader.lenenc(), []
        columns = []
        for _ in range(_Reader(packet).lenenc()):
            reader = _Reader(self._read())
            for _field in range(6):  # catalog, schema, table, org_table, name, org_name
                reader.lenenc_bytes()
            reader.lenenc()
            charset, _length, kind, flags = reader.unpack("<HIBH")
            columns.append((kind, flags, charset))
        self._read()  # EOF
        rows: list[tuple[Any, ...]] = []
        while True:
            packet = self._read()
            if packet[0] == 0xFE and len(packet) < 9:
                return len(rows), rows
            if packet[0] == 0xFF:
                raise _error(packet)
            rows.append(_binary_row(packet, columns))


def _parameters(params: Sequence[Any]) -> bytes:
    """COM_STMT_EXECUTE's NULL bitmap, types and values for these parameters."""
    if not params:
        return b""
    nulls = bytearray((len(params) + 7) // 8)
    types, values = bytearray(), bytearray()
    for index, value in enumerate(params):
        unsigned = 0
        if value is None:
            nulls[index // 8] |= 1 << (index % 8)
            kind = _PARAM_NULL
        elif isinstance(value, int):  # bool too
            if not -(1 << 63) <= value < 1 << 64:
                raise ValueError(f"integer out of MySQL's range: {value}")
            unsigned = 0x80 if value >= 1 << 63 else 0
            kind, data = _PARAM_LONGLONG, struct.pack("<Q" if unsigned else "<q", value)
        elif isinstance(value, float):
            kind, data = _PARAM_DOUBLE, struct.pack("<d", value)
        elif isinstance(value, datetime.datetime):
            kind = _PARAM_DATETIME
            data = struct.pack("<BHBBBBBI", 11, value.year, value.month, value.day,
                               value.hour, value.minute, value.second, value.microsecond)  # fmt: skip
        elif isinstance(value, str):
            raw = value.encode("utf-8", "surrogateescape")
            kind, data = _PARAM_STRING, _lenenc_int(len(raw)) + raw
        else:
            raise TypeError(f"no MySQL parameter type for {type(value).__name__}")
        types += bytes((kind, unsigned))
        if value is not None:
            values += data
    return bytes(nulls) + b"\x01" + bytes(types) + bytes(values)


def _binary_row(packet: bytes, columns: Sequence[tuple[int, int, int]]) -> tuple[Any, ...]:
    """One row of a prepared statement's result, as PyMySQL would return it."""
    size = (len(columns) + 9) // 8
    nulls = packet[1 : 1 + size]
    reader = _Reader(packet, 1 + size)
    row: list[Any] = []
    for index, (kind, flags, charset) in enumerate(columns):
        bit = index + 2
        if nulls[bit // 8] & (1 << (bit % 8)):
            row.append(None)
        elif kind in _INTEGERS:
            code, width = _INTEGERS[kind]
            row.append(struct.unpack("<" + (code.upper() if flags & _UNSIGNED else code), reader.take(width))[0])
        elif kind in _FLOATS:
            fmt, width = _FLOATS[kind]
            row.append(struct.unpack(fmt, reader.take(width))[0])
        elif kind in _DATETIMES or kind == _DATE:
            row.append(_datetime(reader.take(reader.take(1)[0]), kind == _DATE))
        elif kind == _TIME:
            row.append(_time(reader.take(reader.take(1)[0])))
        else:
            raw = reader.lenenc_bytes()
            if kind == _NEWDECIMAL:
                import decimal

                row.append(decimal.Decimal(raw.decode("ascii")))
            else:
                row.append(raw if charset == _BINARY else raw.decode("utf-8", "surrogateescape"))
    return tuple(row)


def _datetime(raw: bytes, date_only: bool) -> datetime.date | datetime.datetime | str:
    """A DATE, DATETIME or TIMESTAMP value; one Python cannot hold (the zero date, a zero month
    that a lax sql_mode let in) comes back as its text, as PyMySQL returns it."""
    year, month, day = struct.unpack_from("<HBB", raw) if raw else (0, 0, 0)
    hour, minute, second = struct.unpack_from("<BBB", raw, 4) if len(raw) >= 7 else (0, 0, 0)
    micro = struct.unpack_from("<I", raw, 7)[0] if len(raw) >= 11 else 0
    try:
        if date_only:
            return datetime.date(year, month, day)
        return datetime.datetime(year, month, day, hour, minute, second, micro)
    except ValueError:
        text = f"{year:04d}-{month:02d}-{day:02d}"
        return text if date_only else f"{text} {hour:02d}:{minute:02d}:{second:02d}"


def _time(raw: bytes) -> datetime.timedelta:
    if not raw:
        return datetime.timedelta(0)
    negative, days, hours, minutes, seconds = struct.unpack_from("<BIBBB", raw)
    micro = struct.unpack_from("<I", raw, 8)[0] if len(raw) >= 12 else 0
    value = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds, microseconds=micro)
    return -value if negative else value


def connect(
    *,
    user: str,
    password: str,
    database: str,
    unix_socket: str = "",
    host: str = "127.0.0.1",
    port: int = 3306,
    connect_timeout: float,
    read_timeout: float,
    init_command: str = "",
) -> Connection:
    """A logged-in connection in autocommit, `init_command` run; Unsupported if PyMySQL must do it."""
    try:
        if unix_socket:
            sock = connect_unix(unix_socket, connect_timeout)
        else:
            sock = connect_tcp(host_bytes(host), port, connect_timeout)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a host name idna cannot encode
        where = unix_socket or f"{host}:{port}"
        code = CLIENT_SOCKET_CANNOT_CONNECT if unix_socket else CLIENT_CANNOT_CONNECT
        raise MySQLError(code, f"Can't connect to MySQL server on {where!r} ({exc})") from None
    sock.settimeout(read_timeout)  # from the server's greeting on, as PyMySQL waits
    conn = Connection(sock)
    try:
        conn.login(user, password, database)
        if init_command:
            conn.query(init_command)
    except BaseException:
        conn.close()
        raise
    return conn
