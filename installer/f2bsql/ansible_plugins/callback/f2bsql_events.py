"""Ansible notification callback: one JSON line per task event, for f2bsql-install's progress.

ansible-playbook loads this file from its directory (ANSIBLE_CALLBACK_PLUGINS) and writes the
events to the file descriptor named by F2BSQL_EVENT_FD, a pipe the installer reads. Results
of `no_log` tasks arrive here already censored by Ansible; only task names, status, a short
message and (check mode) the rendered diff are sent.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase  # type: ignore[import-untyped]

DOCUMENTATION = """
    name: f2bsql_events
    type: notification
    short_description: task events as JSON lines for f2bsql-install
    description: Writes one JSON object per line to the file descriptor in F2BSQL_EVENT_FD.
"""


class CallbackModule(CallbackBase):  # type: ignore[misc]  # Ansible's base class is untyped
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "f2bsql_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        fd = os.environ.get("F2BSQL_EVENT_FD", "")
        self._out = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8") if fd.isdigit() else None

    def _emit(self, **event: Any) -> None:
        if self._out is not None:
            self._out.write(json.dumps(event, default=str) + "\n")

    @staticmethod
    def _task_name(task: Any) -> str:
        role = getattr(task, "_role", None)
        name = str(task.get_name()).strip()
        # A role found through a relative path is named by it (../roles/x): keep the last part.
        prefix = f"{str(role.get_name()).rstrip('/').rsplit('/', 1)[-1]} : " if role is not None else ""
        name = name.replace(f"{role.get_name()} : ", "") if role is not None else name
        return name if name.startswith(prefix) else prefix + name

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._emit(e="play", name=str(play.get_name()).strip())

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._emit(e="task", name=self._task_name(task))

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._emit(e="task", name=self._task_name(task), handler=True)

    def _result(self, status: str, result: Any) -> None:
        data = result._result
        msg = data.get("msg") or data.get("censored") or ""
        if status == "failed":
            detail = data.get("stderr") or data.get("module_stderr") or ""
            if detail and detail not in msg:
                msg = f"{msg} {detail}".strip()
        diff = ""
        if status == "changed" and data.get("diff"):
            diff = self._get_diff(data["diff"])
        self._emit(e="result", status=status, task=self._task_name(result._task), msg=str(msg)[:2000], diff=diff)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result("changed" if result._result.get("changed") else "ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result("skipped", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result("failed", result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        totals: dict[str, int] = {}
        for host in sorted(stats.processed):
            for key, value in stats.summarize(host).items():
                totals[key] = totals.get(key, 0) + int(value)
        self._emit(e="stats", **totals)
