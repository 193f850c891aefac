"""The result cache: a cell whose content hash was already judged is not run again.

The key is the cell's content hash (pinmatrix.cell.content_hash: lock, Dockerfile, probes digest,
checks, settings, GPU model, base image, models), so any input that can change a result changes the
key. The cache lives in the reports folder itself:

- `reports/.cache/index.json` maps hash -> {"run": run id, "cell": cell id, "result":
  "cells/<id>.json"}, updated atomically after every cell that produced a valid result;
- where the index is missing or stale (a deleted run, a copied reports folder), earlier run folders
  are scanned: `outcomes/*.json` carries the hash and points at the result.

Only judged results are cached (stage `done`, a valid result file). Infra outcomes never are: the
machine failed, so the next run must try again. A reused result is copied into the new run with
`cell.reused_from` set to the run it came from, so the report can say so.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinmatrix.cell import Cell
from pinmatrix.fsio import (
    confined,
    copy_atomic,
    load_json,
    plain_name,
    read_json,
    real_dir,
    real_file_under,
    real_json_files,
    real_subdirs,
    write_json_atomic,
)
from pinmatrix.matrix.select import select
from pinmatrix.results import Damaged, load_result

INDEX_RELPATH = Path(".cache") / "index.json"


@dataclass(frozen=True)
class CacheEntry:
    run_id: str
    cell_id: str
    result_path: Path          # absolute path of the earlier result file


@dataclass(frozen=True)
class RerunPolicy:
    """`--rerun` alone: every cell runs (`all_cells`); `--rerun SELECTOR`: the matching cells
    run."""
    all_cells: bool = False
    selectors: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, values: Sequence[str] | None) -> RerunPolicy:
        # argparse gives None (no flag), [] or [""] (bare flag) or the selectors given.
        if values is None:
            return cls()
        selectors = tuple(v for v in values if v)
        return cls(all_cells=not selectors, selectors=selectors)

    def forced_ids(self, cells: Iterable[Cell]) -> set[str] | None:
        """The ids forced to run; None means all of them."""
        if self.all_cells:
            return None
        if not self.selectors:
            return set()

        return {c.id for c in select(list(cells), list(self.selectors))}


class ResultCache:
    """Look up and record judged cell results under one reports folder. Thread-safe within a
    process; across processes (shards, Slurm tasks) the index is only a hint, the run folders are
    the truth."""

    def __init__(self, reports_dir: Path) -> None:
        self.reports_dir = Path(reports_dir)
        self.index_path = self.reports_dir / INDEX_RELPATH
        self._lock = threading.Lock()
        self._scanned: dict[str, CacheEntry] | None = None

    # --- lookup ----------------------------------------------------------------------------------

    def lookup(self, content_hash: str, *, exclude_run: str | None = None) -> CacheEntry | None:
        """An earlier valid result for this hash (not from `exclude_run`), or None."""
        with self._lock:
            entry = self._from_index(content_hash)
            if (
                entry is not None
                and entry.run_id != exclude_run
                and self._valid(entry, content_hash)
            ):
                return entry
            if self._scanned is None:
                self._scanned = self._scan()
            entry = self._scanned.get(content_hash)
            if (
                entry is not None
                and entry.run_id != exclude_run
                and self._valid(entry, content_hash)
            ):
                return entry
        return None

    def _from_index(self, content_hash: str) -> CacheEntry | None:
        raw = read_json(self.index_path)
        item = raw.get(content_hash) if isinstance(raw, dict) else None
        if not isinstance(item, dict) or not {"run", "cell", "result"} <= set(item):
            return None
        return self._entry(item["run"], item["cell"], item["result"])

    def _entry(self, run_id: Any, cell_id: Any, result: Any) -> CacheEntry | None:
        """An entry only under the trust rule (pinmatrix/fsio.py): run and cell ids are plain
        names, and the result is a regular file inside its run folder, reached through no link."""
        if not (plain_name(run_id) and plain_name(cell_id)) or not real_dir(self.reports_dir
                                                                             / run_id):
            return None
        path = confined(self.reports_dir / run_id, result)
        return None if path is None else CacheEntry(run_id, cell_id, path)

    def _scan(self) -> dict[str, CacheEntry]:
        """hash -> newest judged entry, from every run folder's outcomes (oldest first, newest
        wins)."""
        found: dict[str, CacheEntry] = {}
        if not self.reports_dir.is_dir():
            return found
        for run in sorted(
            p for p in self.reports_dir.iterdir() if real_dir(p) and not p.name.startswith(".")
        ):  # real_dir: not `latest`, nor any other link
            for path in real_json_files(run / "outcomes")[0]:
                data = read_json(path)
                if not isinstance(data, dict) or not _judged(data) or path.stem != data["cell"]:
                    continue
                entry = self._entry(run.name, data["cell"], data["result"])
                if entry is not None:
                    found[data["hash"]] = entry
        return found

    @staticmethod
    def _valid(entry: CacheEntry, content_hash: str) -> bool:
        loaded = load_result(entry.result_path, reclassify=False)
        return not isinstance(loaded, Damaged) and loaded.data["cell"]["hash"] == content_hash

    # --- record ----------------------------------------------------------------------------------

    def record(self, content_hash: str, run_id: str, cell_id: str, result_rel: str) -> None:
        """Remember a judged result. The read-modify-write is atomic per process; a lost update
        between two processes costs one rerun, never a wrong result (lookups re-validate the
        file)."""
        with self._lock:
            raw = read_json(self.index_path)
            index = raw if isinstance(raw, dict) else {}
            index[content_hash] = {"run": run_id, "cell": cell_id, "result": result_rel}
            real_subdirs(self.reports_dir, [INDEX_RELPATH.parent.name])
            write_json_atomic(self.index_path, index)
            if self._scanned is not None:
                self._scanned[content_hash] = CacheEntry(run_id, cell_id,
                                                         self.reports_dir / run_id / result_rel)

    # --- reuse -----------------------------------------------------------------------------------

    def reuse_into(self, entry: CacheEntry, run_dir: Path, cell_id: str) -> str:
        """Copy the cached result into `run_dir/cells/<cell_id>.json`, marked `reused_from`; returns
        the path relative to the run folder. The original run id is kept when a reused result is
        reused again."""
        data = load_json(entry.result_path)
        cell = data.setdefault("cell", {})
        cell["reused_from"] = cell.get("reused_from") or entry.run_id
        cell["id"] = cell_id
        rel = f"cells/{cell_id}.json"
        write_json_atomic(Path(run_dir) / rel, data)
        # Copy the probe's log along (the report links it); not the build log: nothing was built in
        # this run.
        for kind in ("run",):
            src = entry.result_path.parent.parent / "logs" / f"{entry.cell_id}.{kind}.log"
            if real_file_under(self.reports_dir, src.relative_to(self.reports_dir)):
                copy_atomic(src, Path(run_dir) / "logs" / f"{cell_id}.{kind}.log")
        return rel


def _judged(outcome: dict[str, Any]) -> bool:
    return (
        outcome.get("stage") == "done"
        and outcome.get("status") is None
        and bool(outcome.get("hash"))
        and bool(outcome.get("result"))
        and bool(outcome.get("cell"))
    )
