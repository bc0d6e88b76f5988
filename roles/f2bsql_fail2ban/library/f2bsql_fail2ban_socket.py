#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: f2bsql_fail2ban_socket
short_description: Remove the socket a fail2ban-server that died left behind
description:
  - A fail2ban-server killed by a crash, the OOM killer or a power cut leaves its socket file.
    Debian's and Ubuntu's init scripts then refuse to start fail2ban ("Socket file ... is
    present"), and so would a restart by the role. systemd's unit starts the server with C(-x),
    which removes such a socket itself; this module makes every init system do the same.
  - >-
    Reads the socket path from fail2ban's configuration (C(fail2ban.conf), C(fail2ban.d/*.conf),
    C(fail2ban.local), C(fail2ban.d/*.local), in fail2ban's order) unless I(path) is given,
    then connects to it. A socket nobody listens on (connection refused) is removed; a socket
    a server answers on, or no socket at all, is left alone. A path that is not a socket is
    never removed: the module fails and names it.
version_added: "0.1.0"
options:
  config_dir: {description: fail2ban configuration directory., type: path, default: /etc/fail2ban}
  path: {description: "The socket; default: the one fail2ban's configuration names.", type: path}
attributes:
  check_mode: {support: full}
  diff_mode: {support: none}
author: f2bsql
"""

EXAMPLES = r"""
- name: Remove the socket of a fail2ban-server that died
  f2bsql_fail2ban_socket:
    config_dir: /etc/fail2ban
"""

RETURN = r"""
socket: {description: The socket path., returned: always, type: str, sample: /var/run/fail2ban/fail2ban.sock}
state:
  description: What was there - C(absent), C(listening) (a server answers) or C(stale) (removed).
  returned: always
  type: str
"""

import configparser
import contextlib
import errno
import glob
import os
import socket
import stat

from ansible.module_utils.basic import AnsibleModule

# fail2ban's own default (fail2ban/client/fail2banreader.py), when no file names one.
DEFAULT_SOCKET = "/var/run/fail2ban/fail2ban.sock"


def configured_socket(config_dir):
    files = [os.path.join(config_dir, "fail2ban.conf")]
    files += sorted(glob.glob(os.path.join(config_dir, "fail2ban.d", "*.conf")))
    files.append(os.path.join(config_dir, "fail2ban.local"))
    files += sorted(glob.glob(os.path.join(config_dir, "fail2ban.d", "*.local")))
    parser = configparser.RawConfigParser(strict=False)
    parser.read(files, encoding="utf-8")
    return parser.get("Definition", "socket", fallback=DEFAULT_SOCKET).strip() or DEFAULT_SOCKET


def listening(path):
    """True when a server accepts on the socket, False when nobody listens (ECONNREFUSED)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    try:
        client.connect(path)
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return False
        raise
    finally:
        client.close()
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", default="/etc/fail2ban"),
            path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"] or configured_socket(module.params["config_dir"])
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        module.exit_json(changed=False, socket=path, state="absent")
    if not stat.S_ISSOCK(mode):
        module.fail_json(
            msg="%s is fail2ban's socket path but not a socket: move it away, then run again" % path, socket=path
        )
    try:
        if listening(path):
            module.exit_json(changed=False, socket=path, state="listening")
    except OSError as exc:
        module.fail_json(msg="cannot tell whether fail2ban-server listens on %s: %s" % (path, exc), socket=path)
    if not module.check_mode:
        with contextlib.suppress(FileNotFoundError):  # the init system got there first
            os.unlink(path)
    module.exit_json(changed=True, socket=path, state="stale")


if __name__ == "__main__":
    main()
