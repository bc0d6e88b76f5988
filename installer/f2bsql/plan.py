"""From facts and options to a plan: what the playbook will be asked to do, and its variables.

Everything the user has to agree to is decided here, before anything runs; the checks that
fail raise UsageError (the command line asks for something impossible) or PreconditionError
(the host lacks something), so nothing is half-installed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from f2bsql.detect import DB_NAME, DB_USER, DEFAULT_PORTS, LOCAL_HOSTS, Facts, pgsql_home
from f2bsql.errors import PreconditionError, UsageError

LABELS = {"mysql": "MySQL/MariaDB", "pgsql": "PostgreSQL"}
#: The playbook variable that carries a reused password (only ever in the 0600 vars file).
VAR_PASSWORD = "f2bsql_database_password"  # noqa: S105 - a variable name, not a password
#: What the roles accept as a password (f2bsql_database/tasks/assert.yml).
PASSWORD_OK = re.compile(r"[^\s\"'\\]{8,}")
#: The OS families --install-missing knows how to install fail2ban and MariaDB on.
INSTALLABLE_FAMILIES = frozenset({"debian", "redhat"})


@dataclasses.dataclass(frozen=True)
class Options:
    """The command line, validated for syntax by argparse."""

    backend: str | None = None
    db_host: str | None = None
    db_port: int | None = None
    jails: tuple[str, ...] | None = None
    geoip: bool = True
    iredadmin: bool = True
    iredadmin_settings: Path | None = None
    check: bool = False
    uninstall: bool = False
    drop_database: bool = False
    install_missing: bool = False
    reset_password: bool = False


@dataclasses.dataclass
class Plan:
    uninstall: bool
    backend: str
    db_host: str  # "" for the local server
    db_port: int
    jails: list[str]
    geoip: bool
    iredadmin_settings: Path | None  # None: leave iRedAdmin-Pro alone
    password: str | None = dataclasses.field(repr=False)  # reused; None: the role generates one
    password_source: str
    credential_file: str
    drop_database: bool
    install: list[str]  # what --install-missing installs first: "fail2ban", "mariadb"
    notes: list[str]

    def lines(self) -> list[str]:
        where = f"{self.db_host}:{self.db_port}" if self.db_host else f"local server, port {self.db_port}"
        if self.uninstall:
            out = [
                "Remove the fail2ban SQL integration from this host:",
                "  helper, banned_db action, jail overlay, cron line, credential file"
                + (", iRedAdmin-Pro fail2ban keys" if self.iredadmin_settings else ""),
                f"  database {DB_NAME} on {LABELS[self.backend]} ({where}): "
                + ("DROPPED with its user" if self.drop_database else "kept"),
            ]
        else:
            out = ["Plan:"]
            if self.install:
                out.append(f"  install from the distro first: {', '.join(self.install)}")
            out += [
                f"  database {DB_NAME}, user {DB_USER} on {LABELS[self.backend]} ({where})",
                f"  password: {self.password_source}",
                f"  credential file: {self.credential_file}",
                "  helper /usr/local/bin/fail2ban_banned_db, action banned_db, cron line (unban_db)",
                f"  jails logging to SQL: {', '.join(self.jails) or '(those enabled once fail2ban is in)'}",
                f"  GeoIP country lookup: {'yes' if self.geoip else 'no'}",
                f"  iRedAdmin-Pro: {self.iredadmin_settings or 'not touched'}",
            ]
        out += [f"  note: {n}" for n in self.notes]
        return out


def credential_file_for(facts: Facts, backend: str) -> str:
    existing = facts.backends[backend].credential
    if existing is not None:
        return str(existing.source)
    if backend == "mysql":
        return "/root/.my.cnf-fail2ban"
    home = pgsql_home(facts.root)
    return f"{home[1] if home else '~postgres'}/.pgpass"


def choose_backend(facts: Facts, opts: Options) -> str:
    iredmail = facts.iredmail.sql_backend
    if opts.uninstall and opts.drop_database and opts.backend is None:
        # Drop where the database is, never on a server that merely answers.
        holding = [name for name in ("mysql", "pgsql") if facts.backends[name].has_database]
        if len(holding) == 2:
            raise UsageError(
                f"both MySQL/MariaDB and PostgreSQL hold a database {DB_NAME}: "
                "say which to drop with --backend mysql or --backend pgsql"
            )
        if holding:
            return holding[0]
    if opts.backend is not None:
        if iredmail is not None and opts.backend != iredmail and opts.iredadmin and not opts.uninstall:
            raise UsageError(
                f"--backend {opts.backend} differs from iRedMail's backend ({facts.iredmail.backend}, "
                f"{facts.iredmail.backend_source}); iRedAdmin-Pro reads the fail2ban database with "
                f"its own driver: use --backend {iredmail}, or add --no-iredadmin"
            )
        return opts.backend
    if iredmail is not None:
        return iredmail
    for name in ("mysql", "pgsql"):  # an earlier setup decides
        if facts.backends[name].credential is not None:
            return name
    for name in ("mysql", "pgsql"):
        if facts.backends[name].installed:
            return name
    return "mysql"  # the how-to's default; --install-missing brings MariaDB


def make_plan(facts: Facts, opts: Options) -> Plan:
    """Decide what to do, or raise before anything runs."""
    backend = choose_backend(facts, opts)
    info = facts.backends[backend]
    notes: list[str] = []
    install: list[str] = []
    remote = opts.db_host is not None and opts.db_host not in LOCAL_HOSTS

    # Usage first (exit 2), then what the host lacks (exit 3).
    jails = select_jails(facts, opts) if facts.fail2ban.present and not opts.uninstall else []
    if not opts.uninstall and not facts.fail2ban.present:
        if not opts.install_missing:
            raise PreconditionError(
                "fail2ban is not installed: install it (apt install fail2ban), or run again with --install-missing"
            )
        install.append("fail2ban")
    if not info.reachable and not (opts.uninstall and not opts.drop_database):
        if not info.installed and not remote and backend == "mysql" and opts.install_missing:
            install.append("mariadb")
        elif not info.installed and not remote:
            hint = "run again with --install-missing" if backend == "mysql" else "install PostgreSQL first"
            raise PreconditionError(f"no {LABELS[backend]} server on this host: {hint}")
        else:
            raise PreconditionError(f"{LABELS[backend]} is not reachable: {info.detail}")
    if install and facts.os.family not in INSTALLABLE_FAMILIES:
        raise PreconditionError(
            f"--install-missing knows Debian, Ubuntu and RHEL-like systems, not {facts.os.pretty}: "
            f"install {' and '.join(install)} yourself"
        )

    if not opts.uninstall and facts.fail2ban.present and not jails:
        raise PreconditionError(
            "fail2ban has no enabled jail"
            + (f" ({facts.fail2ban.error})" if facts.fail2ban.error else "")
            + ": enable the jails you want in /etc/fail2ban/jail.d/ first"
        )

    password, source = _reuse_password(facts, backend, notes, opts.uninstall, opts.reset_password)
    if opts.uninstall and opts.drop_database and info.has_database is False:
        notes.append(f"{LABELS[backend]} holds no database {DB_NAME}: there is nothing to drop")
    if remote and password is None and not opts.uninstall:
        raise PreconditionError(
            f"with --db-host this host is only a client of {opts.db_host}: provision the database there "
            f"(ansible-playbook playbooks/site.yml), then put the password of user {DB_USER} in "
            f"{credential_file_for(facts, backend)} and run again"
        )
    if remote and opts.drop_database:
        raise UsageError("--drop-database drops a local database only; drop it on its server")
    if password is not None and not opts.uninstall and not PASSWORD_OK.fullmatch(password):
        # The roles write it into three file formats; they refuse such a password, so say it now.
        raise PreconditionError(
            f"the existing password of user {DB_USER} ({source.removeprefix('kept, from ')}) is shorter than 8 "
            "characters or holds quotes, backslashes or white space, which the credential files cannot "
            "carry: change it in the database and that file, then run again"
        )
    settings = None
    if opts.iredadmin:
        settings = opts.iredadmin_settings or facts.iredmail.iredadmin_settings
        if (
            opts.iredadmin_settings is not None
            and not (facts.root / str(opts.iredadmin_settings).lstrip("/")).is_file()
        ):
            raise PreconditionError(f"--iredadmin-settings {opts.iredadmin_settings}: no such file")
    db_port = opts.db_port or (info.credential.port if info.credential and not remote else DEFAULT_PORTS[backend])
    return Plan(
        uninstall=opts.uninstall,
        backend=backend,
        db_host=opts.db_host if remote and opts.db_host else "",
        db_port=db_port,
        jails=jails,
        geoip=opts.geoip,
        iredadmin_settings=settings,
        password=password,
        password_source=source,
        credential_file=credential_file_for(facts, backend),
        drop_database=opts.drop_database,
        install=install,
        notes=notes,
    )


def select_jails(facts: Facts, opts: Options) -> list[str]:
    enabled = [j.name for j in facts.fail2ban.jails]
    if opts.jails is None:
        return enabled
    unknown = [j for j in opts.jails if j not in enabled]
    if unknown:
        raise UsageError(
            f"--jails: not an enabled jail: {', '.join(unknown)} (enabled: {', '.join(enabled) or 'none'})"
        )
    return list(dict.fromkeys(opts.jails))


def _reuse_password(
    facts: Facts, backend: str, notes: list[str], uninstall: bool, reset: bool = False
) -> tuple[str | None, str]:
    """The fail2ban user's existing password: never rotated behind the user's back (only with --reset-password)."""
    if reset:
        return None, "new, generated (--reset-password: the existing user fail2ban gets it)"
    credential = facts.backends[backend].credential
    panel = facts.iredmail.iredadmin_fail2ban.get("fail2ban_db_password")
    if credential is not None:
        if isinstance(panel, str) and panel and panel != credential.password and not uninstall:
            notes.append(
                "iRedAdmin-Pro's fail2ban_db_password differs from the credential file; "
                "settings.py gets the credential file's password"
            )
        return credential.password, f"kept, from {credential.source}"
    if isinstance(panel, str) and panel:
        return panel, f"kept, from {facts.iredmail.iredadmin_settings} (fail2ban_db_password)"
    if facts.backends[backend].has_user and not uninstall:
        # The role would have to guess or rotate it; neither happens behind the user's back.
        where = (
            "/root/.my.cnf-fail2ban ([client] user=fail2ban, password=...)"
            if backend == "mysql"
            else f"{credential_file_for(facts, backend)} (*:*:*:fail2ban:<password>)"
        )
        raise PreconditionError(
            f"user {DB_USER} exists on {LABELS[backend]} but its password is not on this host: "
            f"write it to {where} and run again, or give the user a new one with --reset-password"
        )
    return None, "generated (none exists yet)"


def playbook_vars(plan: Plan, opts: Options) -> dict[str, Any]:
    """The extra variables of playbooks/site.yml and uninstall.yml (their documented inputs)."""
    variables: dict[str, Any] = {
        "f2bsql_database_backend": plan.backend,
        # [] is "every enabled jail" to the role: the same jails detection showed, read again
        # at run time; named jails are passed as named.
        "f2bsql_fail2ban_jails": plan.jails if opts.jails is not None else [],
        "f2bsql_fail2ban_geoip": plan.geoip,
        "f2bsql_iredadmin_enabled": plan.iredadmin_settings is not None,
    }
    if plan.iredadmin_settings is not None:
        variables["f2bsql_iredadmin_settings_path"] = str(plan.iredadmin_settings)
    if plan.db_host:
        variables["f2bsql_database_host"] = plan.db_host
    if plan.db_host or opts.db_port is not None:
        variables["f2bsql_database_port"] = plan.db_port
    if plan.uninstall:
        variables["f2bsql_database_drop"] = plan.drop_database
    if plan.password is not None:
        variables[VAR_PASSWORD] = plan.password
    if opts.reset_password:
        variables["f2bsql_database_update_password"] = True
    return variables


def inventory(plan: Plan) -> str:
    """Ansible inventory: localhost in every group, or, with a remote database, not the
    database group (its server is provisioned there; this host only becomes its client)."""
    if not plan.db_host:
        return "localhost,"
    return (
        "[f2bsql_fail2ban]\nlocalhost ansible_connection=local\n\n"
        "[f2bsql_iredadmin]\nlocalhost ansible_connection=local\n\n"
        "[f2bsql_database]\n"
    )
