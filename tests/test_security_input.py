"""Bad input, property-based: the helper's CLI under arbitrary arguments, on both backends.

Hypothesis draws whole command lines: well-formed ones with some fields replaced by anything
(addresses, ports, protocols, jail and host names, failure counts, ban times, log lines of any
bytes and length), missing and extra arguments, and plain chaos (random tokens, options and
commands in any order). Every case runs against a real database holding a sentinel table, and
is judged by an oracle written from docs/helper.md, not from the helper's code:

- no traceback, ever; a refusal is one line on stderr and exit 2 (3 for unusable settings);
- an accepted command changes exactly what the oracle's model of the tables says, and every
  row written is well formed and made of the arguments given;
- the sentinel table and the schema never change.

Most cases run in-process, in a worker on the distro's python3 (the interpreter and drivers the
helper runs on in production) that loads files/fail2ban_banned_db as a module and calls its
main(argv), the CLI's own entry point. A few hundred also run as a real `python3 helper …`
process, and both must answer alike: exit code, stdout and stderr.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import hashlib
import ipaddress
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st
from testbed import (
    BASE_ENV,
    DOVECOT_PORTS,
    HELPER,
    HOST_LIB,
    POSTFIX_PORTS,
    SYSTEM_PYTHON,
    Database,
    Host,
    record_figure,
)

# Cases per backend; 2 backends x (STRUCTURED + CHAOS) >= 10 000 in-process, plus SUBPROCESS x 2
# run both ways. F2BSQL_FUZZ_SCALE multiplies them for a longer run on a developer's machine.
SCALE = float(os.environ.get("F2BSQL_FUZZ_SCALE", "1"))
STRUCTURED = int(3000 * SCALE)
CHAOS = int(2000 * SCALE)
SUBPROCESS = int(150 * SCALE)
# A full comparison of both tables, the sentinel and the schema every so many cases.
FULL_CHECK_EVERY = 500

HOSTNAME = "mail-a.example.test"
PROG = "fail2ban_banned_db: "
LOGLINES_MAX = 32 * 1024
FAILURES_MAX = 32767
# What every backend's `timestamp` column can hold, with a day's margin for the server's time zone
# (MariaDB's TIMESTAMP: 1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC).
TIME_MIN, TIME_MAX = 86400, 2**31 - 1 - 86400

# docs/helper.md, "Commands": the character sets and lengths of each field.
JAIL_RE = re.compile(r"[A-Za-z0-9_.@:+-]{1,50}")
PORTS_RE = re.compile(r"[A-Za-z0-9_,:.-]{1,255}")
# One protocol or a comma-separated list of them, 32 characters in all.
PROTOCOL_RE = re.compile(r"[a-z0-9]+(,[a-z0-9]+)*")
PROTOCOL_MAX = 32
HOSTNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
FAILURES_RE = re.compile(r"[0-9]{1,9}")
# The words a refusal uses to name the field it refuses.
LABELS = {
    "ip": ("IP address",),
    "ports": ("ports",),
    "protocol": ("protocol",),
    "jail": ("jail name",),
    "failures": ("failure count",),
    "time": ("ban time", "argument --time"),  # "-1e3" looks like an option to argparse
    "hostname": ("host name",),
}

# --------------------------------------------------------------------------- running the helper

# Runs in the worker: the helper's package imported (from the directory given), the main(argv)
# the entry point runs called per request line.
WORKER = r"""
import contextlib, io, json, os, sys, traceback
sys.path.insert(0, sys.argv[1])
import f2bsql_host.helper as helper
reply = sys.stdout
for line in sys.stdin:
    request = json.loads(line)
    os.environ.pop("F2BSQL_CONFIG", None)
    os.environ.update(request["env"])
    out, err, error = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = helper.main(request["argv"])
        except SystemExit as exc:  # argparse's --help, as the real process would exit
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            code, error = 1, traceback.format_exc()
    reply.write(json.dumps({"rc": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "error": error}) + "\n")
    reply.flush()
"""


@dataclasses.dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str
    # A traceback that escaped main() (in-process) or reached stderr (subprocess).
    error: str | None

    def text(self) -> str:
        return f"exit {self.rc}\nstdout: {self.stdout!r}\nstderr: {self.stderr!r}\nerror: {self.error}"


class Worker:
    """A python3 process that has loaded the helper as a module and calls main(argv) on request."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", WORKER, str(HOST_LIB)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=BASE_ENV,
            text=True,
            encoding="ascii",
        )

    def run(self, argv: Sequence[str], config: Path) -> Outcome:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        # ensure_ascii keeps lone surrogates (undecodable argv bytes) intact through JSON.
        self.proc.stdin.write(json.dumps({"argv": list(argv), "env": {"F2BSQL_CONFIG": str(config)}}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the worker died (exit {self.proc.poll()})"
        reply = json.loads(line)
        return Outcome(reply["rc"], reply["stdout"], reply["stderr"], reply["error"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_process(argv: Sequence[str], config: Path) -> Outcome:
    """The same command line through a real process, as fail2ban and cron run the helper."""
    done = subprocess.run(
        [SYSTEM_PYTHON, str(HELPER), *(os.fsencode(arg) for arg in argv)],
        env={**BASE_ENV, "F2BSQL_CONFIG": str(config)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = done.stderr.decode("utf-8", "backslashreplace")
    error = stderr if "Traceback (most recent call last)" in stderr else None
    return Outcome(done.returncode, done.stdout.decode("utf-8", "backslashreplace"), stderr, error)


def as_printed(text: str) -> str:
    """What a real process prints for this text (stdio escapes what UTF-8 cannot carry)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.fixture(scope="module")
def worker(helper: Path) -> Iterator[Worker]:
    running = Worker()
    yield running
    running.close()


# --------------------------------------------------------------------------- the oracle


def norm_ip(value: str) -> str | None:
    """docs/helper.md: an IPv4/IPv6 address or CIDR network, stored in Python's normal form."""
    try:
        if "/" in value:
            network = ipaddress.ip_network(value, strict=True)
            text = str(network.network_address if network.prefixlen == network.max_prefixlen else network)
        else:
            text = str(ipaddress.ip_address(value))
    except ValueError:
        return None
    return None if "%" in text else text  # a scoped address is no ban target


def norm_ports(value: str) -> str | None:
    # "Blanks around commas are dropped": what str.split() calls blanks, i.e. Unicode white space.
    ports = re.sub(r"\s*,\s*", ",", value.strip())
    return ports if PORTS_RE.fullmatch(ports) else None


def norm_protocol(value: str) -> str | None:
    # Upper case is accepted and stored lowered (iRedMail's jails write TCP as often as tcp);
    # blanks around the commas of a list are dropped, as for ports.
    protocol = re.sub(r"\s*,\s*", ",", value.strip())
    if not protocol.isascii() or len(protocol) > PROTOCOL_MAX:
        return None
    return protocol.lower() if PROTOCOL_RE.fullmatch(protocol.lower()) else None


def norm_failures(value: str) -> int | None:
    if value == "":
        return 0
    return min(int(value), FAILURES_MAX) if FAILURES_RE.fullmatch(value) else None


def norm_time(value: str) -> str | None:
    """The naive UTC second a ban time stands for, rounded as fail2ban rounds it."""
    try:
        epoch = float(value)
    except ValueError:
        return None
    if not math.isfinite(epoch) or not TIME_MIN <= round(epoch) <= TIME_MAX:
        return None
    return datetime.datetime.fromtimestamp(round(epoch), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def option_like(arg: str) -> bool:
    """Whether argparse takes this argument for an option (its own rule, Python 3.9-3.13)."""
    negative_number = re.match(r"^-\d+$|^-\d*\.\d+$", arg)
    return arg.startswith("-") and arg != "-" and " " not in arg and not negative_number


def b64_loglines(loglines: Sequence[str]) -> str:
    raw = b" ".join(os.fsencode(line) for line in loglines)
    return base64.b64encode(raw[:LOGLINES_MAX]).decode("ascii")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


@dataclasses.dataclass
class Expect:
    """What a structured case must do: exit code, the fields it must name, the change it makes."""

    rc: int
    bad: set[str] = dataclasses.field(default_factory=set)
    op: dict[str, Any] | None = None


@dataclasses.dataclass
class Case:
    argv: list[str]
    expect: Expect | None  # None: chaos, judged by invariants only


class Model:
    """The tables as the accepted commands so far should have left them.

    MariaDB compares the key columns case-insensitively (utf8mb4_unicode_ci), PostgreSQL exactly:
    the model keys rows the way the backend does.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.folds = db.backend == "mysql"
        self.banned: dict[tuple[str, ...], dict[str, Any]] = {}
        self.jails: dict[tuple[str, str], dict[str, Any]] = {}
        self.max_id = 0
        self.reload()

    def fold(self, text: str) -> str:
        return text.lower() if self.folds else text

    def key(self, row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(self.fold(str(row[column])) for column in ("ip", "ports", "protocol", "jail", "hostname"))

    def reload(self) -> None:
        self.banned = {self.key(row): row for row in self.db.banned()}
        self.jails = {(self.fold(row["name"]), self.fold(row["hostname"])): row for row in self.db.jails()}
        self.max_id = self.current_max_id()

    def current_max_id(self) -> int:
        return int(self.db.query("SELECT COALESCE(MAX(id), 0) AS n FROM banned")[0]["n"])

    def apply(self, op: dict[str, Any]) -> None:
        """Apply an accepted command to the model, then compare the rows it touched."""
        fold, kind = self.fold, op["op"]
        if kind == "ban":
            row = op["row"]
            if self.key(row) not in self.banned:
                [stored] = [got for got in self.db.banned(ip=row["ip"]) if self.key(got) == self.key(row)]
                self.banned[self.key(row)] = stored
                self.check_row(stored, row)
            self.compare(self.db.banned(ip=row["ip"]), lambda got: got["ip"] == row["ip"])
        elif kind == "unban":
            ips, jail, host = op["ips"], op["jail"], fold(op["hostname"])
            for key in [key for key in self.banned if key[0] in ips and key[4] == host]:
                if jail is None or key[3] == fold(jail):
                    del self.banned[key]
            for ip in set(ips):
                self.compare(self.db.banned(ip=ip), functools.partial(_has_ip, ip))
        elif kind == "start":
            self.jails.setdefault((fold(op["jail"]), fold(op["hostname"])), {"name": op["jail"]})
            self.compare_jails()
        elif kind == "stop":
            jail, host = fold(op["jail"]), fold(op["hostname"])
            self.banned = {key: row for key, row in self.banned.items() if (key[3], key[4]) != (jail, host)}
            self.jails.pop((jail, host), None)
            self.compare(self.db.banned(jail=op["jail"]), lambda got: fold(got["jail"]) == jail)
            self.compare_jails()

    def check_row(self, got: dict[str, Any], want: dict[str, Any]) -> None:
        for column in ("ip", "ports", "protocol", "jail", "hostname", "failures", "loglines"):
            assert got[column] == want[column], f"{column}: stored {got[column]!r}, accepted {want[column]!r}"
        assert (got["country"], got["rdns"], got["remove"]) == ("", "", 0), got
        if want["timestamp"] is None:  # "now", in naive UTC
            assert abs(got["timestamp"] - utcnow()) < datetime.timedelta(minutes=2), got["timestamp"]
        else:
            assert got["timestamp"] == datetime.datetime.strptime(want["timestamp"], "%Y-%m-%d %H:%M:%S")

    def compare(self, rows: list[dict[str, Any]], selects: Callable[[dict[str, Any]], bool]) -> None:
        want = sorted(row["id"] for row in self.banned.values() if selects(row))
        assert sorted(row["id"] for row in rows) == want, f"rows {rows} do not match the model's {want}"

    def compare_jails(self) -> None:
        got = sorted((self.fold(row["name"]), self.fold(row["hostname"])) for row in self.db.jails())
        assert got == sorted(self.jails), f"jails {got} do not match the model's {sorted(self.jails)}"

    def check_counts(self) -> None:
        """Cheap, after every case: nothing appeared or went that the model does not know of."""
        [got] = self.db.query(
            "SELECT (SELECT COUNT(*) FROM banned) AS banned, (SELECT COUNT(*) FROM jails) AS jails,"
            " (SELECT COALESCE(MAX(id), 0) FROM banned) AS max_id"
        )
        want = {"banned": len(self.banned), "jails": len(self.jails), "max_id": self.max_id}
        # A changed max_id with equal counts: a row inserted and another deleted, unseen.
        assert {key: int(value) for key, value in got.items()} == want, "the tables changed unseen"

    def check_all(self) -> None:
        rows = self.db.banned()
        assert {self.key(row): row for row in rows} == self.banned
        self.compare_jails()


class Tables:
    """The database under fuzzing: model, sentinel table, schema, and the figures."""

    def __init__(self, db: Database, host: Host) -> None:
        self.db, self.host = db, host
        db.execute("CREATE TABLE sentinel (id INTEGER PRIMARY KEY, payload VARCHAR(200) NOT NULL)")
        for number in range(1, 101):
            payload = hashlib.sha256(str(number).encode()).hexdigest() + "'; DROP TABLE banned; --"
            db.execute("INSERT INTO sentinel (id, payload) VALUES (%s, %s)", (number, payload))
        self.sentinel = self.sentinel_digest()
        self.schema = db.fingerprint()
        self.model = Model(db)
        self.cases = 0
        self.accepted = 0
        self.rows_checked = 0

    def sentinel_digest(self) -> str:
        rows = self.db.query("SELECT id, payload FROM sentinel ORDER BY id")
        return hashlib.sha256(repr([(row["id"], row["payload"]) for row in rows]).encode()).hexdigest()

    def check_untouched(self) -> None:
        assert self.sentinel_digest() == self.sentinel, "the sentinel table changed"
        assert self.db.fingerprint() == self.schema, "the schema changed"
        assert self.host.spooled() == [] and self.host.rejected() == [], "events were spooled"

    def after(self, case: Case, outcome: Outcome) -> None:
        """Judge one run of a case, and keep the model in step with the database."""
        self.cases += 1
        try:
            check_outcome(outcome)
            if case.expect is not None:
                self.judge_structured(case.expect, outcome)
            else:
                self.judge_chaos(case.argv, outcome)
            if self.cases % FULL_CHECK_EVERY == 0:
                self.model.check_all()
                self.check_untouched()
        except BaseException:
            self.model.reload()  # so that the shrinking runs start from what is really there
            raise

    def judge_structured(self, expect: Expect, outcome: Outcome) -> None:
        assert outcome.rc == expect.rc, f"wanted exit {expect.rc}:\n{outcome.text()}"
        if expect.bad and outcome.rc == 2:
            named = [field for field in expect.bad if any(label in outcome.stderr for label in LABELS[field])]
            assert named, f"the refusal names none of the bad fields {sorted(expect.bad)}: {outcome.stderr!r}"
        if outcome.rc == 0 and expect.op is not None:
            self.accepted += 1
            self.model.apply(expect.op)
            self.model.max_id = self.model.current_max_id()
            self.rows_checked += 1
        self.model.check_counts()

    def judge_chaos(self, argv: list[str], outcome: Outcome) -> None:
        if outcome.rc != 0:
            self.model.check_counts()
            return
        self.accepted += 1
        before_banned, before_jails = self.model.banned, self.model.jails
        self.model.reload()
        check_chaos_change(argv, before_banned, self.model.banned, self.model.fold)
        check_chaos_jails(argv, before_jails, self.model.jails, self.model.fold)
        self.rows_checked += len(self.model.banned)


def _has_ip(ip: str, row: dict[str, Any]) -> bool:
    return bool(row["ip"] == ip)


def check_outcome(outcome: Outcome) -> None:
    """Whatever the input: a documented exit code; no traceback; a refusal is one clear line."""
    assert outcome.error is None, f"traceback:\n{outcome.text()}"
    assert outcome.rc in (0, 2, 3), f"undocumented or unexpected exit code:\n{outcome.text()}"
    if outcome.rc == 0:
        assert outcome.stderr == "", f"accepted, yet stderr:\n{outcome.text()}"
    else:
        lines = outcome.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(PROG), f"not one line:\n{outcome.text()}"
        assert len(lines[0]) > len(PROG) + 10, f"no reason given:\n{outcome.text()}"
        assert outcome.stdout == "", outcome.text()


def tokens_of(argv: Sequence[str]) -> set[str]:
    """Every value the command line holds, with `--option=value` split."""
    found = set(argv)
    found.update(arg.split("=", 1)[1] for arg in argv if arg.startswith("-") and "=" in arg)
    return found


def check_chaos_change(
    argv: list[str],
    before: dict[tuple[str, ...], dict[str, Any]],
    after: dict[tuple[str, ...], dict[str, Any]],
    fold: Callable[[str], str],
) -> None:
    """A chaos command that exited 0 made at most one ban or removed rows its arguments name."""
    tokens = tokens_of(argv)
    hosts = {fold(HOSTNAME)} | {fold(token) for token in tokens}
    old = {row["id"]: row for row in before.values()}
    new = {row["id"]: row for row in after.values()}
    for row_id in old.keys() & new.keys():
        assert old[row_id] == new[row_id], f"{argv!r} changed a row in place: {old[row_id]} -> {new[row_id]}"
    added = [new[row_id] for row_id in new.keys() - old.keys()]
    removed = [old[row_id] for row_id in old.keys() - new.keys()]
    if added:
        assert "ban" in argv and len(added) == 1, f"{argv!r} added {added}"
        [row] = added
        assert row["ip"] in {norm_ip(token) for token in tokens}, row
        assert row["ports"] in {norm_ports(token) for token in tokens}, row
        assert row["protocol"] in {norm_protocol(token) for token in tokens}, row
        assert row["jail"] in tokens and JAIL_RE.fullmatch(row["jail"]), row
        assert fold(row["hostname"]) in hosts and HOSTNAME_RE.fullmatch(row["hostname"]), row
        assert row["failures"] in {0} | {norm_failures(token) for token in tokens}, row
        suffixes = {b64_loglines(argv[start:]) for start in range(len(argv) + 1)}
        assert row["loglines"] in suffixes, f"{argv!r}: loglines {row['loglines']!r} are no tail of the arguments"
        assert (row["country"], row["rdns"], row["remove"]) == ("", "", 0), row
        stamps = {norm_time(token) for token in tokens} - {None}
        fresh = abs(row["timestamp"] - utcnow()) < datetime.timedelta(minutes=2)
        assert fresh or row["timestamp"].strftime("%Y-%m-%d %H:%M:%S") in stamps, row
    for row in removed:
        assert fold(row["hostname"]) in hosts, f"{argv!r} removed another host's row {row}"
        by_ip = "unban" in argv and row["ip"] in {norm_ip(token) for token in tokens}
        by_jail = bool({"stop", "cleanup"} & set(argv)) and fold(row["jail"]) in {fold(token) for token in tokens}
        assert by_ip or by_jail, f"{argv!r} removed {row}"


def check_chaos_jails(
    argv: list[str],
    before: dict[tuple[str, str], dict[str, Any]],
    after: dict[tuple[str, str], dict[str, Any]],
    fold: Callable[[str], str],
) -> None:
    folded = {fold(token) for token in tokens_of(argv)} | {fold(HOSTNAME)}
    for name, host in after.keys() - before.keys():
        assert "start" in argv and name in folded and host in folded, f"{argv!r} added jail {name}@{host}"
    for name, host in before.keys() - after.keys():
        assert {"stop", "cleanup"} & set(argv) and name in folded and host in folded, f"{argv!r} removed {name}@{host}"


# --------------------------------------------------------------------------- strategies

TEXT = st.characters(codec="utf-8", exclude_characters="\x00")
# Any bytes but NUL, as a process receives them (undecodable bytes become lone surrogates).
RAW = st.binary(max_size=24).map(lambda raw: os.fsdecode(raw.replace(b"\x00", b"\x01")))
NASTY = [
    "",
    " ",
    "\n",
    "'",
    '"',
    "\\",
    "%s",
    "*",
    "$(id)",
    "`id`",
    ";",
    "1; DROP TABLE banned; --",
    "' OR '1'='1",
    "\u212a",  # KELVIN SIGN: lowercases to an ASCII k
    "\u0130",  # I WITH DOT: lowercases to two characters
    "\uff11",  # FULLWIDTH DIGIT ONE
    "\u0661",  # ARABIC-INDIC DIGIT ONE
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\x1b[31m",
    "\udcff",
]
ANY = st.one_of(
    st.text(TEXT, max_size=20),
    RAW,
    st.sampled_from(NASTY),
    st.builds(lambda chunk, times: chunk * times, st.text(TEXT, min_size=1, max_size=3), st.integers(30, 400)),
)
# Positional fields in the structured cases do not look like options (chaos covers those).
ANY_FIELD = ANY.filter(lambda value: not value.startswith("-"))


def _spellings(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    forms = [str(address)]
    if address.version == 6:
        forms += [address.exploded, address.exploded.upper(), str(address).upper()]
    else:
        forms.append(f"{address}/32")
    return st.sampled_from(forms)


def _network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int) -> str:
    return str(ipaddress.ip_network((address, prefix % (address.max_prefixlen + 1)), strict=False))


# A small pool, so bans, unbans and stops meet the same addresses and jails again.
POOL_IPS = [f"192.0.2.{n}" for n in range(1, 9)] + ["2001:db8::1", "2001:db8::/32", "10.0.0.0/8"]
GOOD_IP = st.one_of(
    st.sampled_from(POOL_IPS),
    st.ip_addresses().flatmap(_spellings),
    st.builds(_network, st.ip_addresses(), st.integers(0, 128)),
)
BAD_IP = st.sampled_from(
    [
        *("999.1.1.1", "1.1.1", "01.2.3.4", "1.2.3.4/8", "10.0.0.0/33", "fe80::1%eth0", "1.1.1.1\n2.2.2.2"),
        *("::g", "1.2.3.4 ", "::ffff:1.2.3.4/96", "2001:db8::/129", "1.2.3.4/", "/24", "1.2.3.4/+8"),
    ]
)
IP_BAD = st.one_of(BAD_IP, ANY_FIELD)


def _pool_or_charset(pool: list[str], charset: str, longest: int) -> st.SearchStrategy[str]:
    """Values a jail config would hold, or any run of the documented characters."""
    return st.one_of(st.sampled_from(pool), st.text(st.sampled_from(charset), min_size=1, max_size=longest + 2))


ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PORTS_POOL = [DOVECOT_PORTS, POSTFIX_PORTS, "22", "0:65535", "http, https", " 80 ,\t443"]
PORTS = _pool_or_charset(PORTS_POOL, ALNUM + "_,:.- ", 255)
PROTOCOL = _pool_or_charset(["tcp", "udp", "TCP", "all", "icmp", "tcp,udp", "tcp, udp"], ALNUM[26:] + ", ", 32)
JAIL = _pool_or_charset(["dovecot", "postfix", "Dovecot", "sogo", "sshd"], ALNUM + "_.@:+-", 50)
FAILURES = st.one_of(st.integers(0, 40000).map(str), st.sampled_from(["", "999999999", "0007"]))
TIME_GOOD = st.one_of(
    st.floats(TIME_MIN, TIME_MAX).map(repr),
    st.integers(TIME_MIN, TIME_MAX).map(str),
    st.sampled_from(["1e9", " 1700000000 ", "1_700_000_000", "\u0661\u0667" + "0" * 8, "1700000000.5"]),
)
# Negative times too: argparse takes "-5" as a value and "-1e3" as an unknown option.
TIME_BAD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**33), 2**33).map(str),
    st.sampled_from(["nan", "inf", "-5", "0", str(TIME_MAX + 1), str(TIME_MIN - 1), "86399.4"]),
    ANY_FIELD,
)
HOSTNAMES = st.one_of(st.sampled_from([HOSTNAME, HOSTNAME.upper(), "mail-b.example.test"]), ANY_FIELD)
_SMALL_LINE = st.one_of(
    st.text(TEXT, max_size=60),
    st.binary(max_size=60).map(lambda raw: os.fsdecode(raw.replace(b"\x00", b"\x01"))),
    st.sampled_from(NASTY),
)
# Now and then a huge one (beyond the 32 KiB the column keeps), of any bytes.
_HUGE_LINE = st.builds(
    lambda chunk, times: os.fsdecode((chunk * times).replace(b"\x00", b"\x01")),
    st.binary(min_size=1, max_size=64),
    st.integers(1, 1200),
)
CONFIG_CHOICE = st.sampled_from(["env"] * 8 + ["flag"] * 8 + ["missing", "passwd"])
COMMAND = st.sampled_from(["ban"] * 10 + ["unban"] * 3 + ["start", "stop", "cleanup", "replay", "unban_db"])
SHAPE = st.sampled_from(["whole"] * 18 + ["missing", "extra"])
HOW_MANY = st.integers(0, 3)
HOW_MANY_IPS = st.integers(1, 4)
ODDS = st.integers(0, 7)


def pick(draw: st.DrawFn, good: st.SearchStrategy[str], bad: st.SearchStrategy[str] = ANY_FIELD) -> str:
    """Mostly a valid value (so that many cases get accepted), now and then anything."""
    while True:
        value = draw(bad) if draw(ODDS) == 5 else draw(good)
        if not value.startswith("-"):  # option-like arguments are the chaos cases' business
            return value


@st.composite
def structured(draw: st.DrawFn, config: str) -> Case:
    """A command as docs/helper.md writes it, with any field possibly replaced by anything."""
    argv: list[str] = []
    config_rc = 0
    choice = draw(CONFIG_CHOICE)
    if choice == "flag":
        argv += ["--config", config]
    elif choice == "missing":
        argv += ["--config", config + ".missing"]
        config_rc = 3
    elif choice == "passwd":
        argv += ["--config", "/etc/passwd"]
        config_rc = 3
    hostname = HOSTNAME
    override = draw(HOSTNAMES) if draw(ODDS) == 2 else None
    if override is not None:
        argv += ["--hostname", override]
        hostname = override or HOSTNAME  # an empty override is none
    bad: set[str] = set()
    if not HOSTNAME_RE.fullmatch(hostname):
        bad.add("hostname")

    def result(op: dict[str, Any] | None, parse_ok: bool = True) -> Case:
        if not parse_ok:
            return Case(argv, Expect(2))
        if config_rc:
            return Case(argv, Expect(config_rc))
        return Case(argv, Expect(2, bad) if bad else Expect(0, op=op))

    command = draw(COMMAND)
    shape = draw(SHAPE)
    argv.append(command)
    if command == "ban":
        when = (draw(TIME_BAD) if draw(ODDS) == 3 else draw(TIME_GOOD)) if draw(ODDS) < 3 else None
        if when is not None:
            argv += ["--time", when]
            if option_like(when):  # argparse stops at it: "--time: expected one argument"
                return Case(argv, Expect(2, {"time"}))
        fields = [pick(draw, GOOD_IP, IP_BAD), pick(draw, PORTS), pick(draw, PROTOCOL), pick(draw, JAIL)]
        if shape == "missing":
            argv += fields[: draw(HOW_MANY)]
            return result(None, parse_ok=False)
        argv += fields
        failures = pick(draw, FAILURES) if draw(ODDS) else None
        loglines: list[str] = []
        if failures is not None:
            argv.append(failures)
            for _ in range(draw(HOW_MANY)):
                line = draw(_HUGE_LINE) if draw(ODDS) == 4 else draw(_SMALL_LINE)
                # "--" is argparse's end-of-options marker: argparse's business, not the helper's.
                loglines += [line] if line != "--" else []
            argv += loglines
        ip, ports, protocol, jail = fields
        values = {
            "ip": norm_ip(ip),
            "ports": norm_ports(ports),
            "protocol": norm_protocol(protocol),
            "jail": jail if JAIL_RE.fullmatch(jail) else None,
            "failures": norm_failures(failures or ""),
            "time": norm_time(when) if when else "now",  # an empty --time means now, as none
        }
        bad |= {name for name, value in values.items() if value is None}
        row = {
            "ip": values["ip"],
            "ports": values["ports"],
            "protocol": values["protocol"],
            "jail": jail,
            "hostname": hostname,
            "failures": values["failures"],
            "loglines": b64_loglines(loglines),
            "timestamp": values["time"] if when else None,
        }
        return result({"op": "ban", "row": row})
    if command == "unban":
        only = pick(draw, JAIL) if draw(ODDS) < 2 else None
        if only is not None:
            argv += ["--jail", only]
            if not JAIL_RE.fullmatch(only):
                bad.add("jail")
        ips = [] if shape == "missing" else [pick(draw, GOOD_IP, IP_BAD) for _ in range(draw(HOW_MANY_IPS))]
        argv += ips
        if not ips:
            return result(None, parse_ok=False)
        normal = [norm_ip(ip) for ip in ips]
        if None in normal:
            bad.add("ip")
        return result({"op": "unban", "ips": normal, "jail": only, "hostname": hostname})
    if command in ("start", "stop", "cleanup"):
        if shape == "missing":
            return result(None, parse_ok=False)
        jail = pick(draw, JAIL)
        argv.append(jail)
        if shape == "extra":
            argv.append(draw(ANY_FIELD))
            return result(None, parse_ok=False)
        if not JAIL_RE.fullmatch(jail):
            bad.add("jail")
        return result({"op": "start" if command == "start" else "stop", "jail": jail, "hostname": hostname})
    if shape == "extra":  # replay, unban_db take no arguments
        argv.append(draw(ANY_FIELD))
        return result(None, parse_ok=False)
    return result(None)


CHAOS_WORDS = [
    "ban",
    "unban",
    "start",
    "stop",
    "cleanup",
    "unban_db",
    "replay",
    "--jail",
    "--time",
    "--hostname",
    "--config",
    "--config=",
    "--jail=dovecot",
    "--time=1700000000",
    "--hostname=",
    "-h",
    "--help",
    "-v",
    "--verbose",
    "-",
    "--",
    "-1",
    "0",
    "tcp",
    "dovecot",
    DOVECOT_PORTS,
    "192.0.2.1",
    "2001:db8::1",
]
CHAOS_ARGV = st.lists(st.one_of(st.sampled_from(CHAOS_WORDS), st.sampled_from(CHAOS_WORDS), GOOD_IP, ANY), max_size=10)


def _verbose(argv: Sequence[str]) -> bool:
    """-v asks for tracebacks (docs/helper.md); chaos keeps away from it."""
    return any(re.fullmatch(r"-[a-zA-Z]*v[a-zA-Z]*|--v(e(r(b(o(s(e)?)?)?)?)?)?", arg) for arg in argv)


@st.composite
def chaos(draw: st.DrawFn) -> Case:
    argv = draw(CHAOS_ARGV)
    assume(not _verbose(argv))
    return Case(argv, None)


def _ban(ip: str) -> dict[str, Any]:
    row = {"ip": ip, "ports": "25", "protocol": "tcp", "jail": "dovecot", "hostname": HOSTNAME}
    return {"op": "ban", "row": {**row, "failures": 0, "loglines": "", "timestamp": None}}


# Cases that once went wrong, run first on every run (the bugs the generated cases found).
KNOWN = [
    Case(["start", "dovecot", "\udcff"], Expect(2)),  # a traceback: syslog refused the lone surrogate
    Case(["start", "dovecot", "a\nb"], Expect(2)),  # a refusal over two lines
    Case(["start", "dovecot", "a\x1eb"], Expect(2)),  # RECORD SEPARATOR: a line break to str.splitlines()
    # MariaDB refused the row as an OperationalError: spooled, it held back every later event.
    Case(["ban", "--time", "0", "192.0.2.99", "25", "tcp", "dovecot"], Expect(2, {"time"})),
    Case(["ban", "192.0.2.97", "25", "tcp", "dovecot"], Expect(0, op=_ban("192.0.2.97"))),
    Case(["ban", "192.0.2.98", "25", "\u212a", "dovecot"], Expect(2, {"protocol"})),  # was stored as "k"
    # A traceback: Python 3.11's argparse handed the jail a list for a second "--".
    Case(["ban", "192.0.2.1", "ban", "ban", "--", "--"], None),
    Case(["ban", "192.0.2.1", "25", "--", "--", "dovecot"], Expect(2, {"protocol"})),
]


def with_known(test: Callable[..., None], cases: Sequence[Case]) -> Callable[..., None]:
    """The @given test with these cases as explicit examples (run first, every time)."""
    for case in reversed(cases):
        test = example(case)(test)
    return test


def run_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,  # the same cases on every run: CI is reproducible
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


# --------------------------------------------------------------------------- the tests


@pytest.fixture
def tables(db: Database, host: Host) -> Iterator[Tables]:
    fuzzed = Tables(db, host)
    yield fuzzed
    fuzzed.model.check_all()
    fuzzed.check_untouched()


def _report(kind: str, tables: Tables, started: float) -> None:
    record_figure(
        f"bad input ({kind}, {tables.db.backend}): {tables.cases} cases, {tables.accepted} accepted,"
        f" {tables.rows_checked} rows checked against the model, 0 tracebacks,"
        f" sentinel and schema unchanged, {time.monotonic() - started:.1f} s"
    )


def test_structured_arguments(tables: Tables, worker: Worker, host: Host) -> None:
    started = time.monotonic()

    @run_settings(STRUCTURED)
    @given(structured(str(host.config)))
    def check(case: Case) -> None:
        tables.after(case, worker.run(case.argv, host.config))

    with_known(check, KNOWN)()
    assert tables.cases >= STRUCTURED
    assert tables.accepted > STRUCTURED // 5, "too few accepted cases to say anything about the rows"
    _report("structured", tables, started)


def test_chaos_arguments(tables: Tables, worker: Worker, host: Host) -> None:
    started = time.monotonic()

    @run_settings(CHAOS)
    @given(chaos())
    def check(case: Case) -> None:
        tables.after(case, worker.run(case.argv, host.config))

    with_known(check, [Case(case.argv, None) for case in KNOWN])()
    assert tables.cases >= CHAOS
    _report("chaos", tables, started)


def test_a_real_process_answers_as_main_does(tables: Tables, worker: Worker, host: Host) -> None:
    """The in-process cases stand for the real CLI: the same answers, byte for byte."""
    started = time.monotonic()

    @run_settings(SUBPROCESS)
    @given(st.one_of(structured(str(host.config)), chaos()))
    def check(case: Case) -> None:
        real = run_process(case.argv, host.config)
        tables.after(case, real)
        again = worker.run(case.argv, host.config)  # a repeat changes nothing: every command is idempotent
        check_outcome(again)
        assert (again.rc, as_printed(again.stdout), as_printed(again.stderr)) == (real.rc, real.stdout, real.stderr)
        tables.model.check_counts()

    with_known(check, KNOWN)()
    assert tables.cases >= SUBPROCESS
    _report("real process vs in-process", tables, started)


def test_the_oracle_knows_good_from_bad() -> None:
    """The oracle itself, on the documented examples (a wrong oracle would prove nothing)."""
    assert norm_ip("2001:DB8:0:0:0:0:0:5") == "2001:db8::5"
    assert norm_ip("192.0.2.7/32") == "192.0.2.7"
    assert norm_ip("10.0.0.1/8") is None
    assert norm_ip("fe80::1%eth0") is None
    assert norm_ports(" 80 , 443,\t25") == "80,443,25" and norm_ports("80 443") is None
    assert norm_protocol("TCP") == "tcp" and norm_protocol("\u212a") is None
    assert norm_failures("") == 0 and norm_failures("99999") == FAILURES_MAX and norm_failures("-1") is None
    assert norm_time("1700000000.5") == "2023-11-14 22:13:20"
    assert norm_time("0") is None and norm_time("nan") is None
    assert b64_loglines(["a", "\udcff"]) == base64.b64encode(b"a \xff").decode()
    assert len(base64.b64decode(b64_loglines(["x" * 40000]), validate=True)) == LOGLINES_MAX
    assert _verbose(["ban", "-v"]) and _verbose(["--verb"]) and not _verbose(["--version-x", "-x"])
