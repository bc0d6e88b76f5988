"""What the host code accepts as a jail, an address, ports, a protocol, a count, a time.

The rules fail2ban itself applies in these places, within what the columns hold. Standalone
(stdlib only, no package imports): the role's jail reader loads this very file as its
module_utils (roles/f2bsql_fail2ban/module_utils/f2bsql_helper_rules.py is a link to it).
"""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import re
from collections.abc import Sequence

JAIL_RE = re.compile(r"[A-Za-z0-9_.@:+-]{1,50}")
# A port list as the jail's action names it, as wide as iRedMail's `ports` column (255).
PORTS_RE = re.compile(r"[A-Za-z0-9_,:.-]{1,255}")
# One protocol or a list (multiport and nftables actions take "tcp,udp"), within the column (32).
PROTOCOL_RE = re.compile(r"(?=.{1,32}$)[a-z0-9]+(?:,[a-z0-9]+)*")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
FAILURES_MAX = 32767  # SMALLINT on PostgreSQL
LOGLINES_MAX_BYTES = 32 * 1024  # base64 of it still fits MySQL's TEXT (64 KiB)
# Ban times MySQL's TIMESTAMP holds (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC), a day inside
# either end: the server converts from its own time zone.
TIME_MIN, TIME_MAX = 86400, 2**31 - 1 - 86400


class InvalidValue(ValueError):
    """A value refused by these rules: a usage error (exit 2) where a command line gave it."""


def check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidValue(f"invalid {what}: {value!r}")
    return value


def check_jail(value: str) -> str:
    return check(JAIL_RE, value, "jail name")


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
    return re.sub(r"\s*,\s*", ",", value.strip())


def check_ports(value: str) -> str:
    return check(PORTS_RE, _list(value), "ports")


def check_protocol(value: str) -> str:
    # Only ASCII is lowered: str.lower() turns the KELVIN SIGN into "k", and more such letters.
    value = _list(value)
    return check(PROTOCOL_RE, value.lower() if value.isascii() else value, "protocol")


def check_failures(value: str) -> int:
    if value == "":
        return 0
    if not re.fullmatch(r"[0-9]{1,9}", value):
        raise InvalidValue(f"invalid failure count: {value!r}")
    return min(int(value), FAILURES_MAX)


def encode_loglines(args: Sequence[str]) -> str:
    """Base64 of the log lines as bytes, as iRedMail's helper stored them."""
    raw = b" ".join(os.fsencode(arg) for arg in args)
    return base64.b64encode(raw[:LOGLINES_MAX_BYTES]).decode("ascii")


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


def check_hostname(value: str) -> str:
    return check(HOSTNAME_RE, value, "host name")
