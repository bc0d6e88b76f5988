"""The one error type of the installer, and its exit codes."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of `f2bsql-install` (documented in the README and in `--help`)."""

    OK = 0
    FAILED = 1  # the playbook ran and failed (or could not be started)
    USAGE = 2  # bad option or value: nothing was run
    PRECONDITION = 3  # something the run needs is missing: nothing was run


class F2bsqlError(Exception):
    """A failure the user can act on: one line of message and the exit code to leave with."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(F2bsqlError):
    """Bad command line: exit 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)


class PreconditionError(F2bsqlError):
    """The host lacks something the run needs: exit 3, before anything was changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.PRECONDITION)
