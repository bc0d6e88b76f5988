"""Per-OS data of the roles: every vars file defines every key the roles use.

The platform scenarios (Docker, Vagrant) cannot run on the CI machine, so this is what keeps
vars/RedHat.yml, vars/OpenBSD.yml and friends honest: each OS file of a role defines the same
keys, every `__<role>_*` name the role's tasks, handlers, defaults and templates read is defined
somewhere, and each supported platform finds a file through the roles' first_found order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from testbed import host_module

ROOT = Path(__file__).resolve().parent.parent
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "vars").is_dir())
TEMPLATES = ROOT / "templates"

# (distribution, os_family, major version) as Ansible's facts name them.
PLATFORMS = [
    ("Debian", "Debian", "12"),
    ("Ubuntu", "Debian", "24"),
    ("Rocky", "RedHat", "9"),
    ("AlmaLinux", "RedHat", "9"),
    ("RedHat", "RedHat", "9"),
    ("OpenBSD", "OpenBSD", "7"),
    ("FreeBSD", "FreeBSD", "14"),
]


def _os_files(role: Path) -> list[Path]:
    return sorted(p for p in (role / "vars").glob("*.yml") if p.name != "main.yml")


def _load(path: Path) -> dict[str, object]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def _first_found(role: Path, distribution: str, family: str, major: str) -> Path | None:
    for name in (
        f"{distribution}_{major}.yml",
        f"{distribution}.yml",
        f"{family}_{major}.yml",
        f"{family}.yml",
    ):
        if (role / "vars" / name).is_file():
            return role / "vars" / name
    return None


def _texts(role: Path) -> list[str]:
    """Everything the role reads variables in, including the shared templates it renders."""
    files = [p for d in ("tasks", "handlers", "defaults") for p in (role / d).glob("*.yml")]
    files += list(TEMPLATES.glob("*.j2"))
    return [p.read_text(encoding="utf-8") for p in files]


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_each_os_file_defines_the_same_keys(role: Path) -> None:
    files = _os_files(role)
    assert files, f"{role.name} has no per-OS vars files"
    # vars/Debian.yml's lookup map and what it picks from it (Ubuntu 22.04 differs) are its own;
    # every other key is in every file.
    own = {"__f2bsql_fail2ban_geoip_by_release", "__f2bsql_fail2ban_geoip_release"}
    keys = {path.name: set(_load(path)) - own for path in files}
    union = set().union(*keys.values())
    for name, have in keys.items():
        assert have == union, f"{role.name}/vars/{name} lacks {sorted(union - have)}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_internal_name_the_role_reads_is_defined(role: Path) -> None:
    prefix = f"__{role.name}_"
    pattern = re.compile(re.escape(prefix) + r"[a-z0-9_]+")
    used = {name for text in _texts(role) for name in pattern.findall(text)}
    defined: set[str] = set(_load(role / "vars" / "main.yml")) if (role / "vars" / "main.yml").is_file() else set()
    for path in _os_files(role):
        defined |= set(_load(path))
    # Names the tasks set themselves (set_fact, task vars, registered facts).
    for path in (role / "tasks").glob("*.yml"):
        defined |= set(re.findall(r"^\s*(" + re.escape(prefix) + r"[a-z0-9_]+):", path.read_text(), re.M))
    missing = sorted(used - defined)
    assert not missing, f"{role.name} reads {missing}, defined nowhere"


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: f"{p[0]}{p[2]}")
@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_platform_finds_its_vars_file(role: Path, platform: tuple[str, str, str]) -> None:
    found = _first_found(role, *platform)
    assert found is not None, f"{role.name}: no vars file for {platform}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_package_maps_cover_both_backends(role: Path) -> None:
    for path in _os_files(role):
        for key, value in _load(path).items():
            if key.endswith("_packages") and isinstance(value, dict):
                assert set(value) == {"mysql", "pgsql"}, f"{path.name}: {key}"
                assert all(isinstance(v, list) and v for v in value.values()), f"{path.name}: {key}"
            elif isinstance(value, str):
                assert value.strip(), f"{path.name}: {key} is empty"


def test_bsd_files_use_wheel_and_local_python() -> None:
    for name in ("OpenBSD.yml", "FreeBSD.yml"):
        data = _load(ROOT / "roles" / "f2bsql_fail2ban" / "vars" / name)
        assert data["__f2bsql_fail2ban_group"] == "wheel"
        assert data["__f2bsql_fail2ban_python"] == "/usr/local/bin/python3"


FAIL2BAN_VARS = ROOT / "roles" / "f2bsql_fail2ban" / "vars"


def test_refreshed_mmdb_is_the_first_path_the_helper_reads() -> None:
    helper = (ROOT / "files" / "f2bsql_host" / "geo.py").read_text(encoding="utf-8")
    first = re.search(r"^MMDB_PATHS = \(\s*\"([^\"]+)\"", helper, re.M)
    assert first is not None, "MMDB_PATHS not found in the helper"
    assert _load(FAIL2BAN_VARS / "main.yml")["__f2bsql_fail2ban_geoip_mmdb"] == first.group(1)


def test_driver_modules_cover_both_backends() -> None:
    modules = _load(FAIL2BAN_VARS / "main.yml")["__f2bsql_fail2ban_driver_modules"]
    assert modules == {"mysql": "pymysql", "pgsql": "psycopg2"}
    # The host package imports exactly these.
    db = (ROOT / "files" / "f2bsql_host" / "db.py").read_text(encoding="utf-8")
    assert all(f"import {module}" in db for module in modules.values())


def test_every_entry_point_looks_for_the_host_package_where_the_role_installs_it() -> None:
    lib_dir = _load(FAIL2BAN_VARS / "main.yml")["__f2bsql_fail2ban_lib_dir"]
    files = ROOT / "files"
    found = {
        "banned_db.py": re.findall(r'^DEFAULT_LIB = "([^"]+)"', (files / "banned_db.py").read_text(), re.M),
        "fail2ban_banned_db": re.findall(
            r'^sys\.path\.insert\(1, "([^"]+)"\)', (files / "fail2ban_banned_db").read_text(), re.M
        ),
        "f2bsql_host": re.findall(r'^LIB_DIR = "([^"]+)"', (files / "f2bsql_host" / "__init__.py").read_text(), re.M),
    }
    assert found == {name: [lib_dir] for name in found}


def _render(expression: str, variables: dict[str, object]) -> object:
    """A Jinja expression of the roles, rendered by Ansible's own templar (as a play would)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    try:
        from ansible.template import trust_as_template  # ansible-core 2.19+: only trusted text is a template
    except ImportError:  # older ansible-core renders any string

        def trust_as_template(value: str) -> str:
            return value

    trusted = {key: trust_as_template(value) if isinstance(value, str) else value for key, value in variables.items()}
    return Templar(loader=DataLoader(), variables=trusted).template(trust_as_template(expression))


def test_an_earlier_f2bsql_cron_line_is_not_taken_for_someone_elses() -> None:
    # An upgrade changes f2bsql's own job (new options): the line under its marker is the cron
    # module's to replace, never a foreign line to keep aside and delete (which would leave the
    # marker over whatever line follows it).
    variables = _load(FAIL2BAN_VARS / "main.yml")
    marker = f"#Ansible: {variables['__f2bsql_fail2ban_cron_name']}"
    helper = "/usr/bin/python3 /usr/local/bin/fail2ban_banned_db unban_db"
    iredmail = [
        "# Fail2ban: Unban IP addresses pending for removal",
        "* * * * * /bin/bash /usr/local/bin/fail2ban_banned_db unban_db",
    ]
    geoip = ["#Ansible: f2bsql: refresh DB-IP's country database", "0 4 3 * * /usr/local/sbin/f2bsql-geoip-refresh"]
    variables.update(
        f2bsql_fail2ban_register_crontab={"stdout_lines": [marker, f"* * * * * {helper}", *iredmail, *geoip]},
        __f2bsql_fail2ban_cron_keep=f"* * * * * {helper} --history-days 90",
    )
    assert _render("{{ __f2bsql_fail2ban_cron_legacy }}", variables) == iredmail


@pytest.mark.parametrize("host", ["127.0.0.1", "db.example.com", "2001:db8::5", "::1"])
def test_a_pgpass_line_for_any_host_is_escaped_and_found_again(host: str) -> None:
    # libpq reads '\:' as ':' inside a field: an IPv6 host unescaped splits the line wrongly, and a
    # regexp that cannot match the escaped form writes a second line on every run.
    settings = host_module("settings")
    variables = _load(FAIL2BAN_VARS / "main.yml")
    variables.update(
        f2bsql_fail2ban_db_host=host,
        f2bsql_fail2ban_db_port=5432,
        f2bsql_fail2ban_db_name="fail2ban",
        f2bsql_fail2ban_db_user="fail2ban",
    )
    prefix = str(_render("{{ __f2bsql_fail2ban_pgpass_prefix }}", variables))
    regexp = str(_render("{{ __f2bsql_fail2ban_pgpass_regexp }}", variables))
    line = prefix + "pass\\:word"
    assert settings._split_pgpass_line(line) == [host, "5432", "fail2ban", "fail2ban", "pass:word"]
    escaped_v6 = "2001\\:db8\\:\\:9:5432:fail2ban:fail2ban:x"
    for written in (line, "*:*:fail2ban:fail2ban:old", "localhost:5432:*:fail2ban:old", escaped_v6):
        assert re.match(regexp, written), (regexp, written)
    for other in ("#" + escaped_v6, "h:5432:vmail:fail2ban:x", "h:5432:fail2ban:vmail:x"):
        assert not re.match(regexp, other), (regexp, other)


ASSERT_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: {role}
        tasks_from: assert
"""


@pytest.mark.parametrize(
    ("role", "password_var"),
    [("f2bsql_database", "f2bsql_database_password"), ("f2bsql_fail2ban", "f2bsql_fail2ban_db_password")],
)
def test_the_variable_check_says_what_is_wrong_and_never_the_password(
    role: str, password_var: str, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    play = tmp_path / "assert.yml"
    play.write_text(ASSERT_PLAY.format(role=role), encoding="utf-8")
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3"}  # fmt: skip
    ansible = str(Path(sys.executable).parent / "ansible-playbook")
    results = {}
    for password in ("Sh'rt-PW", "long-enough-and-plain-42"):
        extra = tmp_path / "extra.json"
        extra.write_text(json.dumps({password_var: password}), encoding="utf-8")
        done = subprocess.run(
            [ansible, "-i", "localhost,", "-c", "local", "-v", str(play), "-e", f"@{extra}"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        results[password] = done
        assert password not in done.stdout + done.stderr
    bad, good = results.values()
    assert bad.returncode == 2 and "at least 8 characters" in bad.stdout, bad.stdout[-2000:]
    assert "Check the variables that depend on each other" in bad.stdout.split("at least 8 characters")[0]
    assert good.returncode == 0, good.stdout[-2000:]
