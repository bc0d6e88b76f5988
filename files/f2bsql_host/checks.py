"""What the host code accepts as a jail, an address, ports, a protocol, a count, a time.

The rules fail2ban itself applies in these places, within what the columns hold. Standalone
(stdlib only, no package imports): the role's jail reader loads this very file as its
module_utils (roles/f2bsql_fail2ban/module_utils/f2bsql_helper_rules.py is a link to it).
"""

from __future__ import annotations

import binascii
import ipaddress
import math
import os
from collections.abc import Sequence

# No regular expressions: a `ban` process would pay for importing re and compiling them.
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
JAIL_CHARS = _ALNUM | frozenset("_.@:+-")
# A port list as the jail's action names it, as wide as iRedMail's `ports` column (255).
PORTS_CHARS = _ALNUM | frozenset("_,:.-")
PORTS_MAX = 255
# One protocol or a list (multiport and nftables actions take "tcp,udp"), within the column (32).
PROTOCOL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
PROTOCOL_MAX = 32
HOSTNAME_CHARS = _ALNUM | frozenset("_.-")
HOSTNAME_MAX = 255
JAIL_MAX = 50
FAILURES_MAX = 32767  # SMALLINT on PostgreSQL
LOGLINES_MAX_BYTES = 32 * 1024  # base64 of it still fits MySQL's TEXT (64 KiB)
# Ban times MySQL's TIMESTAMP holds (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC), a day inside
# either end: the server converts from its own time zone.
TIME_MIN, TIME_MAX = 86400, 2**31 - 1 - 86400


class InvalidValue(ValueError):
    """A value refused by these rules: a usage error (exit 2) where a command line gave it."""


def made_of(value: str, chars: frozenset[str], most: int) -> bool:
    """value is 1 to `most` characters, each one of chars."""
    return 0 < len(value) <= most and chars.issuperset(value)


def _checked(ok: bool, value: str, what: str) -> str:
    if not ok:
        raise InvalidValue(f"invalid {what}: {value!r}")
    return value


def check_jail(value: str) -> str:
    return _checked(made_of(value, JAIL_CHARS, JAIL_MAX), value, "jail name")


def check_ip(value: str) -> str:
    """An address or a network, in Python's normal form (the form fail2ban prints too)."""
    try:
        if "/" in value:
            network = ipaddress.ip_network(value, strict=True)
            if network.prefixlen == network.max_prefixlen:
                return str(network.network_address)
            return str(network)
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidValue(f"invalid IP address: {value!r}") from None
    text = str(address)
    if "%" in text:  # a scoped IPv6 address: fail2ban never bans one
        raise InvalidValue(f"invalid IP address: {value!r}")
    return text


def _list(value: str) -> str:
    """fail2ban allows "80, 443" and "tcp, udp"; the columns keep "80,443" and "tcp,udp"."""
    return ",".join(part.strip() for part in value.strip().split(","))


def check_ports(value: str) -> str:
    value = _list(value)
    return _checked(made_of(value, PORTS_CHARS, PORTS_MAX), value, "ports")


def check_protocol(value: str) -> str:
    # Only ASCII is lowered: str.lower() turns the KELVIN SIGN into "k", and more such letters.
    value = _list(value)
    value = value.lower() if value.isascii() else value
    ok = len(value) <= PROTOCOL_MAX and all(made_of(part, PROTOCOL_CHARS, PROTOCOL_MAX) for part in value.split(","))
    return _checked(ok, value, "protocol")


def check_failures(value: str) -> int:
    if value == "":
        return 0
    if not (len(value) <= 9 and value.isascii() and value.isdigit()):
        raise InvalidValue(f"invalid failure count: {value!r}")
    return min(int(value), FAILURES_MAX)


def encode_loglines(args: Sequence[str]) -> str:
    """Base64 of the log lines as bytes, as iRedMail's helper stored them."""
    raw = b" ".join(os.fsencode(arg) for arg in args)
    return binascii.b2a_base64(raw[:LOGLINES_MAX_BYTES], newline=False).decode("ascii")


def check_time(value: str | None) -> float | None:
    """fail2ban's <time>: when the ban began (a restored ban keeps its first time)."""
    if value is None or value == "":
        return None
    try:
        epoch = float(value)
    except ValueError:
        raise InvalidValue(f"invalid ban time: {value!r}") from None
    # Only what every backend's `timestamp` can hold: MySQL refuses a row outside TIMESTAMP's range,
    # and as a "temporary" error, so the event would head the spool for ever, holding back the rest.
    if not (math.isfinite(epoch) and TIME_MIN <= round(epoch) <= TIME_MAX):
        raise InvalidValue(f"invalid ban time: {value!r}")
    return epoch


def check_bantime(value: str | None) -> float | None:
    """fail2ban's <bantime>: seconds, or a negative number for a ban without end."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidValue(f"invalid ban length: {value!r}") from None
    if not math.isfinite(seconds):
        raise InvalidValue(f"invalid ban length: {value!r}")
    return seconds


def global_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address to look up, or None for private, reserved and other non-public ones."""
    address = ipaddress.ip_network(ip, strict=False).network_address if "/" in ip else ipaddress.ip_address(ip)
    return address if address.is_global else None


def is_hostname(value: str) -> bool:
    return made_of(value, HOSTNAME_CHARS, HOSTNAME_MAX)


def check_hostname(value: str) -> str:
    return _checked(is_hostname(value), value, "host name")
