"""f2bsql: fail2ban's SQL integration for iRedMail hosts and fleets.

The package holds the installer `f2bsql-install`; the roles, playbooks, templates and files it
runs travel with it under `f2bsql/_data` (see `f2bsql.data`).
"""

from __future__ import annotations

__version__ = "0.1.0"
