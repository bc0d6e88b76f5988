"""Where the helper finds its settings when none is named (docs/helper.md), in a temp tree.

The helper is loaded as the module it also is, with its well-known paths pointed into a
temporary directory: the real /root and PostgreSQL home are shared with the rest of the run.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from testbed import REPO, host_module, write_private


@pytest.fixture
def helper_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = host_module("settings")
    (tmp_path / "root").mkdir()
    (tmp_path / "pghome").mkdir()
    monkeypatch.setattr(
        module, "MYSQL_CREDENTIAL_FILES", (str(tmp_path / "root/.my.cnf-fail2ban"), str(tmp_path / "root/.my.cnf"))
    )
    monkeypatch.setattr(module, "PGSQL_HOMES", (str(tmp_path / "nothing-here"), str(tmp_path / "pghome")))
    monkeypatch.delenv("F2BSQL_CONFIG", raising=False)
    monkeypatch.delenv("F2BSQL_HOSTNAME", raising=False)
    return module


def mycnf(user: str) -> str:
    return f'[client]\nhost = "127.0.0.1"\nport = 3306\nuser = {user}\npassword = "p:w"\n'


def test_dedicated_files_win_over_roots_general_one(helper_module: ModuleType, tmp_path: Path) -> None:
    write_private(tmp_path / "root/.my.cnf", mycnf("root"))
    write_private(tmp_path / "pghome/.pgpass", "db.example.test:5433:fail2ban:fail2ban:pg\\:secret\n")
    settings = helper_module.load_settings(None, None)
    # A PostgreSQL host with MariaDB's root .my.cnf still uses its line for user fail2ban.
    assert (settings.backend, settings.host, settings.port, settings.password) == (
        "pgsql",
        "db.example.test",
        5433,
        "pg:secret",
    )
    write_private(tmp_path / "root/.my.cnf-fail2ban", mycnf("fail2ban"))
    settings = helper_module.load_settings(None, "mail9")
    assert (settings.backend, settings.user, settings.password, settings.hostname) == (
        "mysql",
        "fail2ban",
        "p:w",
        "mail9",
    )


def test_roots_general_files_come_last(helper_module: ModuleType, tmp_path: Path) -> None:
    write_private(tmp_path / "pghome/.pgpass", "*:*:*:*:any\n")
    settings = helper_module.load_settings(None, None)
    assert (settings.backend, settings.host, settings.port, settings.database) == ("pgsql", "", 5432, "fail2ban")
    write_private(tmp_path / "root/.my.cnf", mycnf("root"))
    assert helper_module.load_settings(None, None).backend == "mysql"


def test_nothing_found_is_a_config_error(helper_module: ModuleType) -> None:
    with pytest.raises(helper_module.ConfigError, match="no database settings found"):
        helper_module.load_settings(None, None)


def test_the_shared_bans_keys_are_read_and_checked(helper_module: ModuleType, tmp_path: Path) -> None:
    config = tmp_path / "f2bsql.ini"
    write_private(config, mycnf("fail2ban") + "[f2bsql]\nfleet_jail = f2bsql-fleet\nfleet_from = dovecot, postfix\n")
    settings = helper_module.load_settings(str(config), None)
    assert (settings.fleet_jail, settings.fleet_from, settings.fleet_limit, settings.fleet_max_age) == (
        "f2bsql-fleet",
        ("dovecot", "postfix"),
        helper_module.DEFAULT_FLEET_LIMIT,
        7 * 86400,
    )
    write_private(config, mycnf("fail2ban") + "[f2bsql]\nfleet_jail = f2bsql-fleet\nfleet_max_age = 0\n")
    assert helper_module.load_settings(str(config), None).fleet_max_age == 0
    # Off unless named.
    write_private(config, mycnf("fail2ban"))
    assert helper_module.load_settings(str(config), None).fleet_jail == ""
    for bad, message in (
        ("fleet_jail = f2bsql fleet", "fleet_jail"),
        ("fleet_from = dovecot,post;fix", "fleet_from"),
        ("fleet_limit = 0", "fleet_limit must be a whole number"),
        ("fleet_max_age = -1", "fleet_max_age must be a whole number of seconds"),
        ("fleet_max_age = 1d", "fleet_max_age must be a whole number of seconds"),
    ):
        write_private(config, mycnf("fail2ban") + f"[f2bsql]\n{bad}\n")
        with pytest.raises(helper_module.ConfigError, match=message):
            helper_module.load_settings(str(config), None)


def test_settings_on_standard_input_are_read_as_a_file_is(
    helper_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--config -`: the roles' login check gives the settings about to be written this way.
    write_private(tmp_path / "root/.my.cnf-fail2ban", mycnf("someone-else"))
    monkeypatch.setattr("sys.stdin", stdin(mycnf("fail2ban") + "!includedir /etc/mysql/conf.d/\n"))
    settings = helper_module.load_settings("-", None)
    assert (settings.backend, settings.user, settings.password, settings.port) == ("mysql", "fail2ban", "p:w", 3306)
    monkeypatch.setattr("sys.stdin", stdin(mycnf("fail2ban") + "[f2bsql]\nbackend = oracle\n"))
    with pytest.raises(helper_module.ConfigError, match=r"^the settings on standard input: backend must be"):
        helper_module.load_settings("-", None)
    # Read as UTF-8 whatever the locale's encoding (the file is).
    monkeypatch.setattr("sys.stdin", stdin(mycnf("fail2ban").replace("p:w", "pä:w"), encoding="latin-1"))
    assert helper_module.load_settings("-", None).password == "pä:w"
    # A file named "-" elsewhere is still a file (only the bare "-" means standard input), and
    # F2BSQL_CONFIG=- is refused: fail2ban's actions have no settings on their standard input.
    write_private(tmp_path / "-", mycnf("from-a-file"))
    assert helper_module.load_settings(str(tmp_path / "-"), None).user == "from-a-file"
    monkeypatch.setenv("F2BSQL_CONFIG", "-")
    with pytest.raises(helper_module.ConfigError, match="only --config - reads"):
        helper_module.load_settings(None, None)


def stdin(text: str, encoding: str = "utf-8") -> io.TextIOWrapper:
    """A standard input of UTF-8 bytes, read through a text layer of the given encoding."""
    return io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding=encoding)


def test_the_python_action_refuses_config_dash() -> None:
    """fail2ban-server's standard input holds no settings: the action's `config = -` is refused
    with the reason, on the python fail2ban runs on (which imports fail2ban)."""
    loaded = subprocess.run(
        ["/usr/bin/python3", "-c", ACTION_WITH_CONFIG_DASH, str(REPO / "files")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "ConfigError: config = - names no file: give the settings file's path"


ACTION_WITH_CONFIG_DASH = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("banned_db", sys.argv[1] + "/banned_db.py")
action = importlib.util.module_from_spec(spec)
spec.loader.exec_module(action)
class Jail:
    name = "sshd"
try:
    action.BannedDbAction(Jail(), "banned_db", lib=sys.argv[1], config="-")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""
