#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: f2bsql_mysql_db
short_description: MySQL/MariaDB database for f2bsql, with its schema applied
description:
  - Creates (or drops) a database with the given character set and collation, and runs an
    idempotent schema script in it (multi-statement, as the mysql client would).
  - C(changed) is reported honestly by comparing a fingerprint of the catalog (tables,
    columns, indexes) before and after the script. In check mode the script runs against a
    throw-away copy of the table structure, so nothing in the real database changes.
  - Connects as the admin through I(login_config_file) (iRedMail's /root/.my.cnf) when it
    exists, else the unix socket, else 127.0.0.1.
version_added: "0.1.0"
options:
  name: {description: Database name., type: str, required: true}
  state: {description: present or absent., type: str, default: present, choices: [present, absent]}
  encoding: {description: Default character set., type: str, default: utf8mb4}
  collation: {description: Default collation., type: str, default: utf8mb4_unicode_ci}
  schema: {description: SQL script text applied on every run; must be idempotent., type: str}
  login_config_file: {description: Admin option file, used when present., type: path, default: /root/.my.cnf}
  login_unix_socket: {description: Admin unix socket., type: path}
  login_host: {description: Admin TCP host (instead of the socket)., type: str}
  login_port: {description: Admin TCP port., type: int, default: 3306}
  login_user: {description: Admin user., type: str, default: root}
  login_password: {description: Admin password., type: str}
attributes:
  check_mode: {support: full}
  diff_mode: {support: full}
author: f2bsql
"""

EXAMPLES = r"""
- name: Database fail2ban with its schema
  f2bsql_mysql_db:
    name: fail2ban
    schema: "{{ lookup('ansible.builtin.file', 'files/sql/fail2ban.mysql') }}"
"""

RETURN = r"""
fingerprint:
  description: Catalog of the database after the run (what check mode predicts).
  returned: state is present
  type: list
  elements: str
"""

import uuid

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.f2bsql_db import (
    MYSQL_LOGIN_ARGS,
    check_identifier,
    mysql_connect,
    mysql_quote_ident,
)


def fingerprint(cur, db):
    """Every fact of the catalog the schema script can change, as sorted text lines."""
    lines = []
    cur.execute(
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME"
        " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        (db,),
    )
    for row in cur.fetchall():
        lines.append("database charset=%s collation=%s" % row)
    cur.execute(
        "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
        (db,),
    )
    for row in cur.fetchall():
        lines.append("table %s engine=%s collation=%s" % row)
    cur.execute(
        "SELECT TABLE_NAME, ORDINAL_POSITION, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE,"
        " COLUMN_DEFAULT, EXTRA FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
        " ORDER BY TABLE_NAME, ORDINAL_POSITION",
        (db,),
    )
    for row in cur.fetchall():
        lines.append("column %s.%02d %s %s null=%s default=%s %s" % row)
    cur.execute(
        "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE,"
        " GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX SEPARATOR ',')"
        " FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s"
        " GROUP BY TABLE_NAME, INDEX_NAME, NON_UNIQUE ORDER BY TABLE_NAME, INDEX_NAME",
        (db,),
    )
    for table, index, non_unique, columns in cur.fetchall():
        lines.append("index %s.%s %s(%s)" % (table, index, "" if int(non_unique) else "unique ", columns))
    return [line.rstrip() for line in lines]


def run_script(conn, script):
    with conn.cursor() as cur:
        cur.execute(script)
        while cur.nextset():
            pass


def apply_schema(module, db, schema):
    """(before, after) fingerprints; in check mode the script runs on a scratch copy."""
    if not module.check_mode:
        conn = mysql_connect(module, database=db, multi_statements=True)
        try:
            with conn.cursor() as cur:
                before = fingerprint(cur, db)
            run_script(conn, schema)
            with conn.cursor() as cur:
                after = fingerprint(cur, db)
        finally:
            conn.close()
        return before, after

    scratch = "f2bsql_check_" + uuid.uuid4().hex[:12]
    conn = mysql_connect(module)
    try:
        with conn.cursor() as cur:
            before = fingerprint(cur, db)
            cur.execute(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME"
                " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (db,),
            )
            charset, collation = cur.fetchone()
            cur.execute(
                "CREATE DATABASE %s CHARACTER SET %s COLLATE %s" % (mysql_quote_ident(scratch), charset, collation)
            )
            cur.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'",
                (db,),
            )
            for (table,) in cur.fetchall():
                cur.execute(
                    "CREATE TABLE %s.%s LIKE %s.%s"
                    % (
                        mysql_quote_ident(scratch),
                        mysql_quote_ident(table),
                        mysql_quote_ident(db),
                        mysql_quote_ident(table),
                    )
                )
        scratch_conn = mysql_connect(module, database=scratch, multi_statements=True)
        try:
            run_script(scratch_conn, schema)
            with scratch_conn.cursor() as cur:
                after = [line for line in fingerprint(cur, scratch) if not line.startswith("database ")]
        finally:
            scratch_conn.close()
        after = [line for line in before if line.startswith("database ")] + after
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS %s" % mysql_quote_ident(scratch))
        conn.close()
    return before, after


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            encoding=dict(type="str", default="utf8mb4"),
            collation=dict(type="str", default="utf8mb4_unicode_ci"),
            schema=dict(type="str"),
            **MYSQL_LOGIN_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    db = check_identifier(module, p["name"], "database name")
    check_identifier(module, p["encoding"], "encoding")
    check_identifier(module, p["collation"], "collation")

    conn = mysql_connect(module)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME"
            " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            (db,),
        )
        row = cur.fetchone()
        current = fingerprint(cur, db) if row else []
    result = dict(changed=False, name=db)

    if p["state"] == "absent":
        if row:
            result.update(changed=True, diff=dict(before="\n".join(current) + "\n", after=""))
            if not module.check_mode:
                with conn.cursor() as cur:
                    cur.execute("DROP DATABASE %s" % mysql_quote_ident(db))
        conn.close()
        module.exit_json(**result)

    want = (p["encoding"], p["collation"])
    if not row:
        result["changed"] = True
        if not module.check_mode:
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE DATABASE %s CHARACTER SET %s COLLATE %s" % (mysql_quote_ident(db), want[0], want[1])
                )
    elif tuple(row) != want:
        result["changed"] = True
        if not module.check_mode:
            with conn.cursor() as cur:
                cur.execute("ALTER DATABASE %s CHARACTER SET %s COLLATE %s" % (mysql_quote_ident(db), want[0], want[1]))
    conn.close()

    before = current
    after = before
    if p["schema"]:
        if module.check_mode and not row:
            after = ["database charset=%s collation=%s" % want, "(tables of the schema script)"]
        else:
            _, after = apply_schema(module, db, p["schema"])
    elif result["changed"]:
        after = ["database charset=%s collation=%s" % want]
    if after != before:
        result["changed"] = True
    if result["changed"]:
        result["diff"] = dict(
            before_header="%s (catalog)" % db,
            after_header="%s (catalog)" % db,
            before="\n".join(before) + ("\n" if before else ""),
            after="\n".join(after) + "\n",
        )
    result["fingerprint"] = after
    module.exit_json(**result)


if __name__ == "__main__":
    main()
