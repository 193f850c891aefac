"""Remote code we execute (`trust_remote_code=True`): pinned revisions, and a flag when the code
changes under a revision that should have fixed it.

The probe records, for each check that loaded remote code, the repo, the revision and the sha256 of
every remote-code file transformers actually imported (`evidence.remote_code`,
probes/checks/model_load.py). The same repo at the same revision must always give the same bytes.
This module compares one run's hashes with every other valid result in the reports folder (earlier
runs, and the other cells of this run): a difference means the revision was a moving ref (`main`),
the hub rewrote history, or the cache was tampered with. The report lists each such change in
summary.json/md; it never trusts a damaged file for this.

Our own fixtures are keyed by the fixture revision they are faithful to (`fixture_revision`, e.g.
`original`, `current`), not by the hub ref they stand in for: two fixture revisions both stand in
for `main`, and comparing them under one key gave a "changed hash" in every fresh run. A fixture is
never a moving hub revision: a change of its bytes between runs is our own update, said as such.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pinmatrix.cell import ModelSpec
from pinmatrix.fsio import read_json, real_json_files
from pinmatrix.results import CellResult, load_result

COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class LoadedFile:
    """One remote-code file one check loaded."""
    repo: str
    revision: str
    source: str          # "hub-cache" (the real model) or "fixture" (our stand-in checkpoint)
    # for a fixture, the revision is the fixture revision it is faithful to ("original", "current")
    file: str
    sha256: str
    run: str
    cell: str
    check: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.repo, self.revision, self.source, self.file)


def is_pinned(revision: str | None) -> bool:
    """A 40-hex commit is pinned; a branch or tag (`main`, `v1.0`) can move under the same name."""
    return bool(revision) and bool(COMMIT.match(str(revision)))


def unpinned_warnings(models: Iterable[ModelSpec]) -> list[str]:
    """One line per matrix model whose revision is not a commit (ModelSpec or
    {"name","repo","revision"}), with its remedy. A model whose matrix entry says why it cannot be
    pinned (`unpinned:`) gets none: the reason was given once, and the report repeats it; a warning
    on every run that the user cannot act on teaches them to skip warnings."""
    out = []
    for model in models:
        get = model.get if isinstance(model, Mapping) else lambda k, m=model: getattr(m, k, None)
        if not is_pinned(get("revision")) and not get("unpinned"):
            out.append(f"model {get('name')} ({get('repo')}) is at revision {get('revision')}, a "
                       "branch that can move: pin a 40-hex commit in matrix.yaml so the remote "
                       "code it runs cannot change unseen (where no commit can be known, say why "
                       "under the model's `unpinned:` key)")
    return out


def unpinned_reasons(run_dir: Path) -> dict[tuple[str, str], str]:
    """(repo, revision) -> the matrix's `unpinned:` reason, from run.json's `models`."""

    manifest = read_json(Path(run_dir) / "run.json")
    models = manifest.get("models") if isinstance(manifest, Mapping) else None
    out: dict[tuple[str, str], str] = {}
    for model in models if isinstance(models, list) else []:
        if isinstance(model, Mapping) and isinstance(model.get("unpinned"), str) \
                and model["unpinned"]:
            out[(str(model.get("repo")), str(model.get("revision")))] = model["unpinned"]
    return out


def loaded_files(result: Mapping[str, Any], run: str) -> Iterator[LoadedFile]:
    """Every remote-code file recorded in one (validated) result document."""
    cell = str(result.get("cell", {}).get("id", ""))
    for check in result.get("checks") or []:
        evidence = check.get("evidence")
        if not isinstance(evidence, Mapping) or not isinstance(evidence.get("remote_code"),
                                                               Mapping):
            continue
        repo, revision = evidence.get("repo"), evidence.get("revision")
        source = str(evidence.get("source") or "unknown")
        if source == "fixture":
            revision = evidence.get("fixture_revision") or revision
        if not repo or not revision:
            continue
        for name, entry in evidence["remote_code"].items():
            sha = entry.get("sha256") if isinstance(entry, Mapping) else None
            if isinstance(sha, str) and sha:
                yield LoadedFile(str(repo), str(revision), source, str(name), sha, run, cell,
                                 str(check.get("name")))


def _run_files(run_dir: Path) -> list[LoadedFile]:
    files: list[LoadedFile] = []
    taken, _ = real_json_files(Path(run_dir) / "cells")  # never through a symlink
    for path in taken:
        loaded = load_result(path, reclassify=False)
        if isinstance(loaded, CellResult):  # a damaged file is never evidence of anything
            files.extend(loaded_files(loaded.data, Path(run_dir).name))
    return files


def hash_changes(run_dir: Path, reports_dir: Path | None = None) -> list[dict[str, Any]]:
    """Each remote-code file of this run whose sha256 differs from another record of the same repo,
    revision, source and file name (in this run or any other run folder under `reports_dir`)."""
    run_dir = Path(run_dir).resolve()
    reports_dir = Path(reports_dir).resolve() if reports_dir else run_dir.parent
    current = _run_files(run_dir)
    if not current:
        return []
    others: list[LoadedFile] = list(current)
    if reports_dir.is_dir():
        for other in sorted(reports_dir.iterdir()):
            if (
                other.is_dir()
                and not other.is_symlink()
                and other.resolve() != run_dir
                and (other / "cells").is_dir()
            ):
                others.extend(_run_files(other))
    by_key: dict[tuple[str, str, str, str], list[LoadedFile]] = {}
    for record in others:
        by_key.setdefault(record.key, []).append(record)
    changes: list[dict[str, Any]] = []
    seen: set[tuple[tuple[str, str, str, str], str]] = set()
    for record in current:
        differing = [o for o in by_key.get(record.key, []) if o.sha256 != record.sha256]
        if not differing or (record.key, record.sha256) in seen:
            continue
        seen.add((record.key, record.sha256))
        changes.append({
            "repo": record.repo, "revision": record.revision, "pinned": is_pinned(record.revision),
            "source": record.source, "file": record.file, "sha256": record.sha256,
            "cell": record.cell, "check": record.check,
            "elsewhere": sorted({(o.sha256, o.run, o.cell) for o in differing}),
        })
    for change in changes:
        change["elsewhere"] = [{"sha256": s, "run": r, "cell": c} for s, r,
                               c in change["elsewhere"]]
    return changes


def report_section(run_dir: Path) -> dict[str, Any]:
    """summary.json's `remote_code`: the files loaded in this run, unpinned revisions, changed
    hashes."""
    files = _run_files(Path(run_dir))
    revisions = sorted({(f.repo, f.revision) for f in files if f.source != "fixture"})
    reasons = unpinned_reasons(Path(run_dir))
    return {
        "files": [asdict(f) for f in files],
        "unpinned": [{"repo": repo, "revision": rev,
                      **({"why": reasons[(repo, rev)]} if (repo, rev) in reasons else {})}
                     for repo, rev in revisions if not is_pinned(rev)],
        "changed": hash_changes(Path(run_dir)),
    }


def render_markdown(section: Mapping[str, Any]) -> list[str]:
    """The summary.md lines; empty when there is nothing to say."""
    changed, unpinned = section.get("changed") or [], section.get("unpinned") or []
    if not changed and not unpinned:
        return []
    out = ["## Remote code", ""]
    for c in changed:
        if c["source"] == "fixture":  # our own file: updated with pinmatrix, never a moving hub ref
            where = "; ".join(f"`{e['sha256'][:12]}` in run {e['run']}"
                              for e in c["elsewhere"])
            out.append(f"- our fixture of `{c['repo']}` (revision `{c['revision']}`) "
                       f"`{c['file']}` is `{c['sha256'][:12]}` here and {where}: the fixture "
                       "was updated between runs")
            continue
        where = "; ".join(f"`{e['sha256'][:12]}` in run {e['run']} cell "
                          f"`{e['cell']}`" for e in c["elsewhere"])
        moving = "" if c["pinned"] else " (a moving ref: pin a commit)"
        out.append("- ⚠ **changed hash on the same revision**: "
                   f"`{c['repo']}@{c['revision']}`{moving} "
                   f"`{c['file']}` ({c['source']}) is `{c['sha256'][:12]}` in `{c['cell']}`, but "
                   f"{where}")
    for u in unpinned:
        if u.get("why"):  # the matrix says why no commit can be pinned: say it, once
            out.append(f"- revision `{u['revision']}` of `{u['repo']}` is not a commit: "
                       f"{u['why']}")
            continue
        out.append(f"- revision `{u['revision']}` of `{u['repo']}` is not a commit: its remote "
                   "code can change "
                   f"unseen; pin a 40-hex commit in matrix.yaml")
    out.append("")
    return out
