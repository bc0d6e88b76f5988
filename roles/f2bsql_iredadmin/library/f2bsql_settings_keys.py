#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: f2bsql_settings_keys
short_description: Set or remove several C(key = value) lines of a Python settings file in one step
description:
  - For each key, the line that sets it (C(^key\s*=)) is what C(ansible.builtin.lineinfile) with
    that regexp would make it, for all the keys in one module call and one write.
  - A key given a line replaces the last line that sets it, or is appended at the end when no
    line does. A key given C(null) loses every line that sets it. Every other line, the owner and
    the mode of the file stay as they are; the file is replaced atomically.
  - The diff holds only the lines of the keys that change. A key of I(secret_lines) shows there as
    C(key = ********) before and C(key = ******** (changed)) after.
  - f2bsql_iredadmin sets iRedAdmin-Pro's six fail2ban keys with it, and puts them back at
    uninstall (C(ansible.builtin.lineinfile) in a loop made a module run per key and per host).
version_added: "0.1.0"
options:
  path: {description: The settings file; it must exist., type: path, required: true}
  lines:
    description: Key to the whole line that sets it (C(key = value)), or C(null) to remove it.
    type: dict
    default: {}
  secret_lines:
    description: As I(lines), for lines that hold a password (never shown, in the output or the diff).
    type: dict
    default: {}
attributes:
  check_mode: {support: full}
  diff_mode: {support: full}
author: f2bsql
"""

EXAMPLES = r"""
- name: Enable the fail2ban pages
  f2bsql_settings_keys:
    path: /opt/www/iredadmin/settings.py
    lines:
      fail2ban_enabled: fail2ban_enabled = True
      fail2ban_db_host: fail2ban_db_host = '127.0.0.1'
    secret_lines:
      fail2ban_db_password: "fail2ban_db_password = '{{ password }}'"
"""

RETURN = r"""
changed_keys: {description: The keys whose lines changed (or would)., returned: always, type: list, elements: str}
"""

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HIDDEN = "********"


def apply(lines, key, line):
    """The file's lines with the key's line set to line (None: its lines removed), as
    lineinfile's regexp ^key\\s*= does it."""
    sets_it = re.compile(r"^%s\s*=" % re.escape(key))
    matches = [index for index, text in enumerate(lines) if sets_it.match(text)]
    if line is None:
        return [text for index, text in enumerate(lines) if index not in matches]
    new = line + "\n"
    if matches:
        return [*lines[: matches[-1]], new, *lines[matches[-1] + 1 :]]
    if lines and not lines[-1].endswith("\n"):
        lines = [*lines[:-1], lines[-1] + "\n"]
    return [*lines, new]


def shown(lines, key, secret, mark=""):
    """The key's lines for the diff (valid text: a byte that is not UTF-8 shows as U+FFFD); a
    secret one's value hidden, with mark after it."""
    sets_it = re.compile(r"^%s\s*=" % re.escape(key))
    found = [
        text.rstrip("\n").encode("utf-8", "surrogateescape").decode("utf-8", "replace") + "\n"
        for text in lines
        if sets_it.match(text)
    ]
    return ["%s = %s%s\n" % (key, HIDDEN, mark) for _ in found] if secret else found


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            lines=dict(type="dict", default={}),
            secret_lines=dict(type="dict", default={}, no_log=True),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    wanted = dict(module.params["lines"])
    secret = set(module.params["secret_lines"])
    for key in secret & set(wanted):
        module.fail_json(msg="key %s is in both lines and secret_lines" % key)
    wanted.update(module.params["secret_lines"])
    for key, line in wanted.items():
        if not KEY.match(key):
            module.fail_json(msg="%r is not a Python name" % key)
        if line is not None and (not isinstance(line, str) or "\n" in line or "\r" in line):
            module.fail_json(msg="the line of %s is not one line of text" % key)
        if line is not None and not re.match(r"^%s\s*=" % re.escape(key), line):
            module.fail_json(msg="the line of %s does not set it (%s = ...)" % (key, key))
    if not os.path.isfile(path):
        module.fail_json(msg="%s does not exist" % path)
    # A link is followed, as lineinfile does: the file it names is the one rewritten.
    path = os.path.realpath(path)

    # Lines end at "\n" only, as lineinfile reads them; bytes that are not UTF-8 go back as they were.
    with open(path, "rb") as handle:
        before = [line.decode("utf-8", "surrogateescape") for line in handle]
    after = before
    changed_keys = []
    diff_before, diff_after = [], []
    for key in sorted(wanted):
        result = apply(after, key, wanted[key])
        if result != after:
            changed_keys.append(key)
            diff_before += shown(after, key, key in secret)
            diff_after += shown(result, key, key in secret, " (changed)")
        after = result

    result = dict(changed=bool(changed_keys), changed_keys=changed_keys)
    if module._diff:
        result["diff"] = dict(
            before_header=path, after_header=path, before="".join(diff_before), after="".join(diff_after)
        )
    if changed_keys and not module.check_mode:
        handle, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".f2bsql-")
        # It holds the password: removed if anything below fails.
        module.add_cleanup_file(temp)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write("".join(after).encode("utf-8", "surrogateescape"))
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(temp)
            raise
        # atomic_move gives the new file the old one's owner, mode (and SELinux context).
        module.atomic_move(temp, path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
