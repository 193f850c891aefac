"""Small helpers every stage shares: atomic writes with explicit modes, tolerant JSON reads, the
time stamp written into run files, and the text helpers reports use. One copy each, so a fix reaches
every writer (issue 16 found five copies of the JSON read and four of the first-line helper)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

# Report files are as readable as any file a user writes. Files that may carry an index URL with a
# token (locks, the resolver's cache) are the owner's alone. The mode is set on the file itself with
# fchmod: the process umask is never changed, since scheduler threads write files at the same time.
PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o600


# --- a set of files published together (a report) ------------------------------------------------
# Inside `published_together()`, every atomic write of this thread stops at its complete temp file;
# the renames that publish them all run when the block ends, one after the other, with Ctrl-C and
# SIGTERM held off (pinmatrix/interrupt.py). A block that raises (an interrupt while the report is
# being made) publishes nothing and removes its temp files: the folder keeps the files it had.
_staged = threading.local()
Action = tuple[Callable[[], object], Callable[[], object]]  # (publish, discard)


@contextlib.contextmanager
def published_together() -> Iterator[None]:
    if getattr(_staged, "actions", None) is not None:  # nested: part of the enclosing set
        yield
        return
    actions: list[Action] = []
    _staged.actions = actions
    try:
        yield
    except BaseException:
        _staged.actions = None
        _discard(actions)
        raise
    _staged.actions = None
    from pinmatrix.interrupt import held

    with held(notice=None, escape=False):
        for index, (publish, _) in enumerate(actions):
            try:
                publish()
            except BaseException:
                _discard(actions[index:])
                raise


def _discard(actions: list[Action]) -> None:
    for _, discard in actions:
        try:
            discard()
        except OSError:
            pass


def on_publish(publish: Callable[[], object], discard: Callable[[], object] = lambda: None) -> None:
    """Run `publish` now, or, inside published_together(), with the rest of the set at its end
    (`discard` then runs instead if the set is dropped)."""
    actions = getattr(_staged, "actions", None)
    if actions is None:
        publish()
    else:
        actions.append((publish, discard))


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
        on_publish(lambda: os.replace(tmp, path), lambda: Path(tmp).unlink(missing_ok=True))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_folder(path: Path, files: Mapping[str, str], mode: int = PUBLIC_MODE) -> None:
    """Make `path` a folder holding exactly `files` (name → text); no files: no folder. The new
    folder is written whole beside it first, then swapped in (inside published_together(), when
    the set is published), so `path` is the old folder, the new one, or briefly absent, never a
    mix of the two."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent))
    try:
        os.chmod(new, 0o755)  # mkdtemp made it 0700
        for name, text in files.items():
            (new / name).write_text(text, encoding="utf-8")
            os.chmod(new / name, mode)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise

    def swap() -> None:
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
        if files:
            os.rename(new, path)
        else:
            shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)

    on_publish(swap, lambda: shutil.rmtree(new, ignore_errors=True))


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


# A run folder or an artifact may come from another machine (issue 17): a symlink in it could point
# anywhere on this host. Readers of run folders take a file only when it, and every folder between
# it and the folder they were given, is real (lstat): a link is never followed.
def real_file(path: Path) -> bool:
    """A regular file, by lstat: False for a symlink (to anything), a fifo, a device, a folder."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def real_dir(path: Path) -> bool:
    """A folder, by lstat: False for a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def real_json_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The `*.json` files of `folder`, sorted: (the regular ones, the ones refused). A folder that
    is itself a link is refused whole; a missing one gives nothing."""
    if not os.path.lexists(folder):
        return [], []
    if not real_dir(folder):
        return [], [Path(folder)]
    taken: list[Path] = []
    refused: list[Path] = []
    for path in sorted(Path(folder).glob("*.json")):
        (taken if real_file(path) else refused).append(path)
    return taken, refused


def real_file_under(root: Path, relative: Path | str) -> bool:
    """`root / relative` is a regular file and no folder between root and it is a symlink."""
    path = Path(root)
    parts = Path(relative).parts
    for part in parts[:-1]:
        path = path / part
        if not real_dir(path):
            return False
    return bool(parts) and real_file(path / parts[-1])


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
