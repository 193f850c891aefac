"""`python -m pinmatrix`: see pinmatrix/cli/main.py."""
from __future__ import annotations

import sys

from pinmatrix.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
