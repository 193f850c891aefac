"""`python -m pinmatrix`: see pinmatrix/cli.py."""
from __future__ import annotations

import sys

from pinmatrix.cli import main

if __name__ == "__main__":
    sys.exit(main())
