"""What both command lines (fail2ban_banned_db, f2bsql) share: one run of a command.

A bad argument, a refused value or any HelperError ends the run with one line on stderr (and
syslog) and the exit code docs/helper.md and docs/admin.md list; -v shows the traceback instead.
Their parsers are parsing.py's; this module does not import argparse, which the helper's event
commands do without (helper.quick_args).
"""

from __future__ import annotations

from .checks import InvalidValue
from .report import EXIT_FAILED, EXIT_OK, EXIT_USAGE, HelperError, log, set_program

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, Callable, Protocol

    class Closable(Protocol):
        def close(self) -> None: ...


def run(
    program: str,
    parse: Callable[[list[str]], Any],
    argv: Iterable[str],
    context: Callable[[Any], Closable],
) -> int:
    """Parse argv, make the command's context from the arguments, run args.func(context, args).

    `parse` is a parser's parse_args, or anything that reads argv the same way.
    """
    set_program(program)
    verbose = False
    made: Closable | None = None
    try:
        args = parse(list(argv))
        verbose = args.verbose
        made = context(args)
        func: Callable[[Any, Any], int] = args.func
        return int(func(made, args))
    except (HelperError, InvalidValue) as exc:
        if verbose:
            raise
        # Always on stderr: a refused argument means a ban went unrecorded, and the docs promise the
        # caller (fail2ban's log, cron's mail, a shell) the one-line reason.
        log(str(exc), error=True)
        return exc.exit_code if isinstance(exc, HelperError) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:  # `f2bsql bans | head`: the reader had enough
        return EXIT_OK
    finally:
        if made is not None:
            made.close()
