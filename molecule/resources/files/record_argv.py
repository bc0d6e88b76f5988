"""Record every process command line this host shows, each new one once, in a file (Linux).

prepare.yml starts it detached; verify.yml looks for the password in the file. It reads
/proc/<pid>/cmdline every 50 ms itself: the `ps` and `sleep` loop it replaces started two processes
per look (forty a second), which cost a container a tenth of a core and the scenario's other hosts
their share of it. A command line seen before is not written again, so the file stays small.

    python3 record_argv.py FILE
"""

from __future__ import annotations

import os
import sys
import time

INTERVAL = 0.05


def main(path: str) -> None:
    seen: set[bytes] = set()
    with open(path, "ab", buffering=0) as log:
        while True:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as source:
                        argv = source.read()
                except OSError:  # gone since the listing
                    continue
                if argv and argv not in seen:
                    seen.add(argv)
                    log.write(argv.rstrip(b"\0").replace(b"\0", b" ") + b"\n")
            time.sleep(INTERVAL)


if __name__ == "__main__":
    main(sys.argv[1])
