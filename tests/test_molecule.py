"""The localhost Molecule scenarios and the linters, run by the README's test command.

`molecule test -s default` (MariaDB) and `-s postgresql` provision this very machine on an
iRedMail-like fixture (molecule/resources/prepare.yml), prove the result with the real services
(verify.yml) and put the machine back (cleanup.yml). They take minutes: marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from testbed import ansible_failures

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LINTED = ["roles", "playbooks", "molecule/default", "molecule/postgresql", "molecule/resources"]


def _run(args: list[str], timeout: int, **extra_env: str) -> None:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra_env)
    env.update(NO_COLOR="1", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
    proc = subprocess.run(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
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
