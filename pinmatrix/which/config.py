"""`which`'s options, one typed field each (the parser, usage text and checks are derived from
them by pinmatrix/run/options.py). It sits in which/ so that which/cli.py can name it and
pinmatrix/commands/which.py can register it without the two packages importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pinmatrix.run.options import Option, typed

DEFAULT_REPORT = Path("reports") / "latest"
_ME = ("which",)


@dataclass(frozen=True)
class WhichConfig:
    stack: Path | None = typed(Option(
        "stack", "requirements/constraints file, `pip freeze` output, uv.lock or pylock.toml",
        commands=_ME, type=Path, nargs="?", metavar="FILE"), default=None)
    here: bool = typed(Option(
        "--here", "the running interpreter's distributions, python and torch's CUDA",
        commands=_ME, action="store_true"), default=False)
    complete: bool = typed(Option(
        "--complete", "FILE is a whole environment (a `pip freeze`): a package it does not list "
        "is not installed", commands=_ME, action="store_true"), default=False)
    python: str | None = typed(Option(
        "--python", "the stack's python X.Y (a freeze does not say)", commands=_ME), default=None)
    purpose: str | None = typed(Option(
        "--purpose", "one purpose of the pins page (default: every one)", commands=_ME),
        default=None)
    report: tuple[Path, ...] = typed(Option(
        "--report", "a run folder to match against (compat.json, else summary.json); "
        f"repeatable; default {DEFAULT_REPORT}", commands=_ME, type=Path, action="append",
        to_field=lambda v: tuple(v or ())), default=())
    dataset: tuple[Path, ...] = typed(Option(
        "--dataset", "a compat.json to match against; repeatable", commands=_ME, type=Path,
        action="append", to_field=lambda v: tuple(v or ())), default=())
    constraints_dir: Path | None = typed(Option(
        "--constraints-dir", "write each purpose's smallest change here as "
        "PURPOSE.constraints.txt", commands=_ME, type=Path), default=None)
    as_json: bool = typed(Option(
        "--json", "the answer as JSON on stdout", commands=_ME, action="store_true"),
        default=False)
    judge: bool = typed(Option(
        "--judge", "run a one-cell matrix of exactly these pins first (the `matrix` pipeline), "
        "and answer from that run", commands=_ME, action="store_true"), default=False)
    matrix: Path = typed(Option(
        "--matrix", "--judge: the matrix whose models, checks and settings the cell uses "
        "(default matrix.yaml)", commands=_ME, type=Path, default=Path("matrix.yaml")),
        default=Path("matrix.yaml"))
    judge_reports: Path = typed(Option(
        "--judge-reports", "--judge: where the run folder goes (default reports/which)",
        commands=_ME, type=Path, default=Path("reports") / "which"),
        default=Path("reports") / "which")
    judge_arg: tuple[str, ...] = typed(Option(
        "--judge-arg", "--judge: one more argument for `matrix` (e.g. --judge-arg=--cpu "
        "--judge-arg=--runner=venv)", commands=_ME, action="append", metavar="ARG",
        to_field=lambda v: tuple(v or ())), default=())

