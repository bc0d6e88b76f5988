"""The cron run's work: lift the bans a panel marked, make this host's rows match fail2ban's
live bans, look up reverse DNS, prune the history, leave the figures for Prometheus.

Maintenance is a Runner (it replays the spool first, and records through the same database
connection) that also asks fail2ban-server; only `unban_db`, `sync` and `f2bsql unban --now`
load it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import time
from collections.abc import Iterator

from .checks import FAILURES_MAX, InvalidValue, check_ip, check_time, encode_loglines
from .db import GONE, REMOVED, SYNCED, Database, chunks
from .events import BanRow, ban_event
from .fail2ban import (
    RecordedBan,
    client_failed,
    fail2ban_client,
    fail2ban_database_bans,
    fail2ban_ignored,
    fail2ban_live,
    fail2ban_recorded_bans,
)
from .rdns import reverse_names
from .report import EXIT_FAILED, EXIT_OK, DatabaseUnavailable, EventRejected, Fail2banUnreachable, HelperError, log
from .runner import Runner
from .settings import Settings

RDNS_BATCH = 256  # addresses looked up per cron run
HISTORY_PRUNE_BATCH = 10_000  # history rows forgotten per cron run (a first run after long leaves more)
# Seconds cron's run may spend replaying the spool (it runs every minute).
CRON_REPLAY_BUDGET = 40.0


class Maintenance(Runner):
    """The cron-side commands; one run at a time per host (a lock in the spool directory)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.ran = False  # the last unban_db run held the maintenance lock (did the work)
        self.lifted = 0  # rows the last unban_db run lifted for a panel
        self.refused = 0  # rows sync found missing that the database refused (the run fails)

    @contextlib.contextmanager
    def _maintenance_lock(self) -> Iterator[bool]:
        """One cron-side run at a time (unban_db, sync): overlapping runs would act twice."""
        lock_path = os.path.join(self.settings.spool_dir, "unban_db.lock")
        try:
            os.makedirs(self.settings.spool_dir, mode=0o700, exist_ok=True)
            lock = open(lock_path, "a")  # noqa: SIM115
        except OSError as exc:
            raise HelperError(f"cannot lock {lock_path}: {exc}") from None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield True

    def unban_db(self) -> int:
        """Lift this host's bans that a panel marked remove = 1 and delete their rows; then `sync`,
        prune this host's history, and leave the figures of the run for Prometheus."""
        began, self.ran, self.lifted = time.time(), False, 0
        success = False
        try:
            code = self._maintain(lift=True)
            success = code == EXIT_OK
            return code
        finally:
            if self.ran:  # not when another run held the lock: that one reports
                self._report(began, success)

    def _report(self, began: float, success: bool) -> None:
        from .metrics import LastRun, collect, write_textfile  # only the cron run needs them

        now = time.time()
        try:
            LastRun(now, now - began, success, self.lifted).write(self.settings.spool_dir)
        except OSError as exc:
            log(f"cannot record this run in {self.settings.spool_dir}: {exc}", error=True)
        if self.settings.metrics_dir and os.path.isdir(self.settings.metrics_dir):
            write_textfile(self.settings.metrics_dir, collect(self.settings, self.db, now))

    def sync(self) -> int:
        """Make this host's rows match the bans fail2ban holds (see _sync)."""
        return self._maintain(lift=False)

    def _maintain(self, *, lift: bool) -> int:
        what = "unban_db" if lift else "sync"
        self.refused = 0
        with self._maintenance_lock() as locked:
            if not locked:
                log(f"another unban_db or sync run is still working; leaving it to finish ({what})")
                return EXIT_OK
            self.ran = True
            if not self.catch_up(budget=CRON_REPLAY_BUDGET):
                raise DatabaseUnavailable(
                    "database unavailable or spool not replayed yet; pending removals stay for the next run"
                )
            db = self.database()
            host = self.settings.hostname
            # This host's rows first, fail2ban's bans after: a ban that lands in between is in
            # fail2ban's list without a row (inserted twice is a no-op), never a row without a ban.
            rows = db.host_rows(host)
            jails = db.host_jails(host)
            pending = [row for row in rows if row[3]]
            failed = False
            try:
                live = fail2ban_live(self.settings)
            except Fail2banUnreachable:
                if not lift or pending:
                    raise
                # Nothing to lift and fail2ban stopped: its bans come back when it starts, and the
                # rows stay as they are. Not an error for cron to mail about every minute.
                log("fail2ban is not running: nothing to lift, rows left as they are")
            else:
                state = _JailStates(live, jails, rows, self._restoring(rows, live))
                lifted: dict[str, set[str]] = {}
                if lift:
                    failed, lifted = self._lift_removals(db, pending, state)
                self._sync(db, rows, jails, live, lifted, state)
                if lift and self.settings.fleet_jail:
                    failed = not self._share(db, live) or failed
            if lift and self.settings.rdns:
                self._fill_rdns(db)
            if lift and self.settings.history_days:
                before = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(
                    days=self.settings.history_days
                )
                pruned = db.prune_history(host, before, HISTORY_PRUNE_BATCH)
                if pruned:
                    log(f"history: forgot {pruned} ban(s) of this host that ended before {before:%Y-%m-%d %H:%M} UTC")
            return EXIT_FAILED if failed or self.refused else EXIT_OK

    def _restoring(self, rows: list[tuple[int, str, str, int]], live: dict[str, set[str]]) -> dict[str, set[str]]:
        """Per running jail, this host's rows' addresses that fail2ban's database holds as current bans
        but the jail does not hold yet: fail2ban restores its bans after a jail starts, in the jail's
        own time. Read only when some row's address is not live (no extra call otherwise)."""
        absent: dict[str, set[str]] = {}
        for _row_id, jail, ip, _remove in rows:
            if jail in live and ip not in live[jail]:
                absent.setdefault(jail, set()).add(ip)
        restoring: dict[str, set[str]] = {}
        now = time.time()
        for jail, ips in absent.items():
            recorded = fail2ban_database_bans(self.settings, jail) or {}
            waiting = {ip for ip in ips if ip in recorded and recorded[ip].current(now)}
            if waiting:
                restoring[jail] = waiting
                log(f"jail {jail} has {len(waiting)} ban(s) of its database not restored yet: left for the next run")
        return restoring

    def _lift_removals(
        self, db: Database, pending: list[tuple[int, str, str, int]], state: _JailStates
    ) -> tuple[bool, dict[str, set[str]]]:
        """Unban through fail2ban, one call per jail and batch; (some call failed?, lifted addresses)."""
        by_jail: dict[str, list[tuple[int, str]]] = {}
        for row_id, jail, ip, _remove in pending:
            by_jail.setdefault(jail, []).append((row_id, ip))
        failed = False
        lifted: dict[str, set[str]] = {}
        for jail, items in sorted(by_jail.items()):
            if not state.running(jail):
                if state.gone(jail):
                    # Nothing holds these bans any more; without this they would wait forever.
                    db.delete_ids([row_id for row_id, _ip in items], GONE)
                    log(f"jail {jail!r} is not running; removed {len(items)} stale row(s)")
                continue
            # A ban fail2ban has yet to restore would come back after an unbanip of it now, and the
            # panel's removal with it: it waits for the next run.
            items = [(row_id, ip) for row_id, ip in items if not state.restoring(jail, ip)]
            for chunk in chunks(items):
                valid = [ip for _row_id, ip in chunk if _valid_ip(ip)]
                if valid:
                    result = fail2ban_client(self.settings, "set", jail, "unbanip", *valid)
                    if result.returncode != 0:
                        log(f"fail2ban-client set {jail} unbanip failed: {client_failed(result)}", error=True)
                        failed = True
                        continue
                self.lifted += db.delete_ids([row_id for row_id, _ip in chunk], REMOVED)
                lifted.setdefault(jail, set()).update(valid)
                log(f"unbanned {len(valid)} address(es) from jail {jail}")
        return failed, lifted

    def _sync(
        self,
        db: Database,
        rows: list[tuple[int, str, str, int]],
        jails: dict[str, tuple[str, str]],
        live: dict[str, set[str]],
        lifted: dict[str, set[str]],
        state: _JailStates,
    ) -> None:
        """This host's rows of each jail fail2ban runs become its live bans.

        A row whose ban fail2ban no longer holds goes, unless a panel marked it (remove = 1: that is
        unban_db's); a ban without a row gets one, with fail2ban's ban time, in a jail whose
        banned_db action started on this host (table `jails`). Rows of jails fail2ban does not run
        are left alone while fail2ban is starting or the jail is known to this host; rows of a jail
        that is gone go.
        """
        host = self.settings.hostname
        stale: list[int] = []
        gone: list[int] = []
        held: dict[str, set[str]] = {}
        for row_id, jail, ip, remove in rows:
            if state.running(jail):
                held.setdefault(jail, set()).add(ip)
                if not remove and ip not in live[jail] and not state.restoring(jail, ip):
                    stale.append(row_id)
            elif state.gone(jail) and not remove:
                gone.append(row_id)
        for ids, why in ((stale, SYNCED), (gone, GONE)):
            if ids:
                removed = db.delete_ids(ids, why)
                log(f"sync: removed {removed} row(s) of bans fail2ban no longer holds ({why})")
        added = 0
        for jail in sorted(live):
            missing = live[jail] - held.get(jail, set()) - lifted.get(jail, set())
            if not missing or jail not in jails:
                continue
            ports, protocol = jails[jail]
            if not ports or not protocol:
                log(f"sync: jail {jail!r} holds {len(missing)} ban(s) without a row, but its ports are not"
                    " known yet (its banned_db action records them at its next start)", error=True)  # fmt: skip
                continue
            recorded = fail2ban_recorded_bans(self.settings, jail)
            made = []
            for ip in sorted(missing):
                if not _valid_ip(ip):
                    continue
                known = recorded.get(ip, RecordedBan(None, 0, ""))
                event = ban_event(
                    self.settings,
                    check_ip(ip),
                    ports,
                    protocol,
                    jail,
                    min(max(known.failures, 0), FAILURES_MAX),
                    encode_loglines([known.matches] if known.matches else []),
                    _epoch_or_none(known.time),
                )
                made.append(event.row)
            added += self._insert(db, made)
        if added:
            log(f"sync: added {added} row(s) for bans fail2ban holds without one (host {host})")

    def _share(self, db: Database, live: dict[str, set[str]]) -> bool:
        """Shared bans: the fleet jail holds what the fleet's other hosts ban, and nothing else.

        An address another host bans (in the fleet_from jails, or any) is banned here, unless this
        jail's ignoreip (or ignoreself) covers it, at most fleet_limit new ones a run, newest first;
        one no other host bans any more (unbanned, expired, marked by a panel, or banned longer
        ago than fleet_max_age: a retired host's rows) is lifted. The jail
        has no banned_db action: its bans make no rows, and so never travel back. False when
        fail2ban refused a call (the run fails, and the next one tries again).
        """
        jail = self.settings.fleet_jail
        if jail not in live:
            log(f"shared bans: jail {jail!r} does not run here (fail2ban-client reload?): not applied", error=True)
            return False
        try:
            found = db.fleet_bans(self.settings.hostname, jail, self._fleet_since(), self.settings.fleet_from)
            ignored, complete = fail2ban_ignored(self.settings, jail)
        except HelperError as exc:  # the rest of the cron run goes on
            log(f"shared bans: not applied this run: {exc}", error=True)
            return False
        # fail2ban's form of each address (a row may hold 2001:DB8::1 or 192.0.2.5/32), once.
        wanted = list(dict.fromkeys(check_ip(ip) for ip in found if _valid_ip(ip)))
        held = live[jail]
        allowed = [ip for ip in wanted if not _covered(ip, ignored)]
        lift = sorted(held - set(allowed))
        new = [ip for ip in allowed if ip not in held]
        if not complete and new:
            log(f"shared bans: an ignoreip name of jail {jail} did not resolve: no new bans this run", error=True)
            new = []
        if len(new) > self.settings.fleet_limit:
            log(f"shared bans: {len(new)} new, {self.settings.fleet_limit} applied this run (fleet_limit)")
            new = new[: self.settings.fleet_limit]
        ok = True
        for command, addresses in (("unbanip", lift), ("banip", new)):
            for chunk in chunks(addresses):
                result = fail2ban_client(self.settings, "set", jail, command, *chunk)
                if result.returncode != 0:
                    log(f"fail2ban-client set {jail} {command} failed: {client_failed(result)}", error=True)
                    ok = False
        if lift or new:
            log(f"shared bans: {len(new)} banned, {len(lift)} lifted in jail {jail}")
        return ok

    def _fleet_since(self) -> datetime.datetime:
        """The oldest ban time that still travels (naive UTC, as the rows' timestamps)."""
        floor = datetime.datetime(1970, 1, 2)  # within every backend's range: no limit
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)
        age = self.settings.fleet_max_age
        if not age or age >= (now - floor).total_seconds():
            return floor
        return now - datetime.timedelta(seconds=age)

    def _insert(self, db: Database, rows: list[BanRow]) -> int:
        """Insert rows sync found missing, a statement per batch (after a crash of fail2ban-server a
        whole burst may be missing); a batch the server refuses goes row by row, so that only the
        row it refuses stays out (and is logged). The rows inserted."""
        if len(rows) > 1:
            try:
                db.ban_rows(rows)
                return len(rows)
            except EventRejected:
                pass
        inserted = 0
        for row in rows:
            try:
                db.ban(row)
                inserted += 1
            except EventRejected as exc:
                self.refused += 1
                log(f"sync: the database refused the row of {row.ip} in jail {row.jail!r}: {exc}", error=True)
        return inserted

    def _fill_rdns(self, db: Database) -> None:
        """Reverse DNS for new rows, off the ban path, within the run's time budget."""
        rows = db.rdns_todo(self.settings.hostname, RDNS_BATCH)
        if not rows:
            return
        names = reverse_names(sorted({ip for _row_id, ip in rows}), self.settings.rdns_budget)
        for row_id, ip in rows:
            # Not answered within the budget: left '' rather than retried every minute.
            db.rdns_set(row_id, names.get(ip, ""))


class _JailStates:
    """What fail2ban says of each jail of this host, and what may be done with its rows.

    fail2ban's socket answers before its jails exist (the configuration arrives in one command
    after the server is up): while it runs no jail at all, nothing is touched. A jail that does
    not run but whose banned_db action started and never stopped (a crash, a start under way) is
    left alone too; only a jail that is neither running nor known is gone. A running jail restores
    its bans after its start, one by one: an address its database still holds as a current ban,
    not restored yet (`restoring`), is neither lifted nor counted stale until it is.
    """

    def __init__(
        self,
        live: dict[str, set[str]],
        jails: dict[str, tuple[str, str]],
        rows: list[tuple[int, str, str, int]],
        restoring: dict[str, set[str]] | None = None,
    ) -> None:
        self.live = live
        self.known = set(jails)
        self._restoring = restoring or {}
        self.starting = not live and bool(rows or jails)
        if self.starting:
            log("fail2ban runs no jail yet (starting?): this host's rows are left as they are")

    def running(self, jail: str) -> bool:
        return jail in self.live

    def gone(self, jail: str) -> bool:
        return not self.starting and jail not in self.live and jail not in self.known

    def restoring(self, jail: str, ip: str) -> bool:
        return ip in self._restoring.get(jail, ())


def _epoch_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        return check_time(str(value))
    except InvalidValue:
        return None


def _covered(ip: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether an address (or network) meets one of these: a network ban that holds an ignored
    address is left out too."""
    found = ipaddress.ip_network(ip, strict=False)
    return any(found.version == net.version and found.overlaps(net) for net in networks)


def _valid_ip(value: str) -> bool:
    try:
        check_ip(value)
    except InvalidValue:
        log(f"skipping invalid address {value!r} found in the database", error=True)
        return False
    return True
