"""`python -m pinmatrix which [FILE | --here] [--purpose P] [--report RUN]... [--dataset FILE]...`

Whether a user's own stack LoRA-trains EXAONE, how fast the matching cell ran and where, and the
smallest change that makes it work (pinmatrix/which/). Its options sit on WhichConfig's fields.

Exit codes: 0 works for every purpose asked; 1 fails for one; 2 bad input (the file and line);
4 not judged (no judged cell has this stack, or its checks did not run there).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pinmatrix.commands.base import parse_own
from pinmatrix.errors import PinmatrixError
from pinmatrix.which.cli import run_which
from pinmatrix.which.config import WhichConfig

__all__ = ["HELP", "WhichConfig", "main", "run"]

HELP = ("does YOUR stack (FILE or --here) LoRA-train EXAONE, how fast, and the smallest change "
        "that makes it (pinmatrix/which/)")


def main(argv: Sequence[str]) -> int:
    config = parse_own("which", WhichConfig, argv,
                       "Does my stack LoRA-train EXAONE? How fast? What is the smallest change?")
    return config if isinstance(config, int) else run(config)


def run(config: WhichConfig) -> int:
    try:
        return run_which(config)
    except PinmatrixError as exc:
        print(f"{exc.prefix}: {exc}", file=sys.stderr)
        return exc.exit_code
