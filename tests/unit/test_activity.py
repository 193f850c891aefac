"""The heartbeat (pinmatrix/activity.py): after QUIET_S seconds without a line it says what is under
way, in words, and how long; a line said meanwhile resets the quiet clock. The resolve stage says
each cell as it resolves and its summary in words."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from pinmatrix.activity import (
    QUIET_S,
    Heartbeat,
    Step,
    acting_for,
    describe,
    doing,
    last_line,
    under_way,
)
from pinmatrix.cell import Lock, Unresolvable
from pinmatrix.resolve.stage import StageResult, cell_line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_quiet_bar_is_under_ten_seconds() -> None:
    assert QUIET_S < 10


def test_a_heartbeat_names_the_step_its_cell_and_its_age(tmp_path: Path) -> None:
    clock, lines = Clock(), []
    beat = Heartbeat(lines.append, quiet_s=8, clock=clock)
    log = tmp_path / "build.log"
    log.write_text("Collecting torch\n\n Downloading nvidia-cublas (580 MB)\r Downloading 40%\n")
    with acting_for("cell-a"), doing("uv pip install torch.lock", log=log) as step:
        step.started = clock.now
        clock.now += 7.9
        assert not beat.beat() and lines == []          # not quiet long enough
        clock.now += 0.2
        assert beat.beat()
        assert lines == ["… 8 s since the last line; under way: cell-a: uv pip install torch.lock, "
                         "8 s (last: Downloading 40%)"]
        assert not beat.beat()                          # the heartbeat itself counts as a line
        clock.now += 5
        beat.echo("cell-b: prepared in 3 s")            # any line resets the clock
        clock.now += 7
        assert not beat.beat()
    assert under_way() == []


def test_steps_doing_the_same_thing_are_said_once_with_a_count() -> None:
    now = 500.0

    steps = [Step(f"cell-{i}", "uv pip compile the whole stack (Python 3.12)", now - 40 + i)
             for i in range(6)] + [Step("cell-x", "running the probe's checks", now - 3)]
    line = describe(steps, now, 9)
    assert line == ("… 9 s since the last line; under way: uv pip compile the whole stack "
                    "(Python 3.12) for 6 cells, the longest 40 s (cell-0); cell-x: running the "
                    "probe's checks, 3 s")


def test_the_heartbeat_thread_speaks_within_the_bar() -> None:
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    with Heartbeat(lambda line: lines.append((time.monotonic() - started, line)), quiet_s=0.3), \
            doing("waiting on something slow"):
        time.sleep(1.2)
    assert len(lines) >= 2 and all("waiting on something slow" in ln for _, ln in lines)
    gaps = [b - a for (a, _), (b, _) in zip([(0.0, ""), *lines], lines, strict=False)]
    assert max(gaps) < 0.3 + 0.5 + 0.3  # quiet_s, one poll, slack for a busy machine


def test_doing_is_per_thread_and_timed() -> None:
    seen: list[str] = []

    def work(name: str) -> None:
        with acting_for(name), doing("x"):
            seen.append(name)
            time.sleep(0.05)

    threads = [threading.Thread(target=work, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.02)
    assert {s.who for s in under_way()} <= {"c0", "c1", "c2"}
    for t in threads:
        t.join()
    assert under_way() == [] and sorted(seen) == ["c0", "c1", "c2"]


def test_last_line_of_a_missing_or_empty_log_is_empty(tmp_path: Path) -> None:
    assert last_line(None) == "" and last_line(tmp_path / "nope") == ""
    (tmp_path / "empty").write_text("\n\n")
    assert last_line(tmp_path / "empty") == ""


def test_the_resolve_stage_speaks_in_words() -> None:
    lock = Lock(cell_id="a", python="3.12", torch_lock="torch==2.11.0\n",
                full_lock="torch==2.11.0\npeft==0.21.2\n")
    stage = StageResult({"a": lock, "b": Unresolvable("b", "× No solution found\n  ╰─▶ Because x "
                                                            "depends on y, we can conclude z.")},
                        83.4, 8)
    assert stage.summary() == "resolve: 1 resolved, 1 unresolvable, in 83 s (8 workers)"
    assert cell_line("a", lock, 12.3, 1, 2) == "resolve [1/2] a: resolved, 2 packages, in 12 s"
    assert cell_line("b", stage.results["b"], 5, 2, 2).startswith(
        "resolve [2/2] b: unresolvable, Because x depends on y")


def test_a_log_line_that_is_a_python_value_is_never_shown(tmp_path: Path) -> None:
    """The probe's log holds the trainer's own prints (`{'loss': 5.51, ...}`): the heartbeat shows
    the probe's last line in words instead (found in a cold run of the default matrix)."""
    log = tmp_path / "run.log"
    log.write_text("[probe] train.hf-trainer: pass (11.58s)\n"
                   "{'loss': 5.5144, 'learning_rate': 1e-4}\n['a', 'b']\n")
    assert last_line(log) == "[probe] train.hf-trainer: pass (11.58s)"
    log.write_text("[probe] imports: pass (3.1s)\nnoise from a library\n")
    assert last_line(log, marker="[probe") == "[probe] imports: pass (3.1s)"
    assert last_line(log) == "noise from a library"
