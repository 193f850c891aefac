"""compat.json: the run's judged cells as a dataset other tools read (docs/CONTRACTS.md §compat).

One record per judged cell (every cell of summary.json but the `infra` ones: the machine failed
those, so they say nothing about the stack; an `unresolvable` cell is kept, the resolver's verdict
on its pins): its pins, its locked versions, each check's status and signature, the throughput it
measured, the host and GPU it ran on, the run id and the date. `python -m pinmatrix which` reads it
(pinmatrix/which/), and so may another project's CI job or a badge. Validated against
compat.schema.json when written and when read; the schema id names its version, and a change that
breaks a reader gets a new one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pinmatrix.fsio import write_json_atomic
from pinmatrix.report.pins import Cell, collect_cells

COMPAT_NAME = "compat.json"
SCHEMA_ID = "pinmatrix-compat/1"
SCHEMA_PATH = Path(__file__).with_name("compat.schema.json")


def schema() -> dict[str, Any]:
    return dict(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def build(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The compat document of a run folder and its merged summary (report/summary.py `merge`)."""
    run = summary.get("run") or {}
    run_id = str(run.get("run_id") or Path(run_dir).name)
    date = run.get("finished") or run.get("started")
    rows = {row["id"]: row for row in summary.get("cells") or []}
    speeds: dict[str, list[dict[str, Any]]] = {}
    for entry in summary.get("speed") or []:
        speeds.setdefault(entry["cell"], []).append({
            "check": f"throughput.{entry['stack']}",
            "tokens_per_s": _number(entry.get("tokens_per_s")),
            "speedup_vs_sdpa": _number(entry.get("speedup_vs_sdpa")),
            "peak_mem_gib": _number(entry.get("peak_mem_gib")),
            "batch_x_seq": entry.get("batch_x_seq"),
            "gpu": entry.get("gpu"),
        })
    records = []
    for cell in collect_cells(Path(run_dir), summary):
        if cell.status == "infra":
            continue
        row = rows.get(cell.cell_id) or {}
        judged_on = row.get("judged_on") or {}
        env = cell.environment
        records.append({
            "cell": cell.cell_id,
            "run_id": run_id,
            "date": cell.finished or date,
            "status": cell.status,
            "verdict": cell.verdict,
            "reason": cell.reason,
            "pins": dict(cell.pins),
            "locked": dict(cell.locked) if cell.locked is not None else None,
            "checks": {name: {"status": str(c.get("status")), "signature": c.get("signature"),
                              "reason": _short(c.get("reason"))}
                       for name, c in cell.checks.items()},
            "remote_code_basis": cell.remote_code_basis,
            "speed": [s for s in speeds.get(cell.cell_id, []) if s["tokens_per_s"] is not None],
            "host": {"name": judged_on.get("host") or env.get("gpu") or "unknown",
                     "accelerator": bool(judged_on.get("accelerator", bool(env.get("gpu")))),
                     "gpu": env.get("gpu"), "cuda": env.get("cuda"),
                     "driver": env.get("driver"), "python": env.get("python"),
                     "torch": env.get("torch")},
            "not_judged": [{"what": str(i.get("what")), "checks": list(i.get("checks") or []),
                            "why": str(i.get("why") or "")} for i in cell.not_judged],
        })
    return {"schema": SCHEMA_ID, "run_id": run_id, "date": date,
            "axes": {k: [str(v) for v in vals] for k, vals in (run.get("axes") or {}).items()},
            "records": records}


def validate(document: Any, where: str) -> dict[str, Any]:
    """The document, or ValueError naming `where` and the first place the schema rejects."""
    import jsonschema  # noqa: PLC0415 - ~100 ms to import: only when a compat document is checked

    try:
        jsonschema.validate(document, schema())
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise ValueError(f"{where}: {path}: {exc.message}") from None
    return dict(document)


def write_compat(run_dir: Path, summary: dict[str, Any]) -> Path:
    """Write `run_dir/compat.json` (atomically; validated first, so a bad one is never
    written)."""

    document = validate(build(run_dir, summary), f"{run_dir}/{COMPAT_NAME} (as built)")
    return write_json_atomic(Path(run_dir) / COMPAT_NAME, document)


def cells_of(document: dict[str, Any]) -> list[Cell]:
    """The records as pinmatrix.report.pins cells, so `which` judges a purpose with the very rules
    of the pins page (pins.judge)."""
    out = []
    for r in document.get("records") or []:
        locked = r.get("locked")
        out.append(Cell(
            cell_id=r["cell"], status=r["status"], reason=r.get("reason"),
            pins=dict(r["pins"]), checks={n: dict(c) for n, c in r["checks"].items()},
            locked=dict(locked) if locked is not None else None,
            lock_lines=[f"{n}=={v}" for n, v in sorted((locked or {}).items())],
            environment={"gpu": r["host"].get("gpu"), "cuda": r["host"].get("cuda"),
                         "driver": r["host"].get("driver"), "python": r["host"].get("python"),
                         "torch": r["host"].get("torch")},
            finished=r.get("date"),
            speeds={s["check"]: float(s["tokens_per_s"]) for s in r.get("speed") or []},
            remote_code_basis=r.get("remote_code_basis"), verdict=r.get("verdict") or r["status"],
            not_judged=list(r.get("not_judged") or [])))
    return out


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _short(text: Any, limit: int = 300) -> str | None:
    if text is None:
        return None
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
