"""The localhost Molecule scenarios and the linters, run by the README's test command.

`molecule test -s default` (MariaDB) and `-s postgresql` provision this very machine on an
iRedMail-like fixture (molecule/resources/prepare.yml), prove the result with the real services
(verify.yml) and put the machine back (cleanup.yml). They take minutes: marked slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml
from testbed import ansible_failures, run_whole

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LINTED = [
    "roles",
    "playbooks",
    "molecule/default",
    "molecule/postgresql",
    "molecule/fleet",
    "molecule/resources",
]


def _run(args: list[str], timeout: int, **extra_env: str) -> None:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra_env)
    env.update(NO_COLOR="1", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
    proc = run_whole(args, timeout, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{ansible_failures(proc.stdout)}"


@pytest.mark.slow
@pytest.mark.xdist_group("machine")  # provisions this machine: see tests/conftest.py
@pytest.mark.parametrize("scenario", ["default", "postgresql"])
def test_molecule_scenario(scenario: str, tmp_path: Path) -> None:
    # As a finished earlier run leaves it: Molecule's state says the instance is prepared. The
    # sequence must forget that and prepare again (check_fresh.yml fails without the fixture),
    # and leave the state so that the next run does too.
    ephemeral = tmp_path / "ephemeral"
    ephemeral.mkdir()
    state = ephemeral / "state.yml"
    state.write_text(yaml.safe_dump({"converged": True, "created": False, "driver": None, "prepared": True}))
    # prepare.yml/cleanup.yml serialise every user of the fixture (/var/tmp/f2bsql-fixture.lock).
    _run([str(BIN / "molecule"), "test", "-s", scenario], timeout=1800, MOLECULE_EPHEMERAL_DIRECTORY=str(ephemeral))
    left = yaml.safe_load(state.read_text())
    assert left["prepared"] is False and left["converged"] is False, left


@pytest.mark.slow
def test_ansible_lint_production() -> None:
    _run([str(BIN / "ansible-lint"), *LINTED], timeout=900)


@pytest.mark.slow
def test_yamllint() -> None:
    _run([str(BIN / "yamllint"), "--strict", *LINTED, ".ansible-lint", ".yamllint"], timeout=300)


# --------------------------------------------------------------------------- the fixture's lock
# molecule/resources/tasks/lock.yml, on a lock of the test's own (the machine's is left alone).

LOCK_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars_files: [{resources}/vars/main.yml]
  tasks:
    - ansible.builtin.include_tasks: {resources}/tasks/lock.yml
"""


@pytest.fixture
def lock_run(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run lock.yml as `owner`, under `pid` (F2BSQL_FIXTURE_PID) or `wrapper`, on tmp_path/lock."""
    playbook = tmp_path / "lock.yml"
    playbook.write_text(LOCK_PLAYBOOK.format(resources=ROOT / "molecule" / "resources"))

    def run(
        action: str, owner: str, pid: int | None = None, wrapper: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("F2BSQL_", "MOLECULE_"))}
        env.update(F2BSQL_FIXTURE_OWNER=owner, ANSIBLE_NOCOLOR="1")
        if pid is not None:
            env["F2BSQL_FIXTURE_PID"] = str(pid)
        args = [str(BIN / "ansible-playbook"), "-v", "-i", "localhost,", "-c", "local", str(playbook)]
        args += ["-e", f"f2bsql_molecule_lock={tmp_path / 'lock'}", "-e", f"f2bsql_molecule_lock_action={action}"]
        args += ["-e", "f2bsql_molecule_lock_retries=0", "-e", "ansible_python_interpreter=/usr/bin/python3"]
        return subprocess.run([*(wrapper or []), *args], env=env, capture_output=True, text=True, timeout=120)

    return run


def lock_files(tmp_path: Path) -> tuple[str, str]:
    """The lock's owner, and the pid of the process it names (its start time checked apart)."""
    lock = tmp_path / "lock"
    return (lock / "owner").read_text().strip(), (lock / "process").read_text().strip().partition(" ")[0]


def started(pid: int) -> str:
    """A process's start time, as the lock records it beside its pid (a pid alone may be reused)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()[19]


def test_the_fixture_lock_waits_for_a_live_owner_and_adopts_a_dead_ones(
    lock_run: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    lock = tmp_path / "lock"
    # Nobody's: cleanup's check passes and takes nothing; prepare takes it, naming its process.
    assert lock_run("check", "first", pid=os.getpid()).returncode == 0
    assert not lock.exists()
    assert lock_run("take", "first", pid=os.getpid()).returncode == 0
    assert (lock / "process").read_text().split() == [str(os.getpid()), started(os.getpid())]
    # Another run, while the owner is alive: it waits (here not at all), saying who holds the lock.
    for action in ("take", "check"):
        done = lock_run(action, "second", pid=os.getpid())
        assert done.returncode != 0 and "held by first" in done.stdout, done.stdout
    assert lock_files(tmp_path)[0] == "first"
    # The pid lives, but as another process (pid reuse): the lock is stale.
    (lock / "process").write_text(f"{os.getpid()} 1\n")
    done = lock_run("take", "second", pid=os.getpid())
    assert done.returncode == 0 and "adopted from first" in done.stdout, done.stdout
    assert lock_files(tmp_path) == ("second", str(os.getpid()))
    # The owner's process is gone (a run killed halfway): the next run adopts the lock at once.
    gone = subprocess.Popen(["true"])
    gone.wait()
    (lock / "process").write_text(f"{gone.pid} {started(os.getpid())}\n")
    done = lock_run("check", "third", pid=os.getpid())
    assert done.returncode == 0 and "adopted from second" in done.stdout, done.stdout
    assert lock_files(tmp_path) == ("third", str(os.getpid()))


def test_a_lock_that_names_no_process_is_adopted_only_when_it_names_no_owner_either(
    lock_run: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    lock = tmp_path / "lock"
    # A manual run (no process to watch) holds it: others wait, however long it has been.
    lock.mkdir()
    (lock / "owner").write_text("manual\n")
    (lock / "process").write_text("\n")
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    done = lock_run("take", "second", pid=os.getpid())
    assert done.returncode != 0 and "held by manual (process none named)" in done.stdout, done.stdout
    # A run killed between taking the lock and naming itself: adopted after two minutes, not before.
    for path in lock.iterdir():
        path.unlink()
    done = lock_run("take", "second", pid=os.getpid())
    assert done.returncode != 0 and "held by a run starting" in done.stdout, done.stdout
    os.utime(lock, (time.time() - 180, time.time() - 180))
    done = lock_run("take", "second", pid=os.getpid())
    assert done.returncode == 0 and "adopted from nobody" in done.stdout, done.stdout


def fake_molecule(tmp_path: Path) -> Path:
    """A `molecule` that runs the command after its subcommand, as a child, as Molecule does."""
    molecule = tmp_path / "bin" / "molecule"
    molecule.parent.mkdir(exist_ok=True)
    molecule.write_text('#!/bin/sh\nshift\n"$@"; exit $?\n')
    molecule.chmod(0o755)
    return molecule


def test_molecule_test_is_the_lock_owners_process_and_a_single_step_is_none(
    lock_run: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    # Without F2BSQL_FIXTURE_PID the lock names the `molecule test` command the playbook runs
    # under; once that has exited, its lock is stale.
    molecule = str(fake_molecule(tmp_path))
    assert lock_run("take", "scenario", wrapper=[molecule, "test"]).returncode == 0
    owner, pid = lock_files(tmp_path)
    assert owner == "scenario" and pid.isdigit() and not Path(f"/proc/{pid}").exists()
    done = lock_run("take", "next", pid=os.getpid())
    assert done.returncode == 0 and "adopted from scenario" in done.stdout, done.stdout
    # `molecule prepare`, then `converge` …: each step exits while the fixture stays in use, so
    # the lock names no process and is never adopted.
    shutil.rmtree(tmp_path / "lock")  # as cleanup.yml releases it
    assert lock_run("take", "steps", wrapper=[molecule, "prepare"]).returncode == 0
    assert lock_files(tmp_path) == ("steps", "")
    done = lock_run("take", "next", pid=os.getpid())
    assert done.returncode != 0 and "held by steps" in done.stdout, done.stdout


def test_ruff() -> None:
    _run([str(BIN / "ruff"), "check", "."], timeout=300)
    _run([str(BIN / "ruff"), "format", "--check", "."], timeout=300)


def test_mypy() -> None:
    # The installer and the host package (pyproject.toml's [tool.mypy] files), strict.
    _run([str(BIN / "mypy")], timeout=600)
