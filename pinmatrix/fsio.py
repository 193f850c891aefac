"""Small helpers every stage shares: atomic writes with explicit modes, tolerant JSON reads, the
time stamp written into run files, and the text helpers reports use. One copy each, so a fix reaches
every writer (issue 16 found five copies of the JSON read and four of the first-line helper)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Report files are as readable as any file a user writes. Files that may carry an index URL with a
# token (locks, the resolver's cache) are the owner's alone. The mode is set on the file itself with
# fchmod: the process umask is never changed, since scheduler threads write files at the same time.
PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o600


def write_bytes_atomic(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> Path:
    """Write via a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp made it 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str, mode: int = PUBLIC_MODE) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_json_atomic(path: Path, data: Any, mode: int = PUBLIC_MODE) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False,
                                              ensure_ascii=False) + "\n", mode)


def copy_atomic(src: Path, dst: Path, mode: int = PUBLIC_MODE) -> Path:
    """Copy a file so that `dst` is either absent, the old file, or the whole copy."""
    return write_bytes_atomic(dst, Path(src).read_bytes(), mode)


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing, unreadable or not JSON (the caller decides what
    that means)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def utc_now() -> str:
    """The time stamp of run.json, outcomes and history records: UTC, ISO 8601, whole seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def first_line(text: Any, limit: int = 200, ellipsis: str = "…") -> str:
    """The first line of `text` (stripped of surrounding blank space), cut at `limit` characters."""
    lines = str(text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[:limit] + ellipsis


def slug(value: str) -> str:
    """A file-name part for a cell id or a version: anything but letters, digits, '.' and '+'
    becomes '_'."""
    return re.sub(r"[^A-Za-z0-9.+]+", "_", value).strip("_")
