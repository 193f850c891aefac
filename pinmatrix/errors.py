"""Errors of bad input: each names where it came from, so a user can fix it without reading code."""
from __future__ import annotations

from pathlib import Path


class MatrixError(Exception):
    """A matrix file is wrong at one place. `str()` is one line: `file:line:column: message`.

    The CLI exits with code 2 on it, before anything is written.
    """

    def __init__(self, path: str | Path, line: int, column: int, message: str) -> None:
        self.path = str(path)
        self.line = line          # 1-based
        self.column = column      # 1-based
        self.message = " ".join(message.split())  # one line, always
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class SelectionError(ValueError):
    """A command-line cell selector is wrong; the message names the argument."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        self.message = " ".join(message.split())
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cell selector {self.argument!r}: {self.message}"
