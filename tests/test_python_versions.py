"""The host code on every Python the supported OS releases ship for it (3.9 to 3.13).

EL 9 has 3.9, Ubuntu 22.04 3.10, Debian 12 3.11, Ubuntu 24.04 and the BSDs 3.11/3.12, Debian 13
3.13 (docs/platforms.md). Each interpreter this machine has (pyenv's builds) imports every module
of the package and runs the helper's and f2bsql's --help; every version's grammar is also checked
with ast's feature_version (syntax only), which is all a machine without that interpreter gets.
"""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

import pytest
from conftest import need_service
from testbed import ADMIN, HELPER, HOST_LIB

VERSIONS = [(3, 9), (3, 10), (3, 11), (3, 12), (3, 13)]
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
SOURCES = [*sorted((HOST_LIB / "f2bsql_host").glob("*.py")), HOST_LIB / "banned_db.py", HELPER, ADMIN]

SMOKE = """
import importlib, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import f2bsql_host
names = sorted(m.name for m in pkgutil.iter_modules(f2bsql_host.__path__))
for name in names:
    importlib.import_module("f2bsql_host." + name)
from f2bsql_host.events import Ban, from_json, to_json
from f2bsql_host.checks import check_ip
assert check_ip("2001:db8::1") == "2001:db8::1"
print(len(names))
"""


def _interpreter(version: tuple[int, int]) -> Path | None:
    found = sorted(PYENV.glob(f"{version[0]}.{version[1]}.*/bin/python3"))
    return found[-1] if found else None


@pytest.mark.parametrize("version", VERSIONS, ids=[f"{a}.{b}" for a, b in VERSIONS])
def test_host_code_runs_on(version: tuple[int, int]) -> None:
    for source in SOURCES:  # the grammar of that version, whether or not this machine has it
        ast.parse(source.read_text(encoding="utf-8"), filename=str(source), feature_version=version)
    python = _interpreter(version)
    if python is None:  # CI's machine has all five (pyenv); a laptop may not
        need_service(f"no Python {version[0]}.{version[1]} under {PYENV} (the grammar of it was checked)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}
    run = {"env": env, "capture_output": True, "text": True, "timeout": 60, "check": False}
    done = subprocess.run([str(python), "-I", "-c", SMOKE, str(HOST_LIB)], **run)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(list((HOST_LIB / "f2bsql_host").glob("*.py"))) - 1  # all but __init__
    for program in (HELPER, ADMIN):
        shown = subprocess.run([str(python), "-E", "-s", str(program), "--help"], **run)
        assert shown.returncode == 0 and "usage:" in shown.stdout, shown.stderr
