#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: f2bsql_pgsql_db
short_description: PostgreSQL database for f2bsql, owned by its role, with its schema applied
description:
  - Creates (or drops) a UTF8 database from template0 owned by I(owner), and runs an
    idempotent schema script in it as I(owner) (C(SET ROLE)), so that role owns the tables.
  - The script runs in one transaction between two fingerprints of the catalog; C(changed)
    says whether they differ. In check mode the transaction is rolled back.
  - Run it as the PostgreSQL admin OS user (become_user postgres) to log in over the socket.
version_added: "0.1.0"
options:
  name: {description: Database name., type: str, required: true}
  owner: {description: Role that owns the database and its tables., type: str, required: true}
  state: {description: present or absent., type: str, default: present, choices: [present, absent]}
  schema: {description: SQL script text applied on every run; must be idempotent., type: str}
  login_db: {description: Database to connect to for admin work., type: str, default: postgres}
  login_unix_socket: {description: Socket directory., type: path}
  login_host: {description: Admin TCP host., type: str}
  login_port: {description: Admin port., type: int, default: 5432}
  login_user: {description: "Admin role (default: the OS user).", type: str}
  login_password: {description: Admin password., type: str}
attributes:
  check_mode: {support: full}
  diff_mode: {support: full}
author: f2bsql
"""

EXAMPLES = r"""
- name: Database fail2ban
  f2bsql_pgsql_db:
    name: fail2ban
    owner: fail2ban
    schema: "{{ lookup('ansible.builtin.file', 'files/sql/fail2ban.pgsql') }}"
  become: true
  become_user: postgres
"""

RETURN = r"""
hba_file:
  description: Path of the server's pg_hba.conf.
  returned: always
  type: str
fingerprint:
  description: Catalog of the database after the run (what check mode predicts).
  returned: state is present
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.f2bsql_db import PGSQL_LOGIN_ARGS, check_identifier, pgsql_connect


def fingerprint(cur):
    lines = []
    cur.execute(
        "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'S')"
        " ORDER BY c.relname"
    )
    for row in cur.fetchall():
        lines.append("relation %s kind=%s owner=%s" % row)
    cur.execute(
        "SELECT table_name, ordinal_position, column_name, data_type, character_maximum_length,"
        " is_nullable, column_default FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    )
    for row in cur.fetchall():
        lines.append("column %s.%02d %s %s(%s) null=%s default=%s" % row)
    cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY indexname")
    for row in cur.fetchall():
        lines.append("index %s %s" % row)
    return lines


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            owner=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            schema=dict(type="str"),
            **PGSQL_LOGIN_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    db = check_identifier(module, p["name"], "database name")
    owner = check_identifier(module, p["owner"], "owner")
    conn = pgsql_connect(module)
    from psycopg2 import sql

    cur = conn.cursor()
    cur.execute("SHOW hba_file")
    hba_file = cur.fetchone()[0]
    cur.execute(
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding) FROM pg_database WHERE datname = %s",
        (db,),
    )
    row = cur.fetchone()
    ident = sql.Identifier(db)
    result = dict(changed=False, name=db, hba_file=hba_file)
    before_head = "database %s owner=%s encoding=%s" % (db, row[0], row[1]) if row else ""

    if p["state"] == "absent":
        if row:
            result.update(changed=True, diff=dict(before=before_head + "\n", after=""))
            if not module.check_mode:
                force = " WITH (FORCE)" if conn.server_version >= 130000 else ""
                cur.execute(sql.SQL("DROP DATABASE {}" + force).format(ident))
        conn.close()
        module.exit_json(**result)

    after_head = "database %s owner=%s encoding=%s" % (db, owner, row[1] if row else "UTF8")
    if row is None:
        result["changed"] = True
        if not module.check_mode:
            cur.execute(
                sql.SQL("CREATE DATABASE {} WITH TEMPLATE template0 ENCODING 'UTF8' OWNER {}").format(
                    ident, sql.Identifier(owner)
                )
            )
    elif row[0] != owner:
        result["changed"] = True
        if not module.check_mode:
            cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, sql.Identifier(owner)))
    conn.close()

    before, after = [], []
    if p["schema"] and row is None and module.check_mode:
        after = ["(tables of the schema script)"]
    elif p["schema"]:
        conn = pgsql_connect(module, database=db, autocommit=False)
        cur = conn.cursor()
        try:
            before = fingerprint(cur)
            cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
            cur.execute(p["schema"])
            cur.execute("RESET ROLE")
            after = fingerprint(cur)
        except Exception as exc:
            conn.rollback()
            module.fail_json(msg="schema script failed: %s" % (str(exc).strip(),))
        if module.check_mode:
            conn.rollback()
        else:
            conn.commit()
        conn.close()
    if after != before:
        result["changed"] = True
    if result["changed"]:
        result["diff"] = dict(
            before_header="%s (catalog)" % db,
            after_header="%s (catalog)" % db,
            before="\n".join(([before_head] if row else []) + before) + ("\n" if row else ""),
            after="\n".join([after_head, *after]) + "\n",
        )
    result["fingerprint"] = after
    module.exit_json(**result)


if __name__ == "__main__":
    main()
