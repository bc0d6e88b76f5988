"""`f2bsql`, the admin CLI: what the fleet has banned, and lifting a ban as a web panel does.

For hosts without iRedAdmin-Pro: reads table `banned` with the helper's own credentials (so it
runs as root, on any host the role set up) and marks rows `remove = 1`, which the host that
holds the ban lifts within a minute (`--now` lifts this host's at once). docs/admin.md lists
the commands, their JSON and their exit codes (those of the helper).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from .checks import InvalidValue, check_hostname, check_ip, check_jail
from .command import run
from .db import Database, StoredBan
from .parsing import parsers
from .report import EXIT_FAILED, EXIT_OK, HelperError, UsageError, log
from .settings import Settings, load_settings

PROG = "f2bsql"
TOP = 10  # addresses in `stats`
MAX_SINCE = 100 * 365 * 86400  # seconds: further back than any ban
_DURATION = re.compile(r"(?:\d{1,6}[smhdw])+")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
Network = Any  # ipaddress.IPv4Network | ipaddress.IPv6Network


def check_since(value: str) -> datetime.timedelta:
    """A duration back from now: 90s, 30m, 2h, 7d, 2w or a sum of them (1d12h)."""
    if not _DURATION.fullmatch(value):
        raise UsageError(f"invalid duration: {value!r} (for example 30m, 2h, 7d, 1d12h)")
    seconds = sum(int(number) * _UNIT[unit] for number, unit in re.findall(r"(\d+)([smhdw])", value))
    if not 0 < seconds <= MAX_SINCE:
        raise UsageError(f"invalid duration: {value!r} (more than 0, at most 100 years)")
    return datetime.timedelta(seconds=seconds)


def check_network(value: str) -> Network:
    """An address or a CIDR network to narrow by."""
    try:
        return ipaddress.ip_network(check_ip(value), strict=True)
    except (InvalidValue, ValueError):
        raise UsageError(f"invalid IP address or network: {value!r}") from None


def check_country(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9]{2}", value):
        raise UsageError(f"invalid country code: {value!r} (two letters, as AU)")
    return value.upper()


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _printable(text: str) -> str:
    """Log lines and reverse names come from the other side: no control character reaches the terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def decode_loglines(value: str) -> list[str]:
    """The log lines of a row (base64 of the matched lines, as iRedMail's helper stored them)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return [value]  # not base64: a row made by hand, shown as it is
    return raw.decode("utf-8", errors="replace").splitlines()


def _country_code(country: str) -> str:
    return country.split(",", 1)[0].strip().upper()


def _overlaps(ip: str, network: Network) -> bool:
    try:
        return bool(ipaddress.ip_network(ip, strict=False).overlaps(network))
    except (ValueError, TypeError):
        return False


def ban_json(row: StoredBan) -> dict[str, Any]:
    return {
        "id": row.id,
        "ip": row.ip,
        "jail": row.jail,
        "host": row.hostname,
        "ports": row.ports,
        "protocol": row.protocol,
        "country": row.country,
        "rdns": row.rdns,
        "failures": row.failures,
        "since": _iso(row.timestamp),
        "remove": row.remove,
    }


# --------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], limits: dict[int, int] | None = None) -> list[str]:
    """Columns as wide as their widest cell (or limits[column], cut with "…")."""
    cells = [[_printable(str(cell)) for cell in row] for row in rows]
    for row in cells:
        for column, width in (limits or {}).items():
            if len(row[column]) > width:
                row[column] = row[column][: width - 1] + "…"
    widths = [max([len(header)] + [len(row[column]) for row in cells]) for column, header in enumerate(headers)]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths)).rstrip()]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return lines


def emit(lines: Sequence[str]) -> None:
    """Print, through $PAGER (less) when a terminal would not hold it all."""
    text = "\n".join(lines) + "\n"
    screen = shutil.get_terminal_size((80, 24))
    if sys.stdout.isatty() and len(lines) > screen.lines - 1:
        pager = shlex.split(os.environ.get("PAGER") or "less -FRX")
        if pager and shutil.which(pager[0]):
            # The pager prints to the terminal itself; a pager that fails leaves the text unprinted.
            with subprocess.Popen(pager, stdin=subprocess.PIPE) as proc:
                assert proc.stdin is not None
                try:
                    proc.stdin.write(text.encode("utf-8", errors="replace"))
                    proc.stdin.close()
                except BrokenPipeError:  # the pager quit before the end (q in less)
                    pass
            return
    sys.stdout.write(text)


def emit_json(data: object) -> None:
    # ASCII only: what came from the other side (log lines, rdns) reaches a terminal as \u escapes.
    text = json.dumps(data, indent=2, ensure_ascii=True).replace("\x7f", "\\u007f")
    sys.stdout.write(text + "\n")


# --------------------------------------------------------------------------- commands


class Context:
    """The settings and one connection, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Optional[Database] = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings).connect()
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def known_jail(self, jail: str | None) -> str | None:
        """The jail, checked against the jails hosts recorded with (an unknown one is a usage error)."""
        if jail is None:
            return None
        check_jail(jail)
        if self.db.jail_known(jail):
            return jail
        names = self.db.jail_names()  # only to say which are known: it reads every host's
        if jail not in names:
            raise UsageError(f"unknown jail: {jail!r} (known: {', '.join(sorted(names)) or 'none'})")
        return jail


def _selected(ctx: Context, args: argparse.Namespace, **fixed: Any) -> list[StoredBan]:
    since = _utc_now() - args.since if getattr(args, "since", None) else None
    rows = ctx.db.bans(
        hostname=check_hostname(args.host) if args.host else None, jail=ctx.known_jail(args.jail), since=since, **fixed
    )
    if getattr(args, "country", None):
        rows = [row for row in rows if _country_code(row.country) == args.country]
    if getattr(args, "ip", None) is not None:
        rows = [row for row in rows if _overlaps(row.ip, args.ip)]
    return rows


def _cmd_bans(ctx: Context, args: argparse.Namespace) -> int:
    rows = _selected(ctx, args)
    if args.json:
        emit_json({"bans": [ban_json(row) for row in rows]})
        return EXIT_OK
    if not rows:
        print("no bans")
        return EXIT_OK
    lines = table(
        ["IP", "JAIL", "HOST", "COUNTRY", "RDNS", "FAILURES", "SINCE (UTC)", ""],
        [
            (
                row.ip,
                row.jail,
                row.hostname,
                row.country,
                row.rdns,
                row.failures,
                row.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
                "removal pending" if row.remove else "",
            )
            for row in rows
        ],
        limits={3: 24, 4: 40},
    )
    emit([*lines, f"{len(rows)} ban(s)"])
    return EXIT_OK


def _cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    ip = check_ip(args.address)
    rows = ctx.db.bans(ip=ip)
    if args.json:
        emit_json({"ip": ip, "bans": [{**ban_json(row), "loglines": decode_loglines(row.loglines)} for row in rows]})
        return EXIT_OK if rows else EXIT_FAILED
    if not rows:
        print(f"{ip}: not banned")
        return EXIT_FAILED
    lines: list[str] = []
    for row in rows:
        lines += [
            f"{row.ip}  jail {row.jail}  host {row.hostname}" + ("  (removal pending)" if row.remove else ""),
            f"  since     {row.timestamp:%Y-%m-%d %H:%M:%S} UTC",
            f"  ports     {row.ports} ({row.protocol})",
            f"  failures  {row.failures}",
            f"  country   {row.country or '-'}",
            f"  rdns      {row.rdns or '-'}",
            "  log lines" + ("" if row.loglines else "  -"),
            *(f"    {line}" for line in decode_loglines(row.loglines) if line),
            "",
        ]
    emit([_printable(line) for line in lines[:-1]])
    return EXIT_OK


def _cmd_unban(ctx: Context, args: argparse.Namespace) -> int:
    ips = list(dict.fromkeys(check_ip(ip) for ip in args.addresses))
    host = check_hostname(args.host) if args.host else None
    jail = ctx.known_jail(args.jail)
    rows = [row for ip in ips for row in ctx.db.bans(ip=ip, hostname=host, jail=jail)]
    marked = ctx.db.mark_remove([row.id for row in rows if not row.remove])
    found = {row.ip for row in rows}
    if marked:
        where = sorted({f"{row.jail}@{row.hostname}" for row in rows})
        log(f"marked {marked} ban(s) of {', '.join(sorted(found))} for removal ({', '.join(where)})")
    lifted = None
    if args.now and any(row.hostname == ctx.settings.hostname for row in rows):
        from .maintenance import Maintenance  # only here: the cron run's code

        runner = Maintenance(ctx.settings)
        try:
            lifted = runner.unban_db()
            if not runner.ran:  # another unban_db run holds the lock: that one, or the next, lifts them
                lifted = None
        finally:
            runner.close()
    missing = [ip for ip in ips if ip not in found]
    if args.json:
        emit_json({
            "marked": [ban_json(row) for row in rows],
            "newly_marked": marked,
            "not_banned": missing,
            "lifted_here": None if lifted is None else lifted == EXIT_OK,
        })  # fmt: skip
    else:
        hosts = sorted({_printable(row.hostname) for row in rows})
        if rows:
            print(f"marked {len(rows)} ban(s) of {len(found)} address(es) for removal on {', '.join(hosts)}", end="")
            print("; lifted here now" if lifted == EXIT_OK else "; each host lifts them within a minute")
        for ip in missing:
            print(f"{ip}: not banned" + (f" on {host}" if host else "") + (f" in jail {jail}" if jail else ""))
    if lifted not in (None, EXIT_OK):
        return EXIT_FAILED
    return EXIT_FAILED if missing else EXIT_OK


def _cmd_stats(ctx: Context, args: argparse.Namespace) -> int:
    since = _utc_now() - args.since
    db = ctx.db
    groups = {column: db.count_by(column, since) for column in ("jail", "hostname", "country")}
    top = db.top_addresses(since, TOP)
    total = sum(bans for _value, bans, _addresses in groups["jail"])
    if args.json:
        emit_json({
            "since": _iso(since),
            "bans": total,
            **{
                key: [{name: value, "bans": bans, "addresses": addresses} for value, bans, addresses in groups[column]]
                for key, column, name in (("jails", "jail", "jail"), ("hosts", "hostname", "host"),
                                          ("countries", "country", "country"))
            },
            "top": [
                {"ip": ip, "bans": bans, "failures": failures, "hosts": hosts, "latest": _iso(latest)}
                for ip, bans, failures, hosts, latest in top
            ],
        })  # fmt: skip
        return EXIT_OK
    lines = [f"{total} ban(s) since {since:%Y-%m-%d %H:%M:%S} UTC", ""]
    for title, column in (("JAIL", "jail"), ("HOST", "hostname"), ("COUNTRY", "country")):
        lines += table([title, "BANS", "ADDRESSES"], [(value or "(unknown)", b, a) for value, b, a in groups[column]])
        lines.append("")
    lines += table(
        ["TOP ADDRESSES", "BANS", "FAILURES", "HOSTS", "LATEST (UTC)"],
        [(ip, bans, failures, hosts, f"{latest:%Y-%m-%d %H:%M:%S}") for ip, bans, failures, hosts, latest in top],
    )
    emit(lines)
    return EXIT_OK


def _cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    ip = check_ip(args.address)
    current = ctx.db.bans(ip=ip)
    ended = ctx.db.history(ip, args.limit)
    if args.json:
        emit_json({
            "ip": ip,
            "current": [ban_json(row) for row in current],
            "ended": [
                {"ip": row.ip, "jail": row.jail, "host": row.hostname, "ports": row.ports, "protocol": row.protocol,
                 "country": row.country, "rdns": row.rdns, "failures": row.failures, "began": _iso(row.banned_at),
                 "ended": _iso(row.ended_at), "reason": row.reason}
                for row in ended
            ],
        })  # fmt: skip
        return EXIT_OK if current or ended else EXIT_FAILED
    if not current and not ended:
        print(f"{ip}: never banned (within the history kept)")
        return EXIT_FAILED
    stamp = "%Y-%m-%d %H:%M:%S"
    lines = table(
        ["JAIL", "HOST", "BEGAN (UTC)", "ENDED (UTC)", "REASON", "FAILURES"],
        [(row.jail, row.hostname, f"{row.timestamp:{stamp}}", "-", "still banned", row.failures) for row in current]
        + [(row.jail, row.hostname, f"{row.banned_at:{stamp}}", f"{row.ended_at:{stamp}}", row.reason, row.failures)
           for row in ended],
    )  # fmt: skip
    emit([f"{ip}: {len(current)} current ban(s), {len(ended)} ended", *lines])
    return EXIT_OK


def _cmd_metrics(ctx: Context, args: argparse.Namespace) -> int:
    from .metrics import collect

    try:
        db: Optional[Database] = ctx.db
    except HelperError as exc:  # the figures say so (f2bsql_database_up 0)
        log(str(exc), error=True)
        db = None
    sys.stdout.write(collect(ctx.settings, db))
    return EXIT_OK


def _cmd_country(ctx: Context, args: argparse.Namespace) -> int:
    """What a ban of these addresses would store as country, and which data said so."""
    from .geo import lookup_for

    lookup = lookup_for(ctx.settings)
    found = [(ip, *lookup.lookup(ip)) for ip in (check_ip(address) for address in args.addresses)]
    if args.json:
        emit_json([{"ip": ip, "country": country, "source": source} for ip, country, source in found])
    else:
        emit(table(["IP", "COUNTRY", "FROM"], [(ip, country or "-", source or "-") for ip, country, source in found]))
    return EXIT_OK if all(country for _ip, country, _source in found) else EXIT_FAILED


def _since(value: str) -> datetime.timedelta:
    try:
        return check_since(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _network(value: str) -> Network:
    try:
        return check_network(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"not a number from 1 to 1000000: {value!r}")
    return int(value)


def _country(value: str) -> str:
    try:
        return check_country(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser, commands = parsers(
        PROG,
        "What fail2ban has banned, on every host that records in this database.",
        "this host's name in rows (unban --now, metrics; default: its own)",
    )

    sub = commands.add_parser("bans", help="current bans, newest first")
    sub.add_argument("--host", help="of this host only")
    sub.add_argument("--jail", help="of this jail only")
    sub.add_argument("--ip", type=_network, metavar="ADDR|CIDR", help="of this address, or within this network")
    sub.add_argument("--country", type=_country, metavar="CC", help="from this country (two-letter code)")
    sub.add_argument("--since", type=_since, metavar="DURATION", help="banned within it (30m, 2h, 7d)")
    sub.add_argument("--json", action="store_true", help="JSON instead of a table")
    sub.set_defaults(func=_cmd_bans)

    sub = commands.add_parser("show", help="every ban of one address, with its log lines")
    sub.add_argument("address", metavar="ADDR")
    sub.add_argument("--json", action="store_true", help="JSON instead of text")
    sub.set_defaults(func=_cmd_show)

    sub = commands.add_parser("unban", help="mark bans for removal, as a web panel does")
    sub.add_argument("addresses", nargs="+", metavar="ADDR")
    sub.add_argument("--host", help="only the bans this host holds")
    sub.add_argument("--jail", help="only the bans of this jail")
    sub.add_argument("--now", action="store_true", help="lift this host's at once (runs unban_db)")
    sub.add_argument("--json", action="store_true", help="JSON instead of text")
    sub.set_defaults(func=_cmd_unban)

    sub = commands.add_parser("history", help="the bans of one address that ended, and why, and its current ones")
    sub.add_argument("address", metavar="ADDR")
    sub.add_argument("--limit", type=_limit, default=100, help="at most this many ended bans, newest first (100)")
    sub.add_argument("--json", action="store_true", help="JSON instead of a table")
    sub.set_defaults(func=_cmd_history)

    sub = commands.add_parser("country", help="the country a ban of these addresses gets, and the data it comes from")
    sub.add_argument("addresses", nargs="+", metavar="ADDR")
    sub.add_argument("--json", action="store_true", help="JSON instead of a table")
    sub.set_defaults(func=_cmd_country)

    sub = commands.add_parser("metrics", help="this host's figures for Prometheus (what cron writes for node_exporter)")
    sub.set_defaults(func=_cmd_metrics)

    sub = commands.add_parser("stats", help="bans per jail, host and country, and the top addresses")
    sub.add_argument("--since", type=_since, default=datetime.timedelta(days=7), metavar="DURATION",
                     help="bans, current and ended, that began within it (default 7d)")  # fmt: skip
    sub.add_argument("--json", action="store_true", help="JSON instead of tables")
    sub.set_defaults(func=_cmd_stats)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    return run(PROG, build_parser().parse_args, words, lambda args: Context(load_settings(args.config, args.hostname)))
