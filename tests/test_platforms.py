"""Every OS release iRedMail supports, as the roles see it: their own vars.yml run on each one's facts.

Only Debian runs here, so the other releases are checked by construction: a play on localhost is
given that release's facts (tests/fixtures/platforms.yml, a test-only module sets them) and runs
each role's vars.yml (first_found over distribution_major, distribution, os_family), then
renders what the roles would install there — package lists, paths, the cron line, the helper's
first line, the action and the credential file. No host is changed: the play only reads and
writes its result into the test's directory. docs/platforms.md is the table of these values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from testbed import FIXTURES, REPO

PLATFORMS: dict[str, dict[str, Any]] = yaml.safe_load((FIXTURES / "platforms.yml").read_text(encoding="utf-8"))

PLAY = """
- hosts: localhost
  gather_facts: false
  vars:
    f2bsql_fail2ban_db_password: a-test-password-42
    f2bsql_database_password: a-test-password-42
    f2bsql_iredadmin_db_password: a-test-password-42
  tasks:
    - f2bsql_test_facts:
        facts: "{{{{ platform }}}}"
    - ansible.builtin.include_role: {{name: f2bsql_fail2ban, tasks_from: vars, public: true}}
    - ansible.builtin.include_role: {{name: f2bsql_database, tasks_from: vars, public: true}}
    - ansible.builtin.include_role: {{name: f2bsql_iredadmin, tasks_from: vars, public: true}}
    - ansible.builtin.copy:
        dest: "{out}"
        mode: "0600"
        content: "{{{{ result | to_nice_json }}}}"
      vars:
        result:
          driver: "{{{{ __f2bsql_fail2ban_packages }}}}"
          database_driver: "{{{{ __f2bsql_database_packages }}}}"
          geoip: "{{{{ __f2bsql_fail2ban_geoip_packages }}}}"
          refresh: "{{{{ f2bsql_fail2ban_geoip_refresh | bool }}}}"
          python: "{{{{ f2bsql_fail2ban_python }}}}"
          config_dir: "{{{{ f2bsql_fail2ban_config_dir }}}}"
          service: "{{{{ f2bsql_fail2ban_service }}}}"
          group: "{{{{ __f2bsql_fail2ban_group }}}}"
          pg_os_user: "{{{{ __f2bsql_fail2ban_pg_os_user }}}}"
          database_pg_os_user: "{{{{ __f2bsql_database_pg_os_user }}}}"
          pg_home: "{{{{ __f2bsql_fail2ban_pg_home }}}}"
          mysql_socket: "{{{{ f2bsql_database_mysql_admin_socket }}}}"
          pg_hba: "{{{{ __f2bsql_database_pg_hba_lines }}}}"
          cron_line: "{{{{ __f2bsql_fail2ban_cron_line }}}}"
          shebang: "{{{{ __f2bsql_fail2ban_shebang }}}}"
          metrics_dir: "{{{{ f2bsql_fail2ban_metrics_dir }}}}"
          iredadmin_settings: "{{{{ f2bsql_iredadmin_settings_path }}}}"
          iredadmin_services: "{{{{ f2bsql_iredadmin_services }}}}"
          action: "{{{{ lookup('ansible.builtin.template', '{templates}/banned_db.conf.j2') }}}}"
          credentials: "{{{{ lookup('ansible.builtin.template', '{templates}/my.cnf-fail2ban.j2') }}}}"
"""


def render(name: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "result.json"
    play = tmp_path / "play.yml"
    play.write_text(PLAY.format(out=out, templates=REPO / "templates"), encoding="utf-8")
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"platform": PLATFORMS[name]["facts"]}), encoding="utf-8")
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_LIBRARY": str(FIXTURES / "library"),
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_NOCOLOR": "1",
    }
    ansible = str(Path(sys.executable).parent / "ansible-playbook")
    done = subprocess.run(
        [ansible, "-i", "localhost,", "-c", "local", str(play), "-e", f"@{facts}"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("name", sorted(PLATFORMS))
def test_what_the_roles_install_on(name: str, tmp_path: Path) -> None:
    want = PLATFORMS[name]["expect"]
    got = render(name, tmp_path)
    for key, value in want.items():
        assert got[key] == value, f"{name}: {key}"
    for key in ("driver", "database_driver", "geoip"):
        packages = _strings(got[key])
        assert all(package.strip() and package == package.strip() for package in packages), f"{name}: {key}"
    assert set(got["driver"]) == {"mysql", "pgsql"} and all(got["driver"].values())
    assert got["shebang"] == "#!" + got["python"]
    assert got["cron_line"].startswith(f"* * * * * {got['python']} /usr/local/bin/fail2ban_banned_db unban_db ")
    assert f"f2bsql_helper = {got['python']} /usr/local/bin/fail2ban_banned_db" in got["action"]
    assert 'password="a-test-password-42"' in got["credentials"]
    for text in (got["action"], got["credentials"], got["cron_line"]):
        assert "{{" not in text and "None" not in text.split(), f"{name}: unrendered value"
