"""Loading cell results: real probe output validates; damaged, foreign and other-version files do
not."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_results import cache_root, real_results

from pinmatrix.fsio import write_json_atomic, write_text_atomic
from pinmatrix.results import CellResult, Damaged, load_result


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return real_results(cache_root(request, tmp_path_factory))


def test_real_probe_result_loads(results) -> None:
    loaded = load_result(results["good"])
    assert isinstance(loaded, CellResult)
    assert loaded.cell_id.endswith("-good")
    assert {c["name"] for c in loaded.checks} >= {"imports"}


def test_truncated_file_is_damaged(results, tmp_path: Path) -> None:
    text = results["good"].read_text()
    broken = tmp_path / "cut.json"
    broken.write_text(text[: len(text) // 2])
    loaded = load_result(broken)
    assert isinstance(loaded, Damaged)
    assert loaded.path == broken and loaded.why.startswith("not JSON")


def test_foreign_json_is_damaged(tmp_path: Path) -> None:
    foreign = tmp_path / "package.json"
    foreign.write_text(json.dumps({"name": "left-pad", "version": "1.3.0"}))
    loaded = load_result(foreign)
    assert isinstance(loaded, Damaged) and "not a pinmatrix result" in loaded.why
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2, 3]")
    assert "top level is list" in load_result(listing).why


def test_other_schema_version_is_damaged(results, tmp_path: Path) -> None:
    data = json.loads(results["good"].read_text())
    data["schema"] = 2
    path = write_json_atomic(tmp_path / "v2.json", data)
    loaded = load_result(path)
    assert isinstance(loaded, Damaged) and "schema version 2" in loaded.why


def test_schema_violation_names_the_place(results, tmp_path: Path) -> None:
    data = json.loads(results["good"].read_text())
    data["checks"][0]["status"] = "maybe"
    loaded = load_result(write_json_atomic(tmp_path / "bad.json", data))
    assert isinstance(loaded, Damaged)
    assert "checks/0/status" in loaded.why


def test_unreadable_bytes_are_damaged(tmp_path: Path) -> None:
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert isinstance(load_result(path), Damaged)


def test_merge_reclassifies_with_the_current_catalogue(results, tmp_path: Path) -> None:
    """An old result holding a fingerprint gets the catalogue id once the catalogue knows the
    error."""
    data = json.loads(results["xformers-broken"].read_text())
    check = next(c for c in data["checks"] if c["name"] == "imports")
    assert check["error"]["signature"] == "xformers-extensions-not-loaded"  # the probe knew it
    # as an older catalogue would
    check["error"]["signature"], check["error"]["known"] = "fp-000000000000", False
    path = write_json_atomic(tmp_path / "old.json", data)
    loaded = load_result(path)
    error = next(c for c in loaded.checks if c["name"] == "imports")["error"]
    assert error["signature"] == "xformers-extensions-not-loaded" and error["known"] is True
    raw = load_result(path, reclassify=False)
    assert (
        next(c for c in raw.checks if c["name"] == "imports")["error"]["signature"]
        == "fp-000000000000"
    )


def test_unknown_errors_keep_the_probes_signature(results) -> None:
    loaded = load_result(results["trl-broken"])
    error = next(c for c in loaded.checks if c["name"] == "imports")["error"]
    assert error["signature"].startswith("fp-") and error["known"] is False


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "x.json"
    write_json_atomic(target, {"a": 1})
    write_text_atomic(target, "replaced\n")
    assert target.read_text() == "replaced\n"
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]
