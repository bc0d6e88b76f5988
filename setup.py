"""Build step that puts the playbooks into the package.

The repository keeps one copy of roles/, playbooks/, templates/ and files/ at its top level
(DESIGN.md rule 2). `build_py` copies them into `f2bsql/_data/` of the build, so wheels,
`pip install .` and pipx carry them with their relative layout (roles find ../../templates)
and the installer runs without the source tree. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("roles", "playbooks", "templates", "files")
HERE = Path(__file__).resolve().parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".molecule")


class BuildPyWithData(build_py):
    """build_py, plus the playbook tree copied to f2bsql/_data."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads the checkout itself (f2bsql.data)
        target = Path(self.build_lib) / "f2bsql" / "_data"
        if target.exists():
            shutil.rmtree(target)
        for name in DATA_DIRS:
            source = HERE / name
            if not source.is_dir():
                raise SystemExit(f"setup.py: {source} is missing; build from a full checkout or sdist")
            shutil.copytree(source, target / name, ignore=IGNORE, symlinks=False)


setup(cmdclass={"build_py": BuildPyWithData})
