"""A reader for MaxMind DB files (GeoLite2, DB-IP Lite), in the standard library only.

Every OS gets the same reader: OpenBSD packages DB-IP's country data but no Python reader for
it, and one reader tested against libmaxminddb's (tests/test_geoip.py) beats a package per OS.
Format: https://maxmind.github.io/MaxMind-DB/ — a binary search tree over the address bits,
then a data section of typed values, then a metadata map after a marker near the end.
A country lookup needs only the tree walk and one map; a malformed file raises MmdbError.

The file is read with pread, never mapped: fail2ban-server keeps a reader for months, and a file
truncated under a mapping (`cp` or `gunzip -c >` onto it) would kill the whole server with
SIGBUS; read this way a short read is an error of the lookup. A record costs a bounded amount of
work however the file is built (MAX_VALUES, pointers decoded once per lookup).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import struct

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
METADATA_SEARCH = 128 * 1024  # the metadata is at most this far from the end (the spec's bound)
MAX_DEPTH = 32  # nesting of maps and arrays; a pointer cycle in a broken file ends here
MAX_VALUES = 20_000  # values decoded for one record (a country record has a few dozen)
DATA_SEPARATOR = 16  # zero bytes between the search tree and the data section


class MmdbError(ValueError):
    """The file is not a MaxMind DB this reader understands."""


class Reader:
    """Open a MaxMind DB file (mapped, not read) and look addresses up in it."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self._open(path)
        except BaseException:
            os.close(self._fd)
            raise

    def _open(self, path: str) -> None:
        size = os.fstat(self._fd).st_size
        tail_start = max(0, size - METADATA_SEARCH)
        tail = os.pread(self._fd, size - tail_start, tail_start)
        found = tail.rfind(METADATA_MARKER)
        if found < 0:
            raise MmdbError(f"{path}: no MaxMind DB metadata")
        start = tail_start + found
        metadata_start = start + len(METADATA_MARKER)
        metadata, _ = _Decoder(self._fd, metadata_start, size).decode(metadata_start)
        if not isinstance(metadata, dict):
            raise MmdbError(f"{path}: metadata is not a map")
        self.metadata = metadata
        try:
            self.node_count = int(metadata["node_count"])
            self.record_size = int(metadata["record_size"])
            self.ip_version = int(metadata["ip_version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MmdbError(f"{path}: metadata lacks {exc}") from exc
        if self.record_size not in (24, 28, 32) or self.ip_version not in (4, 6) or self.node_count <= 0:
            raise MmdbError(f"{path}: record size {self.record_size}, IP version {self.ip_version}")
        self._node_bytes = self.record_size // 4
        self._tree_size = self._node_bytes * self.node_count
        if self._tree_size + DATA_SEPARATOR > start:
            raise MmdbError(f"{path}: search tree larger than the file")
        self._data_start = self._tree_size + DATA_SEPARATOR
        self._data_size = start - self._data_start  # the data section ends where the marker begins
        self._ipv4_start = self._ipv4_root()

    def _ipv4_root(self) -> int:
        """The node IPv4 lookups start from: 96 zero bits down an IPv6 tree (::a.b.c.d)."""
        node = 0
        if self.ip_version == 6:
            for _ in range(96):
                if node >= self.node_count:
                    break
                node = self._record(node, 0)
        return node

    def _record(self, node: int, bit: int) -> int:
        raw = os.pread(self._fd, self._node_bytes, node * self._node_bytes)
        if len(raw) != self._node_bytes:
            raise MmdbError("search tree node outside the file (truncated?)")
        if self.record_size == 24:
            return int.from_bytes(raw[3:6] if bit else raw[0:3], "big")
        if self.record_size == 28:
            if bit:
                return ((raw[3] & 0x0F) << 24) | int.from_bytes(raw[4:7], "big")
            return ((raw[3] & 0xF0) << 20) | int.from_bytes(raw[0:3], "big")
        return int.from_bytes(raw[4:8] if bit else raw[0:4], "big")

    def get(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
        """The record stored for the address, or None where the file has none."""
        ip = ipaddress.ip_address(address)
        if ip.version == 6 and self.ip_version == 4:
            return None  # an IPv4-only file knows nothing of IPv6
        bits = ip.max_prefixlen
        node = self._ipv4_start if ip.version == 4 else 0
        value = int(ip)
        for depth in range(bits):
            if node >= self.node_count:
                break
            node = self._record(node, (value >> (bits - 1 - depth)) & 1)
        if node == self.node_count:  # the empty record: no data for this address
            return None
        if node < self.node_count:
            raise MmdbError("search tree deeper than the address")
        offset = node - self.node_count - DATA_SEPARATOR
        if not 0 <= offset < self._data_size:
            raise MmdbError("record outside the data section")
        decoder = _Decoder(self._fd, self._data_start, self._data_start + self._data_size)
        record, _ = decoder.decode(self._data_start + offset)
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # the lookup drops a reader when its file is replaced
        with contextlib.suppress(AttributeError, OSError):  # AttributeError: its open failed
            self.close()


class _Decoder:
    """Values of the data section (or the metadata) for one lookup: pointers are relative to
    `base`, nothing is read at or past `end`, a pointer's target is decoded once."""

    def __init__(self, fd: int, base: int, end: int) -> None:
        self.fd, self.base, self.end = fd, base, end
        self.values = 0
        self._targets: dict[int, Any] = {}

    def _bytes(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > self.end:
            raise MmdbError("data outside its section")
        raw = os.pread(self.fd, size, offset)
        if len(raw) != size:
            raise MmdbError("data outside the file (truncated?)")
        return raw

    def decode(self, offset: int, depth: int = 0) -> tuple[Any, int]:
        """The value at offset and the offset after it."""
        self.values += 1
        if depth > MAX_DEPTH or self.values > MAX_VALUES:
            raise MmdbError("data nested too deep or too large (a crafted file?)")
        control = self._bytes(offset, 1)[0]
        offset += 1
        kind = control >> 5
        if kind == 1:  # pointer: the value is elsewhere, decoding goes on after the pointer
            size = (control >> 3) & 0x3
            raw = self._bytes(offset, size + 1)
            low = control & 0x7
            if size == 0:
                target = (low << 8) | raw[0]
            elif size == 1:
                target = ((low << 16) | int.from_bytes(raw, "big")) + 2048
            elif size == 2:
                target = ((low << 24) | int.from_bytes(raw, "big")) + 526336
            else:
                target = int.from_bytes(raw, "big")
            where = self.base + target
            if where not in self._targets:
                if self._bytes(where, 1)[0] >> 5 == 1:
                    raise MmdbError("a pointer to a pointer")
                self._targets[where], _ = self.decode(where, depth + 1)
            return self._targets[where], offset + size + 1
        if kind == 0:  # extended type in the next byte
            kind = 7 + self._bytes(offset, 1)[0]
            offset += 1
        size = control & 0x1F
        if size >= 29:
            extra = size - 28
            size = (29, 285, 65821)[extra - 1] + int.from_bytes(self._bytes(offset, extra), "big")
            offset += extra
        return self._value(kind, size, offset, depth)

    def _value(self, kind: int, size: int, offset: int, depth: int) -> tuple[Any, int]:
        if kind == 7:  # map
            result: dict[str, Any] = {}
            for _ in range(size):
                key, offset = self.decode(offset, depth + 1)
                if not isinstance(key, str):
                    raise MmdbError("a map key that is not a string")
                result[key], offset = self.decode(offset, depth + 1)
            return result, offset
        if kind == 11:  # array
            items = []
            for _ in range(size):
                item, offset = self.decode(offset, depth + 1)
                items.append(item)
            return items, offset
        if kind == 14:  # boolean: the size is the value
            return bool(size), offset
        raw = self._bytes(offset, size)
        offset += size
        if kind == 2:
            return raw.decode("utf-8", "replace"), offset
        if kind == 4:
            return raw, offset
        if kind == 3:
            if size != 8:
                raise MmdbError("double of a size other than 8")
            return struct.unpack(">d", raw)[0], offset
        if kind == 15:
            if size != 4:
                raise MmdbError("float of a size other than 4")
            return struct.unpack(">f", raw)[0], offset
        if kind in (5, 6, 9, 10):  # unsigned integers of 16, 32, 64, 128 bits
            return int.from_bytes(raw, "big"), offset
        if kind == 8:  # int32, shorter when it fits
            return int.from_bytes(raw, "big", signed=size == 4), offset
        raise MmdbError(f"data type {kind} where a value should be")
