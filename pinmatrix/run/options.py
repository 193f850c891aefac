"""What one run of the matrix is asked to do (RunOptions), what it hands back (RunSummary), and the
table that declares every command-line option once (OPTIONS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import argparse
import dataclasses
import math
import re
import shutil
import os
from typing import Any, Callable, Mapping, NoReturn, Sequence

from pinmatrix.cell import Cell
from pinmatrix.outcome import Outcome
from pinmatrix.runners.interpreters import parse_venv_python
from pinmatrix.runners.site_rules import as_site, parse_extra_site
from pinmatrix.sources import PackageSources

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
    # None: the matrix's settings.cell_timeout_s, else DEFAULT_TIMEOUT_S
    timeout_s: float | None = None
    sources: PackageSources | None = None  # None: PackageSources.from_env() where needed
    label: str | None = None
    # venv runner
    venv_dir: Path | None = None
    system_site_packages: bool = False
    no_install: bool = False
    extra_sites: Sequence[Path] = ()
    offline: bool = False
    # --venv-python: {Python "X.Y": interpreter}, "" for every version not named (a bare PATH)
    venv_python: Mapping[str, str] | str | None = None
    keep_work: bool = False
    # --check-timeout: overrides the matrix's settings.check_timeout_s
    check_timeout_s: float | None = None
    # rerun a cell's failed check groups once (pinmatrix/run/flaky.py)
    flaky_rerun: bool = True
    # --model-cache: prefetch models here (pinmatrix/run/fetch.py), mount read-only
    model_cache: Path | None = None
    # --model-hub: a local folder standing in for the hub; None: huggingface_hub
    model_hub: Path | None = None
    # scale (issue 6): the result cache, resume, the scheduler, shards
    # None: reuse cached results; [] / [""]: rerun all; selectors: those
    rerun: Sequence[str] | None = None
    resume: str | None = None  # "": the latest unfinished run; else a run id or folder
    # join (or create) this run folder: shards and Slurm tasks share one
    run_dir: Path | None = None
    gpus: Sequence[str] | None = None  # --gpus 0,1; None: every GPU nvidia-smi lists
    build_jobs: int = 2
    cpu_jobs: int = 1  # cells at once when there is no GPU
    # cells at once on each GPU: their compat phases share it, speed phases take it alone
    # (probes/gpu_share.py)
    cells_per_gpu: int = 1
    shard: tuple[int, int] | None = None  # (i, n), 1-based
    live_progress: bool | None = None  # None: a live line on a TTY, log lines elsewhere
    # write the report and move reports/latest (off for one Slurm task)
    finalize: bool = True
    # `gpus` came from Slurm (host indices): do not check them against nvidia-smi
    trust_gpus: bool = False
    # live-axis expansion to reuse (--snapshot), else ask the index
    snapshot: dict[str, Any] | None = None
    # False (--no-compile-cache): every probe run starts with empty compile caches
    compile_cache: bool = True
    # --pins-for: extra pins purposes (pinmatrix.report.pins.parse_pins_for) beside the defaults
    pins_for: Sequence[str] = ()
    # --pull missing|always|never for base images (pinmatrix/runners/docker.py); None: missing,
    # and always for nightly
    pull: str | None = None


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


# --- every command-line option, declared once ----------------------------------------------------
# The parser (pinmatrix/cli/main.py), RunOptions (run_options), the argv a Slurm task gets
# (forwarded_argv, pinmatrix/run/slurm.py) and the help text's environment variables all come from
# this table, so an option cannot reach a local run and miss a Slurm task (issue 16: four options
# did).

ALL_COMMANDS = ("matrix", "resolve", "report", "list", "nightly", "merge", "run-cell", "bisect",
                "doctor", "bundle")


@dataclass(frozen=True)
class Option:
    """One option. `field`: the RunOptions field it sets (None: the command reads it itself).
    `forward`: how a Slurm task gets it from the session's parsed arguments: "value" as given,
    "path" made absolute (tasks start in this checkout, maybe elsewhere), or "" (the session alone
    uses it)."""

    flag: str
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
    # bad value or a contradiction with another option never reaches resolve or build (issue 17)
    check: Callable[[str, Any, argparse.Namespace], None] | None = None

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
# docker's --mount syntax splits on them (pinmatrix/runners/container_args.py)
MOUNT_UNSAFE = (",", "=")


def _bad(flag: str, value: Any, why: str) -> NoReturn:
    from pinmatrix.errors import UsageError

    shown = str(value)
    shown = shown if len(shown) <= 80 else f"{shown[:80]}... ({len(shown)} characters)"
    raise UsageError(f"{flag} {shown!r}: {why}")


def _docker_may_run(args: argparse.Namespace) -> bool:
    return getattr(args, "runner", "auto") in ("auto", "docker")


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
    from pinmatrix.matrix.load import KNOWN_AXES

    for site in value:
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


# Folders read from the environment only (no flag stands in for them): checked as their flag's
# would be, where a command writes there
_ENV_FOLDERS = ("PINMATRIX_VENV_DIR", "PINMATRIX_COMPILE_CACHE_DIR")


def _check_env_folders(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    if args.command not in _BUILDS:
        return
    for variable in _ENV_FOLDERS:
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
    from pinmatrix.report.diff import PreviousRunError, find_run_dir

    try:
        find_run_dir(Path(value))
    except PreviousRunError as exc:
        _bad(name, value, str(exc).removeprefix(f"{value}: "))


def _resume(name: str, value: str, args: argparse.Namespace) -> None:
    """--resume RUN: a run id, a folder directly under --reports, never a path out of it."""
    if value:  # "": the latest unfinished run
        from pinmatrix.run.state import resume_folder

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
    if value and getattr(args, "runner", "auto") == "docker":
        from pinmatrix.errors import UsageError

        raise UsageError(f"{name} with --runner docker: {name} tests what a venv "
                         "already holds; the docker runner always installs the lock")


def _sources_help(field: str) -> tuple[str, ...]:
    from pinmatrix.sources import SOURCE_ENV

    return SOURCE_ENV[field]


def _pins_for(text: str) -> str:
    """--pins-for: checked now (a bad key or value is bad input, exit 2), kept as text so that a
    Slurm task's argv carries it as given."""
    from pinmatrix.report.pins import parse_pins_for

    parse_pins_for(text)
    return text


def _rerun(values: list[str | None] | None) -> list[str] | None:
    return None if values is None else [("" if v in ("all", None) else v) for v in values]


SCALE = "scale: cache, resume, GPUs, shards, Slurm"
SLURM = "slurm (with --on slurm)"
SOURCES = "package sources (else PINMATRIX_*, then the host's pip settings)"
VENV = "venv runner"

OPTIONS: tuple[Option, ...] = (
    Option(
        "--matrix",
        "matrix file (default: matrix.yaml)",
        field="matrix_path",
        type=Path,
        default=REPO_ROOT / "matrix.yaml",
        forward="path",
    ),
    Option(
        "--reports",
        "reports folder (default: reports/)",
        field="reports_dir",
        type=Path,
        default=REPO_ROOT / "reports",
        forward="path",
        check=_folder_to_write(mounted=True),
    ),
    Option(
        "--runner",
        "docker | venv | auto (docker when an engine is found)",
        field="runner",
        default="auto",
        forward="value",
    ),
    Option(
        "--cpu",
        "run on CPU even where GPUs exist",
        field="cpu",
        action="store_true",
        forward="value",
    ),
    Option(
        "--timeout",
        f"per-cell probe timeout in seconds (default: the matrix's cell_timeout_s, else "
        f"{DEFAULT_TIMEOUT_S:.0f})",
        field="timeout_s",
        type=float,
        metavar="S",
        forward="value",
        check=_seconds,
    ),
    Option(
        "--check-timeout",
        "per-check timeout in seconds, enforced by the probe (default: the matrix's "
        "settings.check_timeout_s)",
        field="check_timeout_s",
        type=float,
        metavar="S",
        forward="value",
        check=_seconds,
    ),
    Option(
        "--no-flaky-rerun",
        "do not rerun failed check groups once to tell flaky from failing (pinmatrix/run/flaky.py)",
        field="flaky_rerun",
        action="store_true",
        to_field=lambda v: not v,
        forward="value",
    ),
    Option(
        "--model-cache",
        "prefetch the matrix's models into DIR (HF_HOME layout) before the run, with HF_TOKEN "
        "from the environment; cells get it read-only",
        field="model_cache",
        type=Path,
        metavar="DIR",
        forward="path",
        check=_folder_to_write(mounted=True),
    ),
    Option(
        "--model-hub",
        "with --model-cache: a local folder of models (ORG/NAME/<commit>/) instead of the hub",
        field="model_hub",
        type=Path,
        metavar="DIR",
        forward="path",
    ),
    Option(
        "--no-compile-cache",
        "give every probe run an empty compile cache (a cold run: what a user's first "
        "run costs) instead of its stack's cache from earlier runs "
        "(pinmatrix/runners/compile_cache.py)",
        field="compile_cache",
        action="store_true",
        to_field=lambda v: not v,
        forward="value",
    ),
    Option("--label", "suffix of the run id", field="label"),
    # bundle (pinmatrix/bundle.py): OUT is the first positional
    Option(
        "--host-packages",
        "the prepared host's `pip list --format freeze`: pack only what it lacks, as site layers",
        commands=("bundle",),
        type=Path,
        metavar="FILE",
    ),
    Option(
        "--part-mib",
        "largest carry folder of a site-layer bundle, in MiB (default 60: the device tool takes "
        "64 MiB a call)",
        commands=("bundle",),
        type=float,
        default=60.0,
        metavar="MIB",
    ),
    Option(
        "--bundle",
        "run the cells of a bundle (`python -m pinmatrix bundle`) offline, from its wheels or its "
        "site layers",
        commands=("matrix",),
        type=Path,
        metavar="DIR",
    ),
    # bisect (pinmatrix/bisect/run.py): PACKAGE GOOD..BAD come first among the positionals
    Option(
        "--check",
        "a check or check group the bisect judges by (repeatable; default: the matrix's groups)",
        commands=("bisect",),
        action="append",
        metavar="CHECK_OR_GROUP",
    ),
    Option(
        "--bisect-budget",
        "probes the nightly may spend bisecting each new breakage to its first "
        "bad release (0: none; default 8, pinmatrix/bisect/nightly.py)",
        commands=("nightly",),
        type=int,
        default=8,
        metavar="N",
    ),
    Option(
        "--signature",
        "bisect one break: a release is bad only where a named check fails with "
        "this signature (a surface check's failed facts count): a catalogue id "
        "(probes/signatures.json) or a fingerprint (fp-...)",
        commands=("bisect",),
        metavar="SIG",
    ),
    Option("--pre", "bisect pre-releases too", commands=("bisect",), action="store_true"),
    # bisect's question and target (pinmatrix/bisect/search.py, target.py, base_cell.py)
    Option(
        "--first-good",
        "find the first release where the check, fact or signature holds (OLD..NEW: the old end "
        "bad or the feature absent there, the new end good)",
        commands=("bisect",),
        action="store_true",
    ),
    Option(
        "--fact",
        "bisect one surface fact by its readable id (e.g. 'call:transformers.masking_utils."
        "create_causal_mask(input_embeds=)') or a grouped cause ('module transformers.x is gone')",
        commands=("bisect",),
        metavar="ID",
    ),
    Option(
        "--with",
        "a second package that moves with PACKAGE (unsloth and the trl it caps): each is bisected "
        "with the other held at each end of its range",
        commands=("bisect",),
        metavar="PKG=OLD..NEW",
    ),
    Option(
        "--plan",
        "list the releases in range and the stacks the bisect may hold, probe nothing",
        commands=("bisect",),
        action="store_true",
    ),
    Option(
        "--all",
        "probe every release in range (a full table, and a monotonicity check)",
        commands=("bisect",),
        action="store_true",
    ),
    # A task replays the session's live axes from run.json instead (pinmatrix/run/slurm.py).
    Option(
        "--snapshot",
        "expand live axes from a run's run.json (or a snapshot file), offline, not the index",
        field="snapshot",
        type=Path,
        metavar="FILE",
        to_field=lambda p: read_snapshot(p),
    ),
    # package sources: one PackageSources (pinmatrix/sources.py), so no RunOptions field of their
    # own
    Option(
        "--index-url",
        "",
        group=SOURCES,
        metavar="URL",
        forward="value",
        env=_sources_help("index_url"),
    ),
    Option(
        "--extra-index-url",
        "",
        group=SOURCES,
        action="append",
        metavar="URL",
        forward="value",
        env=_sources_help("extra_index_urls"),
    ),
    Option(
        "--find-links",
        "",
        group=SOURCES,
        action="append",
        metavar="DIR",
        forward="value",
        env=_sources_help("find_links"),
        check=_find_links,
    ),
    Option(
        "--ca-bundle",
        "",
        group=SOURCES,
        type=Path,
        metavar="FILE",
        forward="path",
        env=_sources_help("ca_bundle"),
        check=_file_to_read,
    ),
    Option(
        "--torch-backend",
        "uv's torch backend: auto (the pin's +cuXXX/+cpu variant), cpu, cu130, ...; "
        "for hosts that reach the PyTorch index (else use --find-links)",
        group=SOURCES,
        metavar="NAME",
        forward="value",
        env=_sources_help("torch_backend"),
        check=_torch_backend,
    ),
    Option(
        "--venv-dir",
        "where cell venvs live (default ~/.cache/pinmatrix/venvs)",
        field="venv_dir",
        group=VENV,
        type=Path,
        forward="path",
        env=("PINMATRIX_VENV_DIR",),  # read by pinmatrix/runners/venv.py when the flag is absent
        check=_folder_to_write(mounted=False),
    ),
    Option(
        "--system-site-packages",
        "reuse the host's packages (a CUDA torch)",
        field="system_site_packages",
        group=VENV,
        action="store_true",
        forward="value",
    ),
    Option(
        "--offline",
        "install only from --find-links, no index (the docker runner also builds with "
        "--network none; its wheelhouse then needs uv's wheel)",
        field="offline",
        group=VENV,
        action="store_true",
        forward="value",
    ),
    Option(
        "--no-install",
        "install nothing; test what is there (with --extra-site)",
        field="no_install",
        group=VENV,
        action="store_true",
        forward="value",
        check=_no_install,
    ),
    Option(
        "--extra-site",
        "an unpacked site folder put on the venv's path; with conditions, only for "
        "the cells whose pins match them (pinmatrix/runners/site_rules.py)",
        field="extra_sites",
        group=VENV,
        action="append",
        type=parse_extra_site,
        metavar="[AXIS=VALUE,...:]DIR",
        to_field=tuple,
        forward="site",
        check=_extra_sites,
    ),
    Option(
        "--pull",
        "base images: pull when the engine lacks one (missing, the default), every run (always, "
        "nightly's default), or never (air-gapped hosts)",
        field="pull",
        choices=("missing", "always", "never"),
        forward="value",
    ),
    Option(
        "--venv-python",
        "the interpreter the cell venvs of Python VERSION are made from (repeatable, one per "
        "version; a bare PATH: every version not named; with --system-site-packages: the one "
        "holding torch)",
        field="venv_python",
        group=VENV,
        action="append",
        metavar="[VERSION=]PATH",
        to_field=parse_venv_python,
        forward="value",
        check=_venv_pythons,
    ),
    Option(
        "--keep-work",
        "keep each cell's work folder",
        field="keep_work",
        group=VENV,
        action="store_true",
        forward="value",
    ),
    # per command
    Option("--run", "run folder (default: reports/latest)", commands=("report",), type=Path,
           check=_folder_to_read),
    Option(
        "--pins-for",
        "also write the pin that fits: route=remote-code|llamafied|exaone4|any, "
        "backend=hf-peft|unsloth|any, goal=newest|fastest (pinmatrix/report/pins.py); repeatable",
        field="pins_for",
        commands=("matrix", "report", "nightly", "merge"),
        action="append",
        type=_pins_for,
        metavar="KEY=VALUE[,...]",
        to_field=tuple,
    ),
    Option(
        "--previous",
        "the previous run: a run folder, a reports/ folder or an unpacked report artifact "
        "(nightly, merge: default the newest earlier run in --reports)",
        commands=("report", "nightly", "merge"),
        type=Path,
        metavar="DIR",
        check=_previous_run,
    ),
    Option(
        "--history",
        "the history file to read and append to (default: REPORTS/history.jsonl)",
        commands=("nightly", "merge"),
        type=Path,
        metavar="FILE",
    ),
    Option(
        "--expected-cells",
        "`list --json` output: a cell missing from every artifact is recorded as infra",
        commands=("merge",),
        type=Path,
        metavar="FILE",
    ),
    Option(
        "--json",
        "print JSON: the cell ids and the live-axis snapshot",
        commands=("list",),
        action="store_true",
    ),
    Option(
        "--rerun",
        "run again despite a cached result; bare: all cells, else the cells the selector matches",
        field="rerun",
        commands=("matrix", "run-cell"),
        group=SCALE,
        action="append",
        nargs="?",
        const="",
        metavar="SELECTOR",
        to_field=_rerun,
        forward="value",
    ),
    Option(
        "--resume",
        "continue an interrupted run (default: the latest unfinished), keeping its finished "
        "cells; RUN is a run id, a folder directly under --reports",
        field="resume",
        commands=("matrix",),
        group=SCALE,
        nargs="?",
        const="",
        metavar="RUN",
        check=_resume,
    ),
    Option(
        "--gpus",
        "GPU indices to use, e.g. 0,1 (default: all that nvidia-smi lists)",
        field="gpus",
        commands=("matrix",),
        group=SCALE,
        metavar="LIST",
        to_field=lambda v: parse_gpus(v),
    ),
    Option(
        "--build-jobs",
        "builds at once (default 2)",
        field="build_jobs",
        commands=("matrix",),
        group=SCALE,
        type=int,
        default=2,
        metavar="N",
        check=_count(1, MAX_JOBS),
    ),
    Option(
        "--cpu-jobs",
        "cells at once without GPUs (default 1)",
        field="cpu_jobs",
        commands=("matrix",),
        group=SCALE,
        type=int,
        default=1,
        metavar="N",
        check=_count(1, MAX_JOBS),
    ),
    Option(
        "--cells-per-gpu",
        "cells at once on each GPU: their compat checks share it, and each speed measurement waits "
        "to have the GPU alone (default 1)",
        field="cells_per_gpu",
        commands=("matrix",),
        group=SCALE,
        type=int,
        default=1,
        metavar="N",
        check=_count(1, MAX_JOBS),
    ),
    Option(
        "--shard",
        "run shard I of N (1-based) of the selected cells",
        field="shard",
        commands=("matrix",),
        group=SCALE,
        metavar="I/N",
        to_field=lambda v: parse_shard_option(v),
    ),
    Option(
        "--run-dir",
        "write into this run folder (shared by shards)",
        field="run_dir",
        commands=("matrix",),
        group=SCALE,
        type=Path,
        metavar="DIR",
        check=_folder_to_write(mounted=True),
    ),
    Option(
        "--no-live",
        "plain log lines even on a terminal",
        field="live_progress",
        commands=("matrix",),
        group=SCALE,
        action="store_true",
        to_field=lambda v: False if v else None,
    ),
    Option(
        "--on",
        "where cells run (default local)",
        commands=("matrix",),
        group=SCALE,
        choices=("local", "slurm"),
        default="local",
    ),
    Option("--partition", "sbatch --partition", commands=("matrix",), group=SLURM, metavar="NAME"),
    Option(
        "--sbatch-arg",
        "one more sbatch option, e.g. --sbatch-arg=--time=02:00:00 (repeatable)",
        commands=("matrix",),
        group=SLURM,
        action="append",
        metavar="ARG",
    ),
    Option(
        "--slurm-deadline",
        "give up waiting after S seconds; unfinished tasks become infra (default: 2 × cell "
        "timeout + 1h)",
        commands=("matrix",),
        group=SLURM,
        type=float,
        metavar="S",
        check=_seconds,
    ),
    Option(
        "--slurm-poll",
        "sacct polling interval (default 10)",
        commands=("matrix",),
        group=SLURM,
        type=float,
        default=10.0,
        metavar="S",
        check=_seconds,
    ),
    # run-cell: one Slurm array task (pinmatrix/run/slurm.py)
    Option(
        "--run-dir",
        "the run folder (shared)",
        field="run_dir",
        commands=("run-cell",),
        type=Path,
        required=True,
        metavar="DIR",
        check=_folder_to_read,
    ),
    Option(
        "--index",
        "the cell's line in DIR/slurm/cells.txt (default: $SLURM_ARRAY_TASK_ID)",
        commands=("run-cell",),
        type=int,
        metavar="N",
        check=_count(0, 10_000_000),
    ),
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


def check_options(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
    """Every declared check of the command's options, on what was parsed (UsageError, exit 2);
    for an option left out, on the value of the variable that stands in for it (`Option.env`, the
    one PackageSources.from_env picks), named in the message instead of the flag."""
    environ = os.environ if environ is None else environ
    _check_env_folders(args, environ)
    for option in options_for(args.command):
        if option.check is None:
            continue
        value = getattr(args, option.dest, None)
        if value is not None and value != []:
            option.check(option.flag, value, args)
        elif args.command not in _ENV_UNUSED:
            found = option.from_env(environ)
            if found is not None:
                name, value = found
                option.check(f"${name}", value, args)


def parse_gpus(text: str | None) -> list[str] | None:
    from pinmatrix.run.scheduler import parse_gpu_list

    return parse_gpu_list(text) if text else None


def parse_shard_option(text: str | None) -> tuple[int, int] | None:
    from pinmatrix.run.shard import parse_shard

    return parse_shard(text) if text else None


def read_snapshot(path: Path | None) -> dict[str, Any] | None:
    """--snapshot FILE: a run.json (its "snapshot") or a bare snapshot ({"live": ...})."""
    if path is None:
        return None
    import json

    from pinmatrix.errors import UsageError

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


def package_sources(args: argparse.Namespace) -> PackageSources:
    """PackageSources: the command line first, then PINMATRIX_*, then the host's pip settings
    (§9)."""
    return dataclasses.replace(PackageSources.from_env(
        index_url=args.index_url,
        extra_index_urls=args.extra_index_url or None,
        find_links=args.find_links or None,
        ca_bundle=str(args.ca_bundle) if args.ca_bundle else None,
        torch_backend=args.torch_backend,
    ), offline=bool(getattr(args, "offline", False)))


def run_options(args: argparse.Namespace) -> RunOptions:
    """RunOptions from parsed arguments: each declared option with a field, plus the package
    sources."""
    from pinmatrix.errors import ResumeError, SchedulerError

    values: dict[str, Any] = {"selectors": tuple(args.selectors), "sources": package_sources(args)}
    for option in options_for(args.command):
        if option.field is not None:
            value = getattr(args, option.dest)
            values[option.field] = option.to_field(value) if option.to_field else value
    if values.get("venv_dir") is not None:  # cells run in other folders: a relative path moves
        values["venv_dir"] = Path(values["venv_dir"]).absolute()
    if values.get("build_jobs", 1) < 1:
        raise SchedulerError(f"--build-jobs {args.build_jobs}: must be at least 1")
    if values.get("cpu_jobs", 1) < 1:
        raise SchedulerError(f"--cpu-jobs {args.cpu_jobs}: must be at least 1")
    if values.get("resume") is not None and (
        values.get("run_dir") is not None or values.get("shard")
    ):
        raise ResumeError(
            "--resume continues one run; it cannot be combined with --run-dir or --shard"
        )
    return RunOptions(**values)


def forwarded_argv(args: argparse.Namespace) -> list[str]:
    """The options a Slurm task needs to run its cell as the session would have, from the session's
    parsed arguments; `--snapshot` and the cell are the task script's (pinmatrix/run/slurm.py)."""
    out: list[str] = []
    for option in options_for(args.command):
        if option.forward:
            out += option.forwarded(getattr(args, option.dest))
    return out
