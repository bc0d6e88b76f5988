#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: f2bsql_fail2ban_jails
short_description: Read fail2ban's enabled jails, their own actions and the port/protocol of those
description:
  - Reads fail2ban's configuration as the jails have it without the f2bsql overlay
    (I(overlay) in C(jail.d) is left out), with fail2ban's own reader run by the python of
    C(fail2ban-client); no server is needed and nothing changes, so the module never reports a
    change. The answer is the same before and after the overlay is in place.
  - >-
    For each enabled jail it returns the port and protocol of its first action that is not
    I(exclude_action) (the command action C(banned_db) or the Python action C(banned_db.py):
    fail2ban names both C(banned_db)), and whether the jail's own configuration already names
    such an action, as iRedMail (since 1.2) and the how-to put one in every jail file. Such a
    jail gets its own actions back without it (C(restated)), so that it ends with exactly one.
  - Ports and protocol are checked with the helper's own rules (module_utils
    f2bsql_helper_rules is files/f2bsql_host/checks.py itself).
  - Fails when a jail named in I(jails) is not an enabled jail.
version_added: "0.1.0"
options:
  jails:
    description: Jails to return; [] means every enabled jail.
    type: list
    elements: str
    default: []
  config_dir: {description: fail2ban configuration directory., type: path, default: /etc/fail2ban}
  overlay: {description: "File name in jail.d to leave out (the f2bsql overlay).", type: str, default: zz-f2bsql.local}
  client:
    description: fail2ban-client command (its python reads the configuration).
    type: str
    default: fail2ban-client
  exclude_action:
    description: "Action to look past (ours; also its Python form, name.py)."
    type: str
    default: banned_db
  missing_ok:
    description: Without fail2ban-client, return no jails (and C(missing)) instead of failing.
    type: bool
    default: false
  ignoreip_of:
    description: >-
      A jail (the shared bans' one) whose C(ignoreip) to return as the configuration without the
      overlay gives it: an earlier section of that name's, else C([DEFAULT])'s, else empty.
    type: str
    default: ""
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
  sample:
    - name: dovecot
      port: "80,443,25"
      protocol: tcp
      action: iptables-multiport
      own_banned_db: ['banned_db[name=dovecot, port="80,443,25", protocol=tcp]']
      restated: ['iptables-multiport[name=dovecot, port="80,443,25", protocol=tcp]']
enabled:
  description: Names of every enabled jail.
  returned: success
  type: list
  elements: str
missing:
  description: fail2ban-client is not installed (only with I(missing_ok)).
  returned: success
  type: bool
ignoreip:
  description: The C(ignoreip) of I(ignoreip_of), interpolated ("" when none or not asked).
  returned: success
  type: str
"""

import ast
import json
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

# Run by the python of fail2ban-client: fail2ban's own reader gives each jail's action list as
# written (after %(...)s interpolation, before action tags), which `fail2ban-client -d` does not
# print; the stream it prints is printed too, line by line as `-d` does.
READER = r"""
import json, sys
from fail2ban.client.jailsreader import JailsReader
from fail2ban.helpers import splitWithOptions
reader = JailsReader(force_enable=False)
reader.setBaseDir(sys.argv[1])
if not reader.read():
    sys.exit("fail2ban found no jail configuration in " + sys.argv[1])
reader.getOptions()
for command in reader.convert(allow_no_files=True):
    print(repr(command))
actions = {}
for jail in reader.jails:
    options = jail.options or {}
    if options.get("enabled") and not options.get("config-error"):
        actions[jail.getName()] = [a.strip() for a in splitWithOptions(options.get("action") or "") if a.strip()]
print("#f2bsql-actions " + json.dumps(actions))
ignoreip = ""
for section in (sys.argv[2], "DEFAULT") if len(sys.argv) > 2 and sys.argv[2] else ():
    if (section == "DEFAULT" or reader.has_section(section)) and reader.has_option(section, "ignoreip"):
        ignoreip = reader.get(section, "ignoreip")
        break
print("#f2bsql-ignoreip " + json.dumps(ignoreip))
"""
ACTIONS_MARK = "#f2bsql-actions "
IGNOREIP_MARK = "#f2bsql-ignoreip "


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


def marked(text, mark):
    """The JSON value the reader printed after `mark` (its last such line), or None."""
    for line in reversed(text.splitlines()):
        if line.startswith(mark):
            try:
                return json.loads(line[len(mark) :])
            except ValueError:
                return None
    return None


def parse_actions(text):
    """{jail: [action as written]} from the reader's output; {} when there is none."""
    found = marked(text, ACTIONS_MARK)
    return found if isinstance(found, dict) else {}


def parse_ignoreip(text):
    """The ignoreip the reader printed, as one line of white-space separated entries."""
    found = marked(text, IGNOREIP_MARK)
    return " ".join(found.split()) if isinstance(found, str) else ""


def spec_name(spec):
    """The name an action of a jail's `action =` runs under: its file name, or its actname."""
    name, _, options = spec.partition("[")
    name = name.strip()
    if "actname=" in options.replace(" ", ""):
        for part in options.rstrip("]").split(","):
            key, _, value = part.partition("=")
            if key.strip() == "actname":
                return value.strip().strip("\"'")
    return name[:-3] if name.endswith(".py") else name


def interpreter(client):
    """The command line of fail2ban-client's python: its shebang, split."""
    try:
        with open(client, "rb") as handle:
            first = handle.readline().decode("utf-8", "replace").strip()
    except OSError:
        first = ""
    return first[2:].split() if first.startswith("#!") else []


def without_overlay(config_dir, overlay):
    """A copy of the configuration directory without the overlay (the jails as they are)."""
    copy = tempfile.mkdtemp(prefix="f2bsql-jails-")
    target = os.path.join(copy, "conf")

    def leave_out(folder, names):
        return [overlay] if os.path.abspath(folder) == os.path.join(os.path.abspath(config_dir), "jail.d") else []

    shutil.copytree(config_dir, target, symlinks=True, ignore=leave_out)
    return copy, target


def main():
    module = AnsibleModule(
        argument_spec=dict(
            jails=dict(type="list", elements="str", default=[]),
            config_dir=dict(type="path", default="/etc/fail2ban"),
            overlay=dict(type="str", default="zz-f2bsql.local"),
            client=dict(type="str", default="fail2ban-client"),
            exclude_action=dict(type="str", default="banned_db"),
            missing_ok=dict(type="bool", default=False),
            ignoreip_of=dict(type="str", default=""),
            default_port=dict(type="str", default="0:65535"),
            default_protocol=dict(type="str", default="tcp"),
        ),
        supports_check_mode=True,
    )
    # The helper's own rules (this module_utils file is files/f2bsql_host/checks.py).
    from ansible.module_utils.f2bsql_helper_rules import InvalidValue, check_ports, check_protocol

    p = module.params
    client = module.get_bin_path(p["client"], required=not p["missing_ok"])
    if client is None:
        module.exit_json(changed=False, jails=[], enabled=[], missing=True, ignoreip="")
    python = interpreter(client)
    if not python:
        module.fail_json(msg="cannot tell which python runs %s (no #! line)" % client)
    copy, config = without_overlay(p["config_dir"], p["overlay"])
    try:
        rc, out, err = module.run_command([*python, "-c", READER, config, p["ignoreip_of"]])
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    if rc != 0:
        module.fail_json(msg="reading fail2ban's configuration failed: %s" % (err or out).strip()[-2000:], rc=rc)
    dump = parse_dump(out)
    written = parse_actions(out)

    wanted = p["jails"] or sorted(dump)
    missing = [name for name in wanted if name not in dump]
    if missing:
        module.fail_json(
            msg="not an enabled fail2ban jail: %s (enabled: %s)"
            % (", ".join(missing), ", ".join(sorted(dump)) or "none"),
            enabled=sorted(dump),
        )
    exclude = p["exclude_action"]
    result = []
    for name in sorted(set(wanted)):
        actions = [a for a in dump[name] if a[0] != exclude and a[1].get("actname") != exclude]
        with_port = [a for a in actions if a[1].get("port")]
        action, params = (with_port or actions or [("", {})])[0]
        port = str(params.get("port") or p["default_port"])
        protocol = str(params.get("protocol") or p["default_protocol"])
        try:
            port, protocol = check_ports(port), check_protocol(protocol)
        except InvalidValue as exc:
            module.fail_json(
                msg="jail %s: action %s has port %r / protocol %r, which the helper cannot store (%s);"
                " name the jail in f2bsql_fail2ban_jails only once its action is fixed"
                % (name, action, port, protocol, exc)
            )
        specs = written.get(name, [])
        own = [spec for spec in specs if spec_name(spec) == exclude]
        result.append(
            dict(
                name=name,
                action=action,
                port=port,
                protocol=protocol,
                own_banned_db=own,
                # Its own actions without banned_db, as written, for a jail that names one itself.
                restated=[spec for spec in specs if spec_name(spec) != exclude] if own else [],
            )
        )
    module.exit_json(changed=False, jails=result, enabled=sorted(dump), missing=False, ignoreip=parse_ignoreip(out))


if __name__ == "__main__":
    main()
