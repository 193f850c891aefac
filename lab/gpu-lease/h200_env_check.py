"""Is a prepared environment consistent? Every requirement of every distribution on the path (the
site layers first, then the device's packages) is met by the first version of it on the path.

    PYTHONPATH=site1:site2 python3 lab/gpu-lease/h200_env_check.py LABEL  -> one JSON line

Prints the unmet requirements, split into those that touch a site layer's distributions (ours to
fix) and those among the device's own packages (the image's). The logic is
pinmatrix/environ/env_check.py's, which `--no-install` runs before judging a cell.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pinmatrix.environ.env_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
