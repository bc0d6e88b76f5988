"""Reverse DNS names of banned addresses, filled in by the cron run, off the ban path."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence

from .checks import global_address, is_hostname

RDNS_WORKERS = 16


def reverse_names(ips: Sequence[str], budget: float) -> dict[str, str]:
    """PTR names of these addresses, looked up in parallel within `budget` seconds.

    Lookups still running at the deadline are abandoned (daemon threads), so an unreachable
    DNS server costs the budget once, not a timeout per address. Non-public addresses and
    addresses without a usable name map to ''; addresses not answered in time are absent.
    """
    answers: dict[str, str] = {}
    todo: list[str] = []
    for ip in ips:
        try:
            public = "/" not in ip and global_address(ip) is not None
        except ValueError:
            public = False
        if public:
            todo.append(ip)
        else:
            answers[ip] = ""
    lock = threading.Lock()

    def work(queue: list[str]) -> None:
        while True:
            with lock:
                if not queue:
                    return
                ip = queue.pop()
            try:
                name = socket.gethostbyaddr(ip)[0].rstrip(".")
            except (OSError, UnicodeError):
                name = ""
            if not is_hostname(name):
                name = ""
            with lock:
                answers[ip] = name

    queue = list(reversed(todo))
    workers = [threading.Thread(target=work, args=(queue,), daemon=True) for _ in range(min(RDNS_WORKERS, len(todo)))]
    deadline = time.monotonic() + budget
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return dict(answers)
