"""Metrics: the cron run's textfile, scraped through a real node_exporter, and `f2bsql metrics`.

Debian's prometheus-node-exporter runs on a loopback port with only the textfile collector, on a
directory of the test's own; what the test does (bans, a panel's removal, the database stopped)
must show in what Prometheus would scrape.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import need_service
from testbed import BASE_ENV, DOVECOT_PORTS, closed_port, wait_for

if TYPE_CHECKING:
    from testbed import Database, Fail2ban, Host

EXPORTER = "prometheus-node-exporter"
SAMPLE = re.compile(r"^(f2bsql_[a-z_]+)(\{[^}]*\})? (\S+)$")


class Exporter:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        program = shutil.which(EXPORTER) or need_service(f"{EXPORTER} is not installed (Debian's package of it)")
        self.proc = subprocess.Popen(
            [
                program,
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={directory}",
            ],
            env=BASE_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(self._answers, "node_exporter to answer")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"node_exporter ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
        try:
            self.scrape_text()
        except OSError:
            return False
        return True

    def scrape_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as reply:
            return str(reply.read().decode("utf-8"))

    def scrape(self) -> dict[str, float]:
        """The f2bsql samples: 'name{labels}' -> value."""
        samples = {}
        for line in self.scrape_text().splitlines():
            match = SAMPLE.match(line)
            if match:
                samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return samples

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[Exporter]:
    directory = tmp_path / "textfile"
    directory.mkdir()
    running = Exporter(directory)
    yield running
    running.stop()


def test_the_cron_run_writes_what_node_exporter_serves(
    db: Database, host: Host, fail2ban: Fail2ban, exporter: Exporter
) -> None:
    host.write_config(metrics_dir=str(exporter.directory))
    fail2ban.banip("192.0.2.1", "192.0.2.2", "192.0.2.3")
    fail2ban.banip("192.0.2.9", jail="postfix")
    wait_for(lambda: len(db.banned()) == 4, "the rows of 4 bans")
    db.execute("UPDATE banned SET remove = 1 WHERE ip = %s", ("192.0.2.1",))
    began = time.time()
    host.ok("unban_db")
    name = host.name
    samples = exporter.scrape()
    assert samples[f'f2bsql_database_up{{host="{name}"}}'] == 1
    assert samples[f'f2bsql_bans{{host="{name}",jail="dovecot"}}'] == 2
    assert samples[f'f2bsql_bans{{host="{name}",jail="postfix"}}'] == 1
    assert samples[f'f2bsql_pending_removals{{host="{name}"}}'] == 0
    assert samples[f'f2bsql_spool_events{{host="{name}"}}'] == 0
    assert samples[f'f2bsql_unban_db_last_run_success{{host="{name}"}}'] == 1
    assert samples[f'f2bsql_unban_db_last_run_lifted_bans{{host="{name}"}}'] == 1
    end = samples[f'f2bsql_unban_db_last_run_timestamp_seconds{{host="{name}"}}']
    assert began <= end <= time.time()
    assert 0 < samples[f'f2bsql_unban_db_last_run_duration_seconds{{host="{name}"}}'] < 30
    # node_exporter read the file without complaint, and no half-written file is left beside it.
    assert "node_textfile_scrape_error 0" in exporter.scrape_text()
    assert sorted(path.name for path in exporter.directory.iterdir()) == ["f2bsql.prom"]
    # f2bsql metrics prints the same figures (the run's end and duration are the same record).
    printed = host.admin("metrics")
    assert printed.returncode == 0, str(printed)
    assert printed.stdout == (exporter.directory / "f2bsql.prom").read_text()


def test_a_stopped_database_shows_in_the_spool_figures(
    db: Database, host: Host, fail2ban: Fail2ban, exporter: Exporter
) -> None:
    host.write_config(metrics_dir=str(exporter.directory))
    host.ok("unban_db")
    name = host.name
    assert exporter.scrape()[f'f2bsql_spool_events{{host="{name}"}}'] == 0
    # The database is away (its port closed): bans go to the spool and cron's run fails.
    host.write_config(port=closed_port(), metrics_dir=str(exporter.directory))
    for ip in ("192.0.2.21", "192.0.2.22"):
        host.ok("ban", ip, DOVECOT_PORTS, "tcp", "dovecot", "3", "")
    time.sleep(1.1)
    assert host.run("unban_db").returncode == 1
    samples = exporter.scrape()
    assert samples[f'f2bsql_database_up{{host="{name}"}}'] == 0
    assert samples[f'f2bsql_spool_events{{host="{name}"}}'] == 2
    assert samples[f'f2bsql_spool_oldest_event_age_seconds{{host="{name}"}}'] >= 1
    assert samples[f'f2bsql_unban_db_last_run_success{{host="{name}"}}'] == 0
    assert not any(key.startswith("f2bsql_bans{") for key in samples)
    # Back: the spool drains, and the figures say so.
    host.write_config(metrics_dir=str(exporter.directory))
    host.ok("unban_db")
    samples = exporter.scrape()
    assert samples[f'f2bsql_spool_events{{host="{name}"}}'] == 0
    assert samples[f'f2bsql_database_up{{host="{name}"}}'] == 1
    assert samples[f'f2bsql_unban_db_last_run_success{{host="{name}"}}'] == 1
    assert len(db.banned()) == 0  # sync: fail2ban never held those two bans


def test_rejected_events_are_counted(db: Database, host: Host, exporter: Exporter) -> None:
    host.write_config(metrics_dir=str(exporter.directory))
    rejected = host.spool / "rejected"
    rejected.mkdir(parents=True)
    (rejected / "00000000000000000001-0000001-00000000.json").write_text("{}")
    printed = host.admin("metrics")
    assert f'f2bsql_spool_rejected_events{{host="{host.name}"}} 1\n' in printed.stdout, str(printed)


def test_nothing_is_written_without_the_directory(db: Database, host: Host, fail2ban: Fail2ban, tmp_path: Path) -> None:
    missing = tmp_path / "no-node-exporter-here"
    host.write_config(metrics_dir=str(missing))
    host.ok("unban_db")
    assert not missing.exists()
    # and the cron line's option says where (or off), over the settings file
    target = tmp_path / "given"
    target.mkdir()
    host.ok("unban_db", "--metrics-dir", str(target))
    assert [path.name for path in target.iterdir()] == ["f2bsql.prom"]
    shutil.rmtree(target)
    target.mkdir()
    host.write_config(metrics_dir=str(target))
    host.ok("unban_db", "--metrics-dir", "off")
    assert list(target.iterdir()) == []
