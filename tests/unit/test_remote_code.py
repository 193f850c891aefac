"""A changed remote-code hash on the same repo+revision is flagged
(pinmatrix/report/remote_code.py), in summary.json and summary.md; unpinned revisions are warned
about; damaged files are never taken as evidence."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pinmatrix.cell import ModelSpec
from pinmatrix.matrix.load import load_matrix
from pinmatrix.report.remote_code import hash_changes, is_pinned, loaded_files, unpinned_warnings
from pinmatrix.report.write import write_report
from pinmatrix.results import validate

REPO = "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct"
COMMIT = "e949c91dec92095908d34e6b560af77dd0c993f8"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _result(cell: str, revision: str, modeling: str, source: str = "hub-cache") -> dict[str, Any]:
    """A schema-valid result whose exaone3.5 check recorded remote code as the probe does
    (handle.evidence() plus `remote_code`: file name → sha256/path/module)."""
    evidence = {
        "model": "exaone3.5",
        "source": source,
        "repo": REPO,
        "revision": revision,
        "path": "/hf/x",
        "remote_code": {
            "modeling_exaone.py": {
                "sha256": _sha(modeling),
                "path": "/tmp/m/modeling_exaone.py",
                "module": "transformers_modules.x.modeling_exaone",
            },
            "configuration_exaone.py": {
                "sha256": _sha("config v1"),
                "path": "/tmp/m/configuration_exaone.py",
                "module": "transformers_modules.x.configuration_exaone",
            },
        },
    }
    doc = {"schema": 1, "cell": {"id": cell, "hash": "h" * 64, "pins": {"transformers": "4.57.6"}},
           "environment": {"python": "3.11.7", "device": "cpu", "packages": {}},
           "checks": [{"name": "exaone3.5.remote-code", "status": "pass", "duration_s": 1.0,
                       "evidence": evidence}],
           "started": "2026-11-27T00:00:00+00:00", "finished": "2026-11-27T00:01:00+00:00"}
    assert validate(doc) is None
    return doc


def _run(reports: Path, run_id: str, docs: dict[str, Any]) -> Path:
    run = reports / run_id
    (run / "cells").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": run_id}))
    for cell, doc in docs.items():
        (run / "cells" / f"{cell}.json").write_text(
            doc if isinstance(doc, str) else json.dumps(doc)
        )
    return run


def test_same_hash_same_revision_is_quiet(tmp_path: Path) -> None:
    _run(tmp_path, "20261101T000000Z", {"a": _result("a", COMMIT, "v1")})
    now = _run(tmp_path, "20261102T000000Z", {"a": _result("a", COMMIT, "v1")})
    assert hash_changes(now) == []


def test_changed_hash_on_the_same_revision_is_flagged_in_the_report(tmp_path: Path) -> None:
    _run(tmp_path, "20261101T000000Z", {"a": _result("a", COMMIT, "v1")})
    now = _run(tmp_path, "20261102T000000Z", {"a": _result("a", COMMIT, "v1 + a backdoor")})
    (change,) = hash_changes(now)
    assert (
        change["file"] == "modeling_exaone.py" and change["revision"] == COMMIT and change["pinned"]
    )
    assert change["sha256"] == _sha("v1 + a backdoor")
    assert change["elsewhere"] == [{"sha256": _sha("v1"), "run": "20261101T000000Z", "cell": "a"}]
    write_report(now)
    summary = json.loads((now / "summary.json").read_text())
    assert summary["remote_code"]["changed"] == [change]
    md = (now / "summary.md").read_text()
    assert "changed hash on the same revision" in md and "modeling_exaone.py" in md


def test_two_cells_of_one_run_disagreeing_are_flagged(tmp_path: Path) -> None:
    now = _run(tmp_path, "20261102T000000Z", {"a": _result("a", COMMIT, "v1"),
                                              "b": _result("b", COMMIT, "v2")})
    assert {c["cell"] for c in hash_changes(now)} == {"a", "b"}


def test_other_revision_or_source_is_not_a_change(tmp_path: Path) -> None:
    _run(tmp_path, "20261101T000000Z", {"a": _result("a", "1" * 40, "v0"),
                                        "f": _result("f", COMMIT, "ours", "fixture")})
    now = _run(tmp_path, "20261102T000000Z", {"a": _result("a", COMMIT, "v1")})
    assert hash_changes(now) == []


def test_a_damaged_file_is_never_evidence(tmp_path: Path) -> None:
    tampered = json.dumps(_result("a", COMMIT, "v0"))[:-40]  # truncated: not JSON any more
    foreign = {**_result("a", COMMIT, "v0"), "schema": 99}
    _run(tmp_path, "20261101T000000Z", {"a": tampered, "b": foreign})
    now = _run(tmp_path, "20261102T000000Z", {"a": _result("a", COMMIT, "v1")})
    assert hash_changes(now) == []


def test_unpinned_revisions_are_warned_about(tmp_path: Path) -> None:
    assert (
        is_pinned(COMMIT)
        and not is_pinned("main")
        and not is_pinned("v1.0")
        and not is_pinned(None)
    )
    warnings = unpinned_warnings([ModelSpec("exaone3.5", REPO, "main", "remote-code"),
                                  ModelSpec("exaone4", "LGAI-EXAONE/EXAONE-4.0-1.2B", COMMIT,
                                            "native")])
    assert len(warnings) == 1 and "exaone3.5" in warnings[0] and "revision main" in warnings[0]
    assert "pin a 40-hex commit in matrix.yaml" in warnings[0]  # the warning names its remedy
    now = _run(tmp_path, "20261102T000000Z", {"a": _result("a", "main", "v1")})
    write_report(now)
    summary = json.loads((now / "summary.json").read_text())
    assert summary["remote_code"]["unpinned"] == [{"repo": REPO, "revision": "main"}]
    assert "is not a commit" in (now / "summary.md").read_text()


def test_loaded_files_reads_what_the_probe_records() -> None:
    files = list(loaded_files(_result("a", COMMIT, "v1"), "run1"))
    assert {f.file for f in files} == {"modeling_exaone.py", "configuration_exaone.py"}
    assert all(f.repo == REPO and f.revision == COMMIT and f.source == "hub-cache" for f in files)


def _fixture_result(cell: str, fixture_revision: str, modeling: str) -> dict[str, Any]:
    """What the probe records for our fixture: source "fixture", the hub ref it stands in for
    (`main`) as revision, and the fixture revision it is faithful to."""
    doc = _result(cell, "main", modeling, "fixture")
    doc["checks"][0]["evidence"]["fixture_revision"] = fixture_revision
    doc["checks"].append({**doc["checks"][0], "name": f"exaone3.5.remote-code.{fixture_revision}x"})
    assert validate(doc) is None
    return doc


def test_our_two_fixture_revisions_are_not_a_moving_hub_revision(tmp_path: Path) -> None:
    """A fresh run loads the `original` and the `current` fixture, both standing in for `main`:
    different bytes under one hub ref, by design. Compared per fixture revision they agree."""
    now = _run(tmp_path, "20261102T000000Z",
               {"a": _fixture_result("a", "current", "ours, current"),
                "b": _fixture_result("b", "original", "ours, original")})
    assert hash_changes(now) == []
    write_report(now)
    summary = json.loads((now / "summary.json").read_text())
    assert summary["remote_code"]["changed"] == [] and summary["remote_code"]["unpinned"] == []
    md = (now / "summary.md").read_text()
    assert "pin a commit" not in md and "changed hash" not in md


def test_our_fixture_updated_between_runs_is_said_as_such_never_as_a_moving_ref(
    tmp_path: Path,
) -> None:
    _run(tmp_path, "20261101T000000Z", {"a": _fixture_result("a", "current", "ours v1")})
    now = _run(tmp_path, "20261102T000000Z", {"a": _fixture_result("a", "current", "ours v2")})
    (change,) = hash_changes(now)
    assert change["source"] == "fixture" and change["revision"] == "current"
    write_report(now)
    md = (now / "summary.md").read_text()
    assert "the fixture was updated between runs" in md
    assert "pin a commit" not in md and "changed hash on the same revision" not in md


def test_a_revision_the_matrix_says_it_cannot_pin_is_said_once_in_the_report(
        tmp_path: Path) -> None:
    """`unpinned: <why>` in matrix.yaml: no warning on every run (the user cannot act on it); the
    report's remote-code section states the reason instead."""
    why = "the hub commit of main is not known here"
    models = [ModelSpec("exaone3.5", REPO, "main", "remote-code", unpinned=why)]
    assert unpinned_warnings(models) == []
    assert unpinned_warnings([{"name": "exaone3.5", "repo": REPO, "revision": "main",
                               "unpinned": why}]) == []
    now = _run(tmp_path, "20261102T000000Z", {"a": _result("a", "main", "v1")})
    (now / "run.json").write_text(json.dumps(
        {"run_id": now.name, "models": [{"name": "exaone3.5", "repo": REPO, "revision": "main",
                                          "kind": "remote-code", "unpinned": why}]}))
    write_report(now)
    summary = json.loads((now / "summary.json").read_text())
    assert summary["remote_code"]["unpinned"] == [{"repo": REPO, "revision": "main", "why": why}]
    md = (now / "summary.md").read_text()
    assert md.count(why) == 1 and "pin a 40-hex commit" not in md


def test_the_shipped_matrices_warn_about_nothing_on_every_run() -> None:
    """matrix.yaml and matrices/*.yaml cannot pin the hub commits (no hub reachable where they are
    written): each model says so under `unpinned:`, so a run prints no warning about them."""

    root = Path(__file__).resolve().parents[2]
    for path in [root / "matrix.yaml", *sorted((root / "matrices").glob("*.yaml"))]:
        matrix = load_matrix(path)
        assert matrix.models and unpinned_warnings(matrix.models) == [], path
        assert all(m.unpinned for m in matrix.models if not is_pinned(m.revision)), path
