"""`python -m f2bsql` is `f2bsql-install`."""

from __future__ import annotations

import sys

from f2bsql.cli import main

if __name__ == "__main__":
    sys.exit(main())
