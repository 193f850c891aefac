"""pinmatrix/run/slurm.py without a cluster: parsing sacct/scontrol, and the waiter's end states
(the real cluster is exercised by tests/integration/test_slurm.py)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from pinmatrix.run.slurm import (
    SlurmClient,
    expand_task_ids,
    parse_sacct,
    parse_scontrol,
    wait_for_tasks,
)


def test_expand_task_ids() -> None:
    assert expand_task_ids("3") == [3]
    assert expand_task_ids("[0-3%2]") == [0, 1, 2, 3]
    assert expand_task_ids("1,4-5") == [1, 4, 5]


def test_parse_sacct() -> None:
    text = "77_0|COMPLETED\n77_1|CANCELLED by 0\n77_[2-3]|PENDING\n78_0|FAILED\n77_4|NODE_FAIL\n"
    assert parse_sacct(text, "77") == {0: "COMPLETED", 1: "CANCELLED", 2: "PENDING", 3: "PENDING",
                                       4: "NODE_FAIL"}


def test_parse_scontrol() -> None:
    text = ("JobId=80 ArrayJobId=77 ArrayTaskId=2-5 JobName=pinmatrix JobState=PENDING "
            "Reason=Resources\n"
            "JobId=79 ArrayJobId=77 ArrayTaskId=1 JobName=pinmatrix JobState=PREEMPTED "
            "Reason=None\n"
            "JobId=78 ArrayJobId=77 ArrayTaskId=0 JobName=pinmatrix JobState=COMPLETED "
            "Reason=None\n")
    assert parse_scontrol(text, "77") == {0: "COMPLETED", 1: "PREEMPTED", 2: "PENDING",
                                          3: "PENDING",
                                          4: "PENDING", 5: "PENDING"}


class FakeSlurm(SlurmClient):
    """Scripted task states, one snapshot per poll."""

    def __init__(self, snapshots) -> None:
        self.snapshots, self.cancelled = list(snapshots), False

    def states(self, job_id):
        return (self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]), "test"

    def cancel(self, job_id) -> None:
        self.cancelled = True


def test_waiter_ends_when_all_tasks_end(tmp_path: Path) -> None:
    fake = FakeSlurm([{0: "PENDING", 1: "PENDING"}, {0: "RUNNING", 1: "PENDING"},
                      {0: "COMPLETED", 1: "PREEMPTED"}])
    lines: list[str] = []
    final = wait_for_tasks(fake, "9", 2, poll_s=0, deadline_s=60, run_dir=tmp_path,
                           echo=lines.append,
                           sleep=lambda s: None)
    assert final == {0: "COMPLETED", 1: "PREEMPTED"} and not fake.cancelled
    assert lines[-1].startswith("slurm: 0 pending · 0 running · 1 completed · 1 failed")


def test_waiter_never_hangs_on_a_stuck_task(tmp_path: Path) -> None:
    clock = iter(range(0, 10_000, 10))
    fake = FakeSlurm([{0: "COMPLETED", 1: "RUNNING"}])
    final = wait_for_tasks(fake, "9", 2, poll_s=0, deadline_s=100, run_dir=tmp_path,
                           echo=lambda s: None,
                           sleep=lambda s: None, clock=lambda: next(clock))
    assert final == {0: "COMPLETED", 1: "DEADLINE"} and fake.cancelled


def test_waiter_treats_a_forgotten_job_as_vanished(tmp_path: Path) -> None:
    fake = FakeSlurm([{0: "RUNNING", 1: "COMPLETED"}, {}, {}, {}])
    final = wait_for_tasks(fake, "9", 2, poll_s=0, deadline_s=1e9, run_dir=tmp_path,
                           echo=lambda s: None,
                           sleep=lambda s: None)
    assert final == {0: "VANISHED", 1: "COMPLETED"}


def test_sacct_disabled_falls_back_to_scontrol() -> None:
    calls = []

    def run(argv, **kw):
        calls.append(argv[0])
        if argv[0] == "sacct":
            return subprocess.CompletedProcess(argv, 1, "",
                                               "Slurm accounting storage is disabled\n")
        return subprocess.CompletedProcess(argv, 0,
                                           "JobId=5 ArrayJobId=4 ArrayTaskId=0 JobState=RUNNING\n",
                                           "")

    states, source = SlurmClient(run).states("4")
    assert states == {0: "RUNNING"} and source == "scontrol" and calls == ["sacct", "scontrol"]
