"""playbooks/site.yml in a fleet whose database server is not in the run.

The mail hosts of a fleet log in with the fleet's one password, which a run learns on the
database server or is given. With the server left out (`--limit`) or unreachable, a mail host
would get the password of its own old credential file, or a new one the server never heard of,
and spool every ban for ever. The run must stop in its first play with one clear message and
change nothing, unless the password is given.

Every run here is `--check`: should the guard ever let one through, it still changes nothing on
this machine (and the assertions on where it stopped fail).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from testbed import REPO

PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
LOCAL = "localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3"


def inventory(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "inventory.ini"
    path.write_text(f"[f2bsql_database]\n{database}\n\n[f2bsql_fail2ban]\n{LOCAL}\n", encoding="utf-8")
    return path


def play(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    return subprocess.run(
        [PLAYBOOK, "--check", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def recap(done: subprocess.CompletedProcess[str], host: str) -> dict[str, int]:
    [line] = re.findall(rf"^{re.escape(host)}\s+:(.*)$", done.stdout, re.MULTILINE)
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def stopped_by_the_guard(done: subprocess.CompletedProcess[str], returncode: int = 2) -> None:
    assert done.returncode == returncode, done.stdout[-3000:]
    assert "the database server (db.example.test) is not in this run" in done.stdout, done.stdout[-3000:]
    assert "localhost would get one it does not accept" in done.stdout
    # Play 1 stopped at the guard: no password was read or chosen, no role ran.
    assert "Read the MySQL credential file" not in done.stdout
    assert "PLAY [Provision the database]" not in done.stdout
    assert "PLAY [Record the bans of fail2ban in it]" not in done.stdout
    counts = recap(done, "localhost")
    assert counts["failed"] == 1 and counts["changed"] == 0, counts


def test_a_mail_host_limited_away_from_its_database_server_needs_the_password(tmp_path: Path) -> None:
    hosts = inventory(tmp_path, "db.example.test ansible_host=127.0.0.1")
    stopped_by_the_guard(play("-i", str(hosts), "playbooks/site.yml", "--limit", "localhost"))


def test_an_unreachable_database_server_stops_the_run_too(tmp_path: Path) -> None:
    # A closed port on this machine's loopback: ssh is refused at once.
    hosts = inventory(tmp_path, "db.example.test ansible_host=127.0.0.1 ansible_port=9 ansible_connection=ssh")
    done = play("-i", str(hosts), "playbooks/site.yml")
    stopped_by_the_guard(done, returncode=4)  # ansible-playbook's code when a host was unreachable
    assert recap(done, "db.example.test")["unreachable"] == 1


def test_with_the_password_given_the_guard_lets_the_run_on(tmp_path: Path) -> None:
    """The same guard, alone in a play with the same inventory: the password given is what it asks."""
    hosts = inventory(tmp_path, "db.example.test ansible_host=127.0.0.1")
    guard = tmp_path / "guard.yml"
    guard.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.import_tasks: {REPO / 'playbooks' / 'tasks' / 'fleet_guard.yml'}\n"
        "    - ansible.builtin.debug:\n        msg: past the guard\n",
        encoding="utf-8",
    )
    extra = tmp_path / "vault.yml"
    extra.write_text("f2bsql_database_password: the-fleets-password-42\n", encoding="utf-8")
    extra.chmod(0o600)
    given = play("-i", str(hosts), str(guard), "--limit", "localhost", "-e", f"@{extra}")
    assert given.returncode == 0 and "past the guard" in given.stdout, given.stdout[-3000:]
    assert "the-fleets-password-42" not in given.stdout + given.stderr
    missing = play("-i", str(hosts), str(guard), "--limit", "localhost")
    assert missing.returncode == 2 and "is not in this run" in missing.stdout, missing.stdout[-3000:]
    # With the database server in the run there is nothing to guard: it teaches the password.
    everyone = tmp_path / "one-host.ini"
    everyone.write_text(f"[f2bsql_database]\n{LOCAL}\n\n[f2bsql_fail2ban]\n{LOCAL}\n", encoding="utf-8")
    assert play("-i", str(everyone), str(guard)).returncode == 0


def test_a_run_that_would_make_up_a_password_for_a_fleet_with_hosts_left_out_stops(tmp_path: Path) -> None:
    """`--limit db1,mail3` to add mail3, no password given, and no host of the run holds it: a new
    one would not be the existing user's. The guard after the credential files were read stops
    it; a host of the run that holds it, the password given, or the whole fleet in the run pass."""
    hosts = tmp_path / "fleet.ini"
    hosts.write_text(
        f"[f2bsql_database]\n{LOCAL}\n\n[f2bsql_fail2ban]\n{LOCAL}\nmail1.example.test ansible_host=127.0.0.1\n",
        encoding="utf-8",
    )
    guard = tmp_path / "guard.yml"
    guard.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.import_tasks: {REPO / 'playbooks' / 'tasks' / 'fleet_password_guard.yml'}\n"
        "    - ansible.builtin.debug:\n        msg: past the guard\n",
        encoding="utf-8",
    )
    none_found = ("-e", '{"f2bsql_fail2ban_found_password": ""}')
    stopped = play("-i", str(hosts), str(guard), "--limit", "localhost", *none_found)
    assert stopped.returncode == 2, stopped.stdout[-3000:]
    assert "no host of this run holds the fleet's database password" in stopped.stdout
    assert "mail1.example.test (left out by --limit, or unreachable)" in stopped.stdout
    assert "past the guard" not in stopped.stdout
    found = play("-i", str(hosts), str(guard), "--limit", "localhost", "-e", '{"f2bsql_fail2ban_found_password": "x"}')
    assert found.returncode == 0 and "past the guard" in found.stdout, found.stdout[-3000:]
    extra = tmp_path / "vault.yml"
    extra.write_text("f2bsql_database_password: the-fleets-password-42\n", encoding="utf-8")
    extra.chmod(0o600)
    given = play("-i", str(hosts), str(guard), "--limit", "localhost", *none_found, "-e", f"@{extra}")
    assert given.returncode == 0 and "past the guard" in given.stdout, given.stdout[-3000:]
    # The whole fleet in the run (both hosts run locally here): a new fleet gets a new password.
    whole = play("-i", str(hosts), str(guard), *none_found, "-e", "ansible_connection=local")
    assert whole.returncode == 0 and "past the guard" in whole.stdout, whole.stdout[-3000:]


def test_a_mail_hosts_own_local_password_is_not_taken_for_the_fleets(tmp_path: Path) -> None:
    """read_password: on a mail host of a fleet whose database is another server, a credential
    naming this host's own server (iRedMail's single-host install: host=127.0.0.1, localhost,
    ::1, no host, or its .pgpass line `*:*:*:fail2ban:`) does not count: that password is not the
    fleet's user's. It counts on the database server itself and where the database is local.
    Credentials are read in the helper's order (the MySQL file, then .pgpass). One case per
    inventory host; each reads its own files (extra vars templated per host)."""
    mysql_local = "[client]\nhost=127.0.0.1\npassword=own\n"
    mysql_fleet = "[client]\nhost=db.example.test\npassword=fleet\n"
    cases = {
        # name: (backend, this host's database, /root/.my.cnf-fail2ban, .pgpass, password expected)
        "local_on_local": ("mysql", "127.0.0.1", mysql_local, None, "own"),
        "local_in_fleet": ("mysql", "db.example.test", mysql_local, None, ""),
        "no_host_in_fleet": ("mysql", "db.example.test", "[client]\nuser=fail2ban\npassword='own'\n", None, ""),
        "fleet_in_fleet": ("mysql", "db.example.test", mysql_fleet, None, "fleet"),
        "pg_local_in_fleet": ("pgsql", "db.example.test", None, "localhost:5432:fail2ban:fail2ban:own\n", ""),
        "pg_iredmail_in_fleet": ("pgsql", "db.example.test", None, "*:*:*:fail2ban:own\n", ""),
        "pg_v6_in_fleet": ("pgsql", "db.example.test", None, "\\:\\:1:5432:*:fail2ban:own\n", ""),
        "pg_fleet_in_fleet": ("pgsql", "db.example.test", None, "db.example.test:5432:*:fail2ban:fl\\:eet\n", "fl:eet"),
        "pg_local_on_local": ("pgsql", "127.0.0.1", None, "127.0.0.1:5432:fail2ban:fail2ban:own\n", "own"),
        # Shared bans on a PostgreSQL iRedMail host: the helper reads the file, not iRedMail's line.
        "pg_both_in_fleet": (
            "pgsql", "db.example.test", mysql_fleet + "[f2bsql]\nbackend = pgsql\n", "*:*:*:fail2ban:own\n", "fleet",
        ),
        # The database server, given its address for the clients (f2bsql_database_host).
        "db_itself": ("mysql", "db.example.test", mysql_local, None, "own"),
    }  # fmt: skip
    lines = {"f2bsql_database": [], "f2bsql_fail2ban": []}
    for name, (backend, database, mycnf, pgpass, _) in cases.items():
        home = tmp_path / name
        home.mkdir()
        if mycnf is not None:
            (home / "my.cnf").write_text(mycnf, encoding="utf-8")
        if pgpass is not None:
            (home / ".pgpass").write_text(pgpass, encoding="utf-8")
        lines["f2bsql_database" if name == "db_itself" else "f2bsql_fail2ban"].append(
            f"{name} ansible_connection=local ansible_python_interpreter=/usr/bin/python3"
            f" f2bsql_fail2ban_db_backend={backend} f2bsql_fail2ban_db_host={database}"
        )
    hosts = tmp_path / "cases.ini"
    hosts.write_text("".join(f"[{group}]\n" + "\n".join(names) + "\n\n" for group, names in lines.items()))
    reader = tmp_path / "read.yml"
    reader.write_text(
        "- hosts: all\n  gather_facts: true\n  tasks:\n"
        "    - ansible.builtin.import_role:\n"
        f"        name: {REPO / 'roles' / 'f2bsql_fail2ban'}\n"
        "        tasks_from: read_password\n"
        "    - ansible.builtin.debug:\n"
        '        msg: "found {{ inventory_hostname }} [{{ f2bsql_fail2ban_found_password }}]"\n',
        encoding="utf-8",
    )
    files = {
        "__f2bsql_fail2ban_mysql_credential_file": f"{tmp_path}/{{{{ inventory_hostname }}}}/my.cnf",
        "__f2bsql_fail2ban_pg_home": f"{tmp_path}/{{{{ inventory_hostname }}}}",
    }
    done = play("-i", str(hosts), str(reader), "-e", json.dumps(files))
    assert done.returncode == 0, done.stdout[-3000:]
    found = dict(re.findall(r'"msg": "found (\w+) \[(.*)\]"', done.stdout))
    assert found == {name: case[4] for name, case in cases.items()}


def test_shared_bans_on_a_postgresql_host_with_a_pgpass_get_their_keys(tmp_path: Path) -> None:
    """An iRedMail host with a PostgreSQL OS user keeps the helper's password in its .pgpass,
    which has no room for the shared bans' keys: with shared bans on it gets the credential file
    (backend = pgsql, the [f2bsql] keys) instead; off again, the .pgpass line takes over and the
    file f2bsql wrote goes. Someone else's credential file in the way still stops the run."""
    mycnf = tmp_path / "my.cnf-fail2ban"
    home = tmp_path / "pg"
    home.mkdir()
    playbook = tmp_path / "credentials.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: true\n  tasks:\n"
        + "".join(
            f"    - ansible.builtin.import_role:\n        name: {REPO / 'roles' / 'f2bsql_fail2ban'}\n"
            f"        tasks_from: {entry}\n"
            for entry in ("vars", "credentials")
        ),
        encoding="utf-8",
    )
    settings = {
        "__f2bsql_fail2ban_mysql_credential_file": str(mycnf),
        "__f2bsql_fail2ban_pg_home": str(home),
        "__f2bsql_fail2ban_pg_os_user": "root",
        "f2bsql_fail2ban_db_backend": "pgsql",
        "f2bsql_fail2ban_db_host": "127.0.0.1",
        "f2bsql_fail2ban_db_port": 5432,
        "f2bsql_fail2ban_db_password": "the-fleets-password-42",
    }

    def converge(fleet_bans: bool) -> subprocess.CompletedProcess[str]:
        extra = tmp_path / "vars.json"
        extra.write_text(json.dumps({**settings, "f2bsql_fail2ban_fleet_bans": fleet_bans}), encoding="utf-8")
        extra.chmod(0o600)
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
        command = [PLAYBOOK, "-i", "localhost,", "-c", "local"]
        return subprocess.run(
            [*command, "-e", "ansible_python_interpreter=/usr/bin/python3", "-e", f"@{extra}", str(playbook)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    shared = converge(True)
    assert shared.returncode == 0, shared.stdout[-3000:]
    text = mycnf.read_text(encoding="utf-8")
    assert "backend = pgsql" in text and "fleet_jail = f2bsql-fleet" in text, text
    assert mycnf.stat().st_mode & 0o777 == 0o600
    assert not (home / ".pgpass").exists()

    alone = converge(False)
    assert alone.returncode == 0, alone.stdout[-3000:]
    assert not mycnf.exists(), "the credential file f2bsql wrote stayed in front of the .pgpass line"
    assert (home / ".pgpass").read_text(encoding="utf-8") == (
        "127.0.0.1:5432:fail2ban:fail2ban:the-fleets-password-42\n"
    )

    mycnf.write_text("[client]\nuser=someone\npassword=theirs\n", encoding="utf-8")
    refused = converge(False)
    assert refused.returncode == 2, refused.stdout[-3000:]
    assert "exists, and the helper reads it before any .pgpass" in refused.stdout
    assert mycnf.read_text(encoding="utf-8") == "[client]\nuser=someone\npassword=theirs\n"
