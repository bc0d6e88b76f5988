"""Where the bundled roles, playbooks, templates and files are.

An installed package (wheel, pip, pipx) carries them in `f2bsql/_data/`, put there by
`setup.py` at build time from the repository's top-level directories, which stay the one
copy. Run from a source checkout (PYTHONPATH=installer, or an editable install), the
checkout's own directories are used.
"""

from __future__ import annotations

from pathlib import Path

from f2bsql.errors import PreconditionError

#: The directories the playbooks need, in the layout the roles expect (../../templates).
DATA_DIRS = ("roles", "playbooks", "templates", "files")

_PACKAGE = Path(__file__).resolve().parent


def data_dir() -> Path:
    for candidate in (_PACKAGE / "_data", _PACKAGE.parent.parent):
        if all((candidate / d).is_dir() for d in DATA_DIRS):
            return candidate
    raise PreconditionError(f"the bundled playbooks are missing (looked in {_PACKAGE / '_data'}): reinstall f2bsql")


def callback_dir() -> Path:
    """The installer's Ansible callback plugin (progress events), shipped as package data."""
    return _PACKAGE / "ansible_plugins" / "callback"
