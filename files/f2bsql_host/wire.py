"""What the host code's own database clients (mysqlwire, pgwire) share: the socket and its
buffer, the rule that any fault on the stream loses the connection, and the cursor db uses."""

from __future__ import annotations

# _socket, not socket: socket.py's enums and selectors cost a `ban` process more than its statement.
import _socket
import contextlib

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, TypeVar

    Result = TypeVar("Result")

RECV_SIZE = 65536  # what one recv() asks for at least


class Stream:
    """One connection's socket. A client says what its errors are: `_PASSED` (raised as they are
    from `_guarded`), `_lost_error` and `_unreadable_error`; and its goodbye (`_GOODBYE`)."""

    _PASSED: tuple[type[BaseException], ...] = ()
    _GOODBYE = b""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._open = True
        self._buffer = bytearray()  # what the server sent that is not read yet

    def _lost_error(self, why: str) -> Exception:
        raise NotImplementedError

    def _unreadable_error(self, message: str) -> Exception:
        raise NotImplementedError

    def _sendall(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._lost(exc) from None

    def _recv(self, count: int) -> bytes:
        buffer = self._fill(count)
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    def _fill(self, count: int) -> bytearray:
        """The buffer, once it holds at least `count` bytes (read from the server as needed)."""
        buffer = self._buffer
        try:
            while len(buffer) < count:
                chunk = self._sock.recv(max(count - len(buffer), RECV_SIZE))
                if not chunk:
                    raise self._lost(None)
                buffer += chunk
        except OSError as exc:
            raise self._lost(exc) from None
        return buffer

    def _lost(self, exc: BaseException | None) -> Exception:
        self.close()
        why = "timed out" if isinstance(exc, _socket.timeout) else (str(exc) if exc else "the server closed it")
        return self._lost_error(why)

    def _guarded(self, work: Callable[[], Result]) -> Result:
        """Run `work`; an answer it cannot read (a malformed or unexpected message) loses the
        stream, so the connection is closed and the error is the client's like any loss."""
        try:
            return work()
        except self._PASSED:
            raise
        except Exception as exc:
            self.close()
            raise self._unreadable_error(f"unreadable answer from the server: {exc!r}") from None

    def cursor(self) -> Cursor:
        return Cursor(self)

    def execute(self, statement: str, params: Sequence[Any]) -> tuple[int, list[tuple[Any, ...]]]:
        raise NotImplementedError

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(OSError):  # say goodbye: the server logs a connection that just drops
            self._sock.sendall(self._GOODBYE)
        with contextlib.suppress(OSError):
            self._sock.close()


class Cursor:
    """The part of the drivers' cursors db.Database uses: execute, fetchall, rowcount."""

    def __init__(self, conn: Stream) -> None:
        self._conn = conn
        self.rowcount = -1
        self._rows: list[tuple[Any, ...]] = []

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._rows = []

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        self.rowcount, self._rows = self._conn.execute(statement, params)
        return self.rowcount

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._rows, []
        return rows


def connect_tcp(host: bytes, port: int, timeout: float) -> _socket.socket:
    """socket.create_connection: each address of the name in turn, the first that answers."""
    error: OSError | None = None
    for family, kind, proto, _name, address in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        sock = None
        try:  # the socket too: a host without IPv6 refuses to make one for ::1, and 127.0.0.1 is next
            sock = _socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            sock.connect(address)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            if sock is not None:
                sock.close()
            error = exc
    raise error if error is not None else OSError(f"getaddrinfo returned no address for {host!r}")


def connect_unix(path: str, timeout: float) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def host_bytes(host: str) -> bytes:
    """A host name for getaddrinfo as bytes: a str would make it load the idna codec (unicodedata,
    stringprep). UnicodeError for a name idna cannot encode."""
    return host.encode("ascii") if host.isascii() else host.encode("idna")
