"""The training checks (lora-train, generate, throughput, unsloth) on the tiny EXAONE 3.5 fixture,
on CPU.

Every bar is shown failing on a stack the test breaks on purpose: a learning rate of 0, an adapter
whose
output is multiplied away, a detached adapter, an unfrozen base weight, NaN weights, a generate()
that
drops tokens, a non-deterministic head, an adapter that is a no-op.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from probes.checks import generate, lora_train, throughput, unsloth  # noqa: E402
from probes.context import Context  # noqa: E402
from probes.framework import Failed, run_check  # noqa: E402

PINS = {
    "python": "3.11",
    "torch": "2.13.0+cpu",
    "transformers": "x",
    "peft": "x",
    "unsloth": "2026.10.9",
    "flash-attn": "2.8.3",
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One work folder and cache for the module, so the fixture checkpoint is generated once."""
    return {"work": tmp_path_factory.mktemp("work"), "cache": {}}


def make_ctx(
    shared: dict[str, Any], device: str = "cpu", requested: str = "auto", **settings: Any
) -> Context:
    spec = {
        "id": "test-cell",
        "hash": "0" * 64,
        "pins": dict(PINS),
        "checks": [],
        "settings": {"lora_steps": 12, "generate_tokens": 8, **settings},
    }
    return Context(
        spec=spec,
        device=device,
        work_dir=Path(shared["work"]),
        requested_device=requested,
        cache=shared["cache"],
    )


def peft_model(ctx: Context, init_lora_weights: Any = True) -> Any:
    model, _ = lora_train.build_hf_peft_model(ctx, init_lora_weights=init_lora_weights)
    return model


def run_bar(model: Any) -> dict[str, Any]:
    return lora_train.train_and_judge(
        model,
        lora_train.LoraRun(),
        vocab_size=512,
        device="cpu",
        targets=lora_train.EXAONE35_LORA_TARGETS,
    )


# ---------------------------------------------------------------------------------------------
# lora-train


def test_lora_train_passes_on_the_fixture(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    name = "lora-train.hf-peft"
    result = run_check(name, dict(lora_train.checks(ctx))[name], ctx, timeout_s=300)
    assert result["status"] == "pass", result.get("error")
    assert result["evidence"]["route"] == "remote-code"
    ev = result["evidence"]
    assert ev["zero_grad_lora_tensors"] == 0
    assert ev["base_changed_tensors"] == 0 and ev["base_max_abs_diff"] == 0.0
    assert ev["drop_ratio"] <= lora_train.MAX_LOSS_RATIO
    assert len(ev["losses"]) == 12
    # every one of the seven targets got an adapter in each of the fixture's 2 layers
    assert ev["adapters_per_target"] == {t: 2 for t in lora_train.EXAONE35_LORA_TARGETS}
    assert ev["lora_tensors"] == 2 * 7 * 2  # A and B, 7 targets, 2 layers
    assert 0 < ev["trainable_fraction"] < 1


@pytest.mark.parametrize("name", ["lora-train.hf-peft", "lora-train.hf-peft-llamafied"])
def test_lora_train_fails_when_the_loss_cannot_fall(shared: dict[str, Any], name: str) -> None:
    ctx = make_ctx(shared, lora_lr=0.0)
    result = run_check(name, dict(lora_train.checks(ctx))[name], ctx, timeout_s=300)
    assert result["status"] == "fail"
    assert "loss did not fall" in result["error"]["message"]
    assert result["error"]["signature"]
    assert result["evidence"]["drop_ratio"] == pytest.approx(1.0)


def test_lora_train_llamafied_route_trains_the_same_weights(shared: dict[str, Any]) -> None:
    """The route that remains where the remote code breaks: LlamaForCausalLM, all seven layers
    adapted."""
    ctx = make_ctx(shared)
    name = "lora-train.hf-peft-llamafied"
    result = run_check(name, dict(lora_train.checks(ctx))[name], ctx, timeout_s=300)
    assert result["status"] == "pass", result.get("error")
    ev = result["evidence"]
    assert ev["route"] == "llamafied" and ev["model_class"] == "LlamaForCausalLM"
    assert ev["adapters_per_target"] == {t: 2 for t in lora_train.LLAMA_LORA_TARGETS}
    assert ev["zero_grad_lora_tensors"] == 0 and ev["base_changed_tensors"] == 0


def test_lora_train_fails_when_the_output_ignores_the_lora_path(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    model = peft_model(ctx)
    # Every lora_B output is multiplied by 0: the adapters contribute nothing and receive zero
    # gradients.
    for name, module in model.named_modules():
        if name.endswith("lora_B.default"):
            module.register_forward_hook(lambda mod, inp, out: out * 0.0)
    with pytest.raises(Failed) as info:
        run_bar(model)
    assert "loss did not fall" in info.value.message
    assert "never got a non-zero gradient" in info.value.message
    assert info.value.evidence["zero_grad_lora_tensors"] == 28


def test_lora_train_counts_a_single_detached_adapter(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    model = peft_model(ctx)
    # Detach the last layer's MLP output: c_proj's adapter and the c_fc_0 / c_fc_1 adapters feeding
    # only into it get no gradient (3 modules x A, B); the attention adapters still do.
    target = model.base_model.model.transformer.h[1].mlp.c_proj  # a peft LoRA Linear
    target.register_forward_hook(lambda mod, inp, out: out.detach())
    with pytest.raises(Failed) as info:
        run_bar(model)
    ev = info.value.evidence
    assert ev["zero_grad_lora_tensors"] == 6
    assert all(".h.1.mlp." in n for n in ev["zero_grad_examples"])
    assert "loss did not fall" not in info.value.message  # the other adapters still learn


def test_lora_train_fails_when_the_base_changes(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    model = peft_model(ctx)
    # A training setup that unfreezes a base weight: the optimizer now updates it.
    model.base_model.model.transformer.h[0].attn.attention.q_proj.base_layer.weight.requires_grad_(
        True
    )
    with pytest.raises(Failed) as info:
        run_bar(model)
    ev = info.value.evidence
    assert ev["base_changed_tensors"] == 1 and ev["base_max_abs_diff"] > 0
    assert "frozen base tensors changed" in info.value.message


def test_lora_train_fails_on_a_non_finite_loss(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    model = peft_model(ctx)
    with torch.no_grad():
        model.base_model.model.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(Failed) as info:
        run_bar(model)
    assert "loss not finite at step 0" in info.value.message


def test_lora_settings_are_validated() -> None:
    for steps in (1, lora_train.MIN_STEPS - 1, lora_train.MAX_STEPS + 1):
        with pytest.raises(ValueError, match="lora_steps"):
            lora_train.LoraRun.from_settings({"lora_steps": steps})
    assert lora_train.LoraRun.from_settings({}).steps == 12


# The learning bar over the allowed range (lora_steps 400 made a working stack `broken`).
# Training is deterministic with a constant lr, so the first n losses of one long run are exactly
# the losses of an n-step run (checked below): judging every prefix of one run judges every step
# count up to its length, at the price of one run.
LONG_RUN = 400


def _curve(shared: dict[str, Any], *, steps: int, lr: float, batch: int) -> Any:
    ctx = make_ctx(shared)
    model = peft_model(ctx)
    ids = lora_train.fixed_batch(512, batch, 32, 0, "cpu")
    return lora_train.run_lora_steps(model, ids, steps=steps, lr=lr)


def _verdicts(record: Any, *, lr: float, batch: int) -> dict[int, str | None]:
    """n -> None (pass) or the failure message, judging the first n losses as an n-step run."""
    out: dict[int, str | None] = {}
    for n in range(lora_train.MIN_STEPS, len(record.losses) + 1):
        run = lora_train.LoraRun(steps=n, lr=lr, batch=batch)
        try:
            lora_train.judge_lora_training(dataclasses.replace(record, losses=record.losses[:n]),
                                           run)
            out[n] = None
        except Failed as exc:
            out[n] = exc.message
    return out


def test_a_prefix_of_a_long_run_is_the_short_run(shared: dict[str, Any]) -> None:
    short = _curve(shared, steps=lora_train.MIN_STEPS + 2, lr=5e-3, batch=2)
    long = _curve(shared, steps=lora_train.MIN_STEPS + 8, lr=5e-3, batch=2)
    assert short.losses == long.losses[: len(short.losses)]


def test_the_bar_passes_a_learning_stack_at_every_step_count_to_400(shared: dict[str, Any]) -> None:
    record = _curve(shared, steps=LONG_RUN, lr=5e-3, batch=2)  # LoraRun's defaults
    failed = {n: why for n, why in _verdicts(record, lr=5e-3, batch=2).items() if why}
    assert failed == {}, list(failed.items())[:3]


@pytest.mark.parametrize("lr", lora_train.LR_RANGE)
@pytest.mark.parametrize("batch", lora_train.BATCH_RANGE)
def test_the_bar_passes_a_learning_stack_at_the_corners_of_lr_and_batch(
    shared: dict[str, Any], lr: float, batch: int
) -> None:
    record = _curve(shared, steps=40, lr=lr, batch=batch)
    failed = {n: why for n, why in _verdicts(record, lr=lr, batch=batch).items() if why}
    assert failed == {}, list(failed.items())[:3]


@pytest.mark.parametrize("batch", lora_train.BATCH_RANGE)
def test_the_bar_fails_a_stack_that_cannot_learn_at_every_step_count(
    shared: dict[str, Any], batch: int
) -> None:
    record = _curve(shared, steps=40, lr=0.0, batch=batch)
    verdicts = _verdicts(record, lr=0.0, batch=batch)
    assert all(why and "loss did not fall" in why for why in verdicts.values()), verdicts


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_passes_on_the_fixture(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    ((name, fn),) = generate.checks(ctx)
    result = run_check(name, fn, ctx, timeout_s=300)
    assert name == "generate"
    assert result["status"] == "pass", result.get("error")
    ev = result["evidence"]
    assert ev["new_tokens"] == 8 and len(ev["tokens"]) == 8
    assert ev["deterministic"] is True and ev["nonfinite_logit_steps"] == []
    assert ev["adapter_logit_delta"] > 0 and ev["time_s"] > 0


def _prompt() -> Any:
    return lora_train.fixed_batch(512, 1, generate.PROMPT_TOKENS, 0, "cpu")


def test_generate_fails_on_non_finite_logits(shared: dict[str, Any]) -> None:
    model = peft_model(make_ctx(shared), init_lora_weights=False)
    with torch.no_grad():
        model.base_model.model.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(Failed, match="non-finite logits"):
        generate.generate_and_judge(model, _prompt(), 8)


def test_generate_fails_when_max_new_tokens_is_not_honoured(shared: dict[str, Any]) -> None:
    model = peft_model(make_ctx(shared), init_lora_weights=False)
    original = model.generate

    def drops_tokens(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        out.sequences = out.sequences[:, :-3]
        return out

    model.generate = drops_tokens
    with pytest.raises(Failed, match="generated 5 new tokens, requested 8"):
        generate.generate_and_judge(model, _prompt(), 8)


def test_generate_fails_when_greedy_is_not_deterministic(shared: dict[str, Any]) -> None:
    model = peft_model(make_ctx(shared), init_lora_weights=False)
    model.base_model.model.lm_head.register_forward_hook(
        lambda mod, inp, out: out + 50 * torch.randn_like(out)
    )
    with pytest.raises(Failed, match="differed between two identical calls"):
        generate.generate_and_judge(model, _prompt(), 8)


def test_generate_fails_when_the_adapter_is_a_no_op(shared: dict[str, Any]) -> None:
    model = peft_model(make_ctx(shared), init_lora_weights=True)  # B = 0: attached in name only
    with pytest.raises(Failed, match="does not change the logits"):
        generate.generate_and_judge(model, _prompt(), 8)


# ---------------------------------------------------------------------------------------------
# GPU-only groups


@pytest.mark.parametrize("module", [throughput, unsloth], ids=["throughput", "unsloth"])
def test_gpu_checks_skip_on_cpu(shared: dict[str, Any], module: Any) -> None:
    ctx = make_ctx(shared)
    results = [run_check(name, fn, ctx, timeout_s=60) for name, fn in module.checks(ctx)]
    assert results, "the group lists its checks"
    for result in results:
        assert result["status"] == "skip", result
        # a check whose package the cell leaves out says so first (FA4, Liger: not in the CPU
        # stack); every other one needs the GPU
        optional = re.fullmatch(r"(flash-attn-4|liger-kernel) not in this cell.*", result["reason"])
        assert result["reason"] == "needs a GPU" or optional, result
    assert sum(r["reason"] == "needs a GPU" for r in results) >= len(results) // 2
    names = {r["name"] for r in results}
    if module is throughput:
        assert names == {
            "throughput.sdpa",
            "throughput.eager",
            "throughput.flash_attention_2",
            "throughput.sdpa-llamafied",
            "throughput.trainer",
            "throughput.qlora",
            "throughput.qlora-no-prepare",
            "throughput.unsloth",
            "throughput.unsloth-qlora",
            # the speed stacks
            "throughput.sdpa-gc",
            "throughput.flash_attention_4",
            "throughput.liger",
            "throughput.liger-fa4",
            "throughput.sdpa-exaone4",
            "throughput.flash_attention_4-exaone4",
        }
    else:
        assert names == {
            "unsloth.load.exaone3.5",
            "unsloth.load.exaone4",
            "unsloth.llamafied",
            "lora-train.unsloth",
        }


def test_gpu_checks_are_infra_when_a_gpu_was_asked_for_but_missing(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared, requested="cuda")
    (name, fn), *_ = throughput.checks(ctx)
    assert run_check(name, fn, ctx, timeout_s=60)["status"] == "infra"


# ---------------------------------------------------------------------------------------------
# throughput parts


def test_throughput_model_has_the_2p4b_shape(shared: dict[str, Any]) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = throughput._config_folder(make_ctx(shared))
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    with torch.device("meta"):  # shape only: no 2.4B allocation in CI
        model = AutoModelForCausalLM.from_config(
            config, trust_remote_code=True, attn_implementation="sdpa"
        )
    checked = throughput._check_shape(model, throughput._shape())
    assert checked["shape"] == {
        "layers": 30,
        "hidden": 2560,
        "heads": 32,
        "kv_heads": 8,
        "ffn": 7168,
        "vocab": 102400,
        "tied_embeddings": True,
    }
    assert 2.40e9 < checked["n_params"] < 2.41e9
    # 6N + 12·L·d·S at S = 2048: the convention the evidence states
    per_token = throughput.flops_per_token(checked["n_params"], 30, 2560, 2048)
    assert per_token == 6 * checked["n_params"] + 12 * 30 * 2560 * 2048


def test_throughput_shape_check_rejects_a_wrong_model(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    tiny = peft_model(ctx).base_model.model
    with pytest.raises(Failed, match="not the 2.4B shape"):
        throughput._check_shape(tiny, throughput._shape())


def test_measure_training_times_only_the_steps_after_warmup(shared: dict[str, Any]) -> None:
    model = peft_model(make_ctx(shared))
    m = throughput.measure_training(
        model, batch=2, seq=16, steps=3, warmup=2, vocab_size=512, device="cpu"
    )
    assert len(m.step_times) == 3 and len(m.losses) == 5
    assert m.tokens_per_s_mean == pytest.approx(2 * 16 * 3 / sum(m.step_times))
    assert m.tokens_per_s == pytest.approx(2 * 16 / sorted(m.step_times)[1])  # the median step


def test_one_slow_step_does_not_move_the_figure() -> None:
    """The H200 case: five steps near 0.215 s and one at 0.450 s."""
    m = throughput.Measurement([0.2128, 0.2150, 0.2153, 0.4502, 0.2160, 0.2170], [1.0] * 6, 8192)
    assert m.tokens_per_s == pytest.approx(8192 / 0.21565)
    assert m.tokens_per_s_mean < 0.9 * m.tokens_per_s
    assert m.spread["tokens_per_s_min"] == pytest.approx(8192 / 0.4502, abs=0.1)
    assert m.spread["step_time_rel_spread"] > 1.0


def test_peak_flops_table_and_override() -> None:
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3")[0] == 989.4e12
    assert throughput.peak_flops("NVIDIA H100 PCIe")[0] == 756e12
    assert throughput.peak_flops("Some Future GPU")[0] is None
    assert throughput.peak_flops("Some Future GPU", 100.0)[0] == 100e12


def test_throughput_settings() -> None:
    run = throughput.ThroughputRun.from_settings(
        {"throughput": {"batch": 2, "seq": 512, "stacks": ["sdpa"]}}
    )
    assert (run.batch, run.seq, run.steps, run.warmup, run.gradient_checkpointing) == (
        2,
        512,
        6,
        2,
        False,
    )
    with pytest.raises(ValueError):
        throughput.ThroughputRun.from_settings({"throughput": {"steps": 0}})


# ---------------------------------------------------------------------------------------------
# unsloth parts


def test_logits_parity_bar() -> None:
    ref = torch.linspace(-2, 2, 24).reshape(1, 4, 6)
    close = unsloth.logits_parity(ref + 0.01, ref)
    far = unsloth.logits_parity(ref.flip(-1), ref)
    assert close["parity"] is True and close["relative_max_diff"] == pytest.approx(0.005, rel=1e-3)
    assert far["parity"] is False
    assert unsloth.logits_parity(ref[..., :5], ref)["parity"] is False


def test_route_of_a_plain_transformers_model_is_generic(shared: dict[str, Any]) -> None:
    base = peft_model(make_ctx(shared)).base_model.model
    route = unsloth.describe_route(base, dispatched=["FastModel", "FastBaseModel"])
    assert route["route"] == "generic:unpatched"
    assert route["forward_modules"]["attention_forward"].endswith("modeling_exaone")
    assert unsloth.describe_route(base, dispatched=["FastLlamaModel"])["route"] == "fast:llama"


def test_unsloth_group_says_the_cell_leaves_unsloth_out(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    ctx.spec["pins"]["unsloth"] = "none"
    results = [run_check(name, fn, ctx, timeout_s=60) for name, fn in unsloth.checks(ctx)]
    assert {r["status"] for r in results} == {"skip"}
    assert {r["reason"] for r in results} == {"unsloth not in this cell"}
