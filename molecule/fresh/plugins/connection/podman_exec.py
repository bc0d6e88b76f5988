# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible connection to a running podman container through `podman exec`, for molecule/fresh.

The containers.podman collection has such a plugin, but it comes from Ansible Galaxy, which the
CI machines cannot reach; ansible-core has none. This one is the minimum Molecule needs: run a
command (with pipelining), copy a file in, copy a file out. The containers run as root, so
`become` (to postgres, say) needs no password and no prompt handling.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

DOCUMENTATION = """
    name: podman_exec
    short_description: run tasks in a local podman container with podman exec
    description:
        - Runs commands in a running container of the local podman with C(podman exec),
          and copies files with C(podman exec ... cat). Molecule's fresh scenario uses it.
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
    extends_documentation_fragment:
        - connection_pipelining
"""

display = Display()


class Connection(ConnectionBase):
    """A running podman container, reached with `podman exec`."""

    transport = "podman_exec"
    has_pipelining = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._podman: str | None = None
        self._container = ""

    def _connect(self) -> Connection:
        if not self._connected:
            podman = shutil.which(self.get_option("podman_executable"))
            if podman is None:
                raise AnsibleConnectionFailure(f"{self.get_option('podman_executable')} not found on PATH")
            self._podman = podman
            self._container = self.get_option("remote_addr")
            display.vvv(f"PODMAN EXEC CONNECTION TO {self._container}", host=self._container)
            self._connected = True
        return self

    def _podman_exec(self, argv: list[str], stdin: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
        assert self._podman is not None
        return subprocess.Popen(
            [self._podman, "exec", "-i", self._container, *argv],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

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
