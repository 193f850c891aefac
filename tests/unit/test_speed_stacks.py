"""The speed stacks on the CPU: FlashAttention 4, Liger Kernel, gradient checkpointing and
the extra throughput configuration. The GPU runs them; here every new check skips with its reason,
a flash-attn-4 whose import fails fails with the catalogued signature, the Liger module inspection
sees a real patch and rejects an unpatched model, and the report's speed rows carry their baseline
and spread.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from pinmatrix.cell import Cell
from pinmatrix.errors import MatrixError
from pinmatrix.matrix.load import load_matrix
from pinmatrix.report import summary as summary_mod
from probes import registry
from probes.checks import attention, throughput
from probes.context import Context
from probes.framework import Failed, run_check

NEW_CHECKS = ("attention.flash_attention_4", "attention.flash_attention_4-exaone4",
              "throughput.sdpa-gc", "throughput.flash_attention_4", "throughput.liger",
              "throughput.liger-fa4", "throughput.sdpa-exaone4",
              "throughput.flash_attention_4-exaone4")
PINS = {"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5.17.0", "unsloth": "none",
        "flash-attn-4": "4.0.0b36", "liger-kernel": "0.8.5"}


def ctx_for(tmp_path: Path, pins: dict[str, str] | None = None, device: str = "cpu",
            settings: dict[str, Any] | None = None) -> Context:
    spec = {"pins": pins or PINS, "settings": settings or {}}
    return Context(spec=spec, device=device, work_dir=tmp_path)


def all_checks(ctx: Context) -> dict[str, Any]:
    return {**dict(attention.checks(ctx)), **dict(throughput.checks(ctx))}


# --- registry ------------------------------------------------------------------------------------
def test_every_new_check_is_registered_with_its_route() -> None:
    for name in NEW_CHECKS:
        entry = registry.lookup(name)
        assert entry is not None and entry.role == registry.OPTIONAL, name
    assert registry.lookup("throughput.flash_attention_4-exaone4").route == registry.EXAONE4
    assert registry.lookup("throughput.liger").route == registry.LLAMAFIED
    assert registry.is_measurement("throughput.liger-fa4")


def test_an_extra_configuration_is_a_shape_family_with_its_own_baseline() -> None:
    assert registry.lookup("throughput.liger.1x8192").name == "throughput.liger.SHAPE"
    assert registry.lookup("throughput.liger.long") is None
    assert registry.lookup("throughput.trainer.1x8192") is None   # not measured per configuration
    assert registry.speed_baselines("throughput.liger.1x8192") == (
        "throughput.sdpa.1x8192", "throughput.sdpa-llamafied.1x8192")
    assert registry.speed_baselines("throughput.flash_attention_4-exaone4") == (
        "throughput.sdpa-exaone4",)
    assert registry.speed_baselines("attention.sdpa") == ()
    # a configuration's column comes right after its family's place, never before the main checks
    assert registry.order_key("throughput.sdpa.1x8192") > registry.order_key("throughput.liger-fa4")


def test_the_probe_emits_every_speed_check_at_every_configuration(tmp_path: Path) -> None:
    settings = {"throughput": {"configs": [{"batch": 1, "seq": 8192}]}}
    names = [n for n, _ in throughput.checks(ctx_for(tmp_path, settings=settings))]
    for name in names:
        assert registry.lookup(name) is not None, name
    assert "throughput.liger-fa4.1x8192" in names and "throughput.eager.1x8192" not in names
    # every HF stack, at every configuration, before unsloth's (which patches transformers)
    first_unsloth = names.index("throughput.unsloth")
    assert all(names.index(n) < first_unsloth for n in names if "unsloth" not in n)
    assert names[-1] == "throughput.unsloth.1x8192"


# --- CPU skips and a failing stack ---------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_CHECKS)
def test_each_new_check_skips_on_the_cpu_with_a_reason(tmp_path: Path, name) -> None:
    ctx = ctx_for(tmp_path)
    record = run_check(name, all_checks(ctx)[name], ctx, timeout_s=60)
    assert record["status"] == "skip", record
    # not installed here (flash-attn-4, liger-kernel) or no GPU: either way the reason says so
    assert "not in this cell" in record["reason"] or record["reason"] == "needs a GPU"


@pytest.mark.parametrize("name", ["attention.flash_attention_4", "throughput.flash_attention_4",
                                  "throughput.liger-fa4"])
def test_a_cell_without_flash_attn_4_says_so(tmp_path: Path, name) -> None:
    ctx = ctx_for(tmp_path, pins={**PINS, "flash-attn-4": "none"})
    record = run_check(name, all_checks(ctx)[name], ctx, timeout_s=60)
    assert record["status"] == "skip" and record["reason"] == "flash-attn-4 not in this cell"


def test_throughput_sdpa_gc_skips_without_a_gpu(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path, pins={**PINS, "flash-attn-4": "none", "liger-kernel": "none"})
    record = run_check("throughput.sdpa-gc", all_checks(ctx)["throughput.sdpa-gc"], ctx, 60)
    assert record == {**record, "status": "skip", "reason": "needs a GPU"}


def _site_with_broken_fa4(site: Path) -> Path:
    """A real flash-attn-4 distribution whose flash_attn.cute fails as it does when the CuTe DSL's
    `cutlass` package is not on the path (flash_attn/cute/interface.py: import cutlass.cute)."""
    info = site / "flash_attn_4-4.0.0b36.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flash-attn-4\nVersion: 4.0.0b36\n")
    (info / "RECORD").write_text("")
    (info / "top_level.txt").write_text("flash_attn\n")
    cute = site / "flash_attn" / "cute"
    cute.mkdir(parents=True)   # flash_attn itself has no __init__: a namespace package, as shipped
    (cute / "__init__.py").write_text("import cutlass.cute as cute\n")
    return site


@pytest.fixture
def broken_fa4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site = _site_with_broken_fa4(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    for mod in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
        monkeypatch.delitem(sys.modules, mod)
    yield site
    for mod in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
        sys.modules.pop(mod, None)


def test_an_unusable_flash_attn_4_fails_with_its_signature(tmp_path: Path, broken_fa4,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    ctx = ctx_for(tmp_path, device="cuda")     # past the GPU gate: what a GPU cell reaches
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert ctx.installed("flash-attn-4") == "4.0.0b36"
    record = run_check("attention.flash_attention_4", attention.check_flash_attention_4, ctx, 60)
    assert record["status"] == "fail", record
    assert record["error"]["signature"] == "flash-attn-4-cutlass-dsl-missing"
    assert "cutlass" in record["error"]["message"]


def test_flash_attn_4_below_hopper_is_a_skip(tmp_path: Path, broken_fa4,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    ctx = ctx_for(tmp_path, device="cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    record = run_check("attention.flash_attention_4", attention.check_flash_attention_4, ctx, 60)
    assert record["status"] == "skip" and "compute capability >= 9.0" in record["reason"]


# --- Liger: the patch seen in the modules --------------------------------------------------------
def _tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def _lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "gate_proj", "down_proj"]
    return get_peft_model(model, LoraConfig(r=4, target_modules=targets))


def test_an_unpatched_llama_fails_the_liger_verification() -> None:
    from probes.checks.liger import liger_patch_report, verify_liger

    model = _lora(_tiny_llama())
    report = liger_patch_report(model)
    assert report["decoder_layers"] == 2
    assert report["rms_norm"] == {**report["rms_norm"], "patched": 0, "of": 5}
    assert report["swiglu_mlp"]["patched"] == 0 and report["causal_lm_forward"]["patched"] == 0
    with pytest.raises(Failed, match="did not take"):
        verify_liger(model)


def test_a_model_with_no_decoder_layers_is_not_called_patched() -> None:
    import torch

    from probes.checks.liger import verify_liger

    with pytest.raises(Failed):
        verify_liger(torch.nn.Linear(2, 2))


def _liger_or_skip() -> Any:
    try:
        return importlib.import_module("liger_kernel.transformers")
    except ImportError as exc:   # absent here, or (0.8.5) transformers < 5.0.0
        pytest.skip(f"liger_kernel.transformers does not import here: {exc}")


def test_liger_verification_sees_a_real_patch_and_the_scope_undoes_the_module_patch() -> None:
    liger = _liger_or_skip()
    from transformers.models.llama import modeling_llama

    from probes.checks.liger import verify_liger

    before = (modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP,
              modeling_llama.apply_rotary_pos_emb)
    with throughput._liger_scope(True) as state:
        model = _tiny_llama()
        liger.apply_liger_kernel_to_llama(model=model)   # patches, runs no kernel
        report = verify_liger(_lora(model))
        assert modeling_llama.LlamaMLP is not before[1]
    assert report["rms_norm"]["patched"] == report["rms_norm"]["of"] == 5
    assert report["swiglu_mlp"]["forward_modules"] == ["liger_kernel.transformers.swiglu"]
    assert report["rope"]["apply_rotary_pos_emb"].startswith("liger_kernel.")
    after = (modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP,
             modeling_llama.apply_rotary_pos_emb)
    assert after == before and state["LlamaMLP"] == "restored"


# --- matrix and ids ------------------------------------------------------------------------------
def test_the_default_matrix_pairs_fa4_and_liger_with_the_5x_lines() -> None:
    cells = load_matrix(Path(__file__).resolve().parents[2] / "matrix.yaml").expand()
    for cell in cells:
        five = cell.pins["transformers"].startswith("5.")
        assert (cell.pins["flash-attn-4"] != "none") == five
        assert (cell.pins["liger-kernel"] != "none") == five
    assert cells[0].settings["throughput"]["configs"] == [{"batch": 1, "seq": 8192}]


def test_a_version_after_a_digit_ending_name_stays_readable() -> None:
    pins = {"python": "3.12", "torch": "2.11.0", "flash-attn-4": "4.0.0b36",
            "liger-kernel": "none"}
    assert Cell(pins=pins).id == "py3.12-torch2.11.0-fa4_4.0.0b36-liger-none"


@pytest.mark.parametrize("configs,message", [
    ("[{batch: 1}]", "needs batch and seq"),
    ("[{batch: 1, seq: 8192}, {batch: 1, seq: 8192}]", "listed twice"),
    ("[{batch: 0, seq: 8192}]", "expected an integer from 1"),
    ("[{batch: 1, seq: 8192, steps: 3}]", "unknown key 'steps'"),
])
def test_bad_throughput_configs_are_refused(tmp_path: Path, configs, message) -> None:
    path = tmp_path / "m.yaml"
    path.write_text('axes: {python: ["3.11"], base_image: ["x"], torch: ["2.13.0"]}\n'
                    f"settings:\n  throughput: {{configs: {configs}}}\n")
    with pytest.raises(MatrixError, match=message):
        load_matrix(path)


# --- the report's speed rows ---------------------------------------------------------------------
def _passed(tps: float, **evidence: Any) -> dict[str, Any]:
    return {"status": "pass", "evidence": {"tokens_per_s": tps, **evidence}}


def test_speed_rows_use_the_baseline_of_their_model_and_configuration() -> None:
    checks = {
        "throughput.sdpa-llamafied": _passed(10000.0, batch=4, seq=2048),
        "throughput.liger": _passed(12000.0, batch=4, seq=2048, tokens_per_s_min=11500.0,
                                    tokens_per_s_max=12100.0, step_time_rel_spread=0.05,
                                    step_times_s=[0.7] * 6, first_step_s=3.5, mfu=0.41),
        "throughput.sdpa-llamafied.1x8192": _passed(8000.0, batch=1, seq=8192),
        "throughput.flash_attention_4.1x8192": _passed(10000.0, batch=1, seq=8192,
                                                       fa4_jit={"jit_compile_s": 41.0}),
        "throughput.sdpa-exaone4": _passed(20000.0),
        "throughput.flash_attention_4-exaone4": _passed(25000.0),
    }
    row = summary_mod.CellRow(cell_id="c", pins={}, status="works", checks=checks)
    rows = {r["stack"]: r for r in summary_mod._speed([row])}
    assert rows["liger"]["speedup_vs_sdpa"] == 1.2 and rows["liger"]["baseline"] == "sdpa-llamafied"
    assert rows["liger"]["tokens_per_s_min"] == 11500.0 and rows["liger"]["steps_timed"] == 6
    assert rows["liger"]["first_step_s"] == 3.5 and rows["liger"]["mfu"] == 0.41
    assert rows["flash_attention_4.1x8192"]["speedup_vs_sdpa"] == 1.25
    assert rows["flash_attention_4.1x8192"]["baseline"] == "sdpa-llamafied.1x8192"
    assert rows["flash_attention_4.1x8192"]["jit_compile_s"] == 41.0
    assert rows["flash_attention_4-exaone4"]["speedup_vs_sdpa"] == 1.25
    assert rows["flash_attention_4-exaone4"]["baseline"] == "sdpa-exaone4"
