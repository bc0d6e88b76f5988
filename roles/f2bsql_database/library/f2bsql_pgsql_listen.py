#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: f2bsql_pgsql_listen
short_description: The addresses a PostgreSQL server listens on, set with ALTER SYSTEM
description:
  - >-
    Sets C(listen_addresses) with C(ALTER SYSTEM), in C(postgresql.auto.conf), which PostgreSQL
    reads after C(postgresql.conf): the distribution's file (and iRedMail's C(localhost)) stays as
    it is, and C(state=absent) puts it back in force with C(ALTER SYSTEM RESET).
  - >-
    C(state=absent) resets only the value this module would set (I(addresses)): a value set by
    someone else since is left alone.
  - The new value takes effect when the server restarts; C(pending_restart) says whether the
    running server listens elsewhere than its files now say.
  - Run it as the PostgreSQL admin OS user (become_user postgres) to log in over the socket.
version_added: "0.2.0"
options:
  addresses:
    description: Addresses to listen on (C(*) for every one); the loopback address is added.
    type: list
    elements: str
    default: ["*"]
  state: {description: present or absent., type: str, default: present, choices: [present, absent]}
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
- name: Listen where the fleet's mail hosts connect
  f2bsql_pgsql_listen:
    addresses: ["*"]
  become: true
  become_user: postgres
  register: listen
"""

RETURN = r"""
value:
  description: The listen_addresses that postgresql.auto.conf sets after the run (null when none).
  returned: always
  type: str
running:
  description: The listen_addresses the server runs with now.
  returned: always
  type: str
pending_restart:
  description: The files say otherwise than the running server (a restart applies them).
  returned: always
  type: bool
"""

import ipaddress
import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.f2bsql_db import PGSQL_LOGIN_ARGS, pgsql_connect

LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(r"^(?![0-9.]+$)(?=.{1,253}$)%s(\.%s)*$" % (LABEL, LABEL))


def wanted_value(module, addresses):
    """listen_addresses for these: each an address, a host name or *, loopback first."""
    values = []
    for address in addresses:
        if address != "*" and not HOSTNAME.match(address):
            try:
                address = str(ipaddress.ip_address(address))
            except ValueError:
                module.fail_json(msg="not an address to listen on: %r" % (address,))
        if address not in values:
            values.append(address)
    if "*" in values:
        return "*"
    return ",".join(["localhost"] + [value for value in values if value != "localhost"])


def auto_value(cur):
    """The value of listen_addresses in postgresql.auto.conf, or None."""
    cur.execute(
        "SELECT setting FROM pg_file_settings WHERE name = 'listen_addresses' AND sourcefile LIKE %s"
        " ORDER BY seqno DESC LIMIT 1",
        ("%postgresql.auto.conf",),
    )
    row = cur.fetchone()
    return row[0] if row else None


def file_value(cur):
    """What the files make of listen_addresses once applied (the last setting wins)."""
    cur.execute(
        "SELECT setting FROM pg_file_settings WHERE name = 'listen_addresses' AND error IS NULL"
        " ORDER BY seqno DESC LIMIT 1"
    )
    row = cur.fetchone()
    return row[0] if row else "localhost"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            addresses=dict(type="list", elements="str", default=["*"]),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            **PGSQL_LOGIN_ARGS,
        ),
        supports_check_mode=True,
    )
    wanted = wanted_value(module, module.params["addresses"])
    conn = pgsql_connect(module)
    from psycopg2 import sql

    cur = conn.cursor()
    before = auto_value(cur)
    after = before
    if module.params["state"] == "present" and before != wanted:
        after = wanted
        statement = sql.SQL("ALTER SYSTEM SET listen_addresses = {}").format(sql.Literal(wanted))
    elif module.params["state"] == "absent" and before == wanted:
        after = None
        statement = sql.SQL("ALTER SYSTEM RESET listen_addresses")
    else:
        statement = None
    if statement is not None and not module.check_mode:
        cur.execute(statement)
    cur.execute("SHOW listen_addresses")
    running = cur.fetchone()[0]
    # In check mode the files are as they were: a change it would make needs a restart too.
    pending = file_value(cur) != running or (module.check_mode and after != before)
    conn.close()
    result = dict(changed=after != before, value=after, running=running, pending_restart=pending)
    if after != before:
        result["diff"] = dict(
            before_header="postgresql.auto.conf",
            after_header="postgresql.auto.conf",
            before="" if before is None else "listen_addresses = '%s'\n" % before,
            after="" if after is None else "listen_addresses = '%s'\n" % after,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
