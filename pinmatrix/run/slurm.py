"""`matrix --on slurm`: one Slurm job array, one cell per array task, results merged into one run
folder.

Why `sbatch`/`sacct` directly and not submitit: submitit pickles a Python callable and needs the
same Python with submitit importable on every node, and it hides the job script; what a task runs
here is plain `python -m pinmatrix run-cell …`, a command an admin can read in `RUN/slurm/job.sh`
and rerun by hand. The contract with Slurm is three commands (sbatch, sacct/scontrol, scancel) and
files on a shared folder, which works with any Slurm version and adds no dependency.

The flow:
1. the run folder (under `--reports`, or `--run-dir`; it must be on a filesystem the nodes share, as
   must this checkout) gets `run.json` and `slurm/cells.txt` (one cell id per line);
2. `sbatch --array=0-(N-1) --gres=gpu:1 [--partition P] [--sbatch-arg …] --no-requeue
   RUN/slurm/job.sh`. `--gres` is left out with `--cpu`. `--no-requeue`: a pre-empted or node-failed
   task ends (and its cell shows as infra) instead of silently restarting behind the session's back;
3. each task runs `python -m pinmatrix run-cell --run-dir RUN --index $SLURM_ARRAY_TASK_ID`, which
   runs that one cell through the ordinary pipeline (docker where the node has an engine, else venv,
   unless --runner says otherwise; the result cache applies) and writes only that cell's files;
4. the session polls every `--slurm-poll` seconds: `sacct` where accounting is on; where it is off
   (`AccountingStorageType=accounting_storage/none`, as on the test cluster) `scontrol show job`,
   which keeps finished jobs for MinJobAge; it shows a progress line until every task ended or the
   deadline;
5. past the deadline the remaining tasks are cancelled (`scancel`); then every cell without a
   finished outcome gets an infra outcome naming the task and its final state (FAILED, PREEMPTED,
   NODE_FAIL, TIMEOUT, CANCELLED, deadline, vanished), never a hang; the report is merged and
   `reports/latest` moved.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pinmatrix import interrupt
from pinmatrix.cell import Cell
from pinmatrix.errors import SlurmError
from pinmatrix.fsio import (
    load_json,
    on_publish,
    published_together,
    utc_now,
    write_json_atomic,
    write_text_atomic,
)
from pinmatrix.interrupt import held
from pinmatrix.outcome import Outcome, load_outcome
from pinmatrix.report.pins import write_pins
from pinmatrix.report.write import write_report
from pinmatrix.run.folder import new_run_dir, point_latest, run_manifest
from pinmatrix.run.options import (
    REPO_ROOT,
    Echo,
    RunOptions,
    SlurmOptions,
    cell_timeout,
    task_options,
)
from pinmatrix.run.pipeline import load_cells, run_matrix
from pinmatrix.run.shard import shard_of
from pinmatrix.run.state import finished_cells
from pinmatrix.runners import registry

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL",
            "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
          "STOPPED",
          "SIGNALING", "STAGE_OUT", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
Run = Callable[..., subprocess.CompletedProcess[str]]



# --- parsing (unit-tested) -----------------------------------------------------------------------

def expand_task_ids(text: str) -> list[int]:
    """"3", "0-4", "[0-9%2]", "1,3-5" → the task indices."""
    text = text.strip().strip("[]").split("%")[0]
    out: list[int] = []
    for part in filter(None, text.split(",")):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.append(int(part))
    return out


def parse_sacct(text: str, job_id: str) -> dict[int, str]:
    """`sacct -n -P -X -j JOB -o JobID,State` lines ("123_4|COMPLETED", "123_[5-9]|PENDING",
    "123_2|CANCELLED by 0") → {task: STATE}."""
    states: dict[int, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        jid, state = line.split("|", 1)[:2]
        if not jid.startswith(f"{job_id}_"):
            continue
        for task in expand_task_ids(jid[len(job_id) + 1:]):
            states[task] = state.split()[0].upper() if state.split() else "UNKNOWN"
    return states


def parse_scontrol(text: str, job_id: str) -> dict[int, str]:
    """`scontrol -o show job JOB`: one line per record, with ArrayJobId=, ArrayTaskId= and
    JobState=."""
    states: dict[int, str] = {}
    for line in text.splitlines():
        fields = {m.group(1): m.group(2) for m in re.finditer(r"(\w+)=(\S*)", line)}
        if fields.get("ArrayJobId") != job_id or "ArrayTaskId" not in fields:
            continue
        for task in expand_task_ids(fields["ArrayTaskId"]):
            states[task] = fields.get("JobState", "UNKNOWN").upper()
    return states


# --- talking to Slurm ----------------------------------------------------------------------------

@dataclass
class SlurmClient:
    run: Run = subprocess.run

    def submit(self, script: Path, n_tasks: int, *, gres: str | None, partition: str | None,
               extra: Sequence[str], output: Path, job_name: str = "pinmatrix") -> str:
        argv = ["sbatch", "--parsable", f"--array=0-{n_tasks - 1}", f"--job-name={job_name}",
                "--no-requeue",
                f"--output={output}", "--ntasks=1"]
        if gres:
            argv.append(f"--gres={gres}")
        if partition:
            argv.append(f"--partition={partition}")
        argv.extend(extra)
        argv.append(str(script))
        proc = self._call(argv, 120)
        if proc.returncode != 0:
            raise SlurmError(f"sbatch failed ({proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()}\n"
                             f"  command: {shlex.join(argv)}")
        job = proc.stdout.strip().split(";")[0]
        if not job.isdigit():
            raise SlurmError(f"sbatch printed no job id: {proc.stdout!r}")
        return str(job)

    def states(self, job_id: str) -> tuple[dict[int, str], str]:
        """{task: state} and where it came from ("sacct" or "scontrol")."""
        proc = self._call(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State"], 60)
        if proc.returncode == 0 and "disabled" not in (proc.stderr + proc.stdout):
            states = parse_sacct(proc.stdout, job_id)
            if states:
                return states, "sacct"
        proc = self._call(["scontrol", "-o", "show", "job", job_id], 60)
        if proc.returncode == 0:
            return parse_scontrol(proc.stdout, job_id), "scontrol"
        return {}, "none"  # e.g. "Invalid job id specified": the job left slurmctld's memory

    def cancel(self, job_id: str) -> None:
        self._call(["scancel", job_id], 60)

    def _call(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return self.run(argv, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as exc:
            raise SlurmError(f"{argv[0]} not found: is this a Slurm login node? ({exc})") from exc
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "",
                                               f"{argv[0]} timed out after {timeout:.0f}s")


# --- the session side ----------------------------------------------------------------------------

def run_on_slurm(slurm: SlurmOptions, opts: RunOptions, echo: Echo = print,
                 client: SlurmClient | None = None) -> Path | None:
    """Submit the selected cells as one job array, wait for it, and report: the run folder, or None
    when no cell was selected. The exit code comes from the folder, by the local run's rule
    (pinmatrix/commands/matrix.py)."""

    if opts.resume is not None:
        # A resubmission is the resume: every cell judged before is reused from the result cache.
        raise SlurmError("--resume does not apply to --on slurm: submit again, judged cells are "
                         "reused from the cache")
    client = client or SlurmClient()
    if not shutil.which("sbatch") and client.run is subprocess.run:
        raise SlurmError("--on slurm: sbatch not found on PATH (run this on a Slurm login node)")
    matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu,
                               snapshot=opts.snapshot,
                               sources=opts.sources)
    if opts.shard is not None:

        cells = shard_of(cells, *opts.shard)
    if not cells:
        echo("no cells selected: nothing to submit")
        return None
    run_dir, manifest, job = _submit(slurm, opts, client, matrix, cells, echo)
    deadline_s = slurm.slurm_deadline or _default_deadline(cells, opts)
    final = wait_for_tasks(client, job, len(cells), poll_s=slurm.slurm_poll, deadline_s=deadline_s,
                           run_dir=run_dir, echo=echo)
    _record_task_ends(run_dir, cells, final, job, runner=f"slurm:{opts.runner}")
    manifest["finished"] = utc_now()
    manifest["complete"] = True
    manifest["slurm"]["states"] = {str(k): v for k, v in sorted(final.items())}
    write_json_atomic(run_dir / "run.json", manifest)
    _publish(run_dir, opts, echo)
    return run_dir


def _submit(slurm: SlurmOptions, opts: RunOptions, client: SlurmClient, matrix: Any,
            cells: list[Cell], echo: Echo) -> tuple[Path, dict[str, Any], str]:
    """The run folder with its cell list and job script, and the job array submitted:
    (folder, manifest, job id)."""

    if opts.run_dir is not None:
        run_dir = Path(opts.run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = new_run_dir(opts.reports_dir, opts.label).resolve()
    manifest = run_manifest(opts, run_dir, matrix, cells, f"slurm:{opts.runner}")
    slurm_dir = run_dir / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(slurm_dir / "cells.txt", "".join(c.id + "\n" for c in cells))
    script = slurm_dir / "job.sh"
    write_text_atomic(script, job_script(slurm.task_argv, opts, run_dir))
    script.chmod(0o755)
    job = client.submit(script, len(cells), gres=None if opts.cpu else "gpu:1",
                        partition=slurm.partition,
                        extra=tuple(slurm.sbatch_arg), output=slurm_dir / "%A_%a.log")
    manifest["slurm"] = {"job_id": job, "tasks": len(cells), "script": "slurm/job.sh"}
    write_json_atomic(run_dir / "run.json", manifest)
    partition = f", partition {slurm.partition}" if slurm.partition else ""
    echo(
        f"run {run_dir.name}: {len(cells)} cells submitted as Slurm job array {job} "
        f"({'cpu' if opts.cpu else 'gres gpu:1'}{partition})"
    )
    return run_dir, manifest, job


def _record_task_ends(run_dir: Path, cells: Sequence[Cell], final: dict[int, str], job: str, *,
                      runner: str) -> None:
    """An outcome for each cell whose task Slurm ended before it judged the cell."""

    done = finished_cells(run_dir)
    for index, cell in enumerate(cells):
        state = final.get(index, "VANISHED")
        existing = load_outcome(run_dir / "outcomes" / f"{cell.id}.json")
        # Slurm stops a task with SIGTERM (deadline, scancel, pre-emption), which the task records
        # as `interrupted` (pinmatrix/interrupt.py); the cause the session knows is Slurm's state.
        stopped_by_slurm = (isinstance(existing, Outcome)
                            and existing.signature in ("interrupted", "slurm-cancelled")
                            and state != "COMPLETED")
        if cell.id in done and not stopped_by_slurm:
            continue
        if isinstance(existing, Outcome) and existing.status == "infra" and state == "COMPLETED":
            continue  # the task judged the machine itself (build failure, timeout): keep its reason
        slurm_outcome(existing if isinstance(existing, Outcome) else None, cell, state, job,
                      index, runner=runner).write(run_dir)


def _publish(run_dir: Path, opts: RunOptions, echo: Echo) -> None:
    with held(), published_together():  # the whole report, or the one before (interrupt.py)
        write_report(run_dir, pins_for=opts.pins_for)
        echo(write_pins(run_dir, pins_for=opts.pins_for).message)
        if run_dir.parent == Path(opts.reports_dir).resolve():
            on_publish(lambda: point_latest(opts.reports_dir, run_dir))
    echo(load_json(run_dir / "summary.json")["verdict"])
    echo(f"report: {run_dir / 'summary.md'}")


def wait_for_tasks(client: SlurmClient, job: str, n_tasks: int, *, poll_s: float, deadline_s: float,
                   run_dir: Path, echo: Callable[[str], object] = print,
                   sleep: Callable[[float], object] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> dict[int, str]:
    """Poll until every task is in a terminal state, or cancel at the deadline. Returns {task: final
    state}. A task Slurm no longer knows (job gone from slurmctld, no accounting) counts as ended:
    VANISHED."""
    started = clock()
    last_line = ""
    seen: dict[int, str] = {}
    misses = 0
    while True:
        states, source = client.states(job)
        if states:
            misses = 0
            seen.update(states)
        else:
            misses += 1
        ended = {t for t, s in seen.items() if s in TERMINAL}
        line = _progress_line(seen, n_tasks, source)
        if line != last_line:
            echo(line)
            last_line = line
        if len(ended) == n_tasks:
            return dict(seen)
        if misses >= 3 and seen:  # Slurm forgot the job: whatever did not end is gone
            return {
                t: (seen[t] if seen.get(t) in TERMINAL else "VANISHED") for t in range(n_tasks)
            }
        if clock() - started > deadline_s:
            client.cancel(job)
            echo(f"deadline of {deadline_s:.0f}s passed: cancelled job {job}")
            return {
                t: (seen[t] if seen.get(t) in TERMINAL else "DEADLINE") for t in range(n_tasks)
            }
        sleep(poll_s)


def _progress_line(states: dict[int, str], n: int, source: str) -> str:
    pending = sum(1 for s in states.values() if s in ("PENDING", "REQUEUED",
                                                      "CONFIGURING")) + (n - len(states))
    running = sum(1 for s in states.values() if s in ("RUNNING", "COMPLETING"))
    done = sum(1 for s in states.values() if s == "COMPLETED")
    failed = sum(1 for s in states.values() if s in TERMINAL and s != "COMPLETED")
    return (f"slurm: {pending} pending · {running} running · {done} completed · {failed} failed  "
            f"(of {n}, via {source})")


def slurm_outcome(existing: Outcome | None, cell: Cell, state: str, job: str, index: int, *,
                  runner: str) -> Outcome:
    """The outcome of a cell whose Slurm task ended `state` without a result: infra, Slurm's state
    as its signature. What the task had recorded before it was stopped (its hash, stage, timings,
    GPU timeline, the checks it had finished under partial/) is kept: evidence, never a verdict."""
    signature = f"slurm-{state.lower().replace('_', '-')}"
    reason = (f"Slurm task {job}_{index} ended {state} without a result (log: "
              f"slurm/{job}_{index}.log)")
    kept = existing or Outcome(cell=cell.id, hash=None, pins={}, runner=runner, stage="resolve")
    return replace(kept, pins=dict(cell.pins), runner=runner, status="infra",
                   signature=signature, reason=reason, result=None)


def _default_deadline(cells: Sequence[Cell], opts: RunOptions) -> float:
    longest = max(cell_timeout(c, opts) for c in cells)
    return 2 * longest + 3600  # one build plus the cell, twice over, plus queueing


def job_script(task_argv: Sequence[str], opts: RunOptions, run_dir: Path) -> str:
    """The array task's script: cd into this checkout and run one cell of the run folder, with the
    session's forwarded options (`task_argv`, SlurmOptions.task_argv)."""

    argv = [sys.executable, "-m", "pinmatrix", "run-cell", "--run-dir", str(run_dir),
            "--index", "${SLURM_ARRAY_TASK_ID}", *task_options(task_argv, run_dir)]
    quoted = " ".join(a if a.startswith("${") else shlex.quote(a) for a in argv)
    return ("#!/bin/bash\n"
            "# One pinmatrix cell per array task (written by pinmatrix/run/slurm.py; safe to rerun "
            "by hand with\n"
            "# SLURM_ARRAY_TASK_ID=N).\n"
            "set -euo pipefail\n"
            f"cd {shlex.quote(str(REPO_ROOT))}\n"
            f'echo "pinmatrix task ${{SLURM_ARRAY_JOB_ID:-?}}_${{SLURM_ARRAY_TASK_ID}} on '
            '$(hostname)"\n'
            f"exec {quoted}\n")


# --- the task side -------------------------------------------------------------------------------

def run_cell_task(opts: RunOptions, index: int | None, echo: Echo = print) -> int:
    """`python -m pinmatrix run-cell --run-dir RUN --index N`: cell N of RUN/slurm/cells.txt, only
    its files."""

    interrupt.IN_SLURM_TASK.set()  # a SIGTERM here is Slurm stopping the task
    assert opts.run_dir is not None  # run-cell's --run-dir is required
    run_dir = Path(opts.run_dir)
    given = str(index) if index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if given is None or not given.isdigit():
        raise SlurmError("run-cell: --index N (or SLURM_ARRAY_TASK_ID) is required")
    ids = (run_dir / "slurm" / "cells.txt").read_text(encoding="utf-8").split()
    if int(given) >= len(ids):
        raise SlurmError(f"run-cell: index {given} out of range: {run_dir}/slurm/cells.txt lists "
                         f"{len(ids)} cells")
    cell_id = ids[int(given)]
    gpus, trust = None, False
    job_gpus = os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_STEP_GPUS")
    if not opts.cpu and job_gpus and _isolates(opts):
        # A container engine addresses host GPU indices (Slurm's SLURM_JOB_GPUS); inside the job's
        # cgroup nvidia-smi may
        # number them from 0, so the list is taken as Slurm gave it. The venv runner inherits
        # Slurm's
        # CUDA_VISIBLE_DEVICES unchanged instead (gpus=None).
        gpus, trust = [g for g in job_gpus.split(",") if g], True
    task_opts = dataclasses.replace(opts, selectors=(cell_id,), run_dir=run_dir, resume=None,
                                    shard=None,
                                    finalize=False, gpus=gpus, trust_gpus=trust,
                                    live_progress=False)
    summary = run_matrix(task_opts, echo=echo)
    return 1 if summary.harness_errors else 0


def _isolates(opts: RunOptions) -> bool:
    """Whether the task's cells run in containers (which name GPUs by host index)."""
    kinds = registry.candidates(opts.runner)
    if len(kinds) == 1:  # named outright
        return kinds[0].isolates
    return registry.pick(opts.runner).kind.isolates  # auto: whichever an engine allows
