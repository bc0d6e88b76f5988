"""Per-OS data of the roles: every vars file defines every key the roles use.

The platform scenarios (Docker, Vagrant) cannot run on the CI machine, so this is what keeps
vars/RedHat.yml, vars/OpenBSD.yml and friends honest: each OS file of a role defines the same
keys, every `__<role>_*` name the role's tasks, handlers, defaults and templates read is defined
somewhere, and each supported platform finds a file through the roles' first_found order.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

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
    keys = {path.name: set(_load(path)) for path in files}
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


@pytest.mark.parametrize("name", ["Debian.yml", "RedHat.yml", "OpenBSD.yml", "FreeBSD.yml"])
def test_geoip_values_of_each_os(name: str) -> None:
    data = _load(FAIL2BAN_VARS / name)
    packages = data["__f2bsql_fail2ban_geoip_packages"]
    repos = data["__f2bsql_fail2ban_geoip_repo_packages"]
    assert isinstance(packages, list) and packages and all(isinstance(p, str) and p for p in packages)
    assert isinstance(repos, list) and all(isinstance(p, str) and p for p in repos)
    assert isinstance(data["__f2bsql_fail2ban_geoip_refresh"], bool)
    # Every OS gets the MMDB reader: the refreshed DB-IP file is the helper's first backend.
    assert any("maxminddb" in p for p in packages), f"{name}: no maxminddb reader"


def test_geoip_refresh_is_on_where_the_distro_has_no_data_the_helper_reads() -> None:
    refresh = {p.name: _load(p)["__f2bsql_fail2ban_geoip_refresh"] for p in _os_files(FAIL2BAN_VARS.parent)}
    assert refresh == {"Debian.yml": False, "FreeBSD.yml": True, "OpenBSD.yml": True, "RedHat.yml": True}
    assert _load(FAIL2BAN_VARS / "RedHat.yml")["__f2bsql_fail2ban_geoip_repo_packages"] == ["epel-release"]


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
