"""Watch the GPUs while cells run: who really used which GPU, and what the cards were doing.

The scheduler hands each cell one GPU (`CUDA_VISIBLE_DEVICES`, or Docker's `--gpus device=N`). A
cell
can still take another one: a child process that resets `CUDA_VISIBLE_DEVICES`, a library that
enumerates devices through NVML, a container started with all GPUs. The assignment alone proves
nothing, so while cells run a thread samples `nvidia-smi` every `interval_s`:

- the compute processes of every GPU (pid, GPU, memory), each tied to a cell by the
  `PINMATRIX_CELL_ID` variable the runner puts in the probe's environment (children inherit it;
  read from /proc/<pid>/environ);
- per GPU: utilisation, memory used, SM clock, power, PCIe link; and the host's load average.

`attribute()` then compares what was seen with what was assigned: a cell's process on a GPU it was
not given is a **trespass**; memory in use on a GPU while no cell held it (processes not visible,
as from some containers) is flagged too, with the cells running at that moment as suspects.
Processes that belong to no cell are listed as foreign.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pinmatrix.fsio import write_json_atomic
from pinmatrix.outcome import load_outcome

CELL_ENV = "PINMATRIX_CELL_ID"
GPU_QUERY = (
    "index,uuid,utilization.gpu,memory.used,clocks.sm,power.draw,"
    "pcie.link.gen.current,pcie.link.width.current"
)
APPS_QUERY = "pid,gpu_uuid,used_memory"
IDLE_MEMORY_MIB = (
    1024  # a GPU using more than its idle level plus this, with no cell on it, is in use
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _num(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def parse_gpus(text: str) -> list[dict[str, Any]]:
    """`nvidia-smi --query-gpu=GPU_QUERY --format=csv,noheader,nounits` → one dict per GPU."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 8 or not parts[0].isdigit():
            continue
        out.append(
            {
                "index": parts[0],
                "uuid": parts[1],
                "util": _num(parts[2]),
                "mem_mib": _num(parts[3]),
                "sm_mhz": _num(parts[4]),
                "power_w": _num(parts[5]),
                "pcie_gen": _num(parts[6]),
                "pcie_width": _num(parts[7]),
            }
        )
    return out


def parse_apps(text: str) -> list[dict[str, Any]]:
    """`nvidia-smi --query-compute-apps=APPS_QUERY --format=csv,noheader,nounits` → pid, gpu uuid,
    MiB."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        out.append({"pid": int(parts[0]), "uuid": parts[1], "mem_mib": _num(parts[2])})
    return out


def cell_of_pid(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The cell a process belongs to: PINMATRIX_CELL_ID in its environment (None: not a cell's, or
    unreadable)."""
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(CELL_ENV.encode() + b"="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return None


def _cmdline(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (
            (proc / str(pid) / "cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
            .strip()[:2000]
        )
    except OSError:
        return ""


@dataclass
class GpuWatch:
    """A sampling thread; `with GpuWatch(...) as watch:` around the cells, then `watch.samples`."""

    interval_s: float = 1.0
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
    cell_of: Callable[[int], str | None] = cell_of_pid
    cmdline_of: Callable[[int], str] = _cmdline
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_cmd: dict[int, str] = {}

    @staticmethod
    def available() -> bool:
        return shutil.which("nvidia-smi") is not None

    def _smi(self, *args: str) -> str | None:
        try:
            proc = self.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError) as exc:
            self._note(f"nvidia-smi {args[0]}: {exc}")
            return None
        if proc.returncode != 0:
            self._note(
                f"nvidia-smi {args[0]}: exit {proc.returncode}: {(proc.stderr or '').strip()[:200]}"
            )
            return None
        return proc.stdout

    def _note(self, text: str) -> None:
        if text not in self.errors and len(self.errors) < 20:
            self.errors.append(text)

    def sample(self) -> dict[str, Any] | None:
        gpus_text = self._smi(f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits")
        if gpus_text is None:
            return None
        gpus = parse_gpus(gpus_text)
        by_uuid = {g["uuid"]: g["index"] for g in gpus}
        apps_text = (
            self._smi(f"--query-compute-apps={APPS_QUERY}", "--format=csv,noheader,nounits") or ""
        )
        procs = []
        for app in parse_apps(apps_text):
            pid = app["pid"]
            if pid not in self._seen_cmd:
                self._seen_cmd[pid] = self.cmdline_of(pid)
            procs.append(
                {
                    "pid": pid,
                    "gpu": by_uuid.get(app["uuid"], app["uuid"]),
                    "mem_mib": app["mem_mib"],
                    "cell": self.cell_of(pid),
                }
            )
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
        record = {
            "t": _now(),
            "load1": load,
            "gpus": [{k: v for k, v in g.items() if k != "uuid"} for g in gpus],
            "procs": procs,
        }
        self.samples.append(record)
        return record

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception as exc:  # a watcher bug must never cost the run its cells
                self._note(f"sample failed: {exc!r}")
            self._stop.wait(max(0.05, self.interval_s - (time.monotonic() - started)))

    def __enter__(self) -> GpuWatch:
        self._thread = threading.Thread(target=self._loop, name="gpu-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def commands(self) -> dict[int, str]:
        return dict(self._seen_cmd)


# --- attribution ---------------------------------------------------------------------------------


def _parse_t(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


@dataclass
class Assignment:
    cell: str
    gpu: str | None
    start: float | None
    end: float | None


def attribute(
    samples: Sequence[Mapping[str, Any]],
    assignments: Iterable[Assignment],
    commands: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """What each cell was seen using, against what it was given.

    Returns {"cells": {cell: {"assigned", "gpus_seen": {gpu: peak MiB}, "trespass": [gpu...]}},
             "foreign": [{pid, gpu, peak MiB, cmd}], "unheld_use": [{gpu, t, mem_mib,
             suspects}]}."""
    assignments = list(assignments)
    commands = commands or {}

    def owner(p: Mapping[str, Any]) -> str | None:
        """The process's cell: its PINMATRIX_CELL_ID, else a cell id in its command line (the venv
        folder and
        the cell.json path name the cell; seen needed on the H200 for a probe whose environment
        read empty)."""
        if p.get("cell"):
            return str(p["cell"])
        cmd = commands.get(int(p["pid"]), "")
        hits = [a.cell for a in assignments if a.cell and a.cell in cmd]
        return max(hits, key=len) if hits else None

    cells: dict[str, dict[str, Any]] = {
        a.cell: {"assigned": a.gpu, "gpus_seen": {}, "trespass": []} for a in assignments
    }
    foreign: dict[tuple[int, str], float] = {}
    idle: dict[str, float] = {}
    for s in samples:  # the idle level of each GPU: its lowest reading while no cell held it
        t = _parse_t(s.get("t"))
        for g in s.get("gpus", []):
            if g.get("mem_mib") is None:
                continue
            held = any(
                a.gpu == g["index"]
                and a.start is not None
                and a.end is not None
                and t is not None
                and a.start <= t <= a.end
                for a in assignments
            )
            if not held:
                idle[g["index"]] = min(idle.get(g["index"], g["mem_mib"]), g["mem_mib"])
    unheld: dict[str, dict[str, Any]] = {}
    for s in samples:
        t = _parse_t(s.get("t"))
        for p in s.get("procs", []):
            gpu, mem = str(p.get("gpu")), float(p.get("mem_mib") or 0.0)
            cell = owner(p)
            if cell in cells:
                seen = cells[cell]["gpus_seen"]
                seen[gpu] = max(seen.get(gpu, 0.0), mem)
            else:
                key = (int(p["pid"]), gpu)
                foreign[key] = max(foreign.get(key, 0.0), mem)
        if t is None:
            continue
        for g in s.get("gpus", []):
            index, mem = g["index"], g.get("mem_mib")
            if mem is None:
                continue
            holders = [
                a
                for a in assignments
                if a.gpu == index
                and a.start is not None
                and a.end is not None
                and a.start <= t <= a.end
            ]
            if holders or mem <= idle.get(index, 0.0) + IDLE_MEMORY_MIB:
                continue
            running = sorted(
                a.cell
                for a in assignments
                if a.start is not None and a.end is not None and a.start <= t <= a.end
            )
            entry = unheld.setdefault(
                index,
                {
                    "gpu": index,
                    "first": s["t"],
                    "last": s["t"],
                    "peak_mib": mem,
                    "suspects": running,
                },
            )
            entry["last"], entry["peak_mib"] = s["t"], max(entry["peak_mib"], mem)
            entry["suspects"] = sorted(set(entry["suspects"]) | set(running))
    for info in cells.values():
        assigned = info["assigned"]
        info["trespass"] = sorted(
            g for g in info["gpus_seen"] if assigned is not None and g != assigned
        )
    return {
        "cells": cells,
        "foreign": [
            {"pid": pid, "gpu": gpu, "peak_mib": mem, "cmd": commands.get(pid, "")}
            for (pid, gpu), mem in sorted(foreign.items())
        ],
        "unheld_use": list(unheld.values()),
    }


def describe_trespass(cell: str, info: Mapping[str, Any]) -> str | None:
    """One line for an outcome, or None when the cell stayed on its GPU."""
    if not info.get("trespass"):
        return None
    seen = ", ".join(f"GPU {g} ({info['gpus_seen'][g]:.0f} MiB)" for g in info["trespass"])
    return f"took a GPU without asking: assigned GPU {info.get('assigned')}, also seen on {seen}"


# --- the pipeline's hook -------------------------------------------------------------------------


class watch_run:
    """Around the scheduler: sample while the cells run, then write `gpu_watch.json` into the run
    folder
    and each outcome's `gpus_seen` / `trespass` (docs/CONTRACTS.md §8). Does nothing without
    GPUs."""

    def __init__(
        self, run_dir: Path, tokens: Sequence[str | None], interval_s: float = 1.0
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = any(t for t in tokens) and GpuWatch.available()
        self.watch = GpuWatch(interval_s=interval_s)
        self.tokens = [t for t in tokens if t]

    def __enter__(self) -> watch_run:
        if self.enabled:
            self.watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        self.watch.__exit__(*exc)
        try:
            self.finish()
        except Exception as err:  # the watcher must never cost the run its report
            self.watch.errors.append(f"attribution failed: {err!r}")

    def finish(self) -> dict[str, Any]:
        report = {
            "interval_s": self.watch.interval_s,
            "gpus": self.tokens,
            "errors": self.watch.errors,
            "commands": {str(k): v for k, v in self.watch.commands().items()},
            "samples": self.watch.samples,
        }
        return _attribute_run(self.run_dir, report)


def _attribute_run(run_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Attribute a run's samples to its outcomes; rewrite the outcomes and gpu_watch.json."""

    outcomes = []
    for path in sorted((Path(run_dir) / "outcomes").glob("*.json")):
        loaded = load_outcome(path)
        if not isinstance(loaded, str):
            outcomes.append(loaded)
    ran = [o for o in outcomes if o.gpu and o.started and o.finished]
    commands = {int(k): v for k, v in (report.get("commands") or {}).items()}
    found = attribute(
        report.get("samples") or [],
        [Assignment(o.cell, o.gpu, _parse_t(o.started), _parse_t(o.finished)) for o in ran],
        commands,
    )
    for o in ran:
        info = found["cells"].get(o.cell) or {}
        o.gpus_seen = {g: round(m) for g, m in (info.get("gpus_seen") or {}).items()}
        o.trespass = describe_trespass(o.cell, info)
        o.write(run_dir)
    report = {**report, "attribution": found}
    write_json_atomic(Path(run_dir) / "gpu_watch.json", report)
    return report


def reattribute(run_dir: Path) -> dict[str, Any]:
    """Attribute a finished run's gpu_watch.json again with this code (as the report re-classifies
    failures
    with the current catalogue). Command lines of a file written before they were kept come from its
    `foreign` list; the previous attribution is kept as `attribution_before`."""
    path = Path(run_dir) / "gpu_watch.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    if not report.get("commands"):
        report["commands"] = {
            str(f["pid"]): f.get("cmd", "")
            for f in (report.get("attribution") or {}).get("foreign", [])
        }
    report.setdefault("attribution_before", report.get("attribution"))
    report["reattributed"] = _now()
    return _attribute_run(Path(run_dir), report)
