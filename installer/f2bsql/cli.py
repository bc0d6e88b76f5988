"""f2bsql-install: detect this host, show the plan, run the bundled playbook, report.

The installer provisions nothing itself (DESIGN.md rule 1): it gathers facts and answers,
then runs playbooks/site.yml (or uninstall.yml) of the package on localhost.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from f2bsql import __version__
from f2bsql.data import data_dir
from f2bsql.detect import DB_NAME, Facts, detect, detect_fail2ban, detect_root
from f2bsql.errors import ExitCode, F2bsqlError, PreconditionError, UsageError
from f2bsql.plan import LABELS, Options, Plan, inventory, make_plan, playbook_vars
from f2bsql.runner import LOG_FILE, RunLog, RunResult, TaskEvent, run_playbook

PROG = "f2bsql-install"
#: An address from TEST-NET-1 (RFC 5737) for the "see it work" commands: it locks nobody out.
TEST_IP = "192.0.2.1"
#: Lines of a task's diff shown in --check without -v (a whole new helper is 1000+ lines).
DIFF_LINES = 25

EPILOG = """\
exit codes:
  0  done (or nothing to do)
  1  the playbook failed, or the plan was not confirmed
  2  bad usage: unknown option or value, unknown jail, backend that contradicts iRedMail
  3  a precondition is missing (not root, no fail2ban, database not reachable …);
     nothing was changed

A log of each run (no passwords) is appended to /var/log/f2bsql-install.log (mode 0600).
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors turned into the project's one error type (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} --help)")


# --------------------------------------------------------------------------- options


def _add_database(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("database")
    group.add_argument(
        "--backend",
        choices=("mysql", "pgsql"),
        help="mysql (MySQL/MariaDB) or pgsql (PostgreSQL); default: the one iRedMail uses, "
        "else an earlier setup's, else the server found on this host",
    )
    group.add_argument("--db-host", metavar="HOST", help="a remote database server (default: this host)")
    group.add_argument("--db-port", metavar="PORT", type=_port, help="its port (default: 3306 / 5432)")
    group.add_argument(
        "--reset-password",
        action="store_true",
        help="give the existing user fail2ban a new generated password (needs admin access to the "
        "database server; the credential file and iRedAdmin-Pro's settings.py get it)",
    )


def _add_scope(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to set up")
    group.add_argument(
        "--jails",
        metavar="A,B",
        type=_jail_list,
        help="the jails whose bans go to SQL (default: every enabled jail)",
    )
    group.add_argument("--no-geoip", dest="geoip", action="store_false", help="no GeoIP country lookup")
    group.add_argument(
        "--no-iredadmin",
        dest="iredadmin",
        action="store_false",
        help="leave iRedAdmin-Pro's settings.py alone",
    )
    group.add_argument(
        "--iredadmin-settings",
        metavar="PATH",
        type=Path,
        help="iRedAdmin-Pro's settings.py (default: /opt/www/iredadmin/settings.py, on FreeBSD "
        "/usr/local/www/iredadmin/settings.py, when present)",
    )
    group.add_argument(
        "--install-missing",
        action="store_true",
        help="install fail2ban and MariaDB from the distro when missing (Debian, Ubuntu, RHEL-like)",
    )


def _add_run(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("how to run")
    group.add_argument("--check", action="store_true", help="show what would change (Ansible --check --diff)")
    group.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    group.add_argument("-v", "--verbose", action="store_true", help="Ansible's own output, tracebacks")
    group.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def _add_uninstall(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("uninstall")
    group.add_argument("--uninstall", action="store_true", help="remove what f2bsql-install set up")
    group.add_argument(
        "--drop-database", action="store_true", help="with --uninstall: drop database fail2ban and its user"
    )


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}")
    return int(value)


def _jail_list(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("empty jail list")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Store fail2ban's bans in an SQL database (iRedMail's how-to), on this host.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_database(parser)
    _add_scope(parser)
    _add_run(parser)
    _add_uninstall(parser)
    return parser


def options_from(args: argparse.Namespace) -> Options:
    if args.drop_database and not args.uninstall:
        raise UsageError("--drop-database only goes with --uninstall")
    if args.uninstall and (args.jails or args.install_missing or args.reset_password):
        raise UsageError("--jails, --install-missing and --reset-password do not go with --uninstall")
    if args.reset_password and args.db_host:
        raise UsageError("--reset-password needs admin access to the database server; with --db-host run it there")
    return Options(
        backend=args.backend,
        db_host=args.db_host,
        db_port=args.db_port,
        jails=args.jails,
        geoip=args.geoip,
        iredadmin=args.iredadmin,
        iredadmin_settings=args.iredadmin_settings,
        check=args.check,
        uninstall=args.uninstall,
        drop_database=args.drop_database,
        install_missing=args.install_missing,
        reset_password=args.reset_password,
    )


# --------------------------------------------------------------------------- commands


class Session:
    """One run: the options, the log, and the terminal."""

    def __init__(self, opts: Options, *, yes: bool, verbose: bool, log: RunLog) -> None:
        self.opts = opts
        self.yes = yes
        self.verbose = verbose
        self.log = log

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.log.line(text)

    def confirm(self, question: str) -> None:
        if self.yes or self.opts.check:
            return
        try:
            answer = input(f"{question} [y/N] ")
        except EOFError:
            answer = ""
        self.log.line(f"{question} -> {answer!r}")
        if answer.strip().lower() not in {"y", "yes"}:
            raise F2bsqlError("not confirmed: nothing was changed (use --yes to skip the question)")

    def progress(self, event: TaskEvent) -> None:
        # Skipped tasks and Ansible's own argument checks are noise unless asked for.
        if not self.verbose and (event.status == "skipped" or "Validating arguments against arg spec" in event.task):
            return
        label = {"changed": "would change" if self.opts.check else "changed"}.get(event.status, event.status)
        print(f"  {label:<12} {event.task}", flush=True)
        # The roles' own news (which action the jails use, what uninstall keeps) is in tasks "Say ...".
        if event.status == "ok" and event.msg and event.task.rpartition(" : ")[2].startswith("Say "):
            for line in event.msg.strip().splitlines():
                self.say(f"  {'':<12} {self.log.scrub(line)}")
        if event.status == "failed" and event.msg:
            print(f"  {'':<12} {self.log.scrub(event.msg.strip().splitlines()[0])}", flush=True)
        if self.opts.check and event.diff.strip():
            lines = event.diff.rstrip().splitlines()
            shown = lines if self.verbose else lines[:DIFF_LINES]
            for line in shown:
                print(f"  {'':<12} {self.log.scrub(line)}")
            if len(shown) < len(lines):
                print(f"  {'':<12} … {len(lines) - len(shown)} more lines (-v shows them all)")

    def run(self, playbook: Path, variables: dict[str, object], what: str, inventory: str = "localhost,") -> RunResult:
        self.say(f"{what}{' (check mode: nothing is changed)' if self.opts.check else ''} …")
        started = time.monotonic()
        result = run_playbook(
            playbook,
            variables,
            check=self.opts.check,
            verbose=self.verbose,
            log=self.log,
            on_event=self.progress,
            inventory=inventory,
        )
        self.log.line(f"{playbook.name} took {time.monotonic() - started:.1f}s")
        if result.returncode != 0:
            failed = result.failed[-1] if result.failed else None
            if failed is not None:
                first = (failed.msg.strip().splitlines() or [""])[0]
                where = f" at '{failed.task}': {first}"
            else:
                errors = [line for line in result.tail if line.startswith(("ERROR", "[ERROR]"))]
                where = f": {(errors or result.tail or ['no output'])[-1]}"
            raise F2bsqlError(
                self.log.scrub(f"{playbook.name} failed{where}; full output: {self.log.path or 'run with -v'}")
            )
        return result


def _show_facts(session: Session, facts: Facts) -> None:
    session.say("Found:")
    for line in facts.lines():
        session.say("  " + line)


def _cmd_install(session: Session, facts: Facts) -> int:
    opts = session.opts
    plan = make_plan(facts, opts)
    if plan.password:
        session.log.add_secret(plan.password)
    session.say()
    for line in plan.lines():
        session.say(line)
    session.say()
    session.confirm("Go ahead?")

    if plan.install:
        variables: dict[str, object] = {"f2bsql_prereq_install": plan.install}
        session.run(Path(__file__).with_name("prerequisites.yml"), variables, "Installing " + ", ".join(plan.install))
        if opts.check:
            session.say("Check mode: the rest can only be checked once these are installed.")
            return ExitCode.OK
        # What was just installed is now part of the facts (jails, server).
        facts = detect(facts.root, backend=plan.backend, db_host=opts.db_host, db_port=opts.db_port)
        plan = make_plan(facts, opts)

    site = data_dir() / "playbooks" / "site.yml"
    result = session.run(site, playbook_vars(plan, opts), "Provisioning", inventory(plan))
    _summary_install(session, plan, result, facts)
    return ExitCode.OK


def _cmd_uninstall(session: Session, facts: Facts) -> int:
    plan = make_plan(facts, session.opts)
    if plan.password:
        session.log.add_secret(plan.password)
    session.say()
    for line in plan.lines():
        session.say(line)
    session.say()
    session.confirm("Remove it?")
    playbook = data_dir() / "playbooks" / "uninstall.yml"
    result = session.run(playbook, playbook_vars(plan, session.opts), "Uninstalling", inventory(plan))
    _say_changes(session, result)
    if not session.opts.check:
        session.say(f"Database {DB_NAME}: {_what_became_of_the_database(plan, result)}")
    return ExitCode.OK


def _what_became_of_the_database(plan: Plan, result: RunResult) -> str:
    """What the run really did to the database, from the tasks that ran (never a promise)."""
    where = f"on {LABELS[plan.backend]}"
    if not plan.drop_database:
        return (
            f"kept {where}, with its credential file {plan.credential_file} "
            f"(drop both with {PROG} --uninstall --drop-database)"
        )
    dropped = [e for e in result.events if e.task.endswith("Drop the database") and e.status == "changed"]
    if dropped:
        return f"dropped {where}, with its user"
    return f"none {where}: nothing was dropped"


def _say_changes(session: Session, result: RunResult) -> None:
    changed = result.changed
    ok = result.stats.get("ok", len(result.events))
    verb = "would change" if session.opts.check else "changed"
    session.say()
    if not changed:
        session.say(f"Nothing {verb}: the host is already as planned ({ok} tasks ok).")
    else:
        session.say(f"{len(changed)} tasks {verb}, {ok} ok:")
        for event in changed:
            session.say(f"  - {event.task}")


def _summary_install(session: Session, plan: Plan, result: RunResult, facts: Facts) -> None:
    _say_changes(session, result)
    if session.opts.check:
        session.say(f"Check mode: nothing was changed. Run without --check to apply; log: {session.log.path}")
        return
    # Ask fail2ban itself which jails now carry the banned_db action.
    after = detect_fail2ban(facts.root)
    sql_jails = sorted([j.name for j in after.jails if j.logs_to_sql] or plan.jails)
    jail = sql_jails[0] if sql_jails else "<jail>"
    select = "SELECT id, ip, jail, hostname, timestamp, remove FROM banned"
    if plan.backend == "mysql":
        query = f"mysql {DB_NAME} -e {shlex.quote(select)}"
    else:
        query = f"su - postgres -c \"psql -d {DB_NAME} -c '{select}'\""
    session.say(f"Credentials of user fail2ban: {plan.credential_file} (0600)")
    session.say(f"Jails logging to SQL: {', '.join(sql_jails)}")
    if plan.iredadmin_settings is not None:
        session.say(f"iRedAdmin-Pro: fail2ban keys set in {plan.iredadmin_settings}")
    session.say("See it work:")
    session.say(f"  fail2ban-client set {jail} banip {TEST_IP}")
    session.say(f"  {query}")
    session.say(f"  fail2ban-client set {jail} unbanip {TEST_IP}")
    session.say(f"Undo: {PROG} --uninstall   (add --drop-database to drop the database too)")
    session.say(f"Log: {session.log.path}")


# --------------------------------------------------------------------------- main


def _log_path() -> Path | None:
    """The run log; F2BSQL_LOG names another file (tests), an empty value turns it off."""
    value = os.environ.get("F2BSQL_LOG")
    if value is None:
        return LOG_FILE
    return Path(value) if value else None


def _run(args: argparse.Namespace) -> int:
    opts = options_from(args)
    if os.geteuid() != 0:
        raise PreconditionError(f"{PROG} must run as root (it reads /root and changes system files)")
    log = RunLog(_log_path(), [])
    try:
        log.line(f"{PROG} {__version__}: {' '.join(sys.argv[1:])}")
        session = Session(opts, yes=args.yes, verbose=args.verbose, log=log)
        facts = detect(detect_root(), backend=opts.backend, db_host=opts.db_host, db_port=opts.db_port)
        for backend in facts.backends.values():
            if backend.credential is not None:
                log.add_secret(backend.credential.password)
        panel_password = facts.iredmail.iredadmin_fail2ban.get("fail2ban_db_password")
        if isinstance(panel_password, str):
            log.add_secret(panel_password)
        _show_facts(session, facts)
        return _cmd_uninstall(session, facts) if opts.uninstall else _cmd_install(session, facts)
    except F2bsqlError as exc:
        log.line(f"error (exit {int(exc.exit_code)}): {exc.message}")
        raise
    finally:
        log.close()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in arguments or "--verbose" in arguments
    try:
        args = build_parser().parse_args(arguments)
        return _run(args)
    except F2bsqlError as exc:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place that turns a bug into one line
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: unexpected error: {exc} (run with -v for the traceback)", file=sys.stderr)
        return int(ExitCode.FAILED)
