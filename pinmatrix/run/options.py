"""Every command-line option, typed once: one frozen dataclass per concern (RunOptions: what one
run of the matrix is asked to do; SourceOptions, BundleOptions, BisectOptions, ReportOptions,
SlurmOptions; HostSettings for the variables no flag stands in for), each option declared on the
field it fills. OPTIONS, the checks and the rules between options are derived from those fields;
RunSummary is what a run hands back."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pinmatrix.cell import Cell
from pinmatrix.environ.interpreters import parse_venv_python
from pinmatrix.environ.site_rules import as_site, parse_extra_site
from pinmatrix.errors import PreviousRunError, UsageError
from pinmatrix.matrix.load import KNOWN_AXES
from pinmatrix.outcome import Outcome
from pinmatrix.report.diff import find_run_dir
from pinmatrix.report.pins import parse_pins_for
from pinmatrix.run.scheduler import parse_gpu_list
from pinmatrix.run.shard import parse_shard
from pinmatrix.run.state import resume_folder
from pinmatrix.runners import registry
from pinmatrix.sources import SOURCE_ENV, PackageSources

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 3600.0
RUNNERS = registry.CHOICES  # `auto` and every registered runner (pinmatrix/runners/registry.py)

Echo = Callable[[str], None]
C = TypeVar("C")


@dataclass
class RunSummary:
    run_dir: Path
    outcomes: list[Outcome] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)
    verdict: str = ""
    # why the run stopped early (engine gone, reports disk full): resumable
    stopped: str | None = None


def cell_timeout(cell: Cell, opts: RunOptions) -> float:
    """--timeout, else the matrix's settings.cell_timeout_s, else the default."""
    if opts.timeout_s:
        return float(opts.timeout_s)
    return float(cell.settings.get("cell_timeout_s") or DEFAULT_TIMEOUT_S)


# --- every command-line option, declared once, on the field it fills -----------------------------
# The parser (pinmatrix/cli/main.py), each command's typed config (concern_from, run_options), the
# argv a Slurm task gets (forwarded_argv, pinmatrix/run/slurm.py) and the help text's environment
# variables all come from the fields' options, so an option cannot reach a local run and miss a
# Slurm task (four options once did).

ALL_COMMANDS = ("matrix", "resolve", "report", "list", "nightly", "merge", "run-cell", "bisect",
                "doctor", "bundle")


@dataclass(frozen=True)
class Option:
    """One option, declared on the typed field it fills (`typed(...)` below). `field`: the
    RunOptions field it sets (None: a field of another concern, `concern`.`attr`).
    `forward`: how a Slurm task gets it from the session's parsed arguments: "value" as given,
    "path" made absolute (tasks start in this checkout, maybe elsewhere), or "" (the session alone
    uses it)."""

    flag: str  # "--name", or a bare name for a positional (a standalone command's)
    help: str
    field: str | None = None
    commands: tuple[str, ...] = ALL_COMMANDS
    group: str | None = None  # argparse group title
    action: str | None = None  # "store_true", "append"
    type: Callable[[str], Any] | None = None
    default: Any = None
    metavar: str | None = None
    nargs: str | None = None
    const: Any = None
    choices: tuple[str, ...] | None = None
    required: bool = False
    forward: str = ""
    to_field: Callable[[Any], Any] | None = None  # parsed value → RunOptions value
    env: tuple[str, ...] = ()  # read when the option is absent (pinmatrix/sources.py)
    # check(name, value, args) raises UsageError naming `name`: the flag, or the environment
    # variable the value came from (`env`). Called at parse time, before anything is written,
    # whenever the option was given (or has a default) or, absent, one of its variables is set, so a
    # bad value or a contradiction with another option never reaches resolve or build
    check: Callable[[str, Any, argparse.Namespace], None] | None = None
    # cross-option rules, by flag: given, this option needs each of `requires` given too, and none
    # of `conflicts` (checked at parse time, UsageError, exit 2)
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    # the typed field it fills: the concern dataclass's name and the field (set from the field)
    concern: str = ""
    attr: str = ""
    aliases: tuple[str, ...] = ()  # short forms given before the flag ("-o")

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def from_env(self, environ: Mapping[str, str]) -> tuple[str, Any] | None:
        """(variable, value) of the first of `env` that is set and not empty, parsed as the flag
        would be (an `append` option: the words of the value), as PackageSources.from_env picks
        it; None when none is set."""
        for name in self.env:
            raw = environ.get(name)
            if raw:
                if self.action == "append":
                    return name, raw.split()
                return name, self.type(raw) if self.type is not None else raw
        return None

    def argparse_kwargs(self) -> dict[str, Any]:
        env = f"(else ${', $'.join(self.env)})" if self.env else ""
        kw: dict[str, Any] = {"help": f"{self.help} {env}".strip() or None}
        for name in ("action", "type", "metavar", "nargs", "const", "choices"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.action != "store_true":
            kw["default"] = (
                []
                if self.action == "append" and self.default is None and self.nargs is None
                else self.default
            )
        if self.required:
            kw["required"] = True
        return kw

    def forwarded(self, value: Any) -> list[str]:
        """The argv that gives a task `value` (what the session parsed) again."""
        if not self.forward or value is None or value is False or value == []:
            return []
        if value is True:
            return [self.flag]
        if self.forward == "site":  # conditions kept, folder made absolute
            return [f"{self.flag}={as_site(v).resolved()}" for v in value]
        if self.forward == "path":
            value = (
                [str(Path(v).resolve()) for v in value]
                if isinstance(value, list)
                else str(Path(value).resolve())
            )
        if isinstance(value, list):  # append; a bare `--rerun` was parsed as its const ""
            return [
                self.flag if v == self.const and self.nargs == "?" else f"{self.flag}={v}"
                for v in value
            ]
        return [self.flag, str(value)]


# --- checks run at parse time (Option.check) ------------------------------------------------
MAX_SECONDS = 7 * 24 * 3600.0  # a timeout past a week is a typo
MAX_JOBS = 256
_BUILDS = ("matrix", "nightly", "run-cell", "resolve")  # commands whose folders a container mounts
# docker's --mount syntax splits on them (pinmatrix/containers/container_args.py)
MOUNT_UNSAFE = (",", "=")


def _bad(flag: str, value: Any, why: str) -> NoReturn:
    shown = str(value)
    shown = shown if len(shown) <= 80 else f"{shown[:80]}... ({len(shown)} characters)"
    raise UsageError(f"{flag} {shown!r}: {why}")


def _docker_may_run(args: argparse.Namespace) -> bool:
    """Whether the cells may run in containers, where host folders arrive as bind mounts."""
    return registry.may_isolate(args.runner)

Check = Callable[[str, Any, argparse.Namespace], None]  # (name shown, value, all arguments)


def _seconds(name: str, value: float, args: argparse.Namespace) -> None:
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):  # nan, inf, 0, negatives
        _bad(name, value, f"must be a finite number of seconds, more than 0 and at most "
                          f"{MAX_SECONDS:.0f}")


def _count(low: int, high: int) -> Check:
    def check(name: str, value: int, args: argparse.Namespace) -> None:
        if not low <= value <= high:
            _bad(name, value, f"must be from {low} to {high}")
    return check


def _folder_to_write(*, mounted: bool) -> Check:
    """A folder the run writes into: it may not exist yet, but nothing in its way may be a file,
    the nearest existing folder must be writable, and where docker mounts it, no ',' or '='."""
    def check(name: str, value: Path, args: argparse.Namespace) -> None:
        if args.command == "list":  # reads the matrix only; writes nothing
            return
        path = Path(value).resolve()
        if (mounted and args.command in _BUILDS and _docker_may_run(args)
                and any(c in str(path) for c in MOUNT_UNSAFE)):
            _bad(name, path, "docker cannot mount a path with ',' or '=' in it; rename the "
                             "folder or use --runner venv")
        for parent in (path, *path.parents):
            if parent.exists():
                if not parent.is_dir():
                    _bad(name, value, f"{parent} is a file, not a folder")
                if not os.access(parent, os.W_OK | os.X_OK):
                    _bad(name, value, f"{parent} is not writable")
                return
    return check


# uv's --torch-backend values: auto, cpu, xpu, a CUDA (cu130) or ROCm (rocm6.3) index
_TORCH_BACKEND = re.compile(r"auto|cpu|xpu|cu\d{2,4}|rocm\d+(?:\.\d+){0,2}")


def _torch_backend(name: str, value: str, args: argparse.Namespace) -> None:
    """Checked before the resolve: uv would refuse it only once every cell is being resolved."""
    if not _TORCH_BACKEND.fullmatch(str(value)):
        _bad(name, value, "not a torch backend: auto, cpu, xpu, cuNNN (cu130) or rocmX.Y")


def _extra_sites(name: str, value: Sequence[Any], args: argparse.Namespace) -> None:
    """A condition on an axis no matrix has would apply the site to nothing, silently."""

    for site in value:
        if not site.is_dir():
            raise UsageError(f"{name} {site}: not a folder")
        for axis, _, _ in getattr(site, "when", ()):
            if axis not in KNOWN_AXES:
                _bad(name, site.path, f"condition on {axis!r}, which is not an axis (one of "
                                      f"{', '.join(KNOWN_AXES)})")


def _venv_pythons(name: str, value: Sequence[str], args: argparse.Namespace) -> None:
    """Each PATH is an executable file that starts like an interpreter does (an ELF binary, or a
    script's #!): /etc/passwd is "not a Python interpreter", not a Python version missing."""
    for item in value:
        version, sep, path = str(item).partition("=")
        path = path if sep else item
        found = shutil.which(path) if os.sep not in path else path
        if not found or not Path(found).is_file():
            _bad(name, item, "no such file" if not found or not Path(found).exists()
                 else "not a Python interpreter (not a file)")
        if not os.access(found, os.X_OK):
            _bad(name, item, "not a Python interpreter (not executable)")
        try:
            with open(found, "rb") as handle:
                head = handle.read(4)
        except OSError as exc:
            _bad(name, item, f"not readable: {exc.strerror}")
        if not (head == b"\x7fELF" or head.startswith(b"#!")):
            _bad(name, item, "not a Python interpreter (neither a program nor a script)")


def _check_env_folders(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """The folders a building command writes into that a variable names (ENV_FOLDERS): checked
    as their flag's would be."""
    if args.command not in _BUILDS:
        return
    for variable in ENV_FOLDERS:
        raw = environ.get(variable)
        if raw is None:
            continue
        if not raw.strip():  # Path("") is the current folder: a venv would be made there
            _bad(f"${variable}", raw, "set but empty; unset it, or name a folder")
        if not os.path.isabs(raw):
            _bad(f"${variable}", raw, "a relative path (cells run in other folders); give an "
                                      "absolute one")
        _folder_to_write(mounted=False)(f"${variable}", Path(raw), args)


def _folder_to_read(name: str, value: Path, args: argparse.Namespace) -> None:
    if not Path(value).is_dir():
        _bad(name, value, "no such folder" if not Path(value).exists() else "not a folder")


def _file_to_read(name: str, value: Path, args: argparse.Namespace) -> None:
    if not Path(value).is_file():
        _bad(name, value, "no such file" if not Path(value).exists() else "not a file")


def _previous_run(name: str, value: Path, args: argparse.Namespace) -> None:
    """--previous names a run to diff against: a folder that holds no run is bad input, not a
    diff against nothing (pinmatrix.report.diff.find_run_dir)."""
    _folder_to_read(name, value, args)

    try:
        find_run_dir(Path(value))
    except PreviousRunError as exc:
        _bad(name, value, str(exc).removeprefix(f"{value}: "))


def _resume(name: str, value: str, args: argparse.Namespace) -> None:
    """--resume RUN: a run id, a folder directly under --reports, never a path out of it."""
    if value:  # "": the latest unfinished run

        resume_folder(Path(args.reports), value, name=name)  # ResumeError: exit 2


def _find_links(name: str, value: list[str], args: argparse.Namespace) -> None:
    # a URL is the index's business; a local folder must be there, or every cell ends `infra`
    for link in value:
        local = link[len("file://"):] if link.startswith("file://") else link
        if "://" in local:
            continue
        if not Path(local).exists():
            _bad(name, link, "no such folder")
        if _docker_may_run(args) and any(c in str(Path(local).resolve()) for c in MOUNT_UNSAFE):
            _bad(name, link, "docker cannot mount a path with ',' or '=' in it")


def _no_install(name: str, value: bool, args: argparse.Namespace) -> None:
    runner = args.runner
    if value and not any(kind.tests_installed for kind in registry.candidates(runner)):

        raise UsageError(f"{name} with --runner {runner}: {name} tests what a venv "
                         f"already holds; the {runner} runner always installs the lock")


def _sources_help(field: str) -> tuple[str, ...]:
    return SOURCE_ENV[field]


def _pins_for(text: str) -> str:
    """--pins-for: checked now (a bad key or value is bad input, exit 2), kept as text so that a
    Slurm task's argv carries it as given."""

    parse_pins_for(text)
    return text


def _rerun(values: list[str | None] | None) -> list[str] | None:
    return None if values is None else [("" if v in ("all", None) else v) for v in values]


SCALE = "scale: cache, resume, GPUs, shards, Slurm"
SLURM = "slurm (with --on slurm)"
SOURCES = "package sources (else PINMATRIX_*, then the host's pip settings)"
VENV = "venv runner"
_RUN_CELL = ("run-cell",)


def typed(*options: Option, default: Any = dataclasses.MISSING,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field and the command-line option(s) that fill it: the option's metadata lives on
    the field (two options for one field: the same value under different rules per command)."""
    return field(default=default, default_factory=default_factory,
                 metadata={"options": options})


def _runner(name: str, value: str, args: argparse.Namespace) -> None:
    if value not in RUNNERS:
        _bad(name, value, f"choose one of {', '.join(RUNNERS)}")


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _label(name: str, value: str, args: argparse.Namespace) -> None:
    if not _LABEL.fullmatch(value):
        _bad(name, value, "use letters, digits, '.', '_' or '-' (it names a folder)")


def _model_hub(name: str, value: Path, args: argparse.Namespace) -> None:
    if not Path(value).is_dir():

        raise UsageError(f"{name} {value}: needs --model-cache, and must be a folder")


@dataclass(frozen=True)
class RunOptions:
    """What one run of the matrix is asked to do: the run concern's options, typed once."""

    matrix_path: Path = typed(Option("--matrix", "matrix file (default: matrix.yaml)", type=Path,
                                     default=REPO_ROOT / "matrix.yaml", forward="path"))
    selectors: Sequence[str] = ()
    runner: str = typed(Option("--runner", " | ".join(registry.CHOICES)
                               + " (auto: docker when an engine is found, else venv)",
                               default="auto", forward="value", check=_runner), default="auto")
    cpu: bool = typed(Option("--cpu", "run on CPU even where GPUs exist", action="store_true",
                             forward="value"), default=False)
    reports_dir: Path = typed(Option("--reports", "reports folder (default: reports/)", type=Path,
                                     default=REPO_ROOT / "reports", forward="path",
                                     check=_folder_to_write(mounted=True)),
                              default=REPO_ROOT / "reports")
    # None: the matrix's settings.cell_timeout_s, else DEFAULT_TIMEOUT_S
    timeout_s: float | None = typed(Option(
        "--timeout",
        f"per-cell probe timeout in seconds (default: the matrix's cell_timeout_s, else "
        f"{DEFAULT_TIMEOUT_S:.0f})",
        type=float, metavar="S", forward="value", check=_seconds), default=None)
    sources: PackageSources | None = None  # None: PackageSources.from_env() where needed
    label: str | None = typed(Option("--label", "suffix of the run id", check=_label),
                              default=None)
    venv_dir: Path | None = typed(Option(
        "--venv-dir", "where cell venvs live (default ~/.cache/pinmatrix/venvs)", group=VENV,
        type=Path, forward="path",
        env=("PINMATRIX_VENV_DIR",),  # read by pinmatrix/runners/venv.py when the flag is absent
        check=_folder_to_write(mounted=False)), default=None)
    system_site_packages: bool = typed(Option(
        "--system-site-packages", "reuse the host's packages (a CUDA torch)", group=VENV,
        action="store_true", forward="value"), default=False)
    no_install: bool = typed(Option(
        "--no-install", "install nothing; test what is there (with --extra-site)", group=VENV,
        action="store_true", forward="value", check=_no_install), default=False)
    extra_sites: Sequence[Path] = typed(Option(
        "--extra-site",
        "an unpacked site folder put on the venv's path; with conditions, only for "
        "the cells whose pins match them (pinmatrix/environ/site_rules.py)",
        group=VENV, action="append", type=parse_extra_site, metavar="[AXIS=VALUE,...:]DIR",
        to_field=tuple, forward="site", check=_extra_sites), default=())
    offline: bool = typed(Option(
        "--offline",
        "install only from --find-links, no index (the docker runner also builds with "
        "--network none; its wheelhouse then needs uv's wheel)",
        group=VENV, action="store_true", forward="value"), default=False)
    # --venv-python: {Python "X.Y": interpreter}, "" for every version not named (a bare PATH)
    venv_python: Mapping[str, str] | str | None = typed(Option(
        "--venv-python",
        "the interpreter the cell venvs of Python VERSION are made from (repeatable, one per "
        "version; a bare PATH: every version not named; with --system-site-packages: the one "
        "holding torch)",
        group=VENV, action="append", metavar="[VERSION=]PATH", to_field=parse_venv_python,
        forward="value", check=_venv_pythons), default=None)
    keep_work: bool = typed(Option("--keep-work", "keep each cell's work folder", group=VENV,
                                   action="store_true", forward="value"), default=False)
    # overrides the matrix's settings.check_timeout_s
    check_timeout_s: float | None = typed(Option(
        "--check-timeout",
        "per-check timeout in seconds, enforced by the probe (default: the matrix's "
        "settings.check_timeout_s)",
        type=float, metavar="S", forward="value", check=_seconds), default=None)
    # rerun a cell's failed check groups once (pinmatrix/run/flaky.py)
    flaky_rerun: bool = typed(Option(
        "--no-flaky-rerun",
        "do not rerun failed check groups once to tell flaky from failing (pinmatrix/run/flaky.py)",
        action="store_true", to_field=lambda v: not v, forward="value"), default=True)
    # prefetch models here (pinmatrix/run/fetch.py), mount read-only
    model_cache: Path | None = typed(Option(
        "--model-cache",
        "prefetch the matrix's models into DIR (HF_HOME layout) before the run, with HF_TOKEN "
        "from the environment; cells get it read-only",
        type=Path, metavar="DIR", forward="path", check=_folder_to_write(mounted=True)),
        default=None)
    # a local folder standing in for the hub; None: huggingface_hub
    model_hub: Path | None = typed(Option(
        "--model-hub",
        "with --model-cache: a local folder of models (ORG/NAME/<commit>/) instead of the hub",
        type=Path, metavar="DIR", forward="path", check=_model_hub,
        requires=("--model-cache",)), default=None)
    # None: reuse cached results; [] / [""]: rerun all; selectors: those
    rerun: Sequence[str] | None = typed(Option(
        "--rerun",
        "run again despite a cached result; bare: all cells, else the cells the selector matches",
        commands=("matrix", "run-cell"), group=SCALE, action="append", nargs="?", const="",
        metavar="SELECTOR", to_field=_rerun, forward="value"), default=None)
    resume: str | None = typed(Option(
        "--resume",
        "continue an interrupted run (default: the latest unfinished), keeping its finished "
        "cells; RUN is a run id, a folder directly under --reports",
        commands=("matrix",), group=SCALE, nargs="?", const="", metavar="RUN", check=_resume,
        conflicts=("--run-dir", "--shard")), default=None)  # "": the latest unfinished run
    # join (or create) this run folder: shards and Slurm tasks share one
    run_dir: Path | None = typed(
        Option("--run-dir", "write into this run folder (shared by shards)", commands=("matrix",),
               group=SCALE, type=Path, metavar="DIR", check=_folder_to_write(mounted=True)),
        Option("--run-dir", "the run folder (shared)", commands=_RUN_CELL, type=Path,
               required=True, metavar="DIR", check=_folder_to_read),
        default=None)
    gpus: Sequence[str] | None = typed(Option(
        "--gpus", "GPU indices to use, e.g. 0,1 (default: all that nvidia-smi lists)",
        commands=("matrix",), group=SCALE, metavar="LIST", to_field=lambda v: parse_gpus(v)),
        default=None)
    build_jobs: int = typed(Option(
        "--build-jobs", "builds at once (default 2)", commands=("matrix",), group=SCALE, type=int,
        default=2, metavar="N", check=_count(1, MAX_JOBS)), default=2)
    cpu_jobs: int = typed(Option(  # cells at once when there is no GPU
        "--cpu-jobs", "cells at once without GPUs (default 1)", commands=("matrix",), group=SCALE,
        type=int, default=1, metavar="N", check=_count(1, MAX_JOBS)), default=1)
    # cells at once on each GPU: their compat phases share it, speed phases take it alone
    # (probes/gpu_share.py)
    cells_per_gpu: int = typed(Option(
        "--cells-per-gpu",
        "cells at once on each GPU: their compat checks share it, and each speed measurement waits "
        "to have the GPU alone (default 1)",
        commands=("matrix",), group=SCALE, type=int, default=1, metavar="N",
        check=_count(1, MAX_JOBS)), default=1)
    shard: tuple[int, int] | None = typed(Option(  # (i, n), 1-based
        "--shard", "run shard I of N (1-based) of the selected cells", commands=("matrix",),
        group=SCALE, metavar="I/N", to_field=lambda v: parse_shard_option(v)), default=None)
    # None: a live line on a TTY, log lines elsewhere
    live_progress: bool | None = typed(Option(
        "--no-live", "plain log lines even on a terminal", commands=("matrix",), group=SCALE,
        action="store_true", to_field=lambda v: False if v else None), default=None)
    # write the report and move reports/latest (off for one Slurm task)
    finalize: bool = True
    # `gpus` came from Slurm (host indices): do not check them against nvidia-smi
    trust_gpus: bool = False
    # live-axis expansion to reuse (--snapshot), else ask the index
    # (a Slurm task replays the session's live axes from run.json: pinmatrix/run/slurm.py)
    snapshot: dict[str, Any] | None = typed(Option(
        "--snapshot",
        "expand live axes from a run's run.json (or a snapshot file), offline, not the index",
        type=Path, metavar="FILE", to_field=lambda p: read_snapshot(p)), default=None)
    # False (--no-compile-cache): every probe run starts with empty compile caches
    compile_cache: bool = typed(Option(
        "--no-compile-cache",
        "give every probe run an empty compile cache (a cold run: what a user's first "
        "run costs) instead of its stack's cache from earlier runs "
        "(pinmatrix/environ/compile_cache.py)",
        action="store_true", to_field=lambda v: not v, forward="value"), default=True)
    # extra pins purposes (pinmatrix.report.pins.parse_pins_for) beside the defaults
    pins_for: Sequence[str] = typed(Option(
        "--pins-for",
        "also write the pin that fits: route=remote-code|llamafied|exaone4|any, "
        "backend=hf-peft|unsloth|any, goal=newest|fastest (pinmatrix/report/pins.py); repeatable",
        commands=("matrix", "report", "nightly", "merge"), action="append", type=_pins_for,
        metavar="KEY=VALUE[,...]", to_field=tuple), default=())
    # base images (pinmatrix/runners/docker.py); None: missing, and always for nightly
    pull: str | None = typed(Option(
        "--pull",
        "base images: pull when the engine lacks one (missing, the default), every run (always, "
        "nightly's default), or never (air-gapped hosts)",
        choices=("missing", "always", "never"), forward="value"), default=None)


@dataclass(frozen=True)
class SourceOptions:
    """The package-source options as given; PackageSources (pinmatrix/sources.py) adds the
    environment's and pip's fallbacks."""

    index_url: str | None = typed(Option(
        "--index-url", "", group=SOURCES, metavar="URL", forward="value",
        env=_sources_help("index_url")), default=None)
    extra_index_url: Sequence[str] = typed(Option(
        "--extra-index-url", "", group=SOURCES, action="append", metavar="URL", forward="value",
        env=_sources_help("extra_index_urls"), to_field=tuple), default=())
    find_links: Sequence[str] = typed(Option(
        "--find-links", "", group=SOURCES, action="append", metavar="DIR", forward="value",
        env=_sources_help("find_links"), check=_find_links, to_field=tuple), default=())
    ca_bundle: Path | None = typed(Option(
        "--ca-bundle", "", group=SOURCES, type=Path, metavar="FILE", forward="path",
        env=_sources_help("ca_bundle"), check=_file_to_read), default=None)
    torch_backend: str | None = typed(Option(
        "--torch-backend",
        "uv's torch backend: auto (the pin's +cuXXX/+cpu variant), cpu, cu130, ...; "
        "for hosts that reach the PyTorch index (else use --find-links)",
        group=SOURCES, metavar="NAME", forward="value", env=_sources_help("torch_backend"),
        check=_torch_backend), default=None)


@dataclass(frozen=True)
class BundleOptions:
    """`bundle OUT` (pinmatrix/bundle.py: OUT is the first positional) and `matrix --bundle`."""

    host_packages: Path | None = typed(Option(
        "--host-packages",
        "the prepared host's `pip list --format freeze`: pack only what it lacks, as site layers",
        commands=("bundle",), type=Path, metavar="FILE"), default=None)
    part_mib: float = typed(Option(
        "--part-mib",
        "largest carry folder of a site-layer bundle, in MiB (default 60: the device tool takes "
        "64 MiB a call)",
        commands=("bundle",), type=float, default=60.0, metavar="MIB"), default=60.0)
    bundle: Path | None = typed(Option(
        "--bundle",
        "run the cells of a bundle (`python -m pinmatrix bundle`) offline, from its wheels or its "
        "site layers",
        commands=("matrix",), type=Path, metavar="DIR"), default=None)


@dataclass(frozen=True)
class BisectOptions:
    """`bisect` (pinmatrix/bisect/run.py: PACKAGE GOOD..BAD come first among the positionals) and
    the nightly's bisect budget."""

    check: Sequence[str] = typed(Option(
        "--check",
        "a check or check group the bisect judges by (repeatable; default: the matrix's groups)",
        commands=("bisect",), action="append", metavar="CHECK_OR_GROUP", to_field=tuple),
        default=())
    bisect_budget: int = typed(Option(
        "--bisect-budget",
        "probes the nightly may spend bisecting each new breakage to its first "
        "bad release (0: none; default 8, pinmatrix/bisect/nightly.py)",
        commands=("nightly",), type=int, default=8, metavar="N"), default=8)
    signature: str | None = typed(Option(
        "--signature",
        "bisect one break: a release is bad only where a named check fails with "
        "this signature (a surface check's failed facts count): a catalogue id "
        "(probes/signatures.json) or a fingerprint (fp-...)",
        commands=("bisect",), metavar="SIG"), default=None)
    pre: bool = typed(Option("--pre", "bisect pre-releases too", commands=("bisect",),
                             action="store_true"), default=False)
    # bisect's question and target (pinmatrix/bisect/search.py, target.py, base_cell.py)
    first_good: bool = typed(Option(
        "--first-good",
        "find the first release where the check, fact or signature holds (OLD..NEW: the old end "
        "bad or the feature absent there, the new end good)",
        commands=("bisect",), action="store_true"), default=False)
    fact: str | None = typed(Option(
        "--fact",
        "bisect one surface fact by its readable id (e.g. 'call:transformers.masking_utils."
        "create_causal_mask(input_embeds=)') or a grouped cause ('module transformers.x is gone')",
        commands=("bisect",), metavar="ID"), default=None)
    together: str | None = typed(Option(
        "--with",
        "a second package that moves with PACKAGE (unsloth and the trl it caps): each is bisected "
        "with the other held at each end of its range",
        commands=("bisect",), metavar="PKG=OLD..NEW"), default=None)
    plan: bool = typed(Option(
        "--plan", "list the releases in range and the stacks the bisect may hold, probe nothing",
        commands=("bisect",), action="store_true"), default=False)
    all: bool = typed(Option(
        "--all", "probe every release in range (a full table, and a monotonicity check)",
        commands=("bisect",), action="store_true"), default=False)


@dataclass(frozen=True)
class ReportOptions:
    """What `report`, `merge`, `nightly` and `list` read or write beside the run itself."""

    run: Path | None = typed(Option("--run", "run folder (default: reports/latest)",
                                    commands=("report",), type=Path, check=_folder_to_read),
                             default=None)
    previous: Path | None = typed(Option(
        "--previous",
        "the previous run: a run folder, a reports/ folder or an unpacked report artifact "
        "(nightly, merge: default the newest earlier run in --reports)",
        commands=("report", "nightly", "merge"), type=Path, metavar="DIR", check=_previous_run),
        default=None)
    history: Path | None = typed(Option(
        "--history", "the history file to read and append to (default: REPORTS/history.jsonl)",
        commands=("nightly", "merge"), type=Path, metavar="FILE"), default=None)
    expected_cells: Path | None = typed(Option(
        "--expected-cells",
        "`list --json` output: a cell missing from every artifact is recorded as infra",
        commands=("merge",), type=Path, metavar="FILE"), default=None)
    json: bool = typed(Option("--json", "print JSON: the cell ids and the live-axis snapshot",
                              commands=("list",), action="store_true"), default=False)


@dataclass(frozen=True)
class SlurmOptions:
    """`matrix --on slurm` (the session) and `run-cell` (one array task): pinmatrix/run/slurm.py."""

    on: str = typed(Option("--on", "where cells run (default local)", commands=("matrix",),
                           group=SCALE, choices=("local", "slurm"), default="local"),
                    default="local")
    partition: str | None = typed(Option("--partition", "sbatch --partition",
                                         commands=("matrix",), group=SLURM, metavar="NAME"),
                                  default=None)
    sbatch_arg: Sequence[str] = typed(Option(
        "--sbatch-arg", "one more sbatch option, e.g. --sbatch-arg=--time=02:00:00 (repeatable)",
        commands=("matrix",), group=SLURM, action="append", metavar="ARG", to_field=tuple),
        default=())
    slurm_deadline: float | None = typed(Option(
        "--slurm-deadline",
        "give up waiting after S seconds; unfinished tasks become infra (default: 2 × cell "
        "timeout + 1h)",
        commands=("matrix",), group=SLURM, type=float, metavar="S", check=_seconds), default=None)
    slurm_poll: float = typed(Option(
        "--slurm-poll", "sacct polling interval (default 10)", commands=("matrix",), group=SLURM,
        type=float, default=10.0, metavar="S", check=_seconds), default=10.0)
    index: int | None = typed(Option(
        "--index", "the cell's line in DIR/slurm/cells.txt (default: $SLURM_ARRAY_TASK_ID)",
        commands=_RUN_CELL, type=int, metavar="N", check=_count(0, 10_000_000)), default=None)
    # the session's forwarded options (forwarded_argv): what a task needs to run its cell as the
    # session would have; derived from the options' `forward`, not an option itself
    task_argv: tuple[str, ...] = ()


# Every concern, in the order the options appear in --help
CONCERNS: tuple[type, ...] = (RunOptions, SourceOptions, BundleOptions, BisectOptions,
                              ReportOptions, SlurmOptions)


def _declared_options() -> tuple[Option, ...]:
    """Each typed field's options, stamped with the concern and field they fill."""
    out: list[Option] = []
    for concern in CONCERNS:
        for item in dataclasses.fields(concern):
            for option in item.metadata.get("options", ()):
                out.append(dataclasses.replace(
                    option, concern=concern.__name__, attr=item.name,
                    field=item.name if concern is RunOptions else None))
    return tuple(out)


OPTIONS: tuple[Option, ...] = _declared_options()


# --- settings read from the environment only (no flag stands in for them) -----------------------

@dataclass(frozen=True)
class EnvVar:
    """One PINMATRIX_* variable that no flag stands in for. `folder`: a folder a building command
    writes into, checked at parse time as a flag's folder is (absolute, writable)."""

    name: str
    help: str
    folder: bool = False


def from_env(var: EnvVar) -> Any:
    return field(default=None, metadata={"env": var})


@dataclass(frozen=True)
class HostSettings:
    """The environment concern: each PINMATRIX_* variable pinmatrix reads beside the options'
    fallbacks (Option.env), declared on the field it fills. `--help` lists them."""

    compile_cache_dir: str | None = from_env(EnvVar(
        "PINMATRIX_COMPILE_CACHE_DIR",
        "compile caches kept between runs (default ~/.cache/pinmatrix/compile; "
        "pinmatrix/environ/compile_cache.py)", folder=True))
    cache_dir: str | None = from_env(EnvVar(
        "PINMATRIX_CACHE_DIR",
        "the resolver's cache root (default $XDG_CACHE_HOME/pinmatrix, else ~/.cache/pinmatrix)"))
    # the docker runner's build contexts (named unlike the resolver's; kept as users set it)
    context_cache: str | None = from_env(EnvVar(
        "PINMATRIX_CACHE",
        "root of the docker runner's build contexts (default $XDG_CACHE_HOME/pinmatrix, else "
        "~/.cache/pinmatrix)"))
    docker: str | None = from_env(EnvVar(
        "PINMATRIX_DOCKER", "the engine client to try first (pinmatrix/containers/engine.py)"))
    podman: str | None = from_env(EnvVar(
        "PINMATRIX_PODMAN", "the podman client for --runner podman (containers/engine.py)"))
    cdi_dirs: str | None = from_env(EnvVar(
        "PINMATRIX_CDI_DIRS",
        "CDI spec folders, os.pathsep-separated, instead of /etc/cdi and /var/run/cdi"))
    gpu_lock_dir: str | None = from_env(EnvVar(
        "PINMATRIX_GPU_LOCK_DIR",
        "where the per-GPU lock files go (default: a folder per user in the temp folder)"))
    bundle_stash: str | None = from_env(EnvVar(
        "PINMATRIX_BUNDLE_STASH",
        "carry folders of a bundle from earlier uploads (default ~/.cache/pinmatrix/bundle-stash)"))
    traceback: str | None = from_env(EnvVar(
        "PINMATRIX_TRACEBACK", "set: a pinmatrix bug re-raises with its traceback"))

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> HostSettings:
        """The set variables' values (an empty one counts as unset)."""
        environ = os.environ if environ is None else environ
        return cls(**{f.name: environ.get(f.metadata["env"].name) or None
                      for f in dataclasses.fields(cls)})


ENV_SETTINGS: tuple[EnvVar, ...] = tuple(
    f.metadata["env"] for f in dataclasses.fields(HostSettings))
# Folders a variable names that a building command writes into: the run options' (a flag's
# fallback) and the environment-only ones
ENV_FOLDERS: tuple[str, ...] = (
    *(name for o in OPTIONS if o.attr == "venv_dir" for name in o.env),
    *(v.name for v in ENV_SETTINGS if v.folder),
)
# RunOptions fields a Slurm task sets itself rather than receiving: the session picks the cell, the
# folder and the live-axis snapshot for it, and scheduling is one task, one cell.
TASK_OWN_FIELDS = frozenset(
    {
        "selectors",
        "snapshot",
        "run_dir",
        "resume",
        "shard",
        "gpus",
        "trust_gpus",
        "build_jobs",
        "cpu_jobs",
        "cells_per_gpu",
        "live_progress",
        "finalize",
        "pins_for",  # used only where the report is written: the session, never a task
        "label",
        "sources",
    }
)


def options_for(command: str) -> list[Option]:
    return [o for o in OPTIONS if command in o.commands]


# commands that never use the package sources or the venv folder: a variable they would not read
# is not theirs to refuse
_ENV_UNUSED = ("report", "merge")


def given(args: argparse.Namespace, option: Option) -> bool:
    """Was the option given (or does it hold a default)?"""
    value = vars(args).get(option.dest)
    return value is not None and value is not False and value != []


def check_options(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
    """Every declared check of the command's options, on what was parsed (UsageError, exit 2);
    for an option left out, on the value of the variable that stands in for it (`Option.env`, the
    one PackageSources.from_env picks), named in the message instead of the flag. Then the
    cross-option rules each option declares (`requires`, `conflicts`)."""

    environ = os.environ if environ is None else environ
    _check_env_folders(args, environ)
    own = options_for(args.command)
    for option in own:
        if option.check is None:
            continue
        value = vars(args).get(option.dest)
        if value is not None and value != []:
            option.check(option.flag, value, args)
        elif args.command not in _ENV_UNUSED:
            found = option.from_env(environ)
            if found is not None:
                name, value = found
                option.check(f"${name}", value, args)
    by_flag = {o.flag: o for o in own}
    for option in own:
        if not given(args, option):
            continue
        for other in option.requires:
            if other in by_flag and not given(args, by_flag[other]):
                raise UsageError(f"{option.flag} {vars(args)[option.dest]}: needs {other}")
        clashing = [o for o in option.conflicts if o in by_flag and given(args, by_flag[o])]
        if clashing:
            raise UsageError(f"{option.flag} cannot be combined with {' or '.join(clashing)}")


def parse_gpus(text: str | None) -> list[str] | None:
    return parse_gpu_list(text) if text else None


def parse_shard_option(text: str | None) -> tuple[int, int] | None:
    return parse_shard(text) if text else None


def read_snapshot(path: Path | None) -> dict[str, Any] | None:
    """--snapshot FILE: a run.json (its "snapshot") or a bare snapshot ({"live": ...})."""
    if path is None:
        return None

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--snapshot {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--snapshot {path}: not readable JSON: {exc}") from None
    snapshot = data.get("snapshot", data) if isinstance(data, dict) else None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("live", {}), dict):
        raise UsageError(
            f"--snapshot {path}: no snapshot in it (expected run.json or {{\"live\": ...}})"
        )
    return snapshot


def concern_from(concern: type[C], args: argparse.Namespace, **extra: Any) -> C:
    """One concern's typed config from parsed arguments: each field filled by the option declared
    on it for this command (its `to_field` applied); a field no option of the command fills keeps
    its default. Without `args.command` (the shared parser), the options every command has."""
    command = vars(args).get("command")
    values: dict[str, Any] = {}
    for item in dataclasses.fields(concern):  # type: ignore[arg-type]
        for option in item.metadata.get("options", ()):
            if (command in option.commands if command else option.commands == ALL_COMMANDS) \
                    and option.dest in vars(args):
                value = vars(args)[option.dest]
                values[item.name] = option.to_field(value) if option.to_field else value
                break
    return concern(**values, **extra)


def package_sources(args: argparse.Namespace) -> PackageSources:
    """PackageSources: the command line first, then PINMATRIX_*, then the host's pip settings
    (§9)."""
    given_sources = concern_from(SourceOptions, args)
    return sources_of(given_sources, offline=bool(vars(args).get("offline", False)))


def sources_of(given_sources: SourceOptions, *, offline: bool) -> PackageSources:
    return dataclasses.replace(PackageSources.from_env(
        index_url=given_sources.index_url,
        extra_index_urls=tuple(given_sources.extra_index_url) or None,
        find_links=tuple(given_sources.find_links) or None,
        ca_bundle=str(given_sources.ca_bundle) if given_sources.ca_bundle else None,
        torch_backend=given_sources.torch_backend,
    ), offline=offline)


def run_options(args: argparse.Namespace) -> RunOptions:
    """RunOptions from parsed arguments: each declared option with a field, plus the package
    sources."""
    opts = concern_from(RunOptions, args, selectors=tuple(args.selectors),
                        sources=package_sources(args))
    if opts.venv_dir is not None:  # cells run in other folders: a relative path moves
        opts = dataclasses.replace(opts, venv_dir=Path(opts.venv_dir).absolute())
    return opts


def forwarded_argv(args: argparse.Namespace) -> list[str]:
    """The options a Slurm task needs to run its cell as the session would have, from the session's
    parsed arguments; `--snapshot` and the cell are the task script's (pinmatrix/run/slurm.py)."""
    out: list[str] = []
    for option in options_for(args.command):
        if option.forward:
            out += option.forwarded(vars(args)[option.dest])
    return out


def forwarded_options(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """A task's options (task_options) from the session's parsed arguments."""
    return task_options(forwarded_argv(args), run_dir)


def task_options(task_argv: Sequence[str], run_dir: Path) -> list[str]:
    """The session's forwarded options with the live axes the session expanded: run.json holds
    that snapshot, so a task never asks the index again (pinmatrix/run/slurm.py)."""
    return [*task_argv, "--snapshot", str(run_dir / "run.json")]
