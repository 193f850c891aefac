"""The GPU side of a run: a per-GPU timeline, and a concurrent run's speed against the same cells
alone.

`timeline(outcomes)` reads the outcome fields `gpu`, `started`, `finished`
(pinmatrix/run/one_cell.py) and
`gpus_seen` / `trespass` (pinmatrix/run/gpu_watch.py); `summary.json` keeps it as `gpu_timeline` and
summary.md shows it under "## GPU timeline".

    python -m pinmatrix.report.gpus compare RUN --alone RUN_ALONE [--alone ...]

writes RUN/concurrency.{md,json}: for every cell of RUN that also ran in an --alone run, each
throughput figure against the alone one (within 5%, or what the cards and the host were doing: SM
clock, power, host load, from gpu_watch.json), and the concurrent wall time against the alone runs'
probe times added up (running the same cells one after another).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pinmatrix.console import escape
from pinmatrix.errors import BadInput
from pinmatrix.fsio import (
    load_json,
    plain_name,
    real_file,
    real_json_files,
    write_json_atomic,
    write_text_atomic,
)

TOLERANCE = 0.05


def _t(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except (TypeError, ValueError):
        return None


def timeline(outcomes: Iterable[Any]) -> dict[str, Any] | None:
    """{"t0", "wall_s", "busy_s", "gpus": {gpu: [{cell, start_s, end_s, s, trespass, gpus_seen}]}};
    None
    when no cell of the run recorded a GPU (a CPU run, or a run before these fields existed)."""
    items = [o for o in outcomes if getattr(o, "gpu", None) and _t(o.started) and _t(o.finished)]
    if not items:
        return None
    t0 = min(_t(o.started) for o in items)  # type: ignore[type-var]
    t1 = max(_t(o.finished) for o in items)  # type: ignore[type-var]
    gpus: dict[str, list[dict[str, Any]]] = {}
    for o in sorted(items, key=lambda o: (_t(o.started), o.cell)):
        start, end = _t(o.started) - t0, _t(o.finished) - t0  # type: ignore[operator]
        gpus.setdefault(str(o.gpu), []).append(
            {
                "cell": o.cell,
                "started": o.started,
                "finished": o.finished,
                "start_s": round(start, 1),
                "end_s": round(end, 1),
                "s": round(end - start, 1),
                "gpus_seen": getattr(o, "gpus_seen", None),
                "trespass": getattr(o, "trespass", None),
            }
        )
    wall_s = round(t1 - t0, 1)  # type: ignore[operator]
    return {
        "t0": min(o.started for o in items),
        "wall_s": wall_s,
        "busy_s": round(sum(e["s"] for lane in gpus.values() for e in lane), 1),
        "gpus": dict(sorted(gpus.items())),
        # matrix --cells-per-gpu: how many cells one GPU held at once at most
        "most_at_once": max(len(_rows(lane)) for lane in gpus.values()),
        # what the run's GPUs got through, counting the whole wall time of each GPU it used
        "cells_per_gpu_hour": round(len(items) / (max(wall_s, 1e-9) * len(gpus) / 3600), 1),
    }


def _rows(lane: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """The cells of one GPU in as few chart rows as keep cells that ran at once apart (cells that
    share a GPU, matrix --cells-per-gpu)."""
    rows: list[list[Mapping[str, Any]]] = []
    for e in sorted(lane, key=lambda e: (e["start_s"], e["cell"])):
        row = next((r for r in rows if r[-1]["end_s"] <= e["start_s"]), None)
        if row is None:
            rows.append([e])
        else:
            row.append(e)
    return rows


def render_timeline(data: Mapping[str, Any] | None, width: int = 60) -> list[str]:
    if not data:
        return []
    wall = max(float(data["wall_s"]), 1e-9)
    out = [
        "## GPU timeline",
        "",
        f"From the first cell's start ({data['t0']}) to the last cell's end: {data['wall_s']:.1f} "
        f"s; "
        f"the cells' own times add up to {data['busy_s']:.1f} s. A cell holds its GPU from its "
        f"probe's start "
        "to its end (with a flaky rerun, if any).",
        "",
        f"**{data.get('cells_per_gpu_hour', 0):.1f} cells per GPU-hour** "
        f"({sum(map(len, data['gpus'].values()))} cells, {len(data['gpus'])} GPU(s), at most "
        f"{data.get('most_at_once', 1)} cell(s) on one GPU "
        "at once).",
        "",
        "| GPU | cell | start s | end s | s | seen on GPU (peak MiB) | took a GPU without asking |",
        "|---|---|---|---|---|---|---|",
    ]
    for gpu, lane in data["gpus"].items():
        for e in lane:
            seen = ", ".join(f"{g}: {m:.0f}" for g, m in (e.get("gpus_seen") or {}).items()) or "—"
            out.append(
                f"| {gpu} | `{e['cell']}` | {e['start_s']:.1f} | {e['end_s']:.1f} | {e['s']:.1f} "
                f"| {seen} | "
                f"{e.get('trespass') or 'no'} |"
            )
    out += ["", "```"]
    for gpu, lane in data["gpus"].items():
        letter = {e["cell"]: "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[n % 26] for n, e in enumerate(lane)}
        for k, cells in enumerate(_rows(lane)):
            row = [" "] * width
            for e in cells:
                a = int(e["start_s"] / wall * (width - 1))
                b = max(a, int(e["end_s"] / wall * (width - 1)))
                for i in range(a, b + 1):
                    row[i] = letter[e["cell"]]
            out.append(
                f"{('GPU ' + gpu) if k == 0 else '':<6}|{''.join(row)}| "
                + "  ".join(f"{letter[e['cell']]}={e['cell'][:48]}" for e in cells)
            )
    out += [f"        0 s{' ' * (width - 8)}{data['wall_s']:.0f} s", "```", ""]
    return out


# --- concurrent against alone --------------------------------------------------------------------


# The run folders compared may come from another machine or a damaged run (the trust rule in
# pinmatrix/fsio.py): a file that cannot be read, or a record of the wrong shape, is listed under
# `damaged` and left out; only a run folder without a readable summary is bad input.
def _summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    try:
        data = load_json(path)
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a run's summary ({exc}); run `python -m pinmatrix report "
                       f"--run {run_dir}` first") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{path}: not a run's summary (a JSON object was expected)")
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _speeds(summary: Mapping[str, Any], damaged: list[str] | None = None,
            where: str = "") -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    rows = summary.get("speed")
    for n, row in enumerate(rows if isinstance(rows, list) else []):
        tps = _number(row.get("tokens_per_s")) if isinstance(row, dict) else None
        if (tps is None or not isinstance(row.get("cell"), str)
                or not isinstance(row.get("stack"), str)):
            if damaged is not None:
                damaged.append(f"{where}summary.json speed[{n}]: not a speed row")
            continue
        out[(row["cell"], row["stack"])] = tps
    return out


def _outcomes(run_dir: Path, damaged: list[str]) -> dict[str, dict[str, Any]]:
    """The run's outcomes by cell; each file that cannot be one is named in `damaged`."""
    files, refused = real_json_files(Path(run_dir) / "outcomes")
    damaged += [f"{p}: not a regular file" for p in refused]
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            data = load_json(path)
        except (OSError, ValueError) as exc:
            damaged.append(f"{path}: {exc}")
            continue
        if not isinstance(data, dict) or not plain_name(data.get("cell")):
            damaged.append(f"{path}: not an outcome")
            continue
        out.setdefault(data["cell"], data)
    return out


def _probe_s(outcomes: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    out = {}
    for cell, data in outcomes.items():
        timings = data.get("timings")
        run_s = _number(timings.get("run_s")) if isinstance(timings, dict) else None
        if run_s is not None:
            out[cell] = run_s
    return out


def _conditions(
    run_dir: Path, gpu: str | None, start: str | None, end: str | None
) -> dict[str, Any]:
    """Median SM clock, power and utilisation of one GPU, and the host's load, between two times."""
    path = Path(run_dir) / "gpu_watch.json"
    if not real_file(path) or gpu is None:
        return {}
    try:
        watch = load_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(watch, dict) or not isinstance(watch.get("samples") or [], list):
        return {}
    a, b = _t(start), _t(end)
    clocks: list[float] = []
    power: list[float] = []
    util: list[float] = []
    load: list[float] = []
    mem: list[float] = []
    for s in watch.get("samples") or []:
        if not isinstance(s, dict):
            continue
        t = _t(s.get("t"))
        if t is None or a is None or b is None or not a <= t <= b:
            continue
        if _number(s.get("load1")) is not None:
            load.append(s["load1"])
        listed = s.get("gpus")
        for g in listed if isinstance(listed, list) else []:
            if not isinstance(g, dict) or g.get("index") != gpu:
                continue
            for key, bucket in (
                ("sm_mhz", clocks),
                ("power_w", power),
                ("util", util),
                ("mem_mib", mem),
            ):
                if _number(g.get(key)) is not None:
                    bucket.append(g[key])
    def med(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 1) if xs else None

    return {
        "samples": len(load),
        "sm_mhz_median": med(clocks),
        "sm_mhz_min": min(clocks) if clocks else None,
        "power_w_median": med(power),
        "util_median": med(util),
        "host_load1_median": med(load),
        "gpu_mem_mib_max": max(mem) if mem else None,
    }


def _step_spread(run_dir: Path, cell: str, stack: str) -> dict[str, Any] | None:
    """The timed steps of one throughput figure: median and min..max step time (s), from the cell's
    result."""
    try:
        data = load_json(Path(run_dir) / "cells" / f"{cell}.json")
    except (OSError, ValueError):
        return None
    checks = data.get("checks") if isinstance(data, dict) else None
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, dict) and check.get("name") == f"throughput.{stack}":
            evidence = check.get("evidence")
            times = evidence.get("step_times_s") if isinstance(evidence, dict) else None
            if (
                isinstance(times, list)
                and times
                and all(_number(t) is not None for t in times)
                and statistics.median(times) > 0
            ):
                return {
                    "n": len(times),
                    "median": round(statistics.median(times), 4),
                    "min": min(times),
                    "max": max(times),
                    "spread_pct": round(
                        (max(times) - min(times)) / statistics.median(times) * 100, 2
                    ),
                }
    return None


def _why(row: Mapping[str, Any]) -> str:
    """Why a figure is outside the tolerance, from what was measured (never a guess dressed as a
    finding)."""
    if row.get("within_5pct") is not False:
        return ""
    if row["delta"] > 0:
        return (
            "faster together than alone: sharing the host did not slow it; the gap is run-to-run "
            "variation "
            "of this measurement"
        )
    c, a = row.get("conditions") or {}, row.get("alone_conditions") or {}
    notes = []
    if (
        c.get("sm_mhz_median")
        and a.get("sm_mhz_median")
        and c["sm_mhz_median"] < a["sm_mhz_median"] * 0.97
    ):
        notes.append(f"SM clock {a['sm_mhz_median']:.0f} → {c['sm_mhz_median']:.0f} MHz")
    if (
        c.get("host_load1_median")
        and a.get("host_load1_median")
        and c["host_load1_median"] > a["host_load1_median"] * 1.5
    ):
        notes.append(f"host load {a['host_load1_median']} → {c['host_load1_median']} (shared CPU)")
    return (
        "; ".join(notes) or "no clock, power or host-load difference was recorded that explains it"
    )


def compare(run_dir: Path, alone_dirs: Sequence[Path]) -> dict[str, Any]:
    run_dir = Path(run_dir)
    damaged: list[str] = []
    concurrent = _summary(run_dir)
    outcomes = _outcomes(run_dir, damaged)
    alone_speed: dict[tuple[str, str], tuple[float, Path]] = {}
    alone_probe: dict[str, tuple[float, Path]] = {}
    alone_outcome: dict[str, dict[str, Any]] = {}
    for d in alone_dirs:
        for key, tps in _speeds(_summary(Path(d)), damaged, f"{d}/").items():
            alone_speed.setdefault(key, (tps, Path(d)))
        alone = _outcomes(Path(d), damaged)
        for cell, s in _probe_s(alone).items():
            alone_probe.setdefault(cell, (s, Path(d)))
        for cell, data in alone.items():
            alone_outcome.setdefault(cell, {**data, "_dir": str(d)})
    rows = []
    for (cell, stack), tps in sorted(_speeds(concurrent, damaged, f"{run_dir}/").items()):
        base = alone_speed.get((cell, stack))
        o = outcomes.get(cell, {})
        row: dict[str, Any] = {
            "cell": cell,
            "stack": stack,
            "gpu": o.get("gpu"),
            "tokens_per_s": tps,
            "alone_tokens_per_s": base[0] if base else None,
            "alone_run": base[1].name if base else None,
        }
        if base:
            row["delta"] = round(tps / base[0] - 1.0, 4)
            row["within_5pct"] = abs(row["delta"]) <= TOLERANCE
            row["conditions"] = _conditions(
                run_dir, o.get("gpu"), o.get("started"), o.get("finished")
            )
            ao = alone_outcome.get(cell, {})
            row["alone_conditions"] = (
                _conditions(Path(ao["_dir"]), ao.get("gpu"), ao.get("started"), ao.get("finished"))
                if ao
                else {}
            )
            row["steps"] = _step_spread(run_dir, cell, stack)
            row["alone_steps"] = _step_spread(base[1], cell, stack)
            s, a = row["steps"], row["alone_steps"]
            # tokens/s is the probe's figure; the median step shows whether one slow step made the
            # gap
            row["median_step_delta"] = (
                round(a["median"] / s["median"] - 1.0, 4) if s and a else None
            )
            row["why"] = _why(row)
        rows.append(row)
    line = timeline(_Obj(o) for o in outcomes.values())
    cells = sorted(outcomes)
    sequential = [alone_probe[c][0] for c in cells if c in alone_probe]
    return {
        "run": run_dir.name,
        "alone_runs": [Path(d).name for d in alone_dirs],
        "rows": rows,
        "wall_s": line["wall_s"] if line else None,
        "sequential_s": round(sum(sequential), 1) if len(sequential) == len(cells) else None,
        "sequential_cells": len(sequential),
        "cells": len(cells),
        "timeline": line,
        "concurrent_probe_s": {c: _probe_s(outcomes).get(c) for c in cells},
        "alone_probe_s": {c: alone_probe[c][0] for c in cells if c in alone_probe},
        "damaged": damaged,
    }


class _Obj:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.__dict__.update({"gpus_seen": None, "trespass": None, **data})


def render_compare(data: Mapping[str, Any]) -> str:
    out = [
        f"# {data['run']}: two cells at once, against the same cells alone",
        "",
        f"Alone: {', '.join(f'`{r}`' for r in data['alone_runs'])}.",
        "",
    ]
    if data.get("wall_s") is not None:
        seq = data.get("sequential_s")
        out += [
            f"**Wall time**: {data['wall_s']:.1f} s for {data['cells']} cells on the GPUs at once "
            + (
                f"against {seq:.1f} s for the same cells' probes run alone, one after another "
                f"({seq / data['wall_s']:.2f}×)."
                if seq
                else f"(alone times known for {data['sequential_cells']} of them only)."
            ),
            "",
        ]
    out += ["## Probe time per cell", "", "| cell | alone s | concurrent s |", "|---|---|---|"]
    for cell, s in (data.get("concurrent_probe_s") or {}).items():
        alone = (data.get("alone_probe_s") or {}).get(cell)
        out.append(
            f"| `{cell}` | {alone if alone is not None else '—'} | {s if s is not None else '—'} |"
        )
    out += [
        "",
        "## Throughput",
        "",
        "| cell | stack | GPU | alone tok/s | concurrent tok/s | Δ | within 5% | Δ by median step "
        "| step s alone (min..max) | "
        "step s concurrent (min..max) | SM MHz alone → concurrent | power W alone → concurrent | "
        "host load alone → concurrent | why |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        c, a = r.get("conditions") or {}, r.get("alone_conditions") or {}
        def pair(k: str, a: dict[str, Any] = a, c: dict[str, Any] = c) -> str:
            return f"{a.get(k, '—')} → {c.get(k, '—')}"

        delta = f"{r['delta'] * 100:+.1f}%" if r.get("delta") is not None else "—"
        alone = f"{r['alone_tokens_per_s']:.0f}" if r.get("alone_tokens_per_s") else "—"
        ok = {True: "yes", False: "**no**"}.get(r.get("within_5pct"), "—")
        mdelta = (
            f"{r['median_step_delta'] * 100:+.1f}%"
            if r.get("median_step_delta") is not None
            else "—"
        )
        def steps(s: dict[str, float] | None) -> str:
            return f"{s['median']:.4f} ({s['min']:.4f}..{s['max']:.4f})" if s else "—"

        out.append(
            f"| `{r['cell']}` | {r['stack']} | {r.get('gpu') or '—'} | {alone} | "
            f"{r['tokens_per_s']:.0f} | "
            f"{delta} | {ok} | {mdelta} | {steps(r.get('alone_steps'))} | {steps(r.get('steps'))} "
            f"| {pair('sm_mhz_median')} | "
            f"{pair('power_w_median')} | {pair('host_load1_median')} | {r.get('why') or ''} |"
        )
    out += [
        "",
        "Δ is the probe's tokens/s (its timed steps together) against alone; Δ by median step "
        "compares the "
        "median step times instead, which one slow step does not move. Conditions are medians "
        "over each cell's "
        "whole probe (gpu_watch.json samples of its GPU), alone and concurrent.",
        "",
    ]
    out += render_timeline(data.get("timeline"))
    if data.get("damaged"):
        out += ["## Damaged", "", "Left out of the comparison:", ""]
        out += [f"- {escape(str(item))}" for item in data["damaged"]]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pinmatrix.report.gpus")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp_ = sub.add_parser("compare", help="a concurrent run against the same cells run alone")
    cmp_.add_argument("run", type=Path)
    cmp_.add_argument("--alone", type=Path, action="append", required=True)
    args = parser.parse_args(argv)
    try:
        data = compare(args.run, args.alone)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    write_json_atomic(args.run / "concurrency.json", data)
    write_text_atomic(args.run / "concurrency.md", render_compare(data))
    print(render_compare(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
