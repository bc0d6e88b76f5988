# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared code of the f2bsql_database modules: admin connections and password checks.

Drivers are imported lazily so that a host with only one of them installed works for its
backend. Nothing here ever puts a password into a message, a diff or a return value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

# Names we splice into SQL as identifiers are checked against this first.
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

MYSQL_LOGIN_ARGS = dict(
    login_config_file=dict(type="path", default="/root/.my.cnf"),
    login_unix_socket=dict(type="path"),
    login_host=dict(type="str"),
    login_port=dict(type="int", default=3306),
    login_user=dict(type="str", default="root"),
    login_password=dict(type="str", no_log=True),
)

PGSQL_LOGIN_ARGS = dict(
    login_db=dict(type="str", default="postgres"),
    login_unix_socket=dict(type="path"),
    login_host=dict(type="str"),
    login_port=dict(type="int", default=5432),
    login_user=dict(type="str"),
    login_password=dict(type="str", no_log=True),
)


def check_identifier(module, value, what):
    if not IDENTIFIER_RE.match(value or ""):
        module.fail_json(msg="%s %r must match %s" % (what, value, IDENTIFIER_RE.pattern))
    return value


def driver_missing(module, driver, packages):
    """The backend's driver cannot be imported: fail, except in check mode.

    In check mode on a fresh host the role's driver task only says it would install the
    driver, so the database cannot be looked at yet: report that provisioning would happen
    (changed) instead of failing the dry run (found by molecule/fresh).
    """
    if module.check_mode:
        module.exit_json(
            changed=True,
            msg="%s is not installed yet (the role installs it first): the database cannot be inspected,"
            " assuming it would be provisioned" % (driver,),
        )
    module.fail_json(msg="%s is missing on the target (%s)" % (driver, packages))


# ---------------------------------------------------------------------- MySQL / MariaDB


def mysql_quote_ident(name):
    return "`" + name.replace("`", "``") + "`"


def mysql_connect(module, database=None, multi_statements=False):
    """Connect as the admin: /root/.my.cnf when present, else the socket, else TCP."""
    try:
        import pymysql
        from pymysql.constants import CLIENT
    except ImportError:
        driver_missing(module, "PyMySQL", "python3-pymysql / py3-pymysql")
    p = module.params
    kwargs = dict(
        user=p["login_user"],
        password=p["login_password"] or "",
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=10,
    )
    if p["login_host"]:
        kwargs.update(host=p["login_host"], port=p["login_port"])
    elif p["login_unix_socket"] and os.path.exists(p["login_unix_socket"]):
        kwargs["unix_socket"] = p["login_unix_socket"]
    else:
        kwargs.update(host="127.0.0.1", port=p["login_port"])
    if p["login_config_file"] and os.path.isfile(p["login_config_file"]):
        kwargs["read_default_file"] = p["login_config_file"]
    if database:
        kwargs["database"] = database
    if multi_statements:
        kwargs["client_flag"] = CLIENT.MULTI_STATEMENTS
    try:
        return pymysql.connect(**kwargs)
    except pymysql.MySQLError as exc:
        module.fail_json(msg="cannot connect to MySQL/MariaDB as admin: %s" % (exc,))


def mysql_native_hash(password):
    """mysql_native_password's stored form: '*' + upper hex SHA1(SHA1(password))."""
    inner = hashlib.sha1(password.encode("utf-8")).digest()  # noqa: S324 - the protocol's own hash
    return "*" + hashlib.sha1(inner).hexdigest().upper()  # noqa: S324


def mysql_password_matches(plugin, stored, password):
    """True/False when the stored form can be checked, None when it cannot (salted plugins)."""
    if plugin in ("mysql_native_password", "") and stored and stored.startswith("*"):
        return hmac.compare_digest(stored, mysql_native_hash(password))
    return None


# ---------------------------------------------------------------------- PostgreSQL


def pgsql_connect(module, database=None, autocommit=True):
    """Connect as the admin; by default over the local socket as the OS user we run as."""
    try:
        import psycopg2
    except ImportError:
        driver_missing(module, "psycopg2", "python3-psycopg2 / py3-psycopg2")
    p = module.params
    kwargs = dict(dbname=database or p["login_db"], connect_timeout=10)
    if p["login_host"]:
        kwargs.update(host=p["login_host"], port=p["login_port"])
    elif p["login_unix_socket"]:
        kwargs.update(host=p["login_unix_socket"], port=p["login_port"])
    if p["login_user"]:
        kwargs["user"] = p["login_user"]
    if p["login_password"]:
        kwargs["password"] = p["login_password"]
    try:
        conn = psycopg2.connect(**kwargs)
    except psycopg2.Error as exc:
        module.fail_json(msg="cannot connect to PostgreSQL as admin: %s" % (str(exc).strip(),))
    conn.autocommit = autocommit
    return conn


def scram_sha256_verifier(password, salt=None, iterations=4096):
    """The SCRAM-SHA-256 verifier PostgreSQL stores, computed here so the clear password is
    never sent to the server (and never lands in its statement log)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (
        iterations,
        base64.b64encode(salt).decode("ascii"),
        base64.b64encode(stored_key).decode("ascii"),
        base64.b64encode(server_key).decode("ascii"),
    )


def pgsql_password_matches(stored, user, password):
    """True/False when the stored verifier can be checked, None when there is none."""
    if not stored:
        return None
    match = re.match(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$", stored)
    if match:
        expected = scram_sha256_verifier(password, base64.b64decode(match.group(2)), int(match.group(1)))
        return hmac.compare_digest(expected, stored)
    if stored.startswith("md5"):
        digest = hashlib.md5((password + user).encode("utf-8")).hexdigest()  # noqa: S324
        return hmac.compare_digest("md5" + digest, stored)
    return None
