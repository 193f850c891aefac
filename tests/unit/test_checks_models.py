"""The model checks (exaone3.5.remote-code, exaone4.native, attention.*) pass on good fixtures and
fail on
deliberately broken ones built here: a remote-code file that leaves a weight randomly initialised, a
checkpoint with non-finite weights, a checkpoint missing a tensor, a wrong attention kernel."""

from __future__ import annotations

import os
import sys
import tempfile

if "transformers" not in sys.modules:
    os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="pinmatrix-hfmodules-"))

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import json  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

from probes.checks import attention, exaone4, exaone35  # noqa: E402
from probes.checks.model_load import compare_to_checkpoint, dtype_kwargs  # noqa: E402
from probes.context import Context  # noqa: E402
from probes.fixtures.checkpoints import write_exaone4, write_exaone35  # noqa: E402
from probes.framework import Failed, run_check  # noqa: E402
from probes.models import ModelHandle, find_snapshot, resolve_model  # noqa: E402

HAS_EXAONE4 = hasattr(transformers, "Exaone4ForCausalLM")
# The hub's EXAONE 3.5 remote code (and so our revision-faithful fixtures) loads on transformers 4.x
# only; the 5.x verdicts are run on real venvs in tests/integration/test_exaone35_verdicts.py.
REMOTE_CODE_LOADS = transformers.__version__.startswith("4.")
needs_loading_remote_code = pytest.mark.skipif(
    not REMOTE_CODE_LOADS, reason="remote code fails on transformers 5"
)


def make_ctx(tmp_path: Path, **spec) -> Context:
    return Context(spec={"models": [], "pins": {}, **spec}, device="cpu", work_dir=tmp_path)


def handle_for(path, name="exaone3.5") -> ModelHandle:
    return ModelHandle(
        name, path, "fixture", "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", "0" * 40, "remote-code"
    )


def run(name, fn, ctx):
    return run_check(name, fn, ctx, timeout_s=300)


def rewrite_tensor(folder, key, transform) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    result = transform(state, key)
    save_file(result, str(folder / "model.safetensors"), metadata={"format": "pt"})


# --- exaone3.5.remote-code
# -----------------------------------------------------------------------------


def exaone35_check(ctx, name):
    return dict(exaone35.checks(ctx))[name]


def test_exaone35_group_answers_every_known_revision_and_the_llamafied_route(
    tmp_path: Path,
) -> None:
    names = [name for name, _ in exaone35.checks(make_ctx(tmp_path))]
    # `main` is pinned in the default matrix: its stand-in is the newest known revision ("current");
    # the older known revision gets its own suffixed checks.
    assert names == [
        "exaone3.5.surface",
        "exaone3.5.remote-code",
        "exaone3.5.surface.original",
        "exaone3.5.remote-code.original",
        "exaone3.5.llamafied",
    ]


@needs_loading_remote_code
def test_remote_code_passes_on_good_fixture(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    name = "exaone3.5.remote-code"
    result = run(name, exaone35_check(ctx, name), ctx)
    assert result["status"] == "pass", result.get("error")
    ev = result["evidence"]
    assert (
        ev["basis"] == "fixture of hub revision current"
        and ev["max_abs_diff_vs_llamafied"] <= ev["parity_tolerance"]
    )
    assert (
        ev["source"] == "fixture" and ev["max_weight_diff"] == 0.0 and ev["tensors_compared"] == 20
    )
    assert ev["logits_shape"] == [2, 16, 512] and ev["nonfinite_logits"] == 0 and ev["n_params"] > 0
    assert set(ev["remote_code"]) == {"modeling_exaone.py", "configuration_exaone.py"}
    assert all(
        len(f["sha256"]) == 64 and f["matches_checkpoint"] for f in ev["remote_code"].values()
    )


@needs_loading_remote_code
def test_remote_code_fails_when_a_renamed_parameter_stays_random(tmp_path: Path) -> None:
    folder = write_exaone35(tmp_path / "exaone_renamed_up")
    code = (folder / "modeling_exaone.py").read_text()
    assert code.count("c_fc_1") >= 2
    (folder / "modeling_exaone.py").write_text(code.replace("c_fc_1", "c_fc_up"))
    ctx = make_ctx(tmp_path)
    result = run(
        "exaone3.5.remote-code", lambda c: exaone35.check_remote_code(c, handle_for(folder)), ctx
    )
    assert result["status"] == "fail", result
    ev = result["evidence"]
    assert any("c_fc_up" in k for k in ev["missing_keys"]), ev
    assert any("c_fc_1" in k for k in ev["unexpected_keys"]), ev
    assert result["error"]["signature"]


def test_weight_comparison_alone_catches_random_init_and_drift(tmp_path: Path) -> None:
    """Independent of transformers' loading report: the tensor-by-tensor comparison fails by
    itself."""
    from transformers import AutoModelForCausalLM

    folder = write_exaone35(tmp_path / "exaone_compare")
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), trust_remote_code=True, **dtype_kwargs(torch.float32)
    )
    assert compare_to_checkpoint(model, folder)["max_weight_diff"] == 0.0
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight.add_(1e-3)
    with pytest.raises(Failed, match="differ from the checkpoint") as info:
        compare_to_checkpoint(model, folder)
    assert info.value.evidence["worst_tensor"] == "transformer.h.1.mlp.c_proj.weight"
    rewrite_tensor(
        folder, "transformer.h.0.ln_2.weight", lambda s, k: {n: t for n, t in s.items() if n != k}
    )
    with pytest.raises(Failed, match="absent from it"):
        compare_to_checkpoint(model, folder)


@needs_loading_remote_code
def test_remote_code_fails_on_non_finite_logits(tmp_path: Path) -> None:
    folder = write_exaone35(tmp_path / "exaone_nan")
    rewrite_tensor(
        folder,
        "transformer.ln_f.weight",
        lambda s, k: {**s, k: torch.full_like(s[k], float("nan"))},
    )
    ctx = make_ctx(tmp_path)
    result = run(
        "exaone3.5.remote-code", lambda c: exaone35.check_remote_code(c, handle_for(folder)), ctx
    )
    assert result["status"] == "fail", result
    assert "not finite" in result["error"]["message"]
    assert result["evidence"]["nonfinite_logits"] == 2 * 16 * 512


# --- exaone4.native
# ------------------------------------------------------------------------------------


def test_exaone4_native_by_transformers_version(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    [(name, fn)] = exaone4.checks(ctx)
    result = run(name, fn, ctx)
    if HAS_EXAONE4:
        assert result["status"] == "pass", result.get("error")
        ev = result["evidence"]
        assert ev["model_class"].startswith("transformers.models.exaone4.")
        assert (
            ev["max_weight_diff"] == 0.0
            and ev["nonfinite_logits"] == 0
            and ev["logits_shape"] == [2, 16, 512]
        )
    else:
        assert result["status"] == "skip"
        assert result["reason"] == (
            f"Exaone4ForCausalLM absent before transformers 4.54 "
            f"(installed {transformers.__version__})"
        )
        with pytest.raises(ImportError, match="absent before transformers 4.54"):
            write_exaone4(tmp_path / "e4")


@pytest.mark.skipif(not HAS_EXAONE4, reason="Exaone4ForCausalLM needs transformers >= 4.54")
def test_exaone4_native_fails_on_checkpoint_missing_a_tensor(tmp_path: Path) -> None:
    folder = write_exaone4(tmp_path / "exaone4_missing")
    rewrite_tensor(
        folder,
        "model.layers.0.mlp.up_proj.weight",
        lambda s, k: {n: t for n, t in s.items() if n != k},
    )
    handle = ModelHandle(
        "exaone4", folder, "fixture", "LGAI-EXAONE/EXAONE-4.0-1.2B", None, "native"
    )
    result = run("exaone4.native", lambda c: exaone4.check_native(c, handle), make_ctx(tmp_path))
    assert result["status"] == "fail", result
    assert "model.layers.0.mlp.up_proj.weight" in result["evidence"]["missing_keys"]


# --- attention
# -----------------------------------------------------------------------------------------


@needs_loading_remote_code
def test_attention_group_on_cpu(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    results = {name: run(name, fn, ctx) for name, fn in attention.checks(ctx)}
    assert list(results) == [
        "attention.eager",
        "attention.sdpa",
        "attention.flash_attention_2",
        "attention.xformers",
        "attention.xformers-kernel",
        "attention.flash_attention_4",
        "attention.flash_attention_4-exaone4",
    ]
    for name in ("attention.eager", "attention.sdpa"):
        ev = results[name]["evidence"]
        assert results[name]["status"] == "pass", results[name].get("error")
        assert ev["accepted"] and ev["ran"] and ev["max_abs_diff_vs_eager"] <= ev["tolerance"]
    assert results["attention.eager"]["evidence"]["max_abs_diff_vs_eager"] == 0.0
    if ctx.installed("flash-attn") is None:
        assert results["attention.flash_attention_2"]["status"] == "skip"
    if ctx.installed("xformers") is None:
        assert results["attention.xformers"]["reason"] == "xformers not in this cell"
        assert results["attention.xformers-kernel"]["status"] == "skip"
    for name in ("attention.flash_attention_4", "attention.flash_attention_4-exaone4"):
        # the cell leaves FA4 out (CPU stack): skipped with that reason, before the GPU gate
        assert results[name]["status"] == "skip", results[name]
        assert results[name]["reason"].startswith("flash-attn-4 not in this cell"), results[name]


@needs_loading_remote_code
def test_guide_xformers_option_is_tried_as_written_and_fails_with_transformers_message(
    tmp_path: Path,
) -> None:
    """The guide's attn_implementation="xformers" (xformers presence aside): transformers' own
    verdict."""
    ctx = make_ctx(tmp_path)
    result = run("attention.xformers", lambda c: attention.compare_backend(c, "xformers"), ctx)
    assert result["status"] == "fail", result
    assert result["evidence"]["accepted"] is False
    assert 'attn_implementation="xformers"' in result["error"]["message"]
    assert result["error"]["type"] == "ValueError" and result["error"]["signature"]


def _torch_causal_kernel(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, is_causal=True, scale=scaling
    )
    return out.transpose(1, 2), None


def _non_causal_kernel(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, is_causal=False, scale=scaling
    )
    return out.transpose(1, 2), None


def test_registered_kernel_runs_inside_the_model_and_a_wrong_one_fails_parity(
    tmp_path: Path,
) -> None:
    """The route attention.xformers-kernel takes (AttentionInterface registration), with CPU
    kernels:
    a correct kernel passes parity with eager, a non-causal one is caught."""
    ctx = make_ctx(tmp_path)
    attention.register_kernel("pinmatrix_test_causal", _torch_causal_kernel)
    attention.register_kernel("pinmatrix_test_noncausal", _non_causal_kernel)
    good = run(
        "k", lambda c: attention.compare_backend(c, "pinmatrix_test_causal", route="llamafied"), ctx
    )
    assert good["status"] == "pass", good.get("error")
    assert good["evidence"]["attn_implementation"] == "pinmatrix_test_causal"
    bad = run(
        "k",
        lambda c: attention.compare_backend(c, "pinmatrix_test_noncausal", route="llamafied"),
        ctx,
    )
    assert bad["status"] == "fail", bad
    assert bad["evidence"]["max_abs_diff_vs_eager"] > bad["evidence"]["tolerance"]


# --- resolve_model
# -------------------------------------------------------------------------------------


def test_resolve_model_builds_fixture_once_per_run(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ctx = make_ctx(
        tmp_path,
        models=[
            {
                "name": "exaone3.5",
                "repo": "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
                "revision": "a" * 40,
                "kind": "remote-code",
            }
        ],
    )
    first = resolve_model(ctx, "exaone3.5")
    assert (
        first.source == "fixture"
        and first.revision == "a" * 40
        and (first.path / "config.json").is_file()
    )
    assert resolve_model(ctx, "exaone3.5") is first
    with pytest.raises(KeyError, match="not-a-model"):
        resolve_model(ctx, "not-a-model")


def test_resolve_model_prefers_pinned_hub_snapshot(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    repo_dir = cache / "models--LGAI-EXAONE--EXAONE-3.5-2.4B-Instruct"
    sha = "b" * 40
    write_exaone35(repo_dir / "snapshots" / sha)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert (
        find_snapshot("LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", "main")
        == repo_dir / "snapshots" / sha
    )
    assert (
        find_snapshot("LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", "c" * 40) is None
    )  # other revision: no
    ctx = make_ctx(
        tmp_path,
        models=[
            {
                "name": "exaone3.5",
                "repo": "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
                "revision": sha,
                "kind": "remote-code",
            }
        ],
    )
    handle = resolve_model(ctx, "exaone3.5")
    assert (handle.source, handle.path, handle.revision) == (
        "hub-cache",
        repo_dir / "snapshots" / sha,
        sha,
    )
    assert os.environ["HF_HUB_OFFLINE"] == "1"


_HUB_SCRIPT = """
import json, sys
from pathlib import Path
from probes.context import Context
from probes.framework import run_check
from probes.checks import exaone35
spec = {"models": [{"name": "exaone3.5", "repo": "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
                    "revision": sys.argv[1], "kind": "remote-code"}], "pins": {}}
ctx = Context(spec=spec, device="cpu", work_dir=Path(sys.argv[2]))
name = "exaone3.5.remote-code"
print("RESULT " + json.dumps(run_check(name, dict(exaone35.checks(ctx))[name], ctx, 300)))
"""


@needs_loading_remote_code
def test_remote_code_loads_pinned_revision_from_hub_cache_offline(tmp_path: Path) -> None:
    """The hub route end to end: repo id + pinned revision resolved from a local cache with the
    network off.
    A subprocess, because huggingface_hub reads its cache location once at import."""

    sha = "d" * 40
    repo_dir = tmp_path / "hub" / "models--LGAI-EXAONE--EXAONE-3.5-2.4B-Instruct"
    write_exaone35(repo_dir / "snapshots" / sha, seed=1)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(sha)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _HUB_SCRIPT, sha, str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["status"] == "pass", result.get("error")
    ev = result["evidence"]
    assert (ev["source"], ev["revision"]) == ("hub-cache", sha)
    assert "LGAI" in ev["model_class"] and ev["max_weight_diff"] == 0.0
    assert all(f["matches_checkpoint"] for f in ev["remote_code"].values())
