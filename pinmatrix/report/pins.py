"""Recommended stacks of a run as constraints files: `reports/<run>/pins/`.

Recommended means (issue 4):
- per torch/CUDA line, the fastest fully working cell. Speed is `throughput.sdpa`'s tokens/s, else
  the best tokens/s of any throughput check in the result. A line where no throughput ran falls back
  to the newest fully working cell of that line, and its header says so;
- the newest fully working cell: newest transformers, then unsloth, then torch (`packaging` versions
  of the locked, i.e. installed, versions).

Fully working = the cell's status is `works` (every check passed, or skipped because the cell opted
out, e.g. `flash-attn: none`) with at least one pass. Each file is the cell's full lock reduced to
`name==version` lines (no hashes: a constraints file with hashes switches pip to hash-checking mode
for everything installed with it), so `pip install -c FILE pkg` and `uv pip install -c FILE pkg`
both read it.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pinmatrix.cell import LOCK_LINE, normalize_name, version_key
from pinmatrix.fsio import read_json, slug, write_text_atomic
from pinmatrix.report.summary import merge

PINS_DIR = "pins"
LOCK_NAME = "requirements.lock"
NEWEST_FILE = "newest.constraints.txt"
_TORCH_LOCAL = re.compile(r"^(cu\d+|rocm[\d.]+|cpu|xpu)$")


@dataclass
class Candidate:
    """A fully working cell with what the choice needs."""
    cell_id: str
    pins: dict[str, str]
    locked: dict[str, str]          # normalised name -> version, from its lock
    lock_lines: list[str]           # `name==version[; marker]`, in lock order
    environment: dict[str, Any]
    finished: str | None
    tokens_per_s: float | None
    speed_check: str | None
    checks_passed: int
    checks_skipped: int

    @property
    def torch_line(self) -> str:
        return self.locked.get("torch", "none")


@dataclass
class Pick:
    role: str                        # "newest" | "fastest"
    file_name: str
    candidate: Candidate
    why: str


@dataclass
class PinsReport:
    pins_dir: Path | None
    picks: list[Pick] = field(default_factory=list)
    message: str = ""


def write_pins(run_dir: Path, *, now: datetime | None = None) -> PinsReport:
    """Write `run_dir/pins/` (replacing an older one) and return what was chosen and why.

    A run with no fully working cell writes no pins folder; `message` says why.
    """
    run_dir = Path(run_dir)
    summary = merge(run_dir)
    run_id = (summary.get("run") or {}).get("run_id") or run_dir.name
    candidates, skipped = collect_candidates(run_dir, summary)
    pins_dir = run_dir / PINS_DIR
    if pins_dir.is_dir():
        shutil.rmtree(pins_dir)  # pins describe this report only; stale files would mislead
    if not candidates:
        counts = ", ".join(f"{n} {status}" for status,
                           n in sorted((summary.get("counts") or {}).items())) or "no cells"
        why = f"pins: none written: no fully working cell in run {run_id} ({counts})"
        if skipped:
            why += "; " + "; ".join(skipped)
        return PinsReport(None, [], why)

    picks = choose(candidates)
    written_at = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pins_dir.mkdir(parents=True)
    for pick in picks:
        write_text_atomic(pins_dir / pick.file_name, constraints_text(pick, run_id, written_at))
    write_text_atomic(pins_dir / "README.md", readme_text(picks, run_id, written_at, skipped))
    names = ", ".join(p.file_name for p in picks)
    return PinsReport(pins_dir, picks,
                      f"pins: {len(picks)} constraints file{'s' if len(picks) != 1 else ''} "
                                       f"in {pins_dir}: {names}")


def recommended(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What `write_pins` would choose, for the report's "Recommended pins" section (nothing is
    written): {"picks": [{role, file, why, cell, pins}], "none": why there are none}."""
    candidates, skipped = collect_candidates(Path(run_dir), summary)
    if not candidates:
        return {"picks": [], "none": "no fully working cell in this run"
                + (f" ({'; '.join(skipped)})" if skipped else "")}
    keys = ("python", "torch", "transformers", "unsloth", "peft", "trl", "xformers", "flash-attn",
            "bitsandbytes")
    picks = []
    for pick in choose(candidates):
        c = pick.candidate
        pins = {k: c.locked.get(normalize_name(k)) or c.pins.get(k) for k in keys
                if c.locked.get(normalize_name(k)) or c.pins.get(k)}
        picks.append({"role": pick.role, "file": f"{PINS_DIR}/{pick.file_name}", "why": pick.why,
                      "cell": c.cell_id, "pins": pins})
    return {"picks": picks, "none": None}


# --- candidates
# ------------------------------------------------------------------------------------

def collect_candidates(run_dir: Path, summary: dict[str, Any]) -> tuple[list[Candidate], list[str]]:
    """Fully working cells that have a lock; and a note for each working cell left out (no lock)."""
    speeds: dict[str, dict[str, float]] = {}
    for entry in summary.get("speed") or []:
        speeds.setdefault(entry["cell"], {})[entry["stack"]] = float(entry["tokens_per_s"])
    out, skipped = [], []
    for row in summary.get("cells") or []:
        checks = row.get("checks") or {}
        passed = sum(1 for c in checks.values() if c.get("status") == "pass")
        if row.get("status") != "works" or passed == 0:
            continue
        lock_path = run_dir / "locks" / row["id"] / LOCK_NAME
        if not lock_path.is_file():
            skipped.append(f"{row['id']} works but has no lock ({lock_path.relative_to(run_dir)})")
            continue
        lines = lock_entries(lock_path.read_text(encoding="utf-8"))
        if not lines:
            skipped.append(f"{row['id']} works but its lock pins nothing")
            continue
        result = read_json(run_dir / row["result"]) if row.get("result") else None
        environment = (result or {}).get("environment") or row.get("environment") or {}
        stack_speeds = speeds.get(row["id"], {})
        if "sdpa" in stack_speeds:
            speed_check, tps = "throughput.sdpa", stack_speeds["sdpa"]
        elif stack_speeds:
            stack = max(stack_speeds, key=lambda s: stack_speeds[s])
            speed_check, tps = f"throughput.{stack}", stack_speeds[stack]
        else:
            speed_check, tps = None, None
        out.append(Candidate(
            cell_id=row["id"], pins=dict(row.get("pins") or {}),
            locked={normalize_name(_name_of(line)): _version_of(line) for line in lines},
            lock_lines=lines, environment=dict(environment),
            finished=(result or {}).get("finished"),
            tokens_per_s=tps, speed_check=speed_check, checks_passed=passed,
            checks_skipped=sum(1 for c in checks.values() if c.get("status") == "skip")))
    return out, skipped


def lock_entries(lock_text: str) -> list[str]:
    """`name==version[; marker]` for every pinned package of a uv lock (hashes, comments, options
    dropped)."""
    entries = []
    for raw in lock_text.splitlines():
        match = LOCK_LINE.match(raw.strip())
        if not match or raw[:1].isspace():
            continue  # continuation lines (--hash=...) and `# via` notes are indented
        name, version, marker = match.group(1), match.group(2), (match.group(3) or "").strip()
        entries.append(f"{name}=={version}" + (f" {marker}" if marker else ""))
    return entries


# --- the choice
# ------------------------------------------------------------------------------------

def newest_key(candidate: Candidate) -> tuple[Any, ...]:
    """Newest transformers, then unsloth, then torch; an absent package sorts below any version."""
    return tuple(
        version_key(candidate.locked.get(name)) for name in ("transformers", "unsloth", "torch")
    ) + (candidate.cell_id,)


def choose(candidates: list[Candidate]) -> list[Pick]:
    """The newest cell overall, then the fastest of each torch/CUDA line (newest where none has a
    speed)."""
    newest = max(candidates, key=newest_key)
    picks = [Pick("newest", NEWEST_FILE, newest,
                  "newest fully working cell (transformers "
                  f"{newest.locked.get('transformers', 'none')}, "
                  f"unsloth {newest.locked.get('unsloth', 'none')}, torch {newest.torch_line})")]
    lines: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        lines.setdefault(candidate.torch_line, []).append(candidate)
    for torch_line in sorted(lines, key=version_key):
        members = lines[torch_line]
        timed = [c for c in members if c.tokens_per_s is not None]
        if timed:
            best = max(timed, key=lambda c: (c.tokens_per_s, newest_key(c)))
            why = (f"fastest fully working cell of torch {torch_line}: {best.speed_check} "
                   f"{best.tokens_per_s:.1f} tokens/s ({len(timed)} of {len(members)} working "
                   "cells timed)")
        else:
            best = max(members, key=newest_key)
            why = (f"torch {torch_line}: no throughput check ran in this line's {len(members)} "
                   "working "
                   f"cell{'s' if len(members) != 1 else ''}, so this is the newest one, not a "
                   "measured fastest")
        picks.append(Pick("fastest", f"fastest-torch{slug(torch_line)}.constraints.txt", best, why))
    return picks


# --- the files
# -------------------------------------------------------------------------------------

def constraints_text(pick: Pick, run_id: str, written_at: str) -> str:
    c = pick.candidate
    env = c.environment
    gpu = env.get("gpu") or ("none (device "
                             f"{env.get('device')})" if env.get("device") else "unknown")
    gpu_bits = [gpu]
    if env.get("cuda"):
        gpu_bits.append(f"CUDA {env['cuda']}")
    if env.get("driver"):
        gpu_bits.append(f"driver {env['driver']}")
    throughput = (f"{c.speed_check} {c.tokens_per_s:.1f} tokens/s" if c.tokens_per_s is not None
                  else "not measured (no throughput check ran for this cell)")
    header = [
        f"# pinmatrix constraints: {pick.why}",
        f"# cell: {c.cell_id}",
        f"# run: {run_id}; cell finished: {c.finished or 'unknown'}; written: {written_at} (UTC)",
        f"# GPU: {', '.join(gpu_bits)}",
        f"# throughput: {throughput}",
        f"# checks: {c.checks_passed} passed, {c.checks_skipped} skipped (cell status: works)",
        "# use: pip install -c THIS_FILE PACKAGE...   or   uv pip install -c THIS_FILE PACKAGE...",
    ]
    index = torch_index_hint(c.locked.get("torch"))
    if index:
        header.append(f"# torch {c.locked['torch']} is a PyTorch-index build: add "
                      f"--extra-index-url {index} "
                      f"(pip) or --index {index} (uv), or a wheelhouse with --find-links")
    return "\n".join(header + c.lock_lines) + "\n"


def readme_text(picks: list[Pick], run_id: str, written_at: str, skipped: list[str]) -> str:
    lines = [f"# Recommended stacks of run {run_id}", "",
             f"Written {written_at} (UTC) by pinmatrix from this run's results and locks.",
             "Each file is a cell's full lock as a constraints file:", "",
             "    pip install -c FILE transformers peft ...",
             "    uv pip install -c FILE transformers peft ...", "",
             "| file | why | cell | GPU | throughput |", "|---|---|---|---|---|"]
    for pick in picks:
        c = pick.candidate
        tps = (
            f"{c.tokens_per_s:.1f} tok/s ({c.speed_check})"
            if c.tokens_per_s is not None
            else "not measured"
        )
        gpu = c.environment.get("gpu") or f"none ({c.environment.get('device', '?')})"
        lines.append(f"| [{pick.file_name}]({pick.file_name}) | {pick.why} | `{c.cell_id}` | {gpu} "
                     f"| {tps} |")
    if skipped:
        lines += ["", "Left out:", *(f"- {note}" for note in skipped)]
    return "\n".join(lines) + "\n"


def torch_index_hint(torch_version: str | None) -> str | None:
    """The PyTorch index of a local-variant torch (2.8.0+cu128 -> .../whl/cu128); None for a PyPI
    build."""
    if not torch_version or "+" not in torch_version:
        return None
    local = torch_version.split("+", 1)[1]
    return f"https://download.pytorch.org/whl/{local}" if _TORCH_LOCAL.match(local) else None


# --- helpers
# ---------------------------------------------------------------------------------------

def _name_of(line: str) -> str:
    return line.split("==", 1)[0]


def _version_of(line: str) -> str:
    return line.split("==", 1)[1].split(";", 1)[0].strip()
