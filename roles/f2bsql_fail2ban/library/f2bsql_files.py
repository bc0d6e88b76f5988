#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: f2bsql_files
short_description: Install a directory's files in one step, and nothing else in it
description:
  - Writes every file of I(files) into I(dest) whose content, owner, group or mode differs, each
    replaced atomically (a reader sees the old file or the new one, never half of one).
  - One module call for a whole package. C(ansible.builtin.copy) in a loop costs a connection
    round trip or three per file and per host (the host package has two dozen modules), which is
    most of a converge over SSH or C(podman exec).
  - With I(exclusive), regular files in I(dest) that I(files) does not name are removed, so a
    module dropped from a new version does not linger in an old one's place. Directories (such as
    C(__pycache__)) and links are left alone.
version_added: "0.1.0"
options:
  dest: {description: The directory; it must exist (in check mode it may be still to make)., type: path, required: true}
  files:
    description: File name (no directory part) to its text content.
    type: dict
    required: true
  owner: {description: Owner of the files., type: str}
  group: {description: Group of the files., type: str}
  mode: {description: Mode of the files., type: raw, default: "0644"}
  exclusive: {description: Remove the other regular files in I(dest)., type: bool, default: false}
attributes:
  check_mode: {support: full}
  diff_mode: {support: none}
author: f2bsql
"""

EXAMPLES = r"""
- name: Install the host package
  f2bsql_files:
    dest: /usr/local/lib/f2bsql/f2bsql_host
    files: "{{ dict(names | zip(query('ansible.builtin.file', *paths, rstrip=false))) }}"
    owner: root
    group: root
    mode: "0644"
    exclusive: true
"""

RETURN = r"""
written: {description: Files written (new or new content)., returned: always, type: list, elements: str}
removed: {description: Files removed (I(exclusive))., returned: always, type: list, elements: str}
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule


def same_content(path, data):
    try:
        with open(path, "rb") as current:
            return current.read() == data
    except FileNotFoundError:
        return False


def write(module, path, data):
    """Write data next to path and move it into place (the new file never shows half written)."""
    handle, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".f2bsql-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(temp)
        raise
    module.atomic_move(temp, path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            files=dict(type="dict", required=True),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="raw", default="0644"),
            exclusive=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    dest = module.params["dest"]
    files = module.params["files"]
    for name, content in files.items():
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            module.fail_json(msg="file name %r is not a plain file name" % name)
        if not isinstance(content, str):
            module.fail_json(msg="content of %s is not text" % name)
    if not os.path.isdir(dest):
        if module.check_mode and not os.path.lexists(dest):
            # Check mode of a first install: the task before would have made it.
            module.exit_json(changed=True, written=sorted(files), removed=[])
        module.fail_json(msg="%s is not a directory" % dest)

    changed = False
    written = []
    for name in sorted(files):
        path = os.path.join(dest, name)
        data = files[name].encode("utf-8")
        if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
            module.fail_json(msg="%s is not a regular file: move it away, then run again" % path)
        if not same_content(path, data):
            written.append(name)
            changed = True
            if module.check_mode:
                continue
            write(module, path, data)
        if module.check_mode and name in written:
            continue
        file_args = module.load_file_common_arguments(
            dict(path=path, owner=module.params["owner"], group=module.params["group"], mode=module.params["mode"])
        )
        changed = module.set_fs_attributes_if_different(file_args, changed)

    removed = []
    if module.params["exclusive"]:
        for name in sorted(os.listdir(dest)):
            path = os.path.join(dest, name)
            if name in files or os.path.islink(path) or not os.path.isfile(path):
                continue
            removed.append(name)
            changed = True
            if not module.check_mode:
                os.unlink(path)
    module.exit_json(changed=changed, written=written, removed=removed)


if __name__ == "__main__":
    main()
