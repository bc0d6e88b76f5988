"""`fail2ban_banned_db`, the helper fail2ban's command action and root's cron run.

Drop-in for iRedMail's bash helper of the same name (start, stop, cleanup, ban, unban,
unban_db), plus flush, sync and replay; docs/helper.md has the commands and exit codes.
"""

from __future__ import annotations

import math
import sys

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
from .command import run
from .events import Flush, Start, Stop, Unban, ban_event, unban_reason
from .report import EXIT_OK, DatabaseUnavailable
from .runner import Runner
from .settings import load_settings

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Sequence
    from typing import Any

    from .maintenance import Maintenance

PROG = "fail2ban_banned_db"
# The cron run's commands: only they load the code that talks to fail2ban (maintenance.py).
MAINTENANCE = ("unban_db", "sync")


def _cmd_start(runner: Runner, args: Args) -> int:
    # The action passes the ports and protocol it records bans with: `sync` needs them.
    ports = check_ports(args.ports) if args.ports is not None else ""
    protocol = check_protocol(args.protocol) if args.protocol is not None else ""
    return runner.record(Start(check_jail(args.jail), runner.settings.hostname, ports, protocol))


def _cmd_stop(runner: Runner, args: Args) -> int:
    jail = check_jail(args.jail)
    return runner.record(Stop(jail, runner.settings.hostname))


def _cmd_flush(runner: Runner, args: Args) -> int:
    jail = check_jail(args.jail)
    return runner.record(Flush(jail, runner.settings.hostname))


def _cmd_ban(runner: Runner, args: Args) -> int:
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


def _cmd_unban(runner: Runner, args: Args) -> int:
    ips = [check_ip(ip) for ip in args.ips]
    jail = check_jail(args.jail) if args.jail is not None else None
    try:
        reason = unban_reason(check_time(args.time), check_bantime(args.bantime))
    except InvalidValue:  # a time it cannot read only costs the history its "expired"
        reason = unban_reason(None, None)
    return runner.record(Unban(tuple(ips), runner.settings.hostname, jail, reason))


def _cmd_unban_db(runner: Maintenance, args: Args) -> int:
    if args.history_days is not None:
        runner.settings.history_days = args.history_days
    if args.metrics_dir is not None:
        runner.settings.metrics_dir = "" if args.metrics_dir == "off" else args.metrics_dir
    return runner.unban_db()


def _cmd_sync(runner: Maintenance, args: Args) -> int:
    return runner.sync()


def _cmd_replay(runner: Runner, args: Args) -> int:
    if runner.catch_up(budget=math.inf):
        return EXIT_OK
    raise DatabaseUnavailable(f"spooled events remain in {runner.spool.path}")


def _cmd_check(runner: Runner, args: Args) -> int:
    """Log in as every other command does and read this host's rows of `jails`: the address, the
    password, the grant and the schema proven at once (the roles run it after an install). A
    failure is the server's answer, and the exit code of a database that cannot be reached."""
    settings = runner.settings
    jails = runner.database().host_jails(settings.hostname)
    where = settings.socket or f"{settings.host}:{settings.port}"
    print(
        f"{PROG}: logged in to {settings.backend} database {settings.database!r} at {where}"
        f" as {settings.user!r}; {len(jails)} jail(s) of {settings.hostname} recorded"
    )
    return EXIT_OK


class Args:
    """argv as read: what argparse's Namespace holds, made by quick_args without argparse."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


def _days(value: str) -> int:
    import argparse

    if not value.isdigit() or len(value) > 6:
        raise argparse.ArgumentTypeError(f"not a number of days: {value!r}")
    return int(value)


# Each command's handler: the parser's and quick_args' one table.
HANDLERS = {
    "start": _cmd_start,
    "stop": _cmd_stop,
    "cleanup": _cmd_stop,
    "flush": _cmd_flush,
    "ban": _cmd_ban,
    "unban": _cmd_unban,
    "unban_db": _cmd_unban_db,
    "sync": _cmd_sync,
    "replay": _cmd_replay,
    "check": _cmd_check,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The helper's parser; given the command argv names, with that subcommand alone.

    fail2ban starts a process per event, and argparse takes longer to build nine subcommands
    than to parse one: the run builds only the one it needs (command_named), and argparse then
    reads argv exactly as the whole parser would.
    """
    import argparse

    from .parsing import parsers

    parser, commands = parsers(
        PROG, "Keep fail2ban's bans in the SQL table `banned`.", "host name written in rows (default: this host's)"
    )

    def add(name: str, summary: str) -> argparse.ArgumentParser | None:
        if command not in (None, name):
            return None
        sub: argparse.ArgumentParser = commands.add_parser(name, help=summary)
        sub.set_defaults(func=HANDLERS[name])
        return sub

    sub = add("start", "a jail's banned_db action started")
    if sub:
        sub.add_argument("--ports", help="the ports the action records bans with")
        sub.add_argument("--protocol", help="the protocol the action records bans with")
        sub.add_argument("jail")

    for name in ("stop", "cleanup"):
        sub = add(name, "a jail stopped: forget its bans and the jail")
        if sub:
            sub.add_argument("jail")

    sub = add("flush", "fail2ban lifted every ban of a jail at once")
    if sub:
        sub.add_argument("jail")

    sub = add("ban", "record a ban")
    if sub:
        sub.add_argument("--time", help="when the ban began, seconds since the epoch (fail2ban's <time>)")
        sub.add_argument("ip")
        sub.add_argument("ports")
        sub.add_argument("protocol")
        sub.add_argument("jail")
        sub.add_argument("failures", nargs="?", default="")
        sub.add_argument("loglines", nargs=argparse.REMAINDER)

    sub = add("unban", "forget bans of these addresses")
    if sub:
        sub.add_argument("--jail", help="only this jail's rows")
        sub.add_argument("--time", help="when the ban began (fail2ban's <time>): with --bantime, tells an expiry")
        sub.add_argument("--bantime", help="the ban's length in seconds, -1 for ever (fail2ban's <bantime>)")
        sub.add_argument("ips", nargs="+", metavar="ip")

    sub = add("unban_db", "lift the bans a panel marked remove = 1, then sync (cron)")
    if sub:
        sub.add_argument("--history-days", type=_days, help="keep this host's history this many days (0: for ever)")
        sub.add_argument("--metrics-dir", help="node_exporter's textfile directory for the figures (off: none)")

    add("sync", "make this host's rows match fail2ban's live bans")
    add("replay", "only replay spooled events")
    add("check", "log in and read this host's jails: prove the settings work")
    return parser


COMMANDS = tuple(HANDLERS)


def command_named(argv: Sequence[str]) -> str | None:
    """The command argv names, where nothing before it leaves room for doubt; else None.

    Only the options of the parser itself, spelt out in full, may come first: anything else
    (an abbreviation, -h, "--", a word that is not a command) gets the whole parser, whose
    messages list every command.
    """
    rest = iter(argv)
    for arg in rest:
        if arg in ("--config", "--hostname"):
            next(rest, None)
        elif not (arg in ("-v", "--verbose") or arg.startswith(("--config=", "--hostname="))):
            return arg if arg in COMMANDS else None
    return None


# The commands fail2ban runs for its events, read without argparse where argv has their plain
# form (argparse and what it imports are a third of a `ban` process): each one's options, which
# may come first, and its handler.
_QUICK_OPTIONS = {
    "ban": ("--time",),
    "unban": ("--jail", "--time", "--bantime"),
    "start": ("--ports", "--protocol"),
    "stop": (),
    "cleanup": (),
    "flush": (),
}


def _option_value(arg: str) -> bool:
    """argparse takes arg as an option's value: not an option, or a negative whole number
    (the action's `--bantime -1`), which every argparse reads as a number where the parser has
    no option that looks like one."""
    return not arg.startswith("-") or (arg[1:].isdigit() and arg.isascii())


def _read_options(
    argv: Sequence[str], index: int, into: dict[str, object], names: Sequence[str], flags: dict[str, str] | None = None
) -> int | None:
    """Read the options at argv[index:] into `into` by dest: flags (dest by name), `--name value`
    and `--name=value` (the last one given wins, as in argparse); where the values begin, or None
    where argparse might read them otherwise."""
    while index < len(argv) and argv[index].startswith("-"):
        arg = argv[index]
        if flags and arg in flags:
            into[flags[arg]] = True
            index += 1
            continue
        name, equals, value = arg.partition("=")
        if name not in names:
            return None
        if not equals:
            index += 1
            if index == len(argv) or not _option_value(argv[index]):
                return None  # argparse's "expected one argument", or another option
            value = argv[index]
        into[name[2:].replace("-", "_")] = value
        index += 1
    return index


def quick_args(argv: Sequence[str]) -> Args | None:
    """argv of an event command, read as the parser reads it; None where the parser must read it.

    Only the plain forms: the global options spelt out, then the command, its own options first,
    then positional values none of which begins with "-". Anything else (an abbreviation, -h,
    "--", an option among the values, too few or too many values) goes to argparse, whose errors
    and help stay as they are. tests/test_helper_readers.py holds both to the same reading.
    """
    args: dict[str, object] = {"config": None, "hostname": None, "verbose": False}
    index = _read_options(argv, 0, args, ("--config", "--hostname"), {"-v": "verbose", "--verbose": "verbose"})
    if index is None or index == len(argv) or argv[index] not in _QUICK_OPTIONS:
        return None
    command = args["command"] = argv[index]
    names = _QUICK_OPTIONS[command]
    args.update((name[2:].replace("-", "_"), None) for name in names)
    index = _read_options(argv, index + 1, args, names)
    if index is None:
        return None
    values = argv[index:]
    if any(value.startswith("-") for value in values):
        return None
    if command == "ban":
        if len(values) < 4:
            return None
        args.update(zip(("ip", "ports", "protocol", "jail"), values))
        args["failures"] = values[4] if len(values) > 4 else ""
        args["loglines"] = list(values[5:])
    elif command == "unban":
        if not values:
            return None
        args["ips"] = list(values)
    elif len(values) == 1:
        args["jail"] = values[0]
    else:
        return None
    return Args(**args, func=HANDLERS[command])


def _runner(args: Args) -> Runner:
    settings = load_settings(args.config, args.hostname)
    if args.command in MAINTENANCE:
        from .maintenance import Maintenance  # not for an event (fail2ban waits for those)

        return Maintenance(settings)
    return Runner(settings)


def parse(argv: list[str]) -> Args | argparse.Namespace:
    """argv read as the helper's parser reads it, without building it for an event's plain form."""
    quick = quick_args(argv)
    return quick if quick is not None else build_parser(command_named(argv)).parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    return run(PROG, parse, list(sys.argv[1:] if argv is None else argv), _runner)
