"""The helper builds only the subcommand argv names (a process per ban pays for no other):
whatever the command line, it must read it exactly as the whole parser does."""

from __future__ import annotations

import json
import subprocess

from testbed import BASE_ENV, HOST_LIB, SYSTEM_PYTHON

WORDS = [
    "start", "stop", "cleanup", "flush", "ban", "unban", "unban_db", "sync", "replay", "bann",
    "--config", "--config=/x", "--conf", "--hostname", "--hostname=h", "-v", "--verbose", "-vh", "-h",
    "--help", "--", "-", "--jail", "--time", "--bantime", "--ports=25", "--protocol", "--history-days",
    "7", "192.0.2.1", "25,587", "tcp", "dovecot", "x", "",
]  # fmt: skip
CASES = 20000

# Under the system Python, as the helper runs: random command lines of these words, each read by
# the one-subcommand parser and by the whole one.
COMPARE = """
import contextlib, io, json, random, sys
sys.path.insert(0, sys.argv[1])
from f2bsql_host import helper
from f2bsql_host.report import UsageError
words, cases = json.loads(sys.argv[2]), int(sys.argv[3])

def outcome(parser, argv):
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            return vars(parser.parse_args(argv))
    except UsageError as exc:
        return ("usage error", str(exc))
    except SystemExit as exc:  # -h: the help printed
        return ("exit", exc.code, out.getvalue())

pick = random.Random(14)
compared, differ = 0, []
for _ in range(cases):
    argv = [pick.choice(words) for _ in range(pick.randrange(10))]
    named = helper.command_named(argv)
    if named is None:
        continue  # the run builds the whole parser itself
    compared += 1
    if outcome(helper.build_parser(named), argv) != outcome(helper.build_parser(), argv):
        differ.append(argv)
print(json.dumps({"compared": compared, "differ": differ[:10]}))
"""


def test_the_one_subcommand_parser_reads_argv_as_the_whole_one() -> None:
    argv = [SYSTEM_PYTHON, "-c", COMPARE, str(HOST_LIB), json.dumps(WORDS), str(CASES)]
    done = subprocess.run(argv, env=BASE_ENV, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["differ"] == [], result["differ"]
    assert result["compared"] > CASES // 4, result  # most cases name a command: they were compared


NAMED = """
import json, sys
sys.path.insert(0, sys.argv[1])
from f2bsql_host.helper import command_named
print(json.dumps([command_named(argv) for argv in json.loads(sys.argv[2])]))
"""


def test_the_command_is_named_only_where_nothing_before_it_is_in_doubt() -> None:
    cases = {
        ("ban", "192.0.2.1"): "ban",
        ("--config", "unban", "-v", "--hostname=h", "unban_db"): "unban_db",
        ("--conf", "x", "ban"): None,  # argparse's abbreviations: the whole parser
        ("-h",): None,
        ("--", "ban"): None,
        ("bann",): None,  # its error lists the commands
        (): None,
    }
    argv = [SYSTEM_PYTHON, "-c", NAMED, str(HOST_LIB), json.dumps(list(cases))]
    done = subprocess.run(argv, env=BASE_ENV, capture_output=True, text=True, timeout=60, check=True)
    assert dict(zip(cases, json.loads(done.stdout))) == cases
