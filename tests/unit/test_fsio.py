"""The shared file helpers: atomic writes with explicit modes (never the process umask), tolerant
reads."""
from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path

import pytest

from pinmatrix.fsio import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    copy_atomic,
    first_line,
    on_publish,
    published_together,
    read_json,
    replace_folder,
    write_json_atomic,
    write_text_atomic,
)
from pinmatrix.interrupt import Interrupted, held


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_modes_are_explicit_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        assert mode_of(write_text_atomic(tmp_path / "summary.md", "x")) == PUBLIC_MODE == 0o644
        assert mode_of(write_text_atomic(tmp_path / "torch.lock", "x", mode=PRIVATE_MODE)) == 0o600
        assert mode_of(copy_atomic(tmp_path / "summary.md", tmp_path / "copy.md")) == 0o644
        assert os.umask(0o077) == 0o077  # left as it was
    finally:
        os.umask(old)


def test_concurrent_writers_never_leave_a_half_file_or_a_temp_file(tmp_path: Path) -> None:
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


def test_read_json_is_none_for_missing_or_damaged_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    assert read_json(tmp_path / "bad.json") is None and read_json(tmp_path / "missing.json") is None


def test_first_line() -> None:
    assert first_line("\n  one  \ntwo") == "one  "
    assert first_line(None) == ""
    assert first_line("abcdef", limit=3) == "abc…"


# --- a report published as one set (an interrupt at report time) -----------------------

def test_published_together_publishes_at_the_end_and_drops_everything_on_an_interrupt(
    tmp_path: Path,
) -> None:
    write_text_atomic(tmp_path / "summary.md", "old report")
    replace_folder(tmp_path / "pins", {"README.md": "old pins", "old.constraints.txt": "x"})
    with pytest.raises(KeyboardInterrupt), published_together():
        write_text_atomic(tmp_path / "summary.md", "new report")
        write_text_atomic(tmp_path / "summary.html", "new page")
        replace_folder(tmp_path / "pins", {"README.md": "new pins"})
        on_publish(lambda: (tmp_path / "latest").symlink_to("run"))
        assert (tmp_path / "summary.md").read_text() == "old report"  # nothing published yet
        raise KeyboardInterrupt
    # the folder is exactly as before: the old report, the old pins, no temp file or folder
    assert (tmp_path / "summary.md").read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pins", "summary.md"]
    assert sorted(p.name for p in (tmp_path / "pins").iterdir()) == ["README.md",
                                                                     "old.constraints.txt"]
    with published_together():
        write_text_atomic(tmp_path / "summary.md", "new report")
        replace_folder(tmp_path / "pins", {"README.md": "new pins"})
    assert (tmp_path / "summary.md").read_text() == "new report"
    assert sorted(p.name for p in (tmp_path / "pins").iterdir()) == ["README.md"]  # not a mix
    assert mode_of(tmp_path / "pins" / "README.md") == PUBLIC_MODE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pins", "summary.md"]
    replace_folder(tmp_path / "pins", {})  # no files: no folder
    assert not (tmp_path / "pins").exists()


def test_held_signals_wait_for_the_block_and_a_second_one_stops_it(tmp_path: Path) -> None:
    """Real signals to this process (pytest runs tests in the main thread)."""

    # whatever handlers this process had before (an earlier test may have run the CLI's main,
    # which installs its SIGTERM handler) are what held() must put back
    sigint_before = signal.getsignal(signal.SIGINT)
    sigterm_before = signal.getsignal(signal.SIGTERM)
    steps: list[str] = []
    with pytest.raises(Interrupted) as caught, held(notice=None):
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("after the first signal")  # held off: the block goes on
        write_text_atomic(tmp_path / "summary.json", "{}")
        steps.append("finished")
    assert caught.value.finished and steps == ["after the first signal", "finished"]
    assert signal.getsignal(signal.SIGINT) is sigint_before  # put back

    with pytest.raises(Interrupted) as caught, held(notice=None):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # the second one: at once
        steps.append("never")
    assert not caught.value.finished and "never" not in steps
    assert signal.getsignal(signal.SIGTERM) is sigterm_before

    # publishing (escape=False): nothing cuts it
    with pytest.raises(Interrupted) as caught, held(notice=None, escape=False):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("published")
    assert caught.value.finished and steps[-1] == "published"
