"""What one run of the matrix is asked to do (RunOptions) and what it hands back (RunSummary)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pinmatrix.cell import Cell
from pinmatrix.outcome import Outcome

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 3600.0
RUNNERS = ("auto", "docker", "venv")

Echo = Callable[[str], None]


@dataclass


class RunOptions:
    matrix_path: Path
    selectors: Sequence[str] = ()
    runner: str = "auto"
    cpu: bool = False
    reports_dir: Path = REPO_ROOT / "reports"
    timeout_s: float | None = None        # None: the matrix's settings.cell_timeout_s, else DEFAULT_TIMEOUT_S
    sources: Any = None                   # pinmatrix.sources.PackageSources
    label: str | None = None
    # venv runner
    venv_dir: Path | None = None
    system_site_packages: bool = False
    no_install: bool = False
    extra_sites: Sequence[Path] = ()
    offline: bool = False
    venv_python: str | None = None
    keep_work: bool = False
    check_timeout_s: float | None = None  # --check-timeout: overrides the matrix's settings.check_timeout_s
    flaky_rerun: bool = True              # rerun a cell's failed check groups once (pinmatrix/run/flaky.py)
    model_cache: Path | None = None       # --model-cache: prefetch models here (pinmatrix/run/fetch.py), mount read-only
    model_hub: Path | None = None         # --model-hub: a local folder standing in for the hub; None: huggingface_hub
    # scale (issue 6): the result cache, resume, the scheduler, shards
    rerun: Sequence[str] | None = None    # None: reuse cached results; [] / [""]: rerun all; selectors: those
    resume: str | None = None             # "": the latest unfinished run; else a run id or folder
    run_dir: Path | None = None           # join (or create) this run folder: shards and Slurm tasks share one
    gpus: Sequence[str] | None = None     # --gpus 0,1; None: every GPU nvidia-smi lists
    build_jobs: int = 2
    cpu_jobs: int = 1                     # cells at once when there is no GPU
    shard: tuple[int, int] | None = None  # (i, n), 1-based
    live_progress: bool | None = None     # None: a live line on a TTY, log lines elsewhere
    finalize: bool = True                 # write the report and move reports/latest (off for one Slurm task)
    trust_gpus: bool = False              # `gpus` came from Slurm (host indices): do not check them against nvidia-smi
    snapshot: dict[str, Any] | None = None   # live-axis expansion to reuse (--snapshot), else ask the index
    compile_cache: bool = True            # False (--no-compile-cache): every probe run starts with empty compile caches


@dataclass


class RunSummary:
    run_dir: Path
    outcomes: list[Outcome] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)
    verdict: str = ""
    stopped: str | None = None            # why the run stopped early (engine gone, reports disk full): resumable


def cell_timeout(cell: Cell, opts: RunOptions) -> float:
    """--timeout, else the matrix's settings.cell_timeout_s, else the default."""
    if opts.timeout_s:
        return float(opts.timeout_s)
    return float(cell.settings.get("cell_timeout_s") or DEFAULT_TIMEOUT_S)
