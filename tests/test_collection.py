"""The Ansible collection f2bsql.fail2ban_sql: built from this tree (scripts/build-collection,
offline), installed, and used by its FQCN from a playbook outside the repository.

The roles, playbooks, templates and files in it are the ones the wheel and f2bsql-install use
(one copy); plugins/modules and plugins/module_utils are made from the roles' own at build time
(a role inside a collection has no library/ of its own), and run by their FQCN here. The fleet
scenario (molecule/fleet) converges its hosts through the installed collection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import tomllib
import yaml
from testbed import REPO

BIN = Path(sys.executable).parent
GALAXY = yaml.safe_load((REPO / "collection" / "galaxy.yml").read_text())
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"
MODULES = sorted(path.stem for path in REPO.glob("roles/*/library/*.py"))


def run(*argv: str | Path, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tarball, the collections path it is installed in)."""
    root = tmp_path_factory.mktemp("collection")
    run(REPO / "scripts" / "build-collection", root / "dist")
    (tarball,) = (root / "dist").glob("*.tar.gz")
    run(BIN / "ansible-galaxy", "collection", "install", "--force", "-p", root / "collections", tarball)
    return tarball, root / "collections"


def test_the_version_is_the_packages() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert GALAXY["version"] == project["version"]


def test_it_holds_the_trees_roles_playbooks_templates_and_files_and_nothing_of_the_repos_own(
    installed: tuple[Path, Path],
) -> None:
    tarball, _ = installed
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    for tree in ("roles", "playbooks", "templates", "files"):
        expected = {
            str(path.relative_to(REPO))
            for path in (REPO / tree).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        }
        assert expected <= names, sorted(expected - names)
    assert not {name for name in names if name.split("/")[0] in ("tests", "molecule", "bench", "installer", ".ci")}
    assert not {name for name in names if "__pycache__" in name}
    # Every module of the roles and their module_utils, and nothing else.
    assert sorted(Path(name).stem for name in names if name.startswith("plugins/modules/")) == MODULES
    utils = sorted(path.stem for path in REPO.glob("roles/*/module_utils/*.py"))
    assert sorted(Path(name).stem for name in names if name.startswith("plugins/module_utils/")) == utils


def test_its_modules_run_by_their_fqcn_with_their_module_utils(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """A role inside a collection gets no library/ or module_utils/ of its own: its modules run
    as the collection's, importing their module_utils by the collection's name. One module of
    each module_utils file, run for real (check mode, nothing changes)."""
    _, collections = installed
    config = tmp_path / "fail2ban"
    config.mkdir()
    (config / "jail.conf").write_text(
        "[DEFAULT]\nignoreip = 192.0.2.0/24\n[one]\nenabled = true\nfilter =\nbackend = polling\n"
        "logpath = /dev/null\naction =\n",
        encoding="utf-8",
    )
    (config / "fail2ban.conf").write_text("[Definition]\n", encoding="utf-8")
    adhoc = [
        BIN / "ansible",
        "localhost",
        "-c",
        "local",
        "-o",
        "--check",
        "-e",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    jails = run(
        *adhoc, "-m", f"{FQCN}.f2bsql_fail2ban_jails", "-a", f"config_dir={config} ignoreip_of=one",
        ANSIBLE_COLLECTIONS_PATH=str(collections),
    ).stdout  # fmt: skip
    assert '"enabled": ["one"]' in jails and '"ignoreip": "192.0.2.0/24"' in jails, jails
    database = run(
        *adhoc, "-m", f"{FQCN}.f2bsql_mysql_db", "-a", "name=f2bsql_collection_probe login_host=127.0.0.1",
        ANSIBLE_COLLECTIONS_PATH=str(collections),
    ).stdout  # fmt: skip
    assert '"name": "f2bsql_collection_probe"' in database, database


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_documents_each_module(installed: tuple[Path, Path], module: str) -> None:
    _, collections = installed
    shown = run(BIN / "ansible-doc", f"{FQCN}.{module}", ANSIBLE_COLLECTIONS_PATH=str(collections)).stdout
    assert f"{FQCN}.{module}" in shown
    assert "OPTIONS" in shown and "EXAMPLES" in shown


def test_a_playbook_outside_the_repository_uses_its_roles_and_playbooks_by_fqcn(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, collections = installed
    (tmp_path / "fleet.yml").write_text(
        f"- name: The whole job\n  ansible.builtin.import_playbook: {FQCN}.site\n"
        f"- name: Undo\n  ansible.builtin.import_playbook: {FQCN}.uninstall\n"
        "- name: A play of the operator's own\n  hosts: f2bsql_database\n  roles:\n"
        f"    - role: {FQCN}.f2bsql_database\n",
        encoding="utf-8",
    )
    (tmp_path / "inventory").write_text("[f2bsql_database]\ndb1 ansible_connection=local\n", encoding="utf-8")
    listed = run(
        BIN / "ansible-playbook", "-i", "inventory", "fleet.yml", "--list-tasks",
        cwd=tmp_path, ANSIBLE_COLLECTIONS_PATH=str(collections),
    ).stdout  # fmt: skip
    # The collection's playbooks name its roles by FQCN (scripts/build-collection rewrites the
    # tree's ../roles/<name> paths), so no roles_path entry can stand in for them; and the
    # operator's role by its FQCN.
    assert f"{FQCN}.f2bsql_fail2ban : Log in to the database as the helper will" in listed
    assert "../roles/" not in listed
    assert f"{FQCN}.f2bsql_database : Validating arguments against arg spec 'main'" in listed
