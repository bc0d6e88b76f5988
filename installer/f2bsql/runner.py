"""Run a bundled playbook on localhost: secrets in a 0600 file, progress from task events.

ansible-playbook's own (human) output goes to the run log, and to the terminal with -v; the
installer's callback plugin (`f2bsql_events`) sends one JSON event per task over a pipe,
which becomes one progress line per task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from f2bsql.data import callback_dir, data_dir
from f2bsql.errors import F2bsqlError, PreconditionError

#: The run log: what was found, planned and done; never a password (see RunLog.scrub).
LOG_FILE = Path("/var/log/f2bsql-install.log")
MASK = "********"
#: The distro's python3, which Ansible's modules run on here (its DB drivers come from the
#: distro); interpreter discovery would take whatever python3.x is first on PATH.
DISTRO_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3", "/usr/libexec/platform-python")


class RunLog:
    """Append-only log, mode 0600, with every known secret masked before it is written."""

    def __init__(self, path: Path | None, secrets: list[str]) -> None:
        self.path = path
        self._secrets = [s for s in secrets if s]
        self._fh: TextIO | None = None
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)  # an older log may have had a wider mode
            self._fh = os.fdopen(fd, "a", encoding="utf-8")

    def add_secret(self, secret: str) -> None:
        if secret:
            self._secrets.append(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def write(self, text: str) -> None:
        if self._fh is not None:
            self._fh.write(self.scrub(text))
            self._fh.flush()

    def line(self, text: str) -> None:
        self.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclasses.dataclass
class TaskEvent:
    status: str  # ok | changed | failed | ignored | skipped
    task: str
    msg: str
    diff: str


@dataclasses.dataclass
class RunResult:
    returncode: int
    events: list[TaskEvent]
    stats: dict[str, int]
    tail: list[str]  # the last lines of Ansible's own output, for errors before any task

    @property
    def changed(self) -> list[TaskEvent]:
        return [e for e in self.events if e.status == "changed"]

    @property
    def failed(self) -> list[TaskEvent]:
        return [e for e in self.events if e.status == "failed"]


def find_ansible_playbook() -> str:
    """ansible-playbook of the installer's own environment (venv, pipx), else of PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise PreconditionError("ansible-playbook not found beside python or on PATH: reinstall f2bsql")
    return found


@contextlib.contextmanager
def private_vars_file(extra_vars: Mapping[str, Any]) -> Iterator[Path]:
    """The playbook's variables, password included, in a 0600 file removed afterwards."""
    tmpdir = Path(tempfile.mkdtemp(prefix="f2bsql-"))  # 0700
    path = tmpdir / "vars.json"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(extra_vars, fh)
        yield path
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def ansible_env(event_fd: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_ROLES_PATH": str(data_dir() / "roles"),
            "ANSIBLE_CALLBACK_PLUGINS": str(callback_dir()),
            "ANSIBLE_CALLBACKS_ENABLED": "f2bsql_events",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "1",
            "F2BSQL_EVENT_FD": str(event_fd),
        }
    )
    distro_python = next((p for p in DISTRO_PYTHONS if os.access(p, os.X_OK)), None)
    if distro_python is not None:
        env["ANSIBLE_PYTHON_INTERPRETER"] = distro_python
    # Only the installer's own settings count: no ansible.cfg of whatever directory we run in.
    env["ANSIBLE_CONFIG"] = str(Path(__file__).with_name("ansible.cfg"))
    return env


def run_playbook(
    playbook: Path,
    extra_vars: Mapping[str, Any],
    *,
    check: bool,
    verbose: bool,
    log: RunLog,
    on_event: Callable[[TaskEvent], None],
    inventory: str = "localhost,",
) -> RunResult:
    """Run `playbook` against localhost; return its events once it has finished.

    `inventory` is "localhost," or the text of an inventory file (kept beside the variables).
    """
    cmd = [find_ansible_playbook(), "-c", "local", str(playbook)]
    if check:
        cmd += ["--check", "--diff"]
    if verbose:
        cmd.append("-v")
    events: list[TaskEvent] = []
    stats: dict[str, int] = {}
    tail: list[str] = []
    with private_vars_file(extra_vars) as vars_file:
        if inventory.endswith(","):
            cmd[1:1] = ["-i", inventory]
        else:
            inventory_file = vars_file.with_name("inventory.ini")
            inventory_file.write_text(inventory, encoding="utf-8")
            cmd[1:1] = ["-i", str(inventory_file)]
        cmd += ["-e", f"@{vars_file}"]
        log.line("running: " + " ".join(cmd))
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=ansible_env(write_fd),
                pass_fds=(write_fd,),
                cwd=data_dir(),
            )
        except OSError as exc:
            os.close(read_fd)
            raise F2bsqlError(f"cannot start ansible-playbook: {exc}") from exc
        finally:
            os.close(write_fd)
        assert proc.stdout is not None
        buffers = {proc.stdout.fileno(): b"", read_fd: b""}
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ)
        sel.register(read_fd, selectors.EVENT_READ)
        open_fds = set(buffers)
        try:
            while open_fds:
                for key, _ in sel.select(timeout=1.0):
                    fd = int(key.fd)
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        sel.unregister(fd)
                        open_fds.discard(fd)
                        chunk = b"\n" if buffers[fd] else b""
                    buffers[fd] += chunk
                    *lines, buffers[fd] = buffers[fd].split(b"\n")
                    for raw in lines:
                        text = raw.decode("utf-8", errors="replace")
                        if fd == read_fd:
                            _handle_event(text, events, stats, on_event)
                        else:
                            log.write(text + "\n")
                            if text.strip():
                                tail[:] = [*tail[-4:], log.scrub(text.strip())]
                            if verbose:
                                print(log.scrub(text), flush=True)
                if proc.poll() is not None and not sel.select(timeout=0.2):
                    # ansible-playbook is gone; a daemon it started may hold a pipe open.
                    break
        finally:
            sel.close()
            os.close(read_fd)
            proc.stdout.close()
            returncode = proc.wait()
    log.line(f"ansible-playbook exited {returncode}; stats {stats}")
    return RunResult(returncode, events, stats, tail)


def _handle_event(
    text: str, events: list[TaskEvent], stats: dict[str, int], on_event: Callable[[TaskEvent], None]
) -> None:
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return
    if not isinstance(event, dict):
        return
    if event.get("e") == "result":
        item = TaskEvent(
            status=str(event.get("status", "")),
            task=str(event.get("task", "")),
            msg=str(event.get("msg", "")),
            diff=str(event.get("diff", "")),
        )
        events.append(item)
        on_event(item)
    elif event.get("e") == "stats":
        stats.update({k: int(v) for k, v in event.items() if k != "e" and isinstance(v, int)})
