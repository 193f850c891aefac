"""A run folder is untrusted input, everywhere: one generator of hostile run folders (`..` in
records, links out of the folder, FIFOs, devices, deep, huge, NaN and garbage JSON) over every
command that reads one: `matrix` (its result cache, and the finished cells `--resume` keeps),
`report`, `merge` (with the nightly's finish: the previous run and history.jsonl), and `bisect`
(which reads earlier runs through the same result cache).

For every folder the generator makes, each reader must: return within seconds (a FIFO or a device
never blocks it), exit 0, 1 or 2 (never a harness error), never take a record from outside the
run folder (the forged `works` result planted outside is never reused, counted or shown), never
write outside it (the files outside are unchanged), and write strict JSON only.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinmatrix.cli.main import main
from pinmatrix.fsio import MAX_JSON_BYTES
from pinmatrix.outcome import Outcome
from pinmatrix.run.cache import ResultCache
from pinmatrix.run.state import finished_cells

CELL = "py3.11-torch2.13.0-tf5.17.0"
GOOD_HASH = "a" * 64
FORGED_HASH = "f" * 64
FORGED_MARK = "FORGED-RESULT-FROM-OUTSIDE"
READER_LIMIT_S = 60  # per command; a FIFO opened for reading would block forever


def _result(cell: str, content_hash: str, evidence: dict[str, Any]) -> dict[str, Any]:
    return {"schema": 1, "cell": {"id": cell, "hash": content_hash, "pins": {"python": "3.11"}},
            "environment": {"python": "3.11", "device": "cpu", "packages": {}},
            "checks": [{"name": "imports", "status": "pass", "duration_s": 0.1,
                        "evidence": evidence}],
            "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:01Z"}


def _outcome(cell: str, content_hash: str, result: str) -> dict[str, Any]:
    return Outcome(cell=cell, hash=content_hash, pins={"python": "3.11"}, runner="venv",
                   stage="done", result=result).to_json()


# --- the generator -------------------------------------------------------------------------------
FILE_KINDS = ("link-out", "fifo", "device", "deep", "huge", "nan", "garbage")
FILES = ("run.json", f"outcomes/{CELL}.json", f"cells/{CELL}.json", "summary.json",
         "../history.jsonl", "../.cache/index.json")
RECORD_KINDS = ("dotdot-cell", "dotdot-result", "abs-result", "link-in-path", "index-dotdot")
hostile = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(FILES), st.sampled_from(FILE_KINDS)),
        st.tuples(st.sampled_from(("outcomes", "cells")), st.just("link-dir-out")),
        st.tuples(st.sampled_from(RECORD_KINDS), st.just("record")),
    ),
    min_size=1, max_size=4, unique_by=lambda item: item[0])


def _good_run(reports: Path) -> Path:
    run = reports / "20261201T000000Z"
    (run / "cells").mkdir(parents=True)
    (run / "cells" / f"{CELL}.json").write_text(json.dumps(_result(CELL, GOOD_HASH, {"ok": 1})))
    (run / "outcomes").mkdir()
    (run / "outcomes" / f"{CELL}.json").write_text(
        json.dumps(_outcome(CELL, GOOD_HASH, f"cells/{CELL}.json")))
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "runner": "venv",
                                              "cells": [CELL], "complete": True}))
    return run


def _outside(root: Path) -> Path:
    """Files a hostile folder points at: a forged `works` result, its outcome, a victim file."""
    out = root / "outside"
    (out / "outcomes").mkdir(parents=True)
    forged = _result(CELL, FORGED_HASH, {"mark": FORGED_MARK})
    (out / "forged.json").write_text(json.dumps(forged))
    (out / "victim.txt").write_text("must stay as it is\n")
    (out / "outcomes" / f"{CELL}.json").write_text(
        json.dumps(_outcome(CELL, FORGED_HASH, "../../outside/forged.json")))
    return out


def _fresh(path: Path) -> Path:
    """`path`, with whatever an earlier plant left there removed unless it is a regular file: a
    record written over a planted FIFO would block in open() (the harness never opens one; the
    test must not either)."""
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()
    return path


def _plant(run: Path, outside: Path, where: str, kind: str) -> None:
    reports = run.parent
    path = (run / where) if not where.startswith("../") else reports / where[3:]
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path) and kind != "record":
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()
    if kind == "link-out":
        path.symlink_to(outside / ("forged.json" if path.suffix == ".json" else "victim.txt"))
    elif kind == "link-dir-out":
        path.symlink_to(outside / "outcomes" if where == "outcomes" else outside,
                        target_is_directory=True)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:  # /dev/zero's own device numbers: reading it never ends
            os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 5))
        except PermissionError:
            path.symlink_to("/dev/zero")
    elif kind == "deep":
        path.write_text("[" * 10_000 + "]" * 10_000)
    elif kind == "huge":
        with open(path, "wb") as handle:  # sparse: costs no disk
            handle.truncate(MAX_JSON_BYTES + 1)
    elif kind == "nan":
        data: Any = {"run_id": run.name, "loss": float("nan")}
        if "cells" in where or "outcomes" in where:
            data = _result(CELL, GOOD_HASH, {"loss": float("nan"), "peak": float("inf")})
            if "outcomes" in where:
                data = {**_outcome(CELL, GOOD_HASH, f"cells/{CELL}.json"),
                        "timings": {"run_s": float("nan")}}
        text = json.dumps(data)
        path.write_text(text + "\n" if "history" not in where else
                        json.dumps({"cells": {CELL: {"throughput": {"sdpa": float("nan")}}}}))
    elif kind == "garbage":
        path.write_bytes(b"\xff\xfe{not json\x1b]0;pwned\x07")
    elif where == "dotdot-cell":
        _fresh(run / "outcomes" / "escape.json").write_text(
            json.dumps(_outcome("../escape", GOOD_HASH, f"cells/{CELL}.json")))
    elif where == "dotdot-result":
        _fresh(run / "outcomes" / f"{CELL}.json").write_text(
            json.dumps(_outcome(CELL, FORGED_HASH, "../../outside/forged.json")))
    elif where == "abs-result":
        _fresh(run / "outcomes" / f"{CELL}.json").write_text(
            json.dumps(_outcome(CELL, FORGED_HASH, str(outside / "forged.json"))))
    elif where == "link-in-path":
        (run / "cells" / "sub").symlink_to(outside, target_is_directory=True)
        _fresh(run / "outcomes" / f"{CELL}.json").write_text(
            json.dumps(_outcome(CELL, FORGED_HASH, "cells/sub/forged.json")))
    elif where == "index-dotdot":
        (reports / ".cache").mkdir(exist_ok=True)
        (reports / ".cache" / "index.json").write_text(json.dumps(
            {FORGED_HASH: {"run": run.name, "cell": CELL, "result": "../../outside/forged.json"},
             GOOD_HASH: {"run": "..", "cell": CELL, "result": "outside/forged.json"}}))


def _digest(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class _Hung(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def hung(signum: int, frame: Any) -> None:
        raise _Hung(f"a reader blocked for {seconds}s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _strict(path: Path) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{path}: bare {name} (not strict JSON)")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _cli(*argv: str) -> tuple[int, float]:
    started = time.monotonic()
    with _deadline(READER_LIMIT_S):
        code = main(list(argv))
    return code, time.monotonic() - started


@settings(max_examples=int(os.environ.get("PINMATRIX_HOSTILE_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(plan=hostile)
def test_hostile_run_folders_are_never_followed_never_block(
    plan, capsys: pytest.CaptureFixture[str],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reports = root / "reports"
        run = _good_run(reports)
        outside = _outside(root)
        for where, kind in plan:
            _plant(run, outside, where, kind)
        before = _digest(outside)

        # matrix: the result cache and --resume's finished cells (bisect reads through the cache)
        with _deadline(READER_LIMIT_S):
            cache = ResultCache(reports)
            assert cache.lookup(FORGED_HASH) is None, plan
            entry = cache.lookup(GOOD_HASH)
            if entry is not None:
                assert entry.result_path.resolve().is_relative_to(reports.resolve()), plan
            kept = finished_cells(run)
        assert kept <= {CELL}, (plan, kept)

        # report
        code, seconds = _cli("report", "--run", str(run))
        assert code in (0, 2), (plan, capsys.readouterr())
        if code == 0 and (run / "summary.json").is_file():
            summary = _strict(run / "summary.json")
            assert all("/" not in c["id"] for c in summary["cells"]), plan
            assert FORGED_MARK not in (run / "summary.html").read_text(), plan
            if any(kind == "nan" for _, kind in plan) and summary["nonfinite"]:
                assert all(" = " in flag for flag in summary["nonfinite"])

        # merge, with the nightly's finish: the hostile run as the previous one, its history
        code, seconds = _cli("merge", str(run), "--reports", str(reports), "--label", "merged",
                             "--history", str(reports / "history.jsonl"))
        assert code in (0, 1, 2), (plan, capsys.readouterr())
        history = reports / "history.jsonl"
        if os.path.lexists(history) and code != 2:
            assert stat.S_ISREG(os.lstat(history).st_mode), plan  # never appended through a link
        for summary_path in reports.glob("*merged*/summary.json"):
            _strict(summary_path)
        assert _digest(outside) == before, plan
        capsys.readouterr()
