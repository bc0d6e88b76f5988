#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: f2bsql_fail2ban_jails
short_description: Read the enabled jails of fail2ban and the port/protocol of their action
description:
  - Runs C(fail2ban-client -d), which prints fail2ban's merged configuration as one Python
    literal per line (no server needed), and returns each enabled jail with the port and
    protocol of its first action that is not I(exclude_action).
  - Reading the configuration changes nothing, so the module never reports a change.
    Ignoring I(exclude_action) keeps the answer the same once that action has been added,
    as the command action C(banned_db) or as the Python action C(banned_db.py) (fail2ban
    names both C(banned_db)).
  - Fails when a jail named in I(jails) is not an enabled jail.
version_added: "0.1.0"
options:
  jails:
    description: Jails to return; [] means every enabled jail.
    type: list
    elements: str
    default: []
  config_dir: {description: fail2ban configuration directory., type: path, default: /etc/fail2ban}
  client: {description: fail2ban-client command., type: str, default: fail2ban-client}
  exclude_action:
    description: "Action to look past (ours; also its Python form, name.py)."
    type: str
    default: banned_db
  default_port: {description: Port when no action names one (allports actions)., type: str, default: "0:65535"}
  default_protocol: {description: Protocol when no action names one., type: str, default: tcp}
attributes:
  check_mode: {support: full}
  diff_mode: {support: none}
author: f2bsql
"""

EXAMPLES = r"""
- name: Read the enabled jails
  f2bsql_fail2ban_jails:
    config_dir: /etc/fail2ban
  register: jails
"""

RETURN = r"""
jails:
  description: The jails, sorted by name.
  returned: success
  type: list
  elements: dict
  sample: [{name: dovecot, port: "80,443,25", protocol: tcp, action: iptables-multiport}]
enabled:
  description: Names of every enabled jail.
  returned: success
  type: list
  elements: str
"""

import ast
import json
import re

# What the helper accepts (docs/helper.md); anything else would be refused at every ban.
PORT_RE = re.compile(r"^[A-Za-z0-9_,:.-]{1,100}$")
PROTOCOL_RE = re.compile(r"^[a-z0-9]{1,10}$")

from ansible.module_utils.basic import AnsibleModule


def parse_dump(text):
    """{jail: [(action name, {param: value})]} for every jail fail2ban would start."""
    jails = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("["):
            continue
        try:
            cmd = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            continue
        if not isinstance(cmd, list) or len(cmd) < 2:
            continue
        if cmd[0] == "add" and len(cmd) >= 2:
            jails.setdefault(cmd[1], [])
        elif cmd[0] == "multi-set" and len(cmd) == 5 and cmd[2] == "action":
            params = {}
            for pair in cmd[4]:
                if isinstance(pair, list) and len(pair) == 2:
                    params[pair[0]] = pair[1]
            jails.setdefault(cmd[1], []).append((cmd[3], params))
        elif cmd[0] == "set" and len(cmd) >= 6 and cmd[2] == "addaction":
            # A Python action (action.d/<name>.py): its options are one JSON object.
            try:
                params = json.loads(cmd[5])
            except ValueError:
                params = {}
            jails.setdefault(cmd[1], []).append((cmd[3], params if isinstance(params, dict) else {}))
        elif cmd[0] == "set" and len(cmd) >= 5 and cmd[2] == "action":
            # Older fail2ban prints one `set <jail> action <act> <param> <value>` per parameter.
            actions = jails.setdefault(cmd[1], [])
            if not actions or actions[-1][0] != cmd[3]:
                actions.append((cmd[3], {}))
            actions[-1][1][cmd[4]] = cmd[5] if len(cmd) > 5 else ""
    return jails


def main():
    module = AnsibleModule(
        argument_spec=dict(
            jails=dict(type="list", elements="str", default=[]),
            config_dir=dict(type="path", default="/etc/fail2ban"),
            client=dict(type="str", default="fail2ban-client"),
            exclude_action=dict(type="str", default="banned_db"),
            default_port=dict(type="str", default="0:65535"),
            default_protocol=dict(type="str", default="tcp"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    client = module.get_bin_path(p["client"], required=True)
    rc, out, err = module.run_command([client, "-c", p["config_dir"], "-d"])
    if rc != 0:
        module.fail_json(msg="%s -d failed: %s" % (client, (err or out).strip()), rc=rc)
    dump = parse_dump(out)

    wanted = p["jails"] or sorted(dump)
    missing = [name for name in wanted if name not in dump]
    if missing:
        module.fail_json(
            msg="not an enabled fail2ban jail: %s (enabled: %s)"
            % (", ".join(missing), ", ".join(sorted(dump)) or "none"),
            enabled=sorted(dump),
        )
    result = []
    for name in sorted(set(wanted)):
        actions = [a for a in dump[name] if a[0] != p["exclude_action"] and a[1].get("actname") != p["exclude_action"]]
        with_port = [a for a in actions if a[1].get("port")]
        action, params = (with_port or actions or [("", {})])[0]
        port = str(params.get("port") or p["default_port"]).replace(" ", "")
        protocol = str(params.get("protocol") or p["default_protocol"])
        if not PORT_RE.match(port) or not PROTOCOL_RE.match(protocol):
            module.fail_json(
                msg="jail %s: action %s has port %r / protocol %r, which the helper cannot"
                " store; name the jail in f2bsql_fail2ban_jails only once its action is fixed"
                % (name, action, port, protocol)
            )
        result.append(
            dict(
                name=name,
                action=action,
                port=port,
                protocol=protocol,
            )
        )
    module.exit_json(changed=False, jails=result, enabled=sorted(dump))


if __name__ == "__main__":
    main()
