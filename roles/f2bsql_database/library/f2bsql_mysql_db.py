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
  - >-
    C(changed) is reported honestly by comparing a fingerprint of the catalog (tables,
    columns, indexes) before and after the script. In check mode nothing is written to the
    server: the script's own conditions are evaluated (reads of information_schema) and the
    statements it would run are listed in the diff.
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
  description: >-
    Catalog of the database after the run; in check mode the catalog now, followed by a
    "would run:" line for each statement the schema script would run.
  returned: state is present
  type: list
  elements: str
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.f2bsql_db import (
    MYSQL_LOGIN_ARGS,
    check_identifier,
    mysql_connect,
    mysql_quote_ident,
)

TABLE_RE = re.compile(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+`(\w+)`", re.I)


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


UPDATE_RE = re.compile(r"UPDATE\s+(`\w+`)\s+SET\s+.+?\s+WHERE\s+(.+)", re.I | re.S)


def statements_of(schema):
    """The script's statements: whole-line comments dropped, split where a line ends in ';'."""
    text = re.sub(r"(?m)^\s*--.*$", "", schema)
    return [part.strip() for part in re.split(r";\s*\n", text + "\n") if part.strip()]


def predict(module, cur, db, schema):
    """The statements the schema script would run here, found without writing to the server.

    The script decides each change itself: a CREATE TABLE IF NOT EXISTS, or a SET of a session
    variable to an ALTER or 'DO 0' from what information_schema says, then EXECUTE. Here the
    SETs run (reads, and session variables) and each EXECUTE is replaced by reading what it
    would execute; the UPDATE becomes a count. A statement of any other kind fails check mode,
    so a schema this cannot foresee is noticed rather than guessed at.
    """
    cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (db,))
    existing = {name for (name,) in cur.fetchall()}
    created, would = set(), []
    for statement in statements_of(schema):
        words = statement.split(None, 2)
        head = " ".join(words[:2]).upper()
        table = TABLE_RE.match(statement)
        if table:
            if table.group(1) not in existing:
                created.add(table.group(1))
                would.append("CREATE TABLE `%s`" % table.group(1))
        elif head.startswith("SET @"):
            cur.execute(statement)
        elif head == "EXECUTE F2BSQL_STMT":
            cur.execute("SELECT @f2bsql_sql")
            (sql,) = cur.fetchone()
            # Conditions about a table the script creates first see no table: it is created whole.
            if sql and sql.upper() != "DO 0" and not any("`%s`" % name in sql for name in created):
                would.append(sql)
        elif head.startswith(("PREPARE ", "DEALLOCATE ")):
            continue
        elif UPDATE_RE.match(statement):
            name, where = UPDATE_RE.match(statement).groups()
            if name.strip("`") in existing:
                cur.execute("SELECT COUNT(*) FROM %s WHERE %s" % (name, where))  # noqa: S608 -- text of our own schema
                (count,) = cur.fetchone()
                if count:
                    would.append("%s (%d rows)" % (" ".join(statement.split()), count))
        else:
            module.fail_json(msg="check mode cannot foresee this statement of the schema: %s" % statement[:200])
    return would


def apply_schema(module, db, schema):
    """(before, after) fingerprints; in check mode `after` is `before` plus the statements the
    script would run (predict)."""
    # In check mode one statement per call: a SET of the script can never carry a second one.
    conn = mysql_connect(module, database=db, multi_statements=not module.check_mode)
    try:
        with conn.cursor() as cur:
            before = fingerprint(cur, db)
            if module.check_mode:
                return before, before + ["would run: %s" % sql for sql in predict(module, cur, db, schema)]
        run_script(conn, schema)
        with conn.cursor() as cur:
            after = fingerprint(cur, db)
    finally:
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
