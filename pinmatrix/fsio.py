"""Small helpers every stage shares: atomic writes with explicit modes, tolerant JSON reads, the
time stamp written into run files, and the text helpers reports use. One copy each, so a fix reaches
every writer (there were five copies of the JSON read and four of the first-line helper)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pinmatrix.errors import BadInput
from pinmatrix.interrupt import held

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

    with held(notice=None, escape=False):
        for index, (publish, _) in enumerate(actions):
            try:
                publish()
            except BaseException:
                _discard(actions[index:])
                raise


def _discard(actions: list[Action]) -> None:
    for _, discard in actions:
        with contextlib.suppress(OSError):
            discard()


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
    """Strict JSON: a NaN or infinity is written as null (strict_json; callers that must flag the
    value list strict_json's paths in the file first)."""
    return write_text_atomic(path, json.dumps(strict_json(data)[0], indent=2, sort_keys=False,
                                              ensure_ascii=False, allow_nan=False) + "\n", mode)


def copy_atomic(src: Path, dst: Path, mode: int = PUBLIC_MODE, limit: int | None = None) -> Path:
    """Copy a regular file (never a link, FIFO or device; at most `limit` bytes, MAX_COPY_BYTES
    by default) so that `dst` is either absent, the old file, or the whole copy."""
    return write_bytes_atomic(dst, read_bytes_bounded(src, limit or MAX_COPY_BYTES), mode)


def read_json(path: Path, limit: int | None = None) -> Any:
    """The parsed file, or None when it is missing, unreadable, not JSON, or refused by the trust
    rule below (the caller decides what that means; load_json says why)."""
    try:
        return load_json(path, limit)
    except Refused:
        return None


# --- the trust rule: every read and write of a run folder or the reports folder ------------------
# A run folder may come from another machine, another user or an earlier, damaged run. So:
# - a file is read only when it is a regular file, by lstat and again by fstat on the descriptor,
#   opened with O_NOFOLLOW | O_NONBLOCK: a FIFO or a device never blocks the reader, a link is
#   never followed;
# - a read is bounded before parsing: at most `limit` bytes (MAX_JSON_BYTES), at most
#   MAX_JSON_DEPTH levels of nesting; what is written is strict JSON (NaN and infinities as null);
# - a path taken from a record (an outcome's `result`, the cache index) is a relative path inside
#   its run folder, with no `..`, no absolute part and no link on the way (`confined`);
# - a name taken from a record (a cell id, a run id) is one plain file name (`plain_name`);
# - a write never goes through a link: atomic writes rename over the name (a link is replaced);
#   appends (`append_line`) replace a link or a special file with a new regular file.
MAX_JSON_BYTES = 64 * 1024 * 1024      # a probe result with every log tail is under 1 MB
MAX_JSON_DEPTH = 64                    # a result nests 8 levels deep; outcomes and run.json fewer
MAX_COPY_BYTES = 256 * 1024 * 1024     # a log copied along with a reused result
MAX_NAME_CHARS = 200                   # cell ids of the largest matrix are under 120 characters


class Refused(BadInput, OSError, ValueError):
    """A file or name the trust rule refuses; str() is one line saying why. Both an OSError (as
    the read it replaces raised for a missing or unreadable file, with its errno kept) and a
    ValueError (as a JSON parse raised); bad input (exit 2) where nothing else catches it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "refused"

    @classmethod
    def of(cls, why: str, exc: OSError) -> Refused:
        refused = cls(why)
        refused.errno, refused.filename = exc.errno, exc.filename
        return refused


def read_bytes_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; Refused otherwise (a link, a FIFO, a
    device, a folder, a larger file, an unreadable one). Never blocks on a FIFO or a device."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise Refused.of(f"unreadable: {exc.strerror}", exc) from None
    if not stat.S_ISREG(mode):
        raise Refused(f"not a regular file ({_kind(mode)})")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused.of(f"unreadable: {exc.strerror}", exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # swapped between the lstat and the open
            raise Refused(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise Refused(f"{info.st_size} bytes, over the cap of {limit} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew while being read
            raise Refused(f"over the cap of {limit} bytes")
        return b"".join(chunks)
    except Refused:
        raise
    except OSError as exc:
        raise Refused.of(f"unreadable: {exc.strerror}", exc) from None
    finally:
        os.close(fd)


def file_kind(path: Path) -> str:
    """What `path` is, by lstat ("a symlink", "a FIFO", ...), in words."""
    try:
        return _kind(os.lstat(path).st_mode)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a plain file"


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON at most `max_depth` levels deep; Refused (with json's line and column where it has them)
    otherwise. A NaN or infinity is read as the float it stands for (a probe's loss may really be
    NaN: that is evidence, not damage); everything written goes out strict (`strict_json`)."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise Refused(f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise Refused(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise Refused(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if depth_over(data, max_depth):
        raise Refused(f"nested deeper than {max_depth} levels")
    return data


def depth_over(data: Any, max_depth: int) -> bool:
    """True when `data` nests more than `max_depth` lists/objects deep (an iterative walk: a deep
    value never costs the walker its stack)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def load_json(path: Path, limit: int | None = None, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The parsed file under the trust rule; Refused saying why not."""
    return parse_json(read_bytes_bounded(path, MAX_JSON_BYTES if limit is None else limit),
                      max_depth)


def plain_name(name: Any) -> bool:
    """One plain file name, as a cell id or run id must be: a non-empty printable string with no
    separator, not `.`/`..`, not hidden, at most MAX_NAME_CHARS characters."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable()
            and "/" not in name and "\\" not in name and not name.startswith("."))


def confined(root: Path, relative: Any) -> Path | None:
    """`root / relative` when `relative` (a path read from a record) is a relative path that stays
    inside `root` and names a regular file with no link on the way; else None."""
    if not inside(relative):
        return None
    return Path(root) / relative if real_file_under(root, relative) else None


def inside(relative: Any) -> bool:
    """`relative` (a path read from a record) is a relative path with no `..`, `.` or empty part:
    joined to a folder, it stays inside it (links aside: `confined` checks those)."""
    return (isinstance(relative, str) and bool(relative) and "\0" not in relative
            and not relative.startswith("/")
            and all(part not in ("..", ".", "") for part in relative.split("/")))


def real_subdirs(root: Path, names: Iterable[str]) -> None:
    """Make each `root/name` a real folder: a link (or a file, FIFO, device) in its place is
    removed first, so that what is written there stays inside `root`."""
    for name in names:
        path = Path(root) / name
        if os.path.lexists(path) and not real_dir(path):
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)


def append_line(path: Path, line: str, mode: int = PUBLIC_MODE) -> Path:
    """Append one line to a file, never through a link: a link, FIFO or device in its place is
    replaced by a new regular file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path) and not real_file(path):
        if real_dir(path):
            raise Refused(f"{path} is a folder")
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"{path} is not a regular file")
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
    finally:
        os.close(fd)
    return path


def strict_json(data: Any, where: str = "") -> tuple[Any, list[str]]:
    """(data with every NaN or infinity replaced by null, the paths where one was): what strict
    JSON readers (a browser's JSON.parse) accept, and the list that flags the values replaced."""
    flagged: list[str] = []

    def clean(value: Any, at: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            flagged.append(f"{at or '/'} = {value}")
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{at}/{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{at}/{i}") for i, v in enumerate(value)]
        return value

    return clean(data, where), flagged


# A run folder or an artifact may come from another machine: a symlink in it could point
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
