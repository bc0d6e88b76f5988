"""The argparse side of both command lines: their errors as UsageError, and the options they share."""

from __future__ import annotations

import argparse
import os
import sys

from .report import UsageError

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from typing import Any


class Formatter(argparse.HelpFormatter):
    """argparse's, told the terminal's width: its own asks shutil, an import a `ban` process
    would pay for at every argument the parser is given."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        if width is None:
            # As shutil.get_terminal_size reads it: $COLUMNS, the terminal, else 80 (also where a
            # terminal says 0 columns).
            try:
                width = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                width = 0
            if width <= 0:
                try:
                    width = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
                except (AttributeError, ValueError, OSError):
                    width = 0
            width = (width if width > 0 else 80) - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as UsageError (exit 2, one line) instead of a usage text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # argparse (3.7 to 3.13.0 at least) drops a second "--" as well as the first: a one-value
        # positional given it (`ban IP PORTS -- -- JAIL`) came out as an empty list. It is the
        # value "--" (which the checks then refuse).
        if action.nargs is None and arg_strings == ["--"]:
            value = self._get_value(action, "--")
            self._check_value(action, value)
            return value
        return super()._get_values(action, arg_strings)


def parsers(program: str, description: str, hostname_help: str) -> tuple[Parser, Any]:
    """The parser with the options both command lines have, and its subcommands to add to."""
    parser = Parser(prog=program, description=description)
    parser.add_argument(
        "--config", help="settings file, - for standard input (default: $F2BSQL_CONFIG, then the helper's usual places)"
    )
    parser.add_argument("--hostname", help=hostname_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
