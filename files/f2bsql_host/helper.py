"""`fail2ban_banned_db`, the helper fail2ban's command action and root's cron run.

Drop-in for iRedMail's bash helper of the same name (start, stop, cleanup, ban, unban,
unban_db), plus flush, sync and replay; docs/helper.md has the commands and exit codes.
"""

from __future__ import annotations

import argparse
import math

from .checks import (
    InvalidValue,
    check_bantime,
    check_failures,
    check_ip,
    check_jail,
    check_ports,
    check_protocol,
    check_time,
    encode_loglines,
)
from .command import parsers, run
from .events import Flush, Start, Stop, Unban, ban_event, unban_reason
from .report import EXIT_OK, DatabaseUnavailable
from .runner import Runner
from .settings import load_settings

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .maintenance import Maintenance

PROG = "fail2ban_banned_db"
# The cron run's commands: only they load the code that talks to fail2ban (maintenance.py).
MAINTENANCE = ("unban_db", "sync")


def _cmd_start(runner: Runner, args: argparse.Namespace) -> int:
    # The action passes the ports and protocol it records bans with: `sync` needs them.
    ports = check_ports(args.ports) if args.ports is not None else ""
    protocol = check_protocol(args.protocol) if args.protocol is not None else ""
    return runner.record(Start(check_jail(args.jail), runner.settings.hostname, ports, protocol))


def _cmd_stop(runner: Runner, args: argparse.Namespace) -> int:
    jail = check_jail(args.jail)
    return runner.record(Stop(jail, runner.settings.hostname))


def _cmd_flush(runner: Runner, args: argparse.Namespace) -> int:
    jail = check_jail(args.jail)
    return runner.record(Flush(jail, runner.settings.hostname))


def _cmd_ban(runner: Runner, args: argparse.Namespace) -> int:
    event = ban_event(
        runner.settings,
        check_ip(args.ip),
        check_ports(args.ports),
        check_protocol(args.protocol),
        check_jail(args.jail),
        check_failures(args.failures),
        encode_loglines(args.loglines),
        check_time(args.time),
    )
    return runner.record(event)


def _cmd_unban(runner: Runner, args: argparse.Namespace) -> int:
    ips = [check_ip(ip) for ip in args.ips]
    jail = check_jail(args.jail) if args.jail is not None else None
    try:
        reason = unban_reason(check_time(args.time), check_bantime(args.bantime))
    except InvalidValue:  # a time it cannot read only costs the history its "expired"
        reason = unban_reason(None, None)
    return runner.record(Unban(tuple(ips), runner.settings.hostname, jail, reason))


def _cmd_unban_db(runner: Maintenance, args: argparse.Namespace) -> int:
    if args.history_days is not None:
        runner.settings.history_days = args.history_days
    if args.metrics_dir is not None:
        runner.settings.metrics_dir = "" if args.metrics_dir == "off" else args.metrics_dir
    return runner.unban_db()


def _cmd_sync(runner: Maintenance, args: argparse.Namespace) -> int:
    return runner.sync()


def _cmd_replay(runner: Runner, args: argparse.Namespace) -> int:
    if runner.catch_up(budget=math.inf):
        return EXIT_OK
    raise DatabaseUnavailable(f"spooled events remain in {runner.spool.path}")


def _days(value: str) -> int:
    if not value.isdigit() or len(value) > 6:
        raise argparse.ArgumentTypeError(f"not a number of days: {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser, commands = parsers(
        PROG, "Keep fail2ban's bans in the SQL table `banned`.", "host name written in rows (default: this host's)"
    )

    sub = commands.add_parser("start", help="a jail's banned_db action started")
    sub.add_argument("--ports", help="the ports the action records bans with")
    sub.add_argument("--protocol", help="the protocol the action records bans with")
    sub.add_argument("jail")
    sub.set_defaults(func=_cmd_start)

    for name in ("stop", "cleanup"):
        sub = commands.add_parser(name, help="a jail stopped: forget its bans and the jail")
        sub.add_argument("jail")
        sub.set_defaults(func=_cmd_stop)

    sub = commands.add_parser("flush", help="fail2ban lifted every ban of a jail at once")
    sub.add_argument("jail")
    sub.set_defaults(func=_cmd_flush)

    sub = commands.add_parser("ban", help="record a ban")
    sub.add_argument("--time", help="when the ban began, seconds since the epoch (fail2ban's <time>)")
    sub.add_argument("ip")
    sub.add_argument("ports")
    sub.add_argument("protocol")
    sub.add_argument("jail")
    sub.add_argument("failures", nargs="?", default="")
    sub.add_argument("loglines", nargs=argparse.REMAINDER)
    sub.set_defaults(func=_cmd_ban)

    sub = commands.add_parser("unban", help="forget bans of these addresses")
    sub.add_argument("--jail", help="only this jail's rows")
    sub.add_argument("--time", help="when the ban began (fail2ban's <time>): with --bantime, tells an expiry")
    sub.add_argument("--bantime", help="the ban's length in seconds, -1 for ever (fail2ban's <bantime>)")
    sub.add_argument("ips", nargs="+", metavar="ip")
    sub.set_defaults(func=_cmd_unban)

    sub = commands.add_parser("unban_db", help="lift the bans a panel marked remove = 1, then sync (cron)")
    sub.add_argument("--history-days", type=_days, help="keep this host's history this many days (0: for ever)")
    sub.add_argument("--metrics-dir", help="node_exporter's textfile directory for the figures (off: none)")
    sub.set_defaults(func=_cmd_unban_db)

    sub = commands.add_parser("sync", help="make this host's rows match fail2ban's live bans")
    sub.set_defaults(func=_cmd_sync)

    sub = commands.add_parser("replay", help="only replay spooled events")
    sub.set_defaults(func=_cmd_replay)
    return parser


def _runner(args: argparse.Namespace) -> Runner:
    settings = load_settings(args.config, args.hostname)
    if args.command in MAINTENANCE:
        from .maintenance import Maintenance  # not for an event (fail2ban waits for those)

        return Maintenance(settings)
    return Runner(settings)


def main(argv: Iterable[str] | None = None) -> int:
    return run(PROG, build_parser(), argv, _runner)
