"""f2bsql-install: detection parsers, plan rules, CLI exit codes, packaging, and (slow) end to end.

The parsers read fixture files in tests/fixtures/installer/; CLI tests run the real program
(`python -m f2bsql`) as a subprocess; detection runs against fixture trees through
F2BSQL_ROOT. The slow tests build the wheel, install it into a fresh venv and provision this
machine's MariaDB and PostgreSQL with it.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aside import require_bare_machine
from testbed import FIXTURE_VARS, fixture_playbook, record_figure

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "installer"
sys.path.insert(0, str(REPO / "installer"))

from f2bsql import detect, plan  # noqa: E402 - the package lives under installer/
from f2bsql.errors import ExitCode, F2bsqlError, PreconditionError, UsageError  # noqa: E402
from f2bsql.runner import RunLog, private_vars_file, run_playbook  # noqa: E402

# Provisions this machine: one pytest-xdist lane with the other such tests (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("machine")


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("name", "os_id", "version", "family"),
    [
        ("debian12", "debian", "12", "debian"),
        ("ubuntu2404", "ubuntu", "24.04", "debian"),
        ("rocky9", "rocky", "9.4", "redhat"),
    ],
)
def test_os_release(name: str, os_id: str, version: str, family: str) -> None:
    values = detect.parse_os_release(read(f"os-release/{name}"))
    assert values["ID"] == os_id
    assert values["VERSION_ID"] == version
    assert detect.os_family(values["ID"], values.get("ID_LIKE", "")) == family


def test_os_family_of_the_bsds() -> None:
    assert detect.os_family("OpenBSD") == "openbsd"
    assert detect.os_family("FreeBSD") == "freebsd"


def test_fail2ban_dump_gives_enabled_jails_with_their_ports() -> None:
    jails = {j.name: j for j in detect.parse_fail2ban_dump(read("fail2ban-d-iredmail.txt"))}
    assert list(jails) == ["sshd", "postfix", "dovecot"]  # recidive is disabled
    assert jails["dovecot"].port == "80,443,25,587,465,110,995,143,993,4190"
    assert jails["dovecot"].protocol == "tcp"
    assert jails["sshd"].port == "22"
    assert jails["postfix"].actions == ("iptables-multiport", "banned_db")
    assert jails["postfix"].logs_to_sql
    assert not jails["dovecot"].logs_to_sql


def test_fail2ban_dump_ignores_log_lines_and_garbage() -> None:
    text = "2026-01-01 WARNING something\n['add', 'x', 'auto']\n[not python\n['start', 'x']\n"
    assert [j.name for j in detect.parse_fail2ban_dump(text)] == ["x"]


def test_fail2ban_status_of_a_running_server() -> None:
    assert detect.parse_fail2ban_status(read("fail2ban-status.txt")) == ["dovecot", "postfix", "sshd"]
    assert detect.parse_fail2ban_status("Status\n|- Number of jail:\t0\n`- Jail list:\t\n") == []


def test_mysql_option_files() -> None:
    cnf = detect.parse_mysql_option_file(read("root-iredmail-ldap/root/.my.cnf-fail2ban"))
    assert cnf == {"host": "127.0.0.1", "port": "3306", "user": "fail2ban", "password": "cnf#Secret-1x"}
    # !includedir and options without a value, as Debian's and iRedMail's files have them
    root = detect.parse_mysql_option_file(read("root-iredmail-ldap/root/.my.cnf"))
    assert root == {"user": "root", "password": "rootpw"}
    assert detect.parse_mysql_option_file("[mysqld]\nuser=mysql\n") == {}
    # configparser's own messages quote the refused line: here the password's.
    for text, line in (("!include /x\npassword = pw-in-line\n[client]\n", 2), ("[client]\n= pw-in-line\n", 2)):
        with pytest.raises(PreconditionError) as refused:
            detect.parse_mysql_option_file(text, source="/root/.my.cnf")
        assert f"/root/.my.cnf: line {line} " in refused.value.message and "pw-in-line" not in refused.value.message


def test_pgpass_escapes_and_fields() -> None:
    entries = detect.parse_pgpass(read("root-pgsql/var/lib/postgresql/.pgpass"))
    assert entries == [
        ("*", "*", "*", "vmailadmin", "not-this-one"),
        ("127.0.0.1", "5432", "fail2ban", "fail2ban", "pg:secret\\x"),
    ]


def test_iredadmin_settings_are_read_never_executed() -> None:
    settings = detect.parse_python_settings(read("root-iredmail-ldap/opt/www/iredadmin/settings.py"))
    assert settings["backend"] == "ldap"
    assert settings["fail2ban_db_password"] == "panel-secret"
    assert settings["fail2ban_enabled"] is True
    assert "LOCAL_SETTINGS" not in settings  # an expression, not a literal: skipped
    assert detect.parse_python_settings("this is not python") == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("MYSQL", "mysql"), ("MARIADB", "mysql"), ("PGSQL", "pgsql"), ("OPENLDAP", "ldap"), ("x", None)],
)
def test_iredmail_backend_names(value: str, expected: str | None) -> None:
    assert detect.normalise_iredmail_backend(value) == expected


def test_iredmail_installer_config() -> None:
    assert detect.parse_iredmail_config(read("root-pgsql/root/iRedMail-1.7.1/config")) == "pgsql"
    assert detect.parse_iredmail_config("export STORAGE_BASE_DIR='/var/vmail'\n") is None


def test_passwd_home() -> None:
    text = read("root-pgsql/etc/passwd")
    assert detect.parse_passwd_home(text, ("_postgresql", "postgres")) == ("postgres", "/var/lib/postgresql")
    assert detect.parse_passwd_home(text, ("nobody",)) is None


# --------------------------------------------------------------------------- detection of fixture trees


def test_detect_iredmail_ldap_host() -> None:
    facts = detect.detect(FIXTURES / "root-iredmail-ldap")
    assert facts.os.family == "debian"
    assert facts.iredmail.release == "1.6.8"
    assert facts.iredmail.backend == "ldap"
    assert facts.iredmail.sql_backend == "mysql"  # ldap hosts keep fail2ban in MariaDB
    assert facts.iredmail.iredadmin_settings == FIXTURES / "root-iredmail-ldap/opt/www/iredadmin/settings.py"
    credential = facts.backends["mysql"].credential
    assert credential is not None
    assert credential.password == "cnf#Secret-1x"
    assert "secret" not in repr(credential)  # a password never prints
    assert not facts.fail2ban.present
    assert all("secret" not in line for line in facts.lines())


def test_detect_pgsql_host_from_iredmail_config() -> None:
    facts = detect.detect(FIXTURES / "root-pgsql")
    assert facts.os.family == "redhat"
    assert facts.iredmail.sql_backend == "pgsql"
    assert facts.iredmail.backend_source.endswith("iRedMail-1.7.1/config")
    credential = facts.backends["pgsql"].credential
    assert credential is not None
    assert credential.password == "pg:secret\\x"
    assert credential.port == 5432


def test_detect_empty_root(tmp_path: Path) -> None:
    facts = detect.detect(tmp_path)
    assert not facts.fail2ban.present
    assert not facts.iredmail.is_iredmail
    assert facts.backends["mysql"].credential is None


# --------------------------------------------------------------------------- plan rules


def facts_with_fail2ban(
    root: Path, *, reachable: str = "mysql", jails: tuple[str, ...] = ("sshd", "dovecot"), user: bool = True
) -> detect.Facts:
    """Fixture facts as if fail2ban ran these jails and one database server answered."""
    facts = detect.detect(root)
    f2b = detect.Fail2banInfo(
        "/usr/bin/fail2ban-client", root / "etc/fail2ban", tuple(detect.Jail(j, (), "25", "tcp") for j in jails)
    )
    backends = {
        name: dataclasses.replace(b, installed=True, reachable=name == reachable, has_database=True, has_user=user)
        for name, b in facts.backends.items()
    }
    return dataclasses.replace(facts, fail2ban=f2b, backends=backends)


def test_plan_reuses_the_existing_password_and_follows_iredmail() -> None:
    facts = facts_with_fail2ban(FIXTURES / "root-iredmail-ldap")
    p = plan.make_plan(facts, plan.Options())
    assert p.backend == "mysql"
    assert p.password == "cnf#Secret-1x"
    assert "kept" in p.password_source
    assert p.jails == ["sshd", "dovecot"]
    assert p.iredadmin_settings == facts.iredmail.iredadmin_settings
    assert any("differs" in n for n in p.notes)  # the panel's password is not the file's
    variables = plan.playbook_vars(p, plan.Options())
    assert variables[plan.VAR_PASSWORD] == "cnf#Secret-1x"
    assert all("secret" not in line for line in p.lines())


def test_plan_without_any_password_lets_the_role_generate_one(tmp_path: Path) -> None:
    facts = facts_with_fail2ban(tmp_path, user=False)
    p = plan.make_plan(facts, plan.Options(iredadmin=False))
    assert p.password is None
    assert plan.VAR_PASSWORD not in plan.playbook_vars(p, plan.Options())


def test_plan_refuses_to_rotate_an_unknown_password(tmp_path: Path) -> None:
    facts = facts_with_fail2ban(tmp_path)  # user fail2ban exists, no credential file
    with pytest.raises(PreconditionError, match=r"its password is not on this host: write it to /root/\.my\.cnf"):
        plan.make_plan(facts, plan.Options(iredadmin=False))


def test_reset_password_is_the_way_out_of_an_unknown_password(tmp_path: Path) -> None:
    facts = facts_with_fail2ban(tmp_path)  # user fail2ban exists (kept by an uninstall), no password here
    with pytest.raises(PreconditionError, match="--reset-password"):
        plan.make_plan(facts, plan.Options(iredadmin=False))
    opts = plan.Options(iredadmin=False, reset_password=True)
    p = plan.make_plan(facts, opts)
    assert p.password is None and "--reset-password" in p.password_source
    assert plan.playbook_vars(p, opts)["f2bsql_database_update_password"] is True
    unreachable = facts_with_fail2ban(tmp_path, reachable="none")
    with pytest.raises(PreconditionError, match="is not reachable"):  # an admin login is needed to reset it
        plan.make_plan(unreachable, opts)


def test_drop_database_acts_where_the_database_is(tmp_path: Path) -> None:
    facts = facts_with_fail2ban(tmp_path)  # both servers hold a database fail2ban
    with pytest.raises(UsageError, match="both MySQL/MariaDB and PostgreSQL hold a database fail2ban"):
        plan.make_plan(facts, plan.Options(uninstall=True, drop_database=True))
    only_pgsql = {
        "mysql": dataclasses.replace(facts.backends["mysql"], has_database=False),
        "pgsql": dataclasses.replace(facts.backends["pgsql"], reachable=True),
    }
    dropping = plan.Options(uninstall=True, drop_database=True)
    assert plan.make_plan(dataclasses.replace(facts, backends=only_pgsql), dropping).backend == "pgsql"
    none = {name: dataclasses.replace(b, has_database=False, reachable=True) for name, b in facts.backends.items()}
    p = plan.make_plan(dataclasses.replace(facts, backends=none), plan.Options(uninstall=True, drop_database=True))
    assert any("nothing to drop" in note for note in p.notes)


def test_uninstall_reports_what_happened_to_the_database(tmp_path: Path) -> None:
    from f2bsql.cli import _what_became_of_the_database
    from f2bsql.runner import RunResult, TaskEvent

    facts = facts_with_fail2ban(tmp_path, user=False)
    dropping = plan.make_plan(facts, plan.Options(uninstall=True, drop_database=True, backend="mysql"))
    dropped = TaskEvent("changed", "f2bsql_database : Drop the database", "", "")
    not_there = TaskEvent("ok", "f2bsql_database : Drop the database", "", "")
    assert _what_became_of_the_database(dropping, RunResult(0, [dropped], {}, [])).startswith("dropped")
    assert "nothing was dropped" in _what_became_of_the_database(dropping, RunResult(0, [not_there], {}, []))
    keeping = plan.make_plan(facts, plan.Options(uninstall=True))
    assert "kept" in _what_became_of_the_database(keeping, RunResult(0, [], {}, []))


def test_plan_refuses_a_password_the_credential_files_cannot_hold(tmp_path: Path) -> None:
    facts = facts_with_fail2ban(FIXTURES / "root-iredmail-ldap")
    mysql = facts.backends["mysql"]
    assert mysql.credential is not None
    odd = dataclasses.replace(mysql, credential=dataclasses.replace(mysql.credential, password="it's secret"))
    with pytest.raises(PreconditionError, match="quotes, backslashes or white space") as info:
        plan.make_plan(dataclasses.replace(facts, backends={**facts.backends, "mysql": odd}), plan.Options())
    assert "secret" not in str(info.value)


def test_plan_rejects_a_backend_against_iredmail() -> None:
    facts = facts_with_fail2ban(FIXTURES / "root-iredmail-ldap", reachable="pgsql")
    with pytest.raises(UsageError, match="differs from iRedMail's backend"):
        plan.make_plan(facts, plan.Options(backend="pgsql"))
    assert plan.make_plan(facts, plan.Options(backend="pgsql", iredadmin=False)).backend == "pgsql"


def test_plan_rejects_unknown_jails_before_anything_else(tmp_path: Path) -> None:
    facts = facts_with_fail2ban(tmp_path, reachable="none")
    with pytest.raises(UsageError, match="not an enabled jail: nope"):
        plan.make_plan(facts, plan.Options(jails=("sshd", "nope")))
    with pytest.raises(PreconditionError, match="not reachable"):
        plan.make_plan(facts, plan.Options(jails=("sshd",)))


def test_plan_selected_jails_in_order_without_duplicates(tmp_path: Path) -> None:
    facts = facts_with_fail2ban(tmp_path, user=False)
    p = plan.make_plan(facts, plan.Options(jails=("dovecot", "sshd", "dovecot")))
    assert p.jails == ["dovecot", "sshd"]


def test_plan_missing_pieces(tmp_path: Path) -> None:
    facts = detect.detect(tmp_path)
    with pytest.raises(PreconditionError, match="fail2ban is not installed"):
        plan.make_plan(facts, plan.Options())
    debian = dataclasses.replace(facts, os=detect.OsInfo("debian", "12", "Debian 12", "debian"))
    p = plan.make_plan(debian, plan.Options(install_missing=True))
    assert p.install == ["fail2ban", "mariadb"]
    with pytest.raises(PreconditionError, match="install PostgreSQL first"):
        plan.make_plan(debian, plan.Options(install_missing=True, backend="pgsql"))
    with pytest.raises(PreconditionError, match="Debian, Ubuntu and RHEL"):
        plan.make_plan(facts, plan.Options(install_missing=True))  # an unknown OS


def test_errors_carry_their_exit_code() -> None:
    assert UsageError("x").exit_code == ExitCode.USAGE == 2
    assert PreconditionError("x").exit_code == ExitCode.PRECONDITION == 3
    assert F2bsqlError("x").exit_code == ExitCode.FAILED == 1


# --------------------------------------------------------------------------- runner


def test_vars_file_is_private_and_removed_even_on_failure() -> None:
    with pytest.raises(RuntimeError), private_vars_file({"p": "s3cret"}) as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        kept = path
        raise RuntimeError
    assert not kept.exists()
    assert not kept.parent.exists()


def test_run_log_masks_secrets_and_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "install.log"
    path.write_text("")
    path.chmod(0o644)
    log = RunLog(path, ["s3cret"])
    log.line("password is s3cret")
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "s3cret" not in path.read_text()
    assert "********" in path.read_text()


def test_runner_reports_each_task_and_hides_no_log_results(tmp_path: Path) -> None:
    """A real ansible-playbook run through the installer's runner and callback plugin."""
    marker = tmp_path / "marker"
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        f"""
- hosts: all
  gather_facts: false
  tasks:
    - name: Read only
      ansible.builtin.command: "true"
      changed_when: false
    - name: Make a file
      ansible.builtin.copy:
        dest: {marker}
        content: "{{{{ f2bsql_test_secret }}}}"
        mode: "0600"
      no_log: true
    - name: Never
      ansible.builtin.command: "false"
      when: false
"""
    )
    log_path = tmp_path / "run.log"
    log = RunLog(log_path, ["pw-4711"])
    seen: list[str] = []
    result = run_playbook(
        playbook,
        {"f2bsql_test_secret": "pw-4711"},
        check=False,
        verbose=False,
        log=log,
        on_event=lambda e: seen.append(f"{e.status} {e.task}"),
    )
    log.close()
    assert result.returncode == 0
    assert seen == ["ok Read only", "changed Make a file", "skipped Never"]
    assert result.stats["changed"] == 1
    assert marker.read_text() == "pw-4711"
    assert "pw-4711" not in log_path.read_text()
    assert "PLAY RECAP" in log_path.read_text()  # Ansible's own output is in the log
    again = run_playbook(
        playbook, {"f2bsql_test_secret": "pw-4711"}, check=True, verbose=False, log=RunLog(None, []), on_event=print
    )
    assert again.changed == []


# --------------------------------------------------------------------------- the command line


def run_cli(
    *args: str, env: dict[str, str] | None = None, user: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO / "installer"), "F2BSQL_LOG": "", **(env or {})}
    cmd = [sys.executable, "-m", "f2bsql", *args]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", "env", f"PYTHONPATH={REPO / 'installer'}", *cmd]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=environ, cwd="/", input=stdin, timeout=120, check=False
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("f2bsql-install: error: ")
    assert text in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_help_documents_exit_codes() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for option in (
        "--backend",
        "--db-host",
        "--jails",
        "--no-geoip",
        "--no-iredadmin",
        "--check",
        "--uninstall",
        "--drop-database",
        "--yes",
        "--install-missing",
        "exit codes:",
    ):
        assert option in proc.stdout


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--backend", "oracle"], "invalid choice: 'oracle'"),
        (["--db-port", "99999"], "not a port number"),
        (["--jails", ","], "empty jail list"),
        (["--drop-database"], "--drop-database only goes with --uninstall"),
        (["--uninstall", "--jails", "sshd"], "do not go with --uninstall"),
    ],
)
def test_bad_usage_exits_2(args: list[str], text: str) -> None:
    assert_one_line_error(run_cli(*args), 2, text)


def test_not_root_exits_3() -> None:
    proc = run_cli("--yes", user="nobody")
    assert_one_line_error(proc, 3, "must run as root")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs detection as root")


@needs_root
def test_no_fail2ban_exits_3_and_logs(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    proc = run_cli("--yes", env={"F2BSQL_ROOT": str(tmp_path / "empty"), "F2BSQL_LOG": str(log)})
    assert_one_line_error(proc, 3, "fail2ban is not installed")
    assert "fail2ban:    not installed" in proc.stdout  # what was found is shown first
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "error (exit 3)" in log.read_text()


@needs_root
def test_backend_against_iredmail_exits_2() -> None:
    proc = run_cli("--yes", "--backend", "pgsql", env={"F2BSQL_ROOT": str(FIXTURES / "root-iredmail-ldap")})
    assert_one_line_error(proc, 2, "differs from iRedMail's backend (ldap")
    assert "secret" not in proc.stdout + proc.stderr


@needs_root
def test_unknown_jail_exits_2(fail2ban_root: Path) -> None:
    proc = run_cli("--yes", "--jails", "dovecot,nope", env={"F2BSQL_ROOT": str(fail2ban_root)})
    assert_one_line_error(proc, 2, "not an enabled jail: nope (enabled: ")


@needs_root
@pytest.mark.parametrize("backend", ["mysql", "pgsql"])
def test_database_down_exits_3(backend: str) -> None:
    # A remote server whose port is closed: TEST-NET-1 would hang; a closed loopback port refuses.
    proc = run_cli("--yes", "--no-iredadmin", "--backend", backend, "--db-host", "127.0.0.2", "--db-port", "9")
    assert_one_line_error(proc, 3, "is not reachable")


@needs_root
def test_verbose_shows_the_traceback() -> None:
    proc = run_cli("-v", "--yes", env={"F2BSQL_ROOT": "/nonexistent"})
    assert proc.returncode == 3
    assert "Traceback" in proc.stderr


@needs_root
def test_without_yes_the_plan_must_be_confirmed(fail2ban_root: Path) -> None:
    proc = run_cli("--jails", "dovecot", env={"F2BSQL_ROOT": str(fail2ban_root)}, stdin="n\n")
    # The fixture tree has no database behind it: detection says so before any question.
    assert proc.returncode == 3
    assert "Go ahead?" not in proc.stdout


@needs_root
def test_install_missing_runs_the_bundled_prerequisites_playbook(tmp_path: Path) -> None:
    """A Debian tree without fail2ban or MariaDB: --install-missing --check plans and checks their
    installation through prerequisites.yml (on this machine both are installed: nothing to do)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    shutil.copy(FIXTURES / "os-release/debian12", root / "etc/os-release")
    proc = run_cli("--install-missing", "--check", "--no-iredadmin", env={"F2BSQL_ROOT": str(root)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "install from the distro first: fail2ban, mariadb" in proc.stdout
    assert "Installing fail2ban, mariadb (check mode" in proc.stdout
    assert "Install the missing packages" in proc.stdout
    assert "the rest can only be checked once these are installed" in proc.stdout
    without = run_cli("--check", "--no-iredadmin", env={"F2BSQL_ROOT": str(root)})
    assert_one_line_error(without, 3, "or run again with --install-missing")


@pytest.fixture
def fail2ban_root(tmp_path: Path) -> Path:
    """A host tree whose fail2ban config has iRedMail-like jails (read with fail2ban-client -c)."""
    if shutil.which("fail2ban-client") is None or not Path("/etc/fail2ban/jail.conf").is_file():
        pytest.fail("fail2ban is not installed on this machine (scripts/setup-dev-machine installs it)")
    root = tmp_path / "root"
    shutil.copytree("/etc/fail2ban", root / "etc/fail2ban")
    for f in (root / "etc/fail2ban/jail.d").iterdir():
        f.unlink()
    logs = tmp_path / "logs"
    logs.mkdir()
    for jail, filt in (("dovecot", "dovecot"), ("postfix", "postfix")):
        (logs / f"{jail}.log").touch()
        (root / f"etc/fail2ban/jail.d/{jail}.local").write_text(
            f"[{jail}]\nenabled = true\nfilter = {filt}\nlogpath = {logs}/{jail}.log\nbackend = polling\n"
            f'action = dummy[name={jail}, port="25,587", protocol=tcp]\n'
        )
    shutil.copy(FIXTURES / "os-release/debian12", root / "etc/os-release")
    return root


# --------------------------------------------------------------------------- packaging


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "-w", str(out), "--no-deps", "-q"],
        check=True,
        cwd=out,
        timeout=600,
    )
    return next(out.glob("f2bsql-*.whl"))


def test_wheel_carries_the_playbook_tree(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "f2bsql/cli.py",
        "f2bsql/ansible.cfg",
        "f2bsql/prerequisites.yml",
        "f2bsql/ansible_plugins/callback/f2bsql_events.py",
        "f2bsql/_data/templates/banned_db.conf.j2",
        "f2bsql/_data/files/fail2ban_banned_db",
        "f2bsql/_data/files/sql/fail2ban.mysql",
        "f2bsql/_data/files/sql/fail2ban.pgsql",
    }
    assert expected <= names
    # every file of the repo's top-level trees, in the same layout
    for top in ("roles", "playbooks", "templates", "files"):
        for path in (REPO / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert f"f2bsql/_data/{path.relative_to(REPO)}" in names
    assert not any("__pycache__" in n for n in names)


# --------------------------------------------------------------------------- end to end (slow)
#
# These provision this machine for real, from the wheel installed into a fresh venv, on the
# fixture the Molecule scenarios use (molecule/resources/prepare.yml): a host laid out as
# iRedMail's installer leaves it, with its SQL integration (banned_db in every jail file, its
# helper, action, cron line, credential file, a `fail2ban` database with iRedMail's schema and
# rows), a dummy firewall action, and iRedAdmin-Pro's settings.py. The machine is put back with
# molecule/resources/cleanup.yml (uninstall, drop, restore). The fixture's lock keeps them and a
# Molecule scenario from holding the machine at the same time.


#: The fixture's enabled jails, and the port list of its dovecot (molecule/resources/vars/main.yml).
FIXTURE_JAILS = tuple(FIXTURE_VARS["f2bsql_molecule_jails"])
DOVECOT_PORTS = str(FIXTURE_VARS["f2bsql_molecule_dovecot_ports"])
SETTINGS = Path("/opt/www/iredadmin/settings.py")
#: What iRedMail's integration put on the host (the fixture's), by backend: f2bsql replaces them.
_HELPER_AND_ACTION = ["/usr/local/bin/fail2ban_banned_db", "/etc/fail2ban/action.d/banned_db.conf"]
ORIGINALS = {
    "mysql": [*_HELPER_AND_ACTION, "/root/.my.cnf-fail2ban"],
    "pgsql": [*_HELPER_AND_ACTION, "/var/lib/postgresql/.pgpass"],
}
IREDMAIL_CRON = "* * * * * /bin/bash /usr/local/bin/fail2ban_banned_db unban_db"
#: What admins and packages run; each is followed by the consistency check and a new ban.
LIFECYCLE: list[tuple[str, list[list[str]]]] = [
    ("fail2ban-client reload", [["fail2ban-client", "reload"]]),
    ("fail2ban-client reload dovecot", [["fail2ban-client", "reload", "dovecot"]]),
    ("fail2ban-client reload --restart dovecot", [["fail2ban-client", "reload", "--restart", "dovecot"]]),
    ("fail2ban-client restart", [["fail2ban-client", "restart"]]),
    ("service fail2ban restart", [["service", "fail2ban", "restart"]]),
    ("service fail2ban stop, start", [["service", "fail2ban", "stop"], ["service", "fail2ban", "start"]]),
    ("fail2ban-client flushlogs", [["fail2ban-client", "flushlogs"]]),
]


def sh(*cmd: str, check: bool = True, timeout: int = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout, **kw)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """f2bsql-install of the wheel, in a fresh venv of the distro's python (not the source tree)."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    sh("/usr/bin/python3", "-m", "venv", str(venv))
    sh(str(venv / "bin/pip"), "install", "-q", str(wheel), timeout=900)
    return venv / "bin/f2bsql-install"


#: The fixture's lock owner (molecule/resources/tasks/lock.yml): prepare waits while a Molecule
#: run holds the machine, and cleanup never undoes another run's fixture. Its process is this
#: one: should it be killed, the next run adopts the lock and puts the machine back.
FIXTURE_OWNER = f"f2bsql-install-e2e-{os.getpid()}"


def molecule_playbook(name: str, *extra: str) -> None:
    proc = fixture_playbook(name, FIXTURE_OWNER, *extra)  # prepare waits while another run holds the fixture
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"


@pytest.fixture
def iredmail_host(installed: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """This machine as an iRedMail host with its integration (Molecule's fixture); put back after."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests provision this machine: run them as root")
    for tool in ("fail2ban-client", "mysql", "psql", "crontab"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (scripts/setup-dev-machine installs it)")
    backend = request.param
    require_bare_machine()  # before the finally below, which drops the machine's database
    try:
        molecule_playbook("prepare.yml", "-e", f"f2bsql_database_backend={backend}")
        yield installed
    finally:
        molecule_playbook("cleanup.yml", "-e", f"f2bsql_database_backend={backend}", "-e", "f2bsql_database_drop=true")


def installer(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed f2bsql-install from a directory outside the repository."""
    proc = sh(str(exe), *args, check=False, timeout=900, cwd="/tmp")
    print(proc.stdout, proc.stderr)
    return proc


def sql(backend: str, query: str) -> list[str]:
    if backend == "mysql":
        out = sh("mysql", "-N", "-B", "fail2ban", "-e", query).stdout
    else:
        out = sh(
            "runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-q", "-d", "fail2ban", "-c", query
        ).stdout
    return [line.replace("\t", "|") for line in out.splitlines() if line.strip()]


def cron_lines() -> list[str]:
    return [line for line in sh("crontab", "-l", "-u", "root", check=False).stdout.splitlines() if "unban_db" in line]


def banned_in_fail2ban(jail: str) -> str:
    return sh("fail2ban-client", "status", jail).stdout.split("Banned IP list:", 1)[1]


def running_jails() -> list[str]:
    done = sh("fail2ban-client", "status", check=False)
    return detect.parse_fail2ban_status(done.stdout) if done.returncode == 0 else []


def live_bans() -> set[tuple[str, str]]:
    """(jail, address) of every ban the machine's fail2ban holds: one `fail2ban-client banned`."""
    listing = ast.literal_eval(sh("fail2ban-client", "banned").stdout.strip())
    return {(jail, ip) for entry in listing for jail, ips in entry.items() for ip in ips}


def host_rows(backend: str) -> set[tuple[str, str]]:
    """(jail, address) of this host's rows (iRedMail's rows of its earlier host name left aside)."""
    me = socket.gethostname()
    rows = (line.split("|") for line in sql(backend, "SELECT jail, ip, hostname FROM banned"))
    return {(jail, ip) for jail, ip, host in rows if host == me}


def banned_db_actions() -> dict[str, int]:
    """How many actions named banned_db each running jail has."""
    counts = {}
    for jail in running_jails():
        listed = sh("fail2ban-client", "get", jail, "actions").stdout.splitlines()[-1]
        counts[jail] = sum(name.strip() == "banned_db" for name in listed.split(","))
    return counts


def fingerprint(paths: list[str]) -> dict[str, tuple[bytes, int, int, int]]:
    """Content, mode and owner of each file that exists."""
    found = {}
    for path in map(Path, paths):
        if path.exists():
            info = path.stat()
            found[str(path)] = (path.read_bytes(), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    return found


def credential_password(backend: str) -> str:
    """The password of user fail2ban in the credential file the helper reads."""
    path = Path(ORIGINALS[backend][2])
    if backend == "mysql":
        return detect.parse_mysql_option_file(path.read_text())["password"]
    return next(entry[4] for entry in detect.parse_pgpass(path.read_text()) if entry[3] == "fail2ban")


def database_exists(backend: str) -> bool:
    if backend == "mysql":
        return sh("mysql", "-N", "-e", "SHOW DATABASES LIKE 'fail2ban'").stdout.strip() != ""
    query = "SELECT 1 FROM pg_database WHERE datname = 'fail2ban'"
    return sh("runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-c", query).stdout.strip() == "1"


def howto_tests(backend: str) -> None:
    """The how-to's Tests section, by hand commands, on its jail `dovecot`."""
    jail = "dovecot"
    sh("fail2ban-client", "set", jail, "banip", "192.0.2.1", "192.0.2.2")
    wait_until(lambda: len(sql(backend, "SELECT ip FROM banned WHERE jail = 'dovecot'")) == 2, "two rows")
    rows = sql(backend, "SELECT ip, ports, protocol, jail, remove FROM banned WHERE jail = 'dovecot' ORDER BY ip")
    assert rows == [f"192.0.2.{i}|{DOVECOT_PORTS}|tcp|{jail}|0" for i in (1, 2)]

    sh("fail2ban-client", "set", jail, "unbanip", "192.0.2.1")
    wait_until(lambda: sql(backend, "SELECT ip FROM banned WHERE jail = 'dovecot'") == ["192.0.2.2"], "the row to go")

    sql_update = "UPDATE banned SET remove = 1 WHERE ip = '192.0.2.2'"
    if backend == "mysql":
        sh("mysql", "fail2ban", "-e", sql_update)
    else:
        sh("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-d", "fail2ban", "-c", sql_update)
    [line] = cron_lines()
    sh("sh", "-c", line.split(None, 5)[5])  # what root's cron runs every minute
    assert sql(backend, "SELECT ip FROM banned WHERE jail = 'dovecot'") == []
    assert "192.0.2.2" not in banned_in_fail2ban(jail)


def lifecycle(backend: str) -> list[str]:
    """Every step of LIFECYCLE on the machine's fail2ban, each checked: one banned_db per jail,
    this host's rows = fail2ban's bans, the next ban recorded. Returns the table's rows."""
    table = []
    for number, (step, commands) in enumerate(LIFECYCLE, start=1):
        for command in commands:
            sh(*command, timeout=120)
        wait_until(lambda: sorted(running_jails()) == list(FIXTURE_JAILS), f"every jail after {step}", timeout=60)
        counts = banned_db_actions()
        assert set(counts.values()) == {1}, f"after {step}: banned_db actions per jail {counts}"
        wait_until(lambda: host_rows(backend) == live_bans(), f"rows = bans after {step}", timeout=60)
        ip = f"198.51.100.{number}"
        began = time.monotonic()
        sh("fail2ban-client", "set", "dovecot", "banip", ip)
        wait_until(lambda: ("dovecot", ip) in host_rows(backend), f"the ban after {step}")  # noqa: B023
        took = time.monotonic() - began
        assert host_rows(backend) == live_bans()
        table.append(f"{step}: {len(live_bans())} bans = rows, one banned_db in each of {len(counts)} jails,"
                     f" next ban recorded in {took:.1f} s")  # fmt: skip
    return table


@pytest.mark.slow
@pytest.mark.parametrize("iredmail_host", ["mysql", "pgsql"], indirect=True)
def test_end_to_end(iredmail_host: Path, request: pytest.FixtureRequest) -> None:
    exe = iredmail_host
    backend = request.node.callspec.params["iredmail_host"]
    # iRedAdmin-Pro of the fixture runs on MySQL: a PostgreSQL fail2ban database is for hosts without it
    extra = ["--backend", backend] + (["--no-iredadmin"] if backend == "pgsql" else [])
    settings_before = SETTINGS.read_text()
    originals = fingerprint(ORIGINALS[backend])
    assert len(originals) == 3, "the fixture lacks iRedMail's integration"
    iredmail_password = credential_password(backend)
    if backend == "pgsql":
        assert_one_line_error(installer(exe, "--yes", "--backend", "pgsql"), 2, "differs from iRedMail's backend")

    # --check on the iRedMail host changes nothing
    proc = installer(exe, "--check", *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "would change" in proc.stdout
    assert fingerprint(ORIGINALS[backend]) == originals
    assert not Path("/etc/fail2ban/jail.d/zz-f2bsql.local").exists()
    assert cron_lines() == [IREDMAIL_CRON]
    assert SETTINGS.read_text() == settings_before

    started = time.monotonic()
    proc = installer(exe, "--yes", *extra)
    first_run = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Jails logging to SQL: {', '.join(sorted(FIXTURE_JAILS))}" in proc.stdout
    assert "their own configuration names banned_db" in proc.stdout  # the role's news, shown
    assert "fail2ban-client set dovecot banip 192.0.2.1" in proc.stdout
    assert sorted(running_jails()) == list(FIXTURE_JAILS), "the install left jails down"
    assert set(banned_db_actions().values()) == {1}
    changed = int(proc.stdout.split(" tasks changed")[0].rsplit("\n", 1)[-1])
    credential = Path(ORIGINALS[backend][2])
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    password = credential_password(backend)
    if backend == "mysql":
        settings = detect.parse_python_settings(SETTINGS.read_text())
        assert settings["fail2ban_enabled"] is True
        assert settings["fail2ban_db_password"] == password
        assert settings["vmail_db_password"] == "fixture-not-a-secret"  # the rest of the file stays
    else:
        assert SETTINGS.read_text() == settings_before
    assert password == iredmail_password, "the install did not keep iRedMail's password"
    log = Path("/var/log/f2bsql-install.log")
    assert password not in log.read_text()
    assert password not in proc.stdout + proc.stderr

    howto_tests(backend)
    table = lifecycle(backend)

    started = time.monotonic()
    again = installer(exe, "--yes", *extra)
    second_run = time.monotonic() - started
    assert again.returncode == 0
    assert "Nothing changed" in again.stdout
    assert "password: kept, from" in again.stdout

    check = installer(exe, "--check", *extra)
    assert check.returncode == 0
    assert "Nothing would change" in check.stdout
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert password not in log.read_text()  # reused on the later runs: masked in Ansible's output too

    # Uninstall gives iRedMail's integration back: its files, its cron line, every jail running.
    # MariaDB keeps the database, then installs again with no hand work and drops it; PostgreSQL
    # drops it at once (both paths, one backend each, for CI's time).
    drop = ["--drop-database"] if backend == "pgsql" else []
    proc = installer(exe, "--uninstall", *drop, "--yes", *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(ORIGINALS[backend]) == originals
    assert cron_lines() == [IREDMAIL_CRON]
    assert SETTINGS.read_text() == settings_before
    assert not Path("/etc/fail2ban/jail.d/zz-f2bsql.local").exists()
    assert sh("fail2ban-client", "-t", check=False).returncode == 0
    wait_until(lambda: sorted(running_jails()) == list(FIXTURE_JAILS), "every jail after the uninstall", timeout=60)
    if not drop:
        assert database_exists(backend)  # kept without --drop-database
        assert f"Database fail2ban: kept on {plan.LABELS[backend]}" in proc.stdout
        # ... and a plain install again needs no hand work: the password is back with iRedMail's file.
        proc = installer(exe, "--yes", *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "password: kept, from" in proc.stdout
        proc = installer(exe, "--uninstall", "--drop-database", "--yes", *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert fingerprint(ORIGINALS[backend]) == originals
    assert f"Database fail2ban: dropped on {plan.LABELS[backend]}, with its user" in proc.stdout
    assert not database_exists(backend)
    record_figure(
        f"installer e2e ({backend}, iRedMail host): jails before {len(FIXTURE_JAILS)}, after install"
        f" {len(FIXTURE_JAILS)} with one banned_db each, after uninstall {len(FIXTURE_JAILS)}; first run"
        f" {first_run:.0f} s ({changed} changed), second {second_run:.0f} s; lifecycle: " + "; ".join(table)
    )
