"""Model prefetch (pinmatrix/run/fetch.py) from a local folder standing in for a hub: the cache it
writes is the one the probe reads (probes.models.find_snapshot), refs resolve to commits, a missing
revision is an error naming it, and a token in the environment ends up nowhere on disk."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pinmatrix.cell import ModelSpec
from pinmatrix.run.fetch import FetchError, fetch_models, repo_folder
from probes.models import find_snapshot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import fault_cells as fc  # noqa: E402

REPO = "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_pinned_commit_lands_where_the_probe_looks(tmp_path: Path) -> None:
    hub = fc.write_model_hub(tmp_path / "hub", REPO, COMMIT)
    token = "hf_PLANTEDfetch0123456789"
    (got,) = fetch_models([ModelSpec("exaone3.5", REPO, COMMIT, "remote-code")], tmp_path / "hf",
                          hub=hub,
                          env={"HF_TOKEN": token})
    assert got.commit == COMMIT and not got.reused
    assert find_snapshot(REPO, COMMIT, tmp_path / "hf" / "hub") == got.snapshot
    assert (got.snapshot / "modeling_exaone.py").read_text() == "# stand-in remote code\n"
    for path in (tmp_path / "hf").rglob("*"):
        assert not path.is_file() or token.encode() not in path.read_bytes()
    (again,) = fetch_models([{"name": "exaone3.5", "repo": REPO, "revision": COMMIT}],
                            tmp_path / "hf", hub=hub)
    assert again.reused


def test_a_ref_resolves_to_its_commit_and_is_recorded(tmp_path: Path) -> None:
    hub = fc.write_model_hub(tmp_path / "hub", REPO, COMMIT)
    (got,) = fetch_models([ModelSpec("exaone3.5", REPO, "main", "remote-code")], tmp_path / "hf",
                          hub=hub)
    assert got.commit == COMMIT
    assert (repo_folder(tmp_path / "hf", REPO) / "refs" / "main").read_text() == COMMIT
    assert find_snapshot(REPO, "main", tmp_path / "hf" / "hub") == got.snapshot


@pytest.mark.parametrize("repo, revision, named", [
    (REPO, "f" * 40, "f" * 40),                    # not in the hub
    (REPO, "no-such-branch", "no-such-branch"),
    ("../../etc", COMMIT, "../../etc"),            # not ORG/NAME
    (REPO, "../../../etc/passwd", "revision"),
])
def test_missing_or_hostile_revision_is_a_clear_error(tmp_path: Path, repo: str, revision: str,
                                                      named: str) -> None:
    hub = fc.write_model_hub(tmp_path / "hub", REPO, COMMIT)
    with pytest.raises(FetchError) as err:
        fetch_models([ModelSpec("exaone3.5", repo, revision, "remote-code")], tmp_path / "hf",
                     hub=hub)
    assert named in str(err.value)
    assert not (tmp_path / "hf" / "hub").exists() or not list(
        (tmp_path / "hf" / "hub").rglob("config.json")
    )
