"""A `ban` process reads its argv, its settings file and its values without argparse, configparser
or re (importing them is a third of the process). Each reader must give what the standard one
gives wherever it answers, and leave everything else to it: held here against the standard
modules of every Python the host code runs on, with random inputs made of the awkward parts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_python_versions import VERSIONS, _interpreter
from testbed import BASE_ENV, HOST_LIB, SYSTEM_PYTHON

# The system Python (as the helper runs) and each of pyenv's that this machine has.
PYTHONS = [SYSTEM_PYTHON, *(str(found) for found in map(_interpreter, VERSIONS) if found is not None)]
CASES = 6000


def _compare(python: str, script: str, *args: str) -> dict[str, object]:
    argv = [python, "-I", "-c", script, str(HOST_LIB), *args]
    done = subprocess.run(argv, env=BASE_ENV, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


# --------------------------------------------------------------------------- argv

WORDS = [
    "--config", "--config=/x", "--conf", "--hostname", "--hostname=h", "-v", "--verbose", "-vv", "-h",
    "--", "-", "-5", "-1.5", "-1x", "--time", "--time=7", "--tim", "--jail", "--jail=j", "--bantime", "--bantime=-1",
    "--ports", "--ports=25", "--protocol", "--history-days", "ban", "unban", "start", "stop", "cleanup",
    "flush", "sync", "192.0.2.1", "2001:db8::1", "25,587", "tcp", "dovecot", "3", "", "x y", "-x y",
    "a=b", "auth failure",
]  # fmt: skip

QUICK = """
import contextlib, io, json, random, sys
sys.path.insert(0, sys.argv[1])
from f2bsql_host import helper
from f2bsql_host.report import UsageError
words, cases = json.loads(sys.argv[2]), int(sys.argv[3])
globals_ = [[], ["-v"], ["--verbose"]] + [
    form for option in ("--config", "--hostname") for value in ("/c", "", "-1", "-x", "ban", "stop", "a=b")
    for form in ([option, value], [option + "=" + value])
]
options = {"ban": ["--time"], "unban": ["--jail", "--time", "--bantime"], "start": ["--ports", "--protocol"]}

def outcome(parse, argv):
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            return vars(parse(argv))
    except UsageError as exc:
        return ("usage error", str(exc))
    except SystemExit as exc:  # -h: the help printed
        return ("exit", exc.code, out.getvalue())

values = ["192.0.2.1", "2001:db8::1", "25,587", "tcp", "dovecot", "3", "", "x y", "a=b", "auth failure", "ban", "-1"]

def plain(pick):
    # An event's command line as the action writes it, then perhaps spoilt by a word or two.
    argv = [word for _ in range(pick.randrange(3)) for word in pick.choice(globals_)]
    command = pick.choice(sorted(helper._QUICK_OPTIONS))
    argv.append(command)
    for name in options.get(command, []):
        if pick.random() < 0.5:
            argv += [name + "=" + pick.choice(values)] if pick.random() < 0.3 else [name, pick.choice(values)]
    argv += [pick.choice(values[:-1]) for _ in range(pick.choice((1, 1, 4, 4, 5, 6, pick.randrange(9))))]
    for _ in range(pick.choice((0, 0, 0, 1, 2))):
        argv.insert(pick.randrange(len(argv) + 1), pick.choice(words))
    return argv

pick = random.Random(14)
read, differ = 0, []
for _ in range(cases):
    argv = plain(pick) if pick.random() < 0.8 else [pick.choice(words) for _ in range(pick.randrange(10))]
    quick = helper.quick_args(argv)
    if quick is None:
        continue  # argparse reads it
    read += 1
    if vars(quick) != outcome(helper.build_parser().parse_args, argv):
        differ.append(argv)
print(json.dumps({"read": read, "differ": differ[:10]}))
"""


@pytest.mark.parametrize("python", PYTHONS)
def test_an_events_plain_argv_is_read_as_argparse_reads_it(python: str) -> None:
    result = _compare(python, QUICK, json.dumps(WORDS), str(CASES))
    assert result["differ"] == [], result["differ"]
    assert isinstance(result["read"], int) and result["read"] > CASES // 5, result  # most were plain


QUICK_CASES = """
import json, sys
sys.path.insert(0, sys.argv[1])
from f2bsql_host.helper import quick_args
print(json.dumps([None if (a := quick_args(argv)) is None else sorted(k for k in vars(a) if k != "func")
                  for argv in json.loads(sys.argv[2])]))
"""


def test_the_action_s_own_command_lines_are_the_plain_forms() -> None:
    """What templates/banned_db.conf.j2 runs needs no argparse; the rest goes to it."""
    ban = ["ban", "--time", "1764000000", "192.0.2.1", "25,587", "tcp", "dovecot", "3", "auth failure"]
    cases = {
        ("--config", "/c", *ban): True,
        ("start", "--ports", "25,587", "--protocol", "tcp", "dovecot"): True,
        ("stop", "dovecot"): True,
        ("unban", "--jail", "dovecot", "--time", "1764000000", "--bantime", "-1", "192.0.2.1"): True,
        ("unban", "--jail", "dovecot", "--time", "1764000000", "--bantime", "-1.5", "192.0.2.1"): False,
        ("ban", "192.0.2.1", "25", "tcp", "dovecot", "3", "-- a log line"): False,
        ("unban_db",): False,
        ("-h",): False,
    }
    done = _compare(SYSTEM_PYTHON, QUICK_CASES, json.dumps(list(cases)))
    assert [found is not None for found in done] == list(cases.values()), done  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- settings files

LINES = [
    "[client]", "[f2bsql]", "[DEFAULT]", "[ client ]", "[client", "client]", "[a]b]", "[]", "", "   ",
    "# a comment", "; a comment", "  # an indented comment", "host = 127.0.0.1", "Host=db", "port: 3306",
    'password = "p#w:1;x"', "password='it''s'", "a : b = c", "key", "KEY ", "  continued", "\tcontinued",
    "=x", ":x", "k = v ; not a comment", "value\r", "dup = 1", "dup = 2", "\u043a\u043b\u044e\u0447 = \u00e9",
    "\ufeff[client]", "!include /etc/x", "x =", "  y = 2", "\u00a0z = 3",
]  # fmt: skip

INI = """
import configparser, json, random, sys
sys.path.insert(0, sys.argv[1])
from f2bsql_host.settings import plain_ini
lines, cases = json.loads(sys.argv[2]), int(sys.argv[3])

def standard(text):
    parser = configparser.RawConfigParser(allow_no_value=True, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    return {name: dict(parser.items(name, raw=True)) for name in parser.sections()}

pick = random.Random(14)
read, differ = 0, []
for _ in range(cases):
    chosen = [pick.choice(lines) for _ in range(pick.randrange(12))]
    if pick.random() < 0.7:
        chosen.insert(0, pick.choice(("[client]", "[f2bsql]")))
    text = pick.choice(("\\n", "\\r\\n")).join(chosen) + pick.choice(("", "\\n"))
    mine = plain_ini(text)
    if mine is None:
        continue  # configparser reads it
    read += 1
    if mine != standard(text):
        differ.append(text)
print(json.dumps({"read": read, "differ": differ[:10]}))
"""


@pytest.mark.parametrize("python", PYTHONS)
def test_a_plain_settings_file_is_read_as_configparser_reads_it(python: str) -> None:
    result = _compare(python, INI, json.dumps(LINES), str(CASES))
    assert result["differ"] == [], result["differ"]
    assert isinstance(result["read"], int) and result["read"] > CASES // 10, result


def test_the_files_the_installer_and_iredmail_write_are_plain(tmp_path: Path) -> None:
    """The usual files never cost configparser: our own and iRedMail's /root/.my.cnf form."""
    ours = "[client]\nhost = 127.0.0.1\nport = 3306\nuser = fail2ban\npassword = s3cret\ndatabase = fail2ban\n\n"
    ours += "[f2bsql]\nbackend = mysql\nhostname = mail1\n"
    iredmail = '[client]\nhost=127.0.0.1\nport=3306\nuser=root\npassword="x:y#z"\n'
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from f2bsql_host.settings import plain_ini;"
        " print(json.dumps([plain_ini(text) for text in json.loads(sys.argv[2])]))"
    )
    done = _compare(SYSTEM_PYTHON, script, json.dumps([ours, iredmail]))
    client = {"host": "127.0.0.1", "port": "3306", "user": "fail2ban", "password": "s3cret", "database": "fail2ban"}
    assert done == [  # type: ignore[comparison-overlap]
        {"client": client, "f2bsql": {"backend": "mysql", "hostname": "mail1"}},
        {"client": {"host": "127.0.0.1", "port": "3306", "user": "root", "password": '"x:y#z"'}},
    ]


def test_a_settings_file_configparser_reads_gives_the_same_settings(tmp_path: Path) -> None:
    """The way through the file: CRLF lines, !include lines dropped, and where plain_ini gives
    way ([DEFAULT], a continued value) configparser's reading, [DEFAULT] in every section."""
    text = (
        "!include /etc/mysql/other.cnf\r\n[DEFAULT]\r\nhost = db.example.com\r\n[client]\r\nuser = f2b\r\n"
        "password = first\r\n  second\r\n[f2bsql]\r\nhostname = mail1\r\n"
    )
    path = tmp_path / "settings.cnf"
    path.write_bytes(text.encode())
    path.chmod(0o600)
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        " from f2bsql_host.settings import _read_ini, settings_from_ini; s = settings_from_ini(sys.argv[2]);"
        " print(json.dumps([_read_ini(sys.argv[2]), [s.host, s.user, s.password, s.hostname]]))"
    )
    sections, settings = _compare(SYSTEM_PYTHON, script, str(path))  # type: ignore[misc]
    assert sections == {
        "client": {"host": "db.example.com", "user": "f2b", "password": "first\nsecond"},
        "f2bsql": {"host": "db.example.com", "hostname": "mail1"},
    }
    assert settings == ["db.example.com", "f2b", "first\nsecond", "mail1"]


# --------------------------------------------------------------------------- values

CHECKS = """
import json, random, re, sys
sys.path.insert(0, sys.argv[1])
from f2bsql_host import checks
cases = int(sys.argv[2])

# The rules as they were written with re, before the checks did without it.
def _list(value):
    return re.sub(r"\\s*,\\s*", ",", value.strip())

def protocol(value):
    value = _list(value)
    return value.lower() if value.isascii() else value

RULES = {
    "check_jail": (lambda v: v, re.compile(r"[A-Za-z0-9_.@:+-]{1,50}")),
    "check_ports": (_list, re.compile(r"[A-Za-z0-9_,:.-]{1,255}")),
    "check_protocol": (protocol, re.compile(r"(?=.{1,32}$)[a-z0-9]+(?:,[a-z0-9]+)*")),
    "check_hostname": (lambda v: v, re.compile(r"[A-Za-z0-9_.-]{1,255}")),
}

def old(name, value):
    if name == "check_failures":
        if value == "":
            return 0
        return min(int(value), checks.FAILURES_MAX) if re.fullmatch(r"[0-9]{1,9}", value) else "refused"
    normal, pattern = RULES[name]
    value = normal(value)
    return value if pattern.fullmatch(value) else "refused"

def new(name, value):
    try:
        return getattr(checks, name)(value)
    except checks.InvalidValue:
        return "refused"

alphabet = "aZ09_.@:+-,/ \\t\\n\\x0b\\x1c\\x85\\xa0\\u2028\\u3000\\u212a\\u0130\\u00e9\\u0663\\uff10TCPudp"
pick = random.Random(14)
checked, differ = 0, []
for _ in range(cases):
    size = pick.choice((pick.randrange(8), pick.randrange(60), pick.randrange(240, 270)))
    value = "".join(pick.choice(alphabet) for _ in range(size))
    if pick.random() < 0.3:
        value = pick.choice(("tcp", "25", "dovecot", "mail.example.com")) + value[:3]
    for name in (*RULES, "check_failures"):
        checked += 1
        if old(name, value) != new(name, value):
            differ.append([name, value])
print(json.dumps({"checked": checked, "differ": differ[:10]}))
"""


@pytest.mark.parametrize("python", PYTHONS)
def test_the_checks_accept_what_their_regular_expressions_accepted(python: str) -> None:
    result = _compare(python, CHECKS, str(CASES))
    assert result["differ"] == [], result["differ"]
    assert result["checked"] == CASES * 5
