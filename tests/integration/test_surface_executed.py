"""The surface check's verdicts are what execution shows, on real transformers releases.

For 4.57.6 (the newest on which the remote code loads), 5.0.0 (its first breaks), 5.9.0 (the mask
keywords' shim removed), 5.24.0 (create_causal_mask behind a deprecation wrapper that takes
*args, **kwargs, so binding passed what the call rejects; ModelOutput classes that map
past_key_values to cache, so binding failed what the call takes; modeling_attn_mask_utils gone) and
the newest release this test knows (5.25.0, the wrapper's signature exposed), one venv each
(shared torch, that transformers installed with `uv pip install --target`): every fact of both known
revisions is checked by executing it, and the revision-faithful fixture is executed too (load and
forward, as given and with only its tied-keys list patched so that the forward runs on 5.x,
tests/integration/surface_vs_fixture.py). No fact may disagree with the fixture:

- a callable the fixture's own code entered and came back from is judged ok, every keyword of it
  included (a rejected keyword would have raised at that call);
- the exception the fixture's run ends with is among the surface's failures, and when it is
  raised at a fact's callable, that callable has a failed fact;
- a run that works has no failed fact among the callables it entered.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))
RELEASES = ("4.57.6", "5.0.0", "5.9.0", "5.24.0", "5.25.0")
TORCH = "torch==2.13.0+cpu"

sys.path.insert(0, str(ROOT / "tools"))
from surface_releases import base_venv, run_release  # noqa: E402  (tools/ is not a package)

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One venv holding torch (the CPU wheel from the wheelhouse) and numpy, shared by every
    release."""
    return base_venv(tmp_path_factory.mktemp("surface-executed"), str(WHEELS), TORCH)


def _run(base: Path, version: str) -> dict:
    out = run_release(base, base.parents[2], version)
    assert out["transformers"] == version
    return out


@pytest.mark.parametrize("version", RELEASES)
def test_every_fact_agrees_with_executing_the_fixture(base, version) -> None:
    out = _run(base, version)
    for revision, found in out["revisions"].items():
        facts = found["facts"]
        failed = [f for f in facts if not f["ok"]]
        failed_signatures = {f["signature"] for f in failed}
        failed_callables = {f["dotted"] for f in failed if f["dotted"]}
        assert all(f["id"] for f in facts) and len({(f["file"], f["id"]) for f in facts}) == len(
            facts
        )
        for run in found["runs"]:
            where = (version, revision, "patched" if run["patched"] else "as given", run)
            came_back = set(run["entered"]) - {run.get("raised_in")}
            # a callable the fixture called and came back from: no fact of it fails
            assert not came_back & failed_callables, (where, sorted(came_back & failed_callables))
            if run["outcome"] == "fails":
                assert run["signature"] in failed_signatures, (where, sorted(failed_signatures))
                if run.get("raised_in"):
                    assert run["raised_in"] in failed_callables, (where, sorted(failed_callables))
        if version == "4.57.6":
            assert failed == [] and all(r["outcome"] == "runs" for r in found["runs"]), (
                revision,
                failed,
            )
    current = {f["id"]: f for f in out["revisions"]["current"]["facts"]}
    mask = "call:transformers.masking_utils.create_causal_mask"
    rejected = {
        k
        for k in ("input_embeds", "cache_position")
        if current[f"{mask}({k}=)"]["outcome"] == "rejects"
    }
    assert rejected == (
        {"input_embeds", "cache_position"} if version in ("5.9.0", "5.24.0", "5.25.0") else set()
    )
    if version == "5.24.0":
        # one module gone, six facts of revision original: one signature, the load's own
        original = out["revisions"]["original"]
        gone = [f for f in original["facts"] if "modeling_attn_mask_utils" in f["id"]]
        assert len(gone) == 6 and not any(f["ok"] for f in gone)
        cause = "module transformers.modeling_attn_mask_utils is gone"
        assert {f["cause"] for f in gone} == {cause}
        (signature,) = {f["signature"] for f in gone}
        assert {r["signature"] for r in original["runs"]} == {signature}
    # the ModelOutput classes take past_key_values on every release (5.x maps it to `cache`)
    for cls in (
        "BaseModelOutputWithPast",
        "CausalLMOutputWithPast",
        "SequenceClassifierOutputWithPast",
    ):
        fact = current[f"call:transformers.modeling_outputs.{cls}(past_key_values=)"]
        assert (fact["ok"], fact["outcome"]) == (True, "runs"), fact
    if version != "4.57.6":
        legacy = current[
            "call:transformers.cache_utils.DynamicCache.from_legacy_cache(1 positional)"
        ]
        assert legacy["outcome"] == "missing"
        assert legacy["signature"] == "transformers-dynamiccache-from-legacy-cache-removed"
