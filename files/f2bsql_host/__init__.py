"""f2bsql's code on a fail2ban host: the helper, the Python action's work and the admin CLI.

Installed by the role f2bsql_fail2ban in /usr/local/lib/f2bsql (LIB_DIR), beside nothing else;
the entry points /usr/local/bin/fail2ban_banned_db, /usr/local/bin/f2bsql and fail2ban's
action.d/banned_db.py import it from there. Runs on the distro's python3 (3.9 or later) with
the standard library and the one database driver the backend needs, imported only when a
connection is made. Importing any module does nothing else; each command imports only what it
needs (a `ban` process none of the cron run's code: fail2ban starts one for every event).
For the same reason the modules a `ban` loads take their type names from typing only for the
type checker (`TYPE_CHECKING = False`, which mypy reads as true): importing typing costs a
process more than its database statement does. Likewise its value classes are Records
(record.py), not dataclasses; the event commands read argv without argparse (helper.quick_args)
and the settings file without configparser (settings.plain_ini), leaving anything but the
plain forms to them; the checks use no re; the MySQL and PostgreSQL clients and the host name take _socket,
the country lookup's lock _thread, and datetime comes from its C module (cdatetime); json,
hashlib, shutil and libloc's logging wrapper stay unimported on that path
(tests/test_helper_args.py checks which modules a `ban` loads, tests/test_helper_readers.py that
the own readers read as the standard ones).

    record    frozen value classes without dataclasses' import and build cost
    cdatetime datetime's C module, without the Python module around it

    report    exit codes, errors, log lines
    checks    what a jail, address, port list, protocol, count or time may be (also the role's)
    settings  where the database is and who this host is
    geo, rdns country and reverse DNS of an address
    db        every SQL statement, one connection
    mysqlwire the MySQL client of the standard library that db uses (PyMySQL where it cannot)
    pgwire    the PostgreSQL client of the standard library that db uses (psycopg2 where it cannot)
    wire      what those two share: the socket, its buffer, the cursor
    events    the typed events, and their JSON form in the spool
    spool     events kept on disk while the database is away
    fail2ban  fail2ban's live bans and its own record of them
    runner    record an event or spool it (a burst's bans in one statement)
    writer    the Python action's queue and the thread that writes it
    maintenance  the cron run (unban_db, sync), which also asks fail2ban
    command   what both command lines share (one run, its errors and exit codes)
    parsing   their argparse parsers (usage errors as UsageError)
    helper    the fail2ban_banned_db command line
    admin     the f2bsql admin CLI
    metrics   the figures for Prometheus
"""

LIB_DIR = "/usr/local/lib/f2bsql"
