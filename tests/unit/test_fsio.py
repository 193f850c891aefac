"""The shared file helpers: atomic writes with explicit modes (never the process umask), tolerant
reads."""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from pinmatrix.fsio import (PRIVATE_MODE, PUBLIC_MODE, copy_atomic, first_line, read_json,
                            write_json_atomic,
                            write_text_atomic)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_modes_are_explicit_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        assert mode_of(write_text_atomic(tmp_path / "summary.md", "x")) == PUBLIC_MODE == 0o644
        assert mode_of(write_text_atomic(tmp_path / "torch.lock", "x", mode=PRIVATE_MODE)) == 0o600
        assert mode_of(copy_atomic(tmp_path / "summary.md", tmp_path / "copy.md")) == 0o644
        assert os.umask(0o077) == 0o077  # left as it was
    finally:
        os.umask(old)


def test_concurrent_writers_never_leave_a_half_file_or_a_temp_file(tmp_path):
    target = tmp_path / "run.json"
    threads = [threading.Thread(target=write_json_atomic, args=(target,
                                                                {"n": n, "pad": "x" * 10000}))
               for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert read_json(target)["pad"] == "x" * 10000
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_read_json_is_none_for_missing_or_damaged_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    assert read_json(tmp_path / "bad.json") is None and read_json(tmp_path / "missing.json") is None


def test_first_line():
    assert first_line("\n  one  \ntwo") == "one  "
    assert first_line(None) == ""
    assert first_line("abcdef", limit=3) == "abc…"
