"""The roles' own modules, run the way Ansible runs them (a JSON file of arguments).

f2bsql_fail2ban_socket against a real fail2ban-server: a server that answers keeps its socket; a
server killed as a crash would kill it leaves one, which the module removes (and only reports
in check mode); what is not a socket is never removed. The restart through Debian's init script
that this makes possible is checked on the machine by test_security_install.py.

f2bsql_files, which installs the host package in one call: new and changed files written with
their mode, the same files left alone, check mode writing nothing, a file the package no longer
has removed (only regular files), and names that are not plain file names refused.

f2bsql_settings_keys, which sets iRedAdmin-Pro's keys in one call: each line as lineinfile would
make it, check mode writing nothing, the password in neither the result nor the diff.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed import BASE_ENV, REPO, Fail2ban, Host, wait_for

SOCKET_MODULE = REPO / "roles" / "f2bsql_fail2ban" / "library" / "f2bsql_fail2ban_socket.py"
FILES_MODULE = REPO / "roles" / "f2bsql_fail2ban" / "library" / "f2bsql_files.py"


def run_module(module: Path, tmp_path: Path, check_mode: bool = False, **args: Any) -> dict[str, Any]:
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check_mode}}))
    done = subprocess.run([sys.executable, str(module), str(arguments)], capture_output=True, text=True, timeout=60)
    result: dict[str, Any] = json.loads(done.stdout)
    assert (done.returncode != 0) == bool(result.get("failed")), done
    return result


def test_socket_of_a_running_server_stays_and_of_a_killed_one_goes(
    start_fail2ban: Callable[..., Fail2ban], host: Host, tmp_path: Path
) -> None:
    server = start_fail2ban(host)
    sock = str(server.socket)
    answered = run_module(SOCKET_MODULE, tmp_path, path=sock)
    assert (answered["changed"], answered["socket"], answered["state"]) == (False, sock, "listening")
    assert server.client_rc("ping") == 0, "the module's connection upset the server"

    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)  # as the OOM killer would: no cleanup, the socket stays
    wait_for(lambda: not Path(f"/proc/{server.pid}").exists(), "fail2ban-server to die")
    server.pidfile.unlink(missing_ok=True)
    server.pid = None
    assert server.socket.is_socket()
    refused = start_as_an_init_script_does(server, host)
    assert refused.returncode != 0 and "socket" in refused.stderr, refused

    checked = run_module(SOCKET_MODULE, tmp_path, check_mode=True, path=sock)
    assert (checked["changed"], checked["state"]) == (True, "stale")
    assert server.socket.is_socket(), "check mode removed the socket"
    removed = run_module(SOCKET_MODULE, tmp_path, path=sock)
    assert (removed["changed"], removed["state"]) == (True, "stale")
    assert not server.socket.exists()
    again = run_module(SOCKET_MODULE, tmp_path, path=sock)
    assert (again["changed"], again["state"]) == (False, "absent")

    started = start_as_an_init_script_does(server, host)
    assert started.returncode == 0, started
    server.pid = int(wait_for(lambda: server.pidfile.is_file() and server.pidfile.read_text().strip(), "the pidfile"))
    wait_for(lambda: server.client_rc("ping") == 0, "fail2ban-server to answer ping")


def start_as_an_init_script_does(server: Fail2ban, host: Host) -> subprocess.CompletedProcess[str]:
    """`fail2ban-client start` without -x: it refuses to start beside a socket file."""
    return subprocess.run(
        ["fail2ban-client", "-c", str(server.conf), "-s", str(server.socket), "-p", str(server.pidfile), "start"],
        env={**BASE_ENV, "F2BSQL_CONFIG": str(host.config)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_socket_path_comes_from_the_last_file_fail2ban_reads(tmp_path: Path) -> None:
    conf = tmp_path / "fail2ban"
    (conf / "fail2ban.d").mkdir(parents=True)
    paths = {name: tmp_path / f"{name}.sock" for name in ("conf", "d-conf", "local", "d-local")}
    (conf / "fail2ban.conf").write_text(f"[Definition]\nloglevel = INFO\nsocket = {paths['conf']}\n")
    assert run_module(SOCKET_MODULE, tmp_path, config_dir=str(conf))["socket"] == str(paths["conf"])
    (conf / "fail2ban.d" / "10-site.conf").write_text(f"[Definition]\nsocket = {paths['d-conf']}\n")
    assert run_module(SOCKET_MODULE, tmp_path, config_dir=str(conf))["socket"] == str(paths["d-conf"])
    (conf / "fail2ban.local").write_text(f"[Definition]\nsocket = {paths['local']}\n")
    assert run_module(SOCKET_MODULE, tmp_path, config_dir=str(conf))["socket"] == str(paths["local"])
    (conf / "fail2ban.d" / "20-site.local").write_text(f"[Definition]\nsocket = {paths['d-local']}\n")
    assert run_module(SOCKET_MODULE, tmp_path, config_dir=str(conf))["socket"] == str(paths["d-local"])

    # A socket that nobody listens on any more, at that path: removed.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(paths["d-local"]))
    stale.close()
    result = run_module(SOCKET_MODULE, tmp_path, config_dir=str(conf))
    assert (result["changed"], result["state"]) == (True, "stale")
    assert not paths["d-local"].exists()


def test_default_socket_is_fail2bans_own(tmp_path: Path) -> None:
    result = run_module(SOCKET_MODULE, tmp_path, check_mode=True, config_dir=str(tmp_path / "none"))
    assert result["socket"] == "/var/run/fail2ban/fail2ban.sock"


def test_a_file_that_is_not_a_socket_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "fail2ban.sock"
    path.write_text("someone's data\n")
    result = run_module(SOCKET_MODULE, tmp_path, path=str(path))
    assert result["failed"] is True
    assert result["msg"] == f"{path} is fail2ban's socket path but not a socket: move it away, then run again"
    assert path.read_text() == "someone's data\n"


def test_files_written_in_one_call_and_a_dropped_one_removed(tmp_path: Path) -> None:
    dest = tmp_path / "f2bsql_host"
    (dest / "__pycache__").mkdir(parents=True)
    (dest / "old.py").write_text("# a module the new version dropped\n")
    (dest / "same.py").write_text("same = 1\n")
    (dest / "same.py").chmod(0o600)
    (tmp_path / "elsewhere.py").write_text("x = 1\n")
    (dest / "link.py").symlink_to(tmp_path / "elsewhere.py")
    files = {"same.py": "same = 1\n", "new.py": "new = 'é'\n"}
    args = {"dest": str(dest), "files": files, "mode": "0644", "exclusive": True}

    checked = run_module(FILES_MODULE, tmp_path, check_mode=True, **args)
    assert (checked["changed"], checked["written"], checked["removed"]) == (True, ["new.py"], ["old.py"])
    assert sorted(path.name for path in dest.iterdir()) == ["__pycache__", "link.py", "old.py", "same.py"]
    assert (dest / "same.py").stat().st_mode & 0o777 == 0o600, "check mode changed a mode"

    done = run_module(FILES_MODULE, tmp_path, **args)
    assert (done["changed"], done["written"], done["removed"]) == (True, ["new.py"], ["old.py"])
    assert sorted(path.name for path in dest.iterdir()) == ["__pycache__", "link.py", "new.py", "same.py"]
    assert (dest / "new.py").read_text(encoding="utf-8") == "new = 'é'\n"
    assert {(dest / name).stat().st_mode & 0o777 for name in files} == {0o644}
    assert (tmp_path / "elsewhere.py").read_text() == "x = 1\n"

    again = run_module(FILES_MODULE, tmp_path, **args)
    assert (again["changed"], again["written"], again["removed"]) == (False, [], [])
    (dest / "same.py").write_text("same = 2\n")
    mended = run_module(FILES_MODULE, tmp_path, **{**args, "exclusive": False})
    assert (mended["changed"], mended["written"]) == (True, ["same.py"])
    assert (dest / "same.py").read_text() == "same = 1\n"


def test_files_in_check_mode_before_their_directory_exists(tmp_path: Path) -> None:
    args = {"dest": str(tmp_path / "still-to-make"), "files": {"a.py": "a = 1\n"}, "exclusive": True}
    checked = run_module(FILES_MODULE, tmp_path, check_mode=True, **args)
    assert (checked["changed"], checked["written"], checked["removed"]) == (True, ["a.py"], [])
    missing = run_module(FILES_MODULE, tmp_path, **args)
    assert missing["failed"] is True and missing["msg"] == f"{tmp_path / 'still-to-make'} is not a directory"


def test_files_refuses_what_is_not_a_plain_file_name(tmp_path: Path) -> None:
    for name in ("../escape.py", "sub/x.py", "..", ""):
        result = run_module(FILES_MODULE, tmp_path, dest=str(tmp_path), files={name: "x\n"})
        assert result["failed"] is True and "is not a plain file name" in result["msg"], result
    assert not (tmp_path.parent / "escape.py").exists()


def read_jails(config: Path, **args: str) -> dict[str, Any]:
    """f2bsql_fail2ban_jails run by Ansible as the role runs it (its module_utils on the path)."""
    role = REPO / "roles" / "f2bsql_fail2ban"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local", "-o",
            "-e", "ansible_python_interpreter=/usr/bin/python3", "-m", "f2bsql_fail2ban_jails",
            "-a", json.dumps({"config_dir": str(config), **args}),
        ],
        env={**BASE_ENV, "ANSIBLE_LIBRARY": str(role / "library"),
             "ANSIBLE_MODULE_UTILS": str(role / "module_utils")},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.split(" => ", 1)[1])
    return result


def test_the_fleet_jail_keeps_the_hosts_ignoreip_as_a_value_not_a_reference(tmp_path: Path) -> None:
    """The role writes the host's ignoreip into the shared jail as fail2ban reads it without the
    overlay: an earlier [f2bsql-fleet] section's, else [DEFAULT]'s, else none. (fail2ban's
    %(known/ignoreip)s would fail the whole configuration where [DEFAULT] has none, as Debian's
    jail.conf has none.)"""
    jail = "[one]\nenabled = true\nfilter =\nbackend = polling\nlogpath = /dev/null\naction =\n"
    cases = {
        "none": ("[DEFAULT]\nbantime = 60\n" + jail, ""),
        "default": ("[DEFAULT]\nignoreip = 127.0.0.1/8  ::1\n    10.0.0.0/8\n" + jail, "127.0.0.1/8 ::1 10.0.0.0/8"),
        "own": ("[DEFAULT]\nignoreip = 127.0.0.1/8\n[f2bsql-fleet]\nignoreip = %(known/ignoreip)s 192.0.2.1\n" + jail,
                "127.0.0.1/8 192.0.2.1"),
    }  # fmt: skip
    for name, (text, expected) in cases.items():
        config = tmp_path / name
        config.mkdir()
        (config / "jail.conf").write_text(text, encoding="utf-8")
        shutil.copy("/etc/fail2ban/fail2ban.conf", config / "fail2ban.conf")
        found = read_jails(config, ignoreip_of="f2bsql-fleet")
        assert (found["ignoreip"], found["enabled"]) == (expected, ["one"]), (name, found)


SETTINGS_MODULE = REPO / "roles" / "f2bsql_iredadmin" / "library" / "f2bsql_settings_keys.py"


def test_settings_keys_set_as_lineinfile_would_in_one_write(tmp_path: Path) -> None:
    """Each key: its last line replaced, else appended (after a newline the file lacked); null
    removes every line of it; other lines, owner and mode stay; the password never shows."""
    settings = tmp_path / "settings.py"
    original = (
        "# iRedAdmin-Pro\nfail2ban_enabled = False\nfail2ban_db_host = 'old'\nfail2ban_enabled = False\n"
        "fail2ban_db_password = 'old-secret'\nfail2ban_db_portal = 1\nlast = 'é'"
    )
    settings.write_text(original, encoding="utf-8")
    settings.chmod(0o640)
    args = {
        "path": str(settings),
        "lines": {"fail2ban_enabled": "fail2ban_enabled = True", "fail2ban_db_port": "fail2ban_db_port = '3306'",
                  "fail2ban_db_host": None},
        "secret_lines": {"fail2ban_db_password": "fail2ban_db_password = 'n3w-secret'"},
        "_ansible_diff": True,
    }  # fmt: skip
    expected = (
        "# iRedAdmin-Pro\nfail2ban_enabled = False\nfail2ban_enabled = True\n"
        "fail2ban_db_password = 'n3w-secret'\nfail2ban_db_portal = 1\nlast = 'é'\nfail2ban_db_port = '3306'\n"
    )

    checked = run_module(SETTINGS_MODULE, tmp_path, check_mode=True, **args)
    assert (checked["changed"], checked["changed_keys"]) == (
        True,
        ["fail2ban_db_host", "fail2ban_db_password", "fail2ban_db_port", "fail2ban_enabled"],
    )
    assert settings.read_text(encoding="utf-8") == original, "check mode wrote"
    assert "old-secret" not in json.dumps(checked) and "n3w-secret" not in json.dumps(checked)
    assert checked["diff"]["after"] == (
        "fail2ban_db_password = ******** (changed)\nfail2ban_db_port = '3306'\n"
        "fail2ban_enabled = False\nfail2ban_enabled = True\n"
    )

    done = run_module(SETTINGS_MODULE, tmp_path, **args)
    assert done["changed"] is True and "n3w-secret" not in json.dumps(done)
    assert settings.read_text(encoding="utf-8") == expected
    assert settings.stat().st_mode & 0o777 == 0o640
    again = run_module(SETTINGS_MODULE, tmp_path, **args)
    assert (again["changed"], again["changed_keys"]) == (False, [])
    assert settings.read_text(encoding="utf-8") == expected

    # A link is followed (as lineinfile does): its target rewritten, the link left a link, and no
    # temporary file (it held the password) left beside it.
    link = tmp_path / "link.py"
    link.symlink_to(settings)
    undone = run_module(SETTINGS_MODULE, tmp_path, path=str(link), lines={"fail2ban_db_port": None})
    assert (undone["changed"], link.is_symlink()) == (True, True)
    assert "fail2ban_db_port = " not in settings.read_text(encoding="utf-8")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["args.json", "link.py", "settings.py"]


def test_settings_keys_refuses_lines_that_do_not_set_their_key(tmp_path: Path) -> None:
    settings = tmp_path / "settings.py"
    settings.write_text("a = 1\n")
    for lines, message in (
        ({"fail2ban_enabled": "other = True"}, "does not set it"),
        ({"fail2ban_enabled": "fail2ban_enabled = True\nx = 1"}, "not one line"),
        ({"bad key": "bad key = 1"}, "not a Python name"),
    ):
        result = run_module(SETTINGS_MODULE, tmp_path, path=str(settings), lines=lines)
        assert result["failed"] is True and message in result["msg"], result
    assert settings.read_text() == "a = 1\n"
    missing = run_module(SETTINGS_MODULE, tmp_path, path=str(tmp_path / "none.py"), lines={"a": "a = 2"})
    assert missing["failed"] is True and missing["msg"].endswith("none.py does not exist")
