# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible connection to a running podman container through `podman exec`, for molecule/fresh.

The containers.podman collection has such a plugin, but it comes from Ansible Galaxy, which the
CI machines cannot reach; ansible-core has none. This one is the minimum Molecule needs: run a
command (with pipelining), copy a file in, copy a file out. The containers run as root, so
`become` (to postgres, say) needs no password and no prompt handling.

As root, and with nsenter at hand, a command enters the container's namespaces and root
directory itself, with the environment and umask of the container's first process, instead of
through a `podman exec`: each podman process costs about 0.12 s of CPU, and a scenario runs well
over a thousand (one backend of molecule/fleet took 394 s of the machine's CPU with them, 268 s
without). Unlike `podman exec`, the command runs with root's full capabilities, no seccomp
profile, this machine's resource limits and cgroup, as on a real host; the end of the container
still ends it (it lives in the container's PID namespace). A container it cannot enter (a remote
podman, --cgroups=disabled) is reached with `podman exec`, as is every container with
`ansible_podman_exec_enter: podman` (or F2BSQL_PODMAN_EXEC_ENTER=podman).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

DOCUMENTATION = """
    name: podman_exec
    short_description: run tasks in a local podman container (podman exec or nsenter)
    description:
        - Runs commands in a running container of the local podman with C(podman exec),
          and copies files with C(podman exec ... cat). Molecule's fresh scenario uses it.
        - As root with nsenter installed, it enters the container's namespaces directly
          instead (the same command, without a podman process per command).
    author: f2bsql
    options:
        remote_addr:
            description: The name or id of the container.
            default: inventory_hostname
            type: str
            vars:
                - name: inventory_hostname
                - name: ansible_host
        podman_executable:
            description: The podman command.
            default: podman
            type: str
            vars:
                - name: ansible_podman_executable
            env:
                - name: MOLECULE_PODMAN_EXECUTABLE
        enter:
            description:
                - How a command gets into the container. C(auto) is C(nsenter) as root where
                  nsenter is installed, else C(podman) (C(podman exec)).
            default: auto
            type: str
            choices: [auto, nsenter, podman]
            vars:
                - name: ansible_podman_exec_enter
            env:
                - name: F2BSQL_PODMAN_EXEC_ENTER
    extends_documentation_fragment:
        - connection_pipelining
"""

display = Display()

#: Where the container's process found by `podman inspect` is remembered, per container, so that a
#: task's new connection does not ask podman again (Ansible makes a connection per task and host).
CACHE = "MOLECULE_EPHEMERAL_DIRECTORY"


def identity(pid: int) -> tuple[str, str] | None:
    """The start time (/proc/PID/stat, field 22) and cgroups of a process, None if there is none:
    the pid and its start time name one process, the cgroups its container (podman puts
    `libpod-<id>` in every path, with cgroupfs and with systemd, cgroup v1 and v2)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19], cgroups


class NotRunning(AnsibleConnectionFailure):  # type: ignore[misc]
    """podman knows no running container of that name: podman exec would fail too."""


def in_container(cgroups: str, container_id: str) -> bool:
    return re.search(rf"/libpod-{re.escape(container_id)}(\.scope)?(/|$)", cgroups, re.M) is not None


class Connection(ConnectionBase):
    """A running podman container, reached with `podman exec` or by entering its namespaces."""

    transport = "podman_exec"
    has_pipelining = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._podman: str | None = None
        self._container = ""
        # With nsenter: the command that enters the container, and the environment and umask of
        # the container's first process, which the command gets (as podman exec gives them).
        self._enter: list[str] | None = None
        self._env: dict[bytes, bytes] = {}
        self._umask = 0o022

    def _connect(self) -> Connection:
        if not self._connected:
            podman = shutil.which(self.get_option("podman_executable"))
            if podman is None:
                raise AnsibleConnectionFailure(f"{self.get_option('podman_executable')} not found on PATH")
            self._podman = podman
            self._container = self.get_option("remote_addr")
            enter = self.get_option("enter")
            nsenter = shutil.which("nsenter")
            if enter == "nsenter" and (nsenter is None or os.geteuid() != 0):
                raise AnsibleConnectionFailure("podman_exec: enter=nsenter needs root and nsenter")
            if enter != "podman" and nsenter is not None and os.geteuid() == 0:
                try:
                    self._enter, self._env, self._umask = self._nsenter(nsenter)
                except AnsibleConnectionFailure as error:
                    if enter == "nsenter" or isinstance(error, NotRunning):
                        raise
                    # auto: a container this machine cannot enter (podman-remote, another pid
                    # namespace, --cgroups=disabled) is still reached with podman exec.
                    display.vvv(f"{error}; using podman exec", host=self._container)
            display.vvv(
                f"PODMAN EXEC CONNECTION TO {self._container} ({'nsenter' if self._enter else 'podman exec'})",
                host=self._container,
            )
            self._connected = True
        return self

    def _container_pid(self) -> int:
        """The host pid of the container's first process, remembered across tasks. Only a local
        container's: the process must be in the container's cgroup (not so with podman-remote)."""
        directory = os.environ.get(CACHE)
        cache = Path(directory, "podman_exec", self._container) if directory else None
        if cache is not None:
            try:
                cached, started, container_id = cache.read_text().split()
                found = identity(int(cached))
                if found is not None and found[0] == started and in_container(found[1], container_id):
                    return int(cached)
            except (OSError, ValueError):
                pass
        assert self._podman is not None
        inspect = subprocess.run(
            [self._podman, "inspect", "--type", "container", "--format", "{{.State.Pid}} {{.Id}}", self._container],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            pid_text, container_id = inspect.stdout.split()
            pid = int(pid_text)
            if pid <= 0:  # podman's pid of a stopped container
                raise ValueError(pid)
        except ValueError:
            raise NotRunning(
                f"podman_exec: container {self._container} not found or not running: {inspect.stderr.strip()}"
            ) from None
        found = identity(pid)
        if found is None or not in_container(found[1], container_id):
            raise AnsibleConnectionFailure(
                f"podman_exec: process {pid} of container {self._container} is not in its cgroup on this"
                " machine (a remote podman, or --cgroups=disabled): nsenter cannot enter it"
            )
        if cache is not None:
            try:
                cache.parent.mkdir(mode=0o700, exist_ok=True)
                with tempfile.NamedTemporaryFile("w", dir=cache.parent, delete=False) as new:
                    new.write(f"{pid} {found[0]} {container_id}\n")
                os.replace(new.name, cache)  # whole or not at all, for the other hosts' workers
            except OSError as error:  # only a cache: the next task asks podman again
                display.vvv(f"podman_exec: not cached: {error}", host=self._container)
        return pid

    def _nsenter(self, nsenter: str) -> tuple[list[str], dict[bytes, bytes], int]:
        """nsenter into every namespace of the container, its root and working directory; the
        environment and umask of its first process. The environment goes to the command as its
        environment, never on its command line (where every local user could read it)."""
        pid = self._container_pid()
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError as error:
            message = f"podman_exec: cannot read the environment of {self._container}: {error}"
            raise AnsibleConnectionFailure(message) from error
        umask = re.search(r"^Umask:\s*([0-7]+)", status, re.M)
        env = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
        command = [nsenter, "--target", str(pid), "--all", "--root", "--wd", "--"]
        return command, env, int(umask[1], 8) if umask else 0o022

    def _podman_exec(self, argv: list[str], stdin: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
        assert self._podman is not None
        if self._enter:
            return subprocess.Popen(
                [*self._enter, *argv],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                umask=self._umask,
            )
        command = [self._podman, "exec", "-i", self._container, *argv]
        return subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        become = self.become if sudoable else None
        if become is not None and become.expect_prompt():
            raise AnsibleConnectionFailure(
                "podman_exec: become with a password is not supported (containers run as root)"
            )
        display.vvv(f"EXEC {cmd}", host=self._container)
        process = self._podman_exec(["/bin/sh", "-c", cmd])
        stdout, stderr = process.communicate(in_data)
        # The become plugin prefixes the command with `echo <success marker>`; a connection that
        # does not wait for it (nothing to wait for here: no password) must strip it itself.
        if become is not None and become.success and become.check_success(stdout):
            stdout = become.strip_become_success(stdout)
        return process.returncode, stdout, stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._container)
        try:
            source = open(to_bytes(in_path, errors="surrogate_or_strict"), "rb")  # noqa: SIM115
        except FileNotFoundError as error:
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}") from error
        with source:
            process = self._podman_exec(["/bin/sh", "-c", 'cat > "$0"', out_path], stdin=source)
            _, stderr = process.communicate()
        if process.returncode != 0:
            raise AnsibleError(f"podman_exec: failed to write {out_path}: {stderr.decode(errors='replace')}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._container)
        process = self._podman_exec(["cat", in_path], stdin=subprocess.DEVNULL)
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise AnsibleError(f"podman_exec: failed to read {in_path}: {stderr.decode(errors='replace')}")
        with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as target:
            target.write(stdout)

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        self._connected = False
