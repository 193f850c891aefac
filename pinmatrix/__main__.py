"""`python -m pinmatrix`: see pinmatrix/cli/main.py."""
from __future__ import annotations

import sys

from pinmatrix.cli.main import main

if __name__ == "__main__":
    # Line by line even into a pipe (nox, CI, `| tee`): a block-buffered stdout holds progress
    # lines back for minutes and a running stage looks silent.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.exit(main())
