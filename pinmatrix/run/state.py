"""Which run folder a matrix writes into, and which of its cells are already finished (resume,
shards).

- a fresh run: a new `reports/<UTC id>` folder (pinmatrix.run.folder.new_run_dir);
- `--resume [RUN]`: the named run (a run id: a folder directly under the reports folder, never a
  path, nor a symlink out of it), else the newest run
  whose `run.json` lacks `"complete": true` — the loop writes that flag only when it ends normally,
  so a Ctrl-C, a SIGKILL or a lost node leaves the run resumable;
- `--run-dir DIR`: a shared folder several writers (shards, Slurm array tasks) join; created when
  absent.

A cell is finished when its outcome says `done` or `unresolvable`: those are judgements. An `infra`
outcome is not kept: the machine failed, so a resume tries the cell again.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from pinmatrix.errors import ResumeError
from pinmatrix.fsio import (
    Refused,
    confined,
    load_json,
    plain_name,
    read_bytes_bounded,
    read_json,
    real_file,
    real_json_files,
    real_subdirs,
    utc_now,
    write_json_atomic,
)
from pinmatrix.matrix.load import MAX_MATRIX_BYTES

FINISHED_STAGES = ("done",)
FINISHED_STATUSES = ("unresolvable",)



def finished_cells(run_dir: Path) -> set[str]:
    """The cells whose outcome is a judgement. Outcomes are read under the trust rule
    (pinmatrix/fsio.py): a link, FIFO, device, oversized or too deep file is skipped, a cell id that
    is not a plain name is skipped, and a result path must stay inside the run folder; a skipped
    cell runs again."""
    done: set[str] = set()
    paths, _refused = real_json_files(Path(run_dir) / "outcomes")
    for path in paths:
        data = read_json(path)
        if not isinstance(data, dict) or not plain_name(data.get("cell")):
            continue
        if path.stem != data["cell"]:  # an outcome speaks for the cell it is named after
            continue
        if data.get("status") in FINISHED_STATUSES or (
            data.get("stage") in FINISHED_STAGES
            and data.get("status") is None
            and confined(Path(run_dir), data.get("result")) is not None
        ):
            done.add(str(data["cell"]))
    return done


def latest_unfinished(reports_dir: Path) -> Path | None:
    reports_dir = Path(reports_dir)
    if not reports_dir.is_dir():
        return None
    runs = sorted(
        (
            p
            for p in reports_dir.iterdir()
            if p.is_dir()
            and not p.is_symlink()
            and not p.name.startswith(".")
            and (p / "run.json").is_file()
        ),
        key=lambda p: p.name,
        reverse=True,
    )
    for run in runs:
        manifest = read_json(run / "run.json")
        if isinstance(manifest, dict) and manifest.get("runner") and not manifest.get("complete"):
            return run
    return None


def open_run_dir(opts: Any, make_new: Callable[[], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """(run folder, its manifest). `make_new()` creates a fresh folder and returns its manifest."""
    if opts.resume is not None:
        run_dir = _resume_target(Path(opts.reports_dir), opts.resume)
        lock_run_folder(run_dir, opts, "--resume")
        try:
            manifest = load_json(run_dir / "run.json")
        except Refused as exc:
            raise ResumeError(f"--resume: {run_dir / 'run.json'}: {exc}") from None
        if not isinstance(manifest, dict):
            raise ResumeError(f"--resume: {run_dir / 'run.json'} is not a run manifest")
        _same_request(opts, manifest, run_dir, "--resume")
        manifest.setdefault("resumed", []).append(utc_now())
        manifest.pop("complete", None)
        real_subdirs(run_dir, RUN_SUBDIRS)
        return run_dir, manifest
    if opts.run_dir is not None:
        run_dir = Path(opts.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_run_folder(run_dir, opts, "--run-dir")
        real_subdirs(run_dir, RUN_SUBDIRS)
        if os.path.lexists(run_dir / "run.json"):
            try:
                existing = load_json(run_dir / "run.json")
            except Refused as exc:
                raise ResumeError(f"--run-dir {run_dir}: {run_dir / 'run.json'}: {exc}") from None
            if not isinstance(existing, dict):
                raise ResumeError(f"--run-dir {run_dir}: {run_dir / 'run.json'} is not a run "
                                  "manifest")
            # a folder made for another matrix, selection or runner would hand its results over
            _same_request(opts, existing, run_dir, "--run-dir")
            return run_dir, existing
        manifest = make_new()
        # make_new() made a fresh folder under reports/; a shared folder replaces it
        fresh = Path(opts.reports_dir) / manifest["run_id"]
        with contextlib.suppress(OSError):
            fresh.rmdir()
        manifest["run_id"] = run_dir.name
        _create_once(run_dir / "run.json", manifest)
        return run_dir, read_json(run_dir / "run.json") or manifest
    manifest = make_new()
    run_dir = Path(opts.reports_dir) / manifest["run_id"]
    lock_run_folder(run_dir, opts, "matrix")
    return run_dir, manifest


# Folders a run writes into: made real folders when a run folder is opened, so that a link planted
# in a resumed or shared folder is replaced, never written through (pinmatrix/fsio.py).
RUN_SUBDIRS = ("outcomes", "cells", "logs", "locks", "partial", "work")
WRITER_LOCK = ".writer.lock"
_held_locks: dict[str, int] = {}


def lock_run_folder(run_dir: Path, opts: Any, flag: str) -> None:
    """One writer per run folder: an exclusive flock on `<run>/.writer.lock`, held until the
    process ends. Shards and Slurm tasks of one run write disjoint cells into one shared folder, so
    they take it shared; a second whole-run writer (two `--resume` of one run) is refused while any
    other writer holds it. The kernel drops the lock when its holder dies, even by SIGKILL."""

    shared = getattr(opts, "shard", None) is not None or not getattr(opts, "finalize", True)
    path = Path(run_dir) / WRITER_LOCK
    key = str(Path(run_dir).resolve())
    if key in _held_locks:
        return
    if os.path.lexists(path) and not real_file(path):
        path.unlink()  # a link or FIFO planted in its place: never opened
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ResumeError(f"{flag}: {run_dir} is being written by another pinmatrix process "
                          f"(it holds {path}); wait for it to end, or start a new run") from None
    _held_locks[key] = fd


def release_run_folder(run_dir: Path) -> None:
    fd = _held_locks.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


def _same_request(opts: Any, manifest: dict[str, Any], run_dir: Path, flag: str) -> None:
    """A resumed or shared run folder runs the same matrix, selection and runner settings, or it
    would mix two runs in one folder (and hand one matrix's results to another)."""

    name = run_dir.name if flag == "--resume" else str(run_dir)
    try:
        sha = hashlib.sha256(read_bytes_bounded(Path(opts.matrix_path), MAX_MATRIX_BYTES)
                             ).hexdigest()
    except Refused as exc:
        raise ResumeError(f"{flag}: cannot read {opts.matrix_path}: {exc}") from None
    if manifest.get("matrix_sha256") and manifest["matrix_sha256"] != sha:
        raise ResumeError(f"{flag} {name}: that run was for {manifest.get('matrix')} as "
                          "it was then; "
                          f"{opts.matrix_path} differs. Pass the same --matrix (unchanged), or "
                          "start a new run")
    if not getattr(opts, "finalize", True):  # a Slurm task selects its one cell of the run
        unknown = set(opts.selectors) - set(manifest.get("cells") or opts.selectors)
        if unknown:
            raise ResumeError(f"{flag} {name}: that run has no cell {sorted(unknown)[0]}")
    elif list(manifest.get("selection") or []) != list(opts.selectors):
        raise ResumeError(f"{flag} {name}: that run selected "
                          f"{manifest.get('selection') or 'every cell'}, "
                          f"this command selects {list(opts.selectors) or 'every cell'}: pass the "
                          "same selectors")
    device = "cpu" if getattr(opts, "cpu", False) else "auto"
    if manifest.get("device") not in (None, device):
        raise ResumeError(f"{flag} {name}: that run was made with device {manifest['device']}, "
                          f"this command asks for {device}: pass the same --cpu setting")


def resume_folder(reports_dir: Path, which: str, name: str = "--resume") -> Path:
    """The run folder `--resume RUN` names: RUN is a run id, a folder directly under the reports
    folder. A path (a separator, `.`/`..`, absolute), a hidden name, or a name whose folder is a
    symlink leading out of the reports folder is refused (ResumeError, exit 2): a resume writes into
    the folder it names. The folder need not exist yet (the caller says so)."""
    def refuse(why: str) -> NoReturn:
        shown = which if len(which) <= 80 else f"{which[:80]}... ({len(which)} characters)"
        raise ResumeError(f"{name} {shown!r}: {why}")

    seps = {"/", os.sep, os.altsep or "/"}
    if any(sep in which for sep in seps) or which in (".", "..") or os.path.isabs(which):
        refuse(f"a run id (a folder name under {reports_dir}), not a path")
    if which.startswith(".") or not which.isprintable():
        refuse(f"not a run id: run ids are folder names under {reports_dir} such as "
               "20261127T172100Z or 20261127T172100Z-nightly")
    folder = Path(reports_dir) / which
    if folder.is_symlink() or folder.exists():
        root = Path(reports_dir).resolve()
        if folder.resolve().parent != root:
            refuse(f"{folder} leads to {folder.resolve()}, which is not a run folder directly "
                   f"under {root}")
    return folder


def _resume_target(reports_dir: Path, which: str) -> Path:
    if not which:
        found = latest_unfinished(reports_dir)
        if found is None:
            raise ResumeError(f"--resume: no unfinished run under {reports_dir}")
        return found
    candidate = resume_folder(reports_dir, which)
    manifest = candidate / "run.json"
    if manifest.is_file():
        # a run folder the resume will write into: never through a symlinked run.json, which
        # would make the resumed run record itself somewhere else
        if manifest.is_symlink():
            raise ResumeError(f"--resume {which}: {manifest} is a symlink; resume the run "
                              "folder it belongs to")
        return candidate
    raise ResumeError(f"--resume {which}: no run folder with a run.json under {reports_dir}")


def _create_once(path: Path, data: dict[str, Any]) -> None:
    """Write the manifest unless another writer (a shard) already did: link() fails if the name
    exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_json_atomic(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
