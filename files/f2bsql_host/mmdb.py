"""A reader for MaxMind DB files (GeoLite2, DB-IP Lite), in the standard library only.

Every OS gets the same reader: OpenBSD packages DB-IP's country data but no Python reader for
it, and one reader tested against libmaxminddb's (tests/test_geoip.py) beats a package per OS.
Format: https://maxmind.github.io/MaxMind-DB/ — a binary search tree over the address bits,
then a data section of typed values, then a metadata map after a marker near the end.
A country lookup needs only the tree walk and one map; a malformed file raises MmdbError.
"""

from __future__ import annotations

import ipaddress
import mmap
import struct
from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
METADATA_SEARCH = 128 * 1024  # the metadata is at most this far from the end (the spec's bound)
MAX_DEPTH = 32  # nesting of maps and arrays; a pointer cycle in a broken file ends here
DATA_SEPARATOR = 16  # zero bytes between the search tree and the data section


class MmdbError(ValueError):
    """The file is not a MaxMind DB this reader understands."""


class Reader:
    """Open a MaxMind DB file (mapped, not read) and look addresses up in it."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as handle:
            try:
                self._buffer: Any = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as exc:  # an empty file cannot be mapped
                raise MmdbError(f"{path}: empty file") from exc
        start = self._buffer.rfind(METADATA_MARKER, max(0, len(self._buffer) - METADATA_SEARCH))
        if start < 0:
            raise MmdbError(f"{path}: no MaxMind DB metadata")
        metadata_start = start + len(METADATA_MARKER)
        metadata, _ = _Decoder(self._buffer, metadata_start).decode(metadata_start)
        if not isinstance(metadata, dict):
            raise MmdbError(f"{path}: metadata is not a map")
        self.metadata = metadata
        try:
            self.node_count = int(metadata["node_count"])
            self.record_size = int(metadata["record_size"])
            self.ip_version = int(metadata["ip_version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MmdbError(f"{path}: metadata lacks {exc}") from exc
        if self.record_size not in (24, 28, 32) or self.ip_version not in (4, 6):
            raise MmdbError(f"{path}: record size {self.record_size}, IP version {self.ip_version}")
        self._node_bytes = self.record_size // 4
        self._tree_size = self._node_bytes * self.node_count
        if self._tree_size + DATA_SEPARATOR > start:
            raise MmdbError(f"{path}: search tree larger than the file")
        data_start = self._tree_size + DATA_SEPARATOR
        self._data = _Decoder(self._buffer, data_start)
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
        offset = node * self._node_bytes
        raw = bytes(self._buffer[offset : offset + self._node_bytes])
        if len(raw) != self._node_bytes:
            raise MmdbError("search tree node outside the file")
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
        record, _ = self._data.decode(self._data.base + node - self.node_count - DATA_SEPARATOR)
        return record

    def close(self) -> None:
        self._buffer.close()


class _Decoder:
    """Values of the data section (or the metadata): pointers are relative to `base`."""

    def __init__(self, buffer: Any, base: int) -> None:
        self.buffer, self.base = buffer, base

    def _bytes(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > len(self.buffer):
            raise MmdbError("data outside the file")
        return bytes(self.buffer[offset : offset + size])

    def decode(self, offset: int, depth: int = 0) -> tuple[Any, int]:
        """The value at offset and the offset after it."""
        if depth > MAX_DEPTH:
            raise MmdbError("data nested too deep (a pointer cycle?)")
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
            value, _ = self.decode(self.base + target, depth + 1)
            return value, offset + size + 1
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
                result[str(key)], offset = self.decode(offset, depth + 1)
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
