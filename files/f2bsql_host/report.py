"""How the host code reports: exit codes, the one error family, and one-line log messages.

Every failure the helper, the Python action or the admin CLI can meet is a HelperError with a
one-line reason and the exit code that goes with it (docs/helper.md lists them).
"""

from __future__ import annotations

import sys
import syslog

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3


class HelperError(Exception):
    """A failure with a one-line reason and the exit code that goes with it."""

    exit_code = EXIT_FAILED


class UsageError(HelperError):
    exit_code = EXIT_USAGE


class ConfigError(HelperError):
    exit_code = EXIT_CONFIG


class DatabaseUnavailable(HelperError):
    """The database could not be reached or gave up in time: worth trying again later."""


class EventRejected(HelperError):
    """The database refused the event itself: trying again would fail the same way."""

    missing_table = False  # the statement named a table the database does not have


class Fail2banUnreachable(HelperError):
    """fail2ban-server does not answer on its socket (stopped, or not started yet)."""


# Where log() sends a line instead of syslog and stderr: fail2ban's own log, inside fail2ban-server.
TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from typing import Callable, Optional

    Sink = Callable[[str, bool], None]
_program = "fail2ban_banned_db"
_sink: Optional[Sink] = None


def set_program(name: str) -> None:
    """The name log lines carry (syslog's ident, the stderr prefix)."""
    global _program
    _program = name


def set_sink(sink: Optional[Sink]) -> None:
    """Send log lines to `sink(message, error)` (None: back to syslog and stderr)."""
    global _sink
    _sink = sink


def log(message: str, *, error: bool = False) -> None:
    """One line to syslog; errors (and anything, on a terminal) to stderr too.

    fail2ban logs an action's stderr and cron mails it, so routine news stays off it.
    """
    # Messages quote arguments (argparse quotes them raw): a line break would split the line, an
    # undecodable byte (a lone surrogate) would make syslog raise. Escape what is not printable.
    message = "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)
    if _sink is not None:
        _sink(message, error)
        return
    if error or sys.stderr.isatty():
        print(f"{_program}: {message}", file=sys.stderr)
    try:
        syslog.openlog(_program, syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_ERR if error else syslog.LOG_INFO, message)
    except OSError:
        pass


def reason(exc: BaseException) -> str:
    """An exception as one line: its type and its message with the line breaks taken out."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
