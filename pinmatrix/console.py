"""Every console line is text, never terminal control: a file name, a package's error message or a
value from a run folder may hold escape sequences that would set the window title, clear the screen
or hide what follows. The CLI writes its stdout and stderr through `Escaped` (one place for all
console output); `escape` is the same rule for a single string.

Kept: newline and tab, and the one control sequence pinmatrix itself writes, the live progress
line's "return, clear the line" (pinmatrix/run/progress.py). Every other C0/C1 control character,
DEL, and the invisible format characters (zero-width, bidirectional overrides, line separators) is
shown as a Python-style escape: ESC becomes `\\x1b`.
"""
from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO

# the live progress line's own control sequence: carriage return, erase the whole line
OWN_CONTROL = "\r\x1b[2K"
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every non-printable character but newline and tab written as an escape."""
    return OWN_CONTROL.join(_UNSAFE.sub(_shown, part) for part in str(text).split(OWN_CONTROL))


class Escaped:
    """A text stream that escapes what is written to it (`escape`), and forwards the rest."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(escape(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def escaped_output() -> Iterator[None]:
    """sys.stdout and sys.stderr escaped (`Escaped`) for the block."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Escaped(sys.stdout), Escaped(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
