"""The "train" group (Trainer, SFTTrainer, QLoRA) on the tiny fixtures, on CPU.

Each check passes on the unit-test stack and fails on a stack broken on purpose: a learning rate of
0
(the loss cannot fall), an adapter that gets no gradient, a collator that ignores completion-only
loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from probes import signatures  # noqa: E402
from probes.checks import lora_train, train  # noqa: E402
from probes.context import Context  # noqa: E402
from probes.framework import Failed, run_check  # noqa: E402

PINS = {
    "python": "3.11",
    "torch": "2.13.0+cpu",
    "transformers": "x",
    "peft": "x",
    "trl": "x",
    "unsloth": "none",
}


def _has_trl() -> bool:
    try:
        import trl  # noqa: F401

        return True
    except ImportError:
        return False


needs_trl = pytest.mark.skipif(not _has_trl(), reason="trl is not installed in this test stack")


def _remote_code_loads() -> bool:
    import transformers

    return lora_train._version_tuple(transformers.__version__) < (5,)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {"work": tmp_path_factory.mktemp("work"), "cache": {}}


def make_ctx(
    shared: dict[str, Any], pins: dict[str, str] | None = None, **settings: Any
) -> Context:
    spec = {
        "id": "test-cell",
        "hash": "0" * 64,
        "pins": {**PINS, **(pins or {})},
        "checks": ["train"],
        "settings": {"lora_steps": 12, **settings},
    }
    return Context(spec=spec, device="cpu", work_dir=Path(shared["work"]), cache=shared["cache"])


def run_named(ctx: Context, name: str) -> dict[str, Any]:
    return run_check(name, dict(train.checks(ctx))[name], ctx, timeout_s=300)


def test_the_group_lists_both_routes_of_every_trainer(shared: dict[str, Any]) -> None:
    names = [name for name, _ in train.checks(make_ctx(shared))]
    assert names == [
        "train.hf-trainer",
        "train.hf-trainer-llamafied",
        "train.trl-sft",
        "train.trl-sft-llamafied",
        "train.trl-sft.exaone4",
        "train.qlora",
        "train.qlora-llamafied",
    ]


def test_the_chat_dataset_uses_exaone_role_markers(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    _, tokenizer, _, _ = train.load_route(ctx, "llamafied")
    rows, info = train.chat_dataset(tokenizer, 2)
    assert info["chat_template_markers"] == {
        "system": True,
        "user": True,
        "assistant": True,
        "end_of_turn": True,
    }
    assert info["rendered_example"].startswith(
        "[|system|]You are a helpful assistant.[|endofturn|]\n[|user|]"
    )
    # the role markers are single special tokens of the fixture tokenizer
    for marker in ("[|system|]", "[|user|]", "[|assistant|]", "[|endofturn|]"):
        assert marker in tokenizer.get_vocab()
        assert tokenizer.convert_tokens_to_ids(marker) in rows[0]["input_ids"]


@pytest.mark.parametrize("name", ["train.hf-trainer", "train.hf-trainer-llamafied"])
def test_hf_trainer_passes_on_the_cpu_stack(shared: dict[str, Any], name: str) -> None:
    if name == "train.hf-trainer" and not _remote_code_loads():
        pytest.skip("the revision-faithful remote code does not load on transformers 5")
    result = run_named(make_ctx(shared), name)
    assert result["status"] == "pass", result.get("error")
    ev = result["evidence"]
    assert ev["route"] == ("llamafied" if name.endswith("llamafied") else "remote-code")
    assert len(ev["losses"]) == 12 and ev["drop_ratio"] <= lora_train.MAX_LOSS_RATIO
    assert ev["zero_grad_lora_tensors"] == 0 and ev["base_changed_tensors"] == 0
    assert ev["lora_tensors"] == 2 * 7 * 2
    assert ev["tokenizer_keyword"] == "processing_class"
    assert ev["api_forms"]["Trainer(processing_class=)"] == "accepted"


def test_hf_trainer_fails_when_the_loss_cannot_fall(shared: dict[str, Any]) -> None:
    result = run_named(make_ctx(shared, lora_lr=0.0), "train.hf-trainer-llamafied")
    assert result["status"] == "fail"
    assert "loss did not fall" in result["error"]["message"]
    assert result["evidence"]["drop_ratio"] == pytest.approx(1.0)


def test_hf_trainer_fails_when_an_adapter_gets_no_gradient(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    ctx = make_ctx(shared)
    model, tokenizer, targets, _ = train.load_route(ctx, "llamafied")
    # a stack whose LoRA path is cut off after one layer's MLP: those adapters never get a gradient
    model.base_model.model.model.layers[1].mlp.down_proj.register_forward_hook(
        lambda m, i, out: out.detach()
    )
    run = lora_train.LoraRun()
    recorder, _ = train.run_hf_trainer(ctx, model, tokenizer, run, tmp_path)
    with pytest.raises(Failed) as info:
        train.judge_trainer_run(model, recorder, run, targets)
    assert info.value.evidence["zero_grad_lora_tensors"] == 6
    assert "never got a non-zero gradient" in info.value.message


def test_hf_trainer_fails_when_the_base_is_unfrozen(shared: dict[str, Any], tmp_path: Path) -> None:
    ctx = make_ctx(shared)
    model, tokenizer, targets, _ = train.load_route(ctx, "llamafied")
    model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.requires_grad_(True)
    run = lora_train.LoraRun()
    recorder, _ = train.run_hf_trainer(ctx, model, tokenizer, run, tmp_path)
    with pytest.raises(Failed) as info:
        train.judge_trainer_run(model, recorder, run, targets)
    assert info.value.evidence["base_changed_tensors"] == 1


def test_trl_checks_skip_where_the_cell_leaves_trl_out(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared, pins={"trl": "none"})
    for name in ("train.trl-sft", "train.trl-sft-llamafied", "train.trl-sft.exaone4"):
        result = run_named(ctx, name)
        assert result["status"] == "skip" and result["reason"] == "trl not in this cell", result


@needs_trl
@pytest.mark.parametrize(
    "name", ["train.trl-sft", "train.trl-sft-llamafied", "train.trl-sft.exaone4"]
)
def test_trl_sft_passes_on_the_cpu_stack(shared: dict[str, Any], name: str) -> None:
    if name == "train.trl-sft" and not _remote_code_loads():
        pytest.skip("the revision-faithful remote code does not load on transformers 5")
    import transformers

    result = run_named(make_ctx(shared), name)
    if name.endswith("exaone4") and not hasattr(transformers, "Exaone4ForCausalLM"):
        assert result["status"] == "skip"
        return
    assert result["status"] == "pass", result.get("error")
    ev = result["evidence"]
    assert ev["drop_ratio"] <= lora_train.MAX_LOSS_RATIO and ev["zero_grad_lora_tensors"] == 0
    assert ev["base_changed_tensors"] == 0
    assert ev["completion_only"] in ("completion_only_loss", "DataCollatorForCompletionOnlyLM")
    # completion-only: the system and user turns carry no label
    assert ev["prompt_tokens_masked"] > 0 and 0 < ev["supervised_fraction"] < 1
    assert ev["api_forms"]["trl"]


@needs_trl
def test_trl_sft_fails_when_the_loss_cannot_fall(shared: dict[str, Any]) -> None:
    result = run_named(make_ctx(shared, lora_lr=0.0), "train.trl-sft-llamafied")
    assert result["status"] == "fail"
    assert "loss did not fall" in result["error"]["message"]


@needs_trl
def test_trl_sft_fails_when_completion_only_loss_is_not_applied(
    shared: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trl whose collator ignores the completion mask: every token is trained on, and the check
    says so."""
    import trl.trainer.sft_trainer as sft

    collator = getattr(sft, "DataCollatorForLanguageModeling", None)
    if collator is None or "completion_only_loss" not in getattr(
        collator, "__dataclass_fields__", {}
    ):
        pytest.skip("this trl has no completion_only_loss collator")
    original = collator.__call__

    def ignore_mask(self: Any, examples: list[dict[str, Any]]) -> dict[str, Any]:
        self.completion_only_loss = False
        return original(self, examples)

    monkeypatch.setattr(collator, "__call__", ignore_mask)
    ctx = make_ctx(shared)
    model, tokenizer, _, _ = train.load_route(ctx, "llamafied")
    with pytest.raises(Failed, match="no prompt token was masked"):
        train.run_sft_trainer(ctx, model, tokenizer, lora_train.LoraRun(), tmp_path)


def test_qlora_skips_without_a_gpu(shared: dict[str, Any]) -> None:
    ctx = make_ctx(shared)
    for name in ("train.qlora", "train.qlora-llamafied"):
        result = run_named(ctx, name)
        assert result["status"] == "skip" and result["reason"] == "needs a GPU"


def test_qlora_inventory_counts_no_4bit_layer_in_an_unquantized_model(
    shared: dict[str, Any],
) -> None:
    """train.qlora fails when its inventory finds no Linear4bit layer; a plain model has none."""
    ctx = make_ctx(shared)
    model, _, _, _ = train.load_route(ctx, "llamafied")
    assert train.quantized_inventory(model) == {"quantized_modules": {}, "quant_types": []}


# ---------------------------------------------------------------------------------------------
# unsloth routes


def test_unsloth_group_lists_the_train_and_adapter_routes_only_where_the_cell_asks(
    shared: dict[str, Any],
) -> None:
    from probes.checks import unsloth

    ctx = make_ctx(shared, pins={"unsloth": "2026.10.9", "trl": "1.15.0"})
    ctx.spec["checks"] = ["unsloth"]
    assert not [n for n, _ in unsloth.checks(ctx) if n.startswith(("train.", "adapter."))]
    ctx.spec["checks"] = ["unsloth", "train", "adapter"]
    extra = [n for n, _ in unsloth.checks(ctx) if n.startswith(("train.", "adapter."))]
    assert extra == [
        "train.trl-sft.unsloth",
        "train.trl-sft.unsloth-llamafied",
        "train.qlora.unsloth",
        "adapter.unsloth-merged",
    ]
    for name, fn in unsloth.checks(ctx):
        if name in extra:
            result = run_check(name, fn, ctx, timeout_s=60)
            assert result["status"] == "skip" and result["reason"] == "needs a GPU", result
    ctx.spec["pins"]["unsloth"] = "none"
    for name, fn in unsloth.checks(ctx):
        if name in extra:
            assert run_check(name, fn, ctx, timeout_s=60)["reason"] == "unsloth not in this cell"


# ---------------------------------------------------------------------------------------------
# throughput.trainer parts


@pytest.mark.parametrize("kind", ["trainer", pytest.param("sft", marks=needs_trl)])
def test_trainer_measurement_times_only_the_steps_after_warmup(
    shared: dict[str, Any], kind: str
) -> None:
    """throughput.trainer's timing through Trainer / SFTTrainer, run on CPU at a tiny shape."""
    from probes.checks import throughput

    ctx = make_ctx(shared)
    model, tokenizer, _, _ = train.load_route(ctx, "llamafied")
    run = throughput.ThroughputRun(batch=2, seq=32, steps=3, warmup=2)
    m, used = throughput.trainer_measurement(ctx, kind, model, tokenizer, run, 512, device="cpu")
    assert len(m.step_times) == 3 and all(t > 0 for t in m.step_times)
    assert len(m.losses) == 5 and m.tokens_per_step == 64 and m.tokens_per_s > 0
    assert used["trainer"] == ("transformers.Trainer" if kind == "trainer" else "trl.SFTTrainer")


def test_trainer_measurement_fails_when_the_trainer_runs_fewer_steps(
    shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from probes.checks import throughput

    original = train.training_arguments

    def stops_early(cls: Any, out: Path, run: lora_train.LoraRun, device: str, **extra: Any) -> Any:
        args = original(cls, out, run, device, **extra)
        args.max_steps = run.steps - 1
        return args

    monkeypatch.setattr(train, "training_arguments", stops_early)
    ctx = make_ctx(shared)
    model, tokenizer, _, _ = train.load_route(ctx, "llamafied")
    with pytest.raises(Failed, match="ran 4 steps, expected 5"):
        throughput.trainer_measurement(
            ctx,
            "trainer",
            model,
            tokenizer,
            throughput.ThroughputRun(batch=2, seq=32, steps=3, warmup=2),
            512,
            device="cpu",
        )


@needs_trl
def test_trl_sft_fails_when_the_completion_mask_misses_the_prompt(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    """transformers 5 made apply_chat_template(tokenize=True) return a BatchEncoding (return_dict
    defaults to
    True); trl <= 0.27 took len() of it as the prompt length, so only 2-3 tokens per example were
    masked. The
    same default is put on the 4.57.6 tokenizer here: the check must see the loss reach into the
    prompt."""
    import trl

    from probes.checks.lora_train import _version_tuple

    if _version_tuple(trl.__version__) >= (0, 28):
        pytest.skip("trl >= 0.28 passes return_dict=False itself")
    ctx = make_ctx(shared)
    model, tokenizer, _, _ = train.load_route(ctx, "llamafied")
    original = tokenizer.apply_chat_template

    def transformers5_default(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("return_dict", kwargs.get("tokenize", True))
        return original(*args, **kwargs)

    tokenizer.apply_chat_template = transformers5_default
    # len() of the BatchEncoding: 2 keys on 5.5.0 (input_ids, attention_mask), 3 on this 4.57.6
    # tokenizer
    with pytest.raises(Failed, match=r"masked \[([23]), \1\] prompt tokens per example") as info:
        train.run_sft_trainer(ctx, model, tokenizer, lora_train.LoraRun(), tmp_path)
    assert info.value.evidence["masking_matches_prompts"] is False

    assert (
        signatures.classify("Failed", info.value.message).id
        == "trl-completion-mask-is-not-the-prompt-on-transformers5"
    )


@needs_trl
def test_trl_sft_masks_exactly_the_prompt_on_the_cpu_stack(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    ctx = make_ctx(shared)
    model, tokenizer, _, _ = train.load_route(ctx, "llamafied")
    _, info = train.run_sft_trainer(ctx, model, tokenizer, lora_train.LoraRun(), tmp_path)
    assert info["masking_matches_prompts"] is True and info["masked_tokens_are_a_prefix"] is True
    assert info["prompt_tokens_masked_per_example"] == sorted(
        train.prompt_token_counts(tokenizer, 2)
    )


# ---------------------------------------------------------------------------------------------
# train.qlora body


def _bnb_cpu() -> bool:
    try:
        import bitsandbytes  # noqa: F401

        return True
    except Exception:  # noqa: BLE001 - absent or broken: the test skips
        return False


needs_bnb = pytest.mark.skipif(
    not _bnb_cpu(), reason="bitsandbytes is not installed in this test stack"
)


@needs_bnb
def test_qlora_body_trains_nf4_on_cpu(shared: dict[str, Any]) -> None:
    """train.qlora's body where bitsandbytes quantizes on the CPU (0.46 and later): NF4 layers,
    lora-train's bar."""
    ev = train.qlora_train_and_judge(make_ctx(shared), "llamafied")
    assert ev["quantized_modules"] == {"Linear4bit": 14} and ev["quant_types"] == ["nf4"]
    assert ev["drop_ratio"] <= lora_train.MAX_LOSS_RATIO and ev["zero_grad_lora_tensors"] == 0
    assert ev["base_changed_tensors"] == 0


@needs_bnb
def test_qlora_body_fails_when_the_loss_cannot_fall(shared: dict[str, Any]) -> None:
    with pytest.raises(Failed, match="loss did not fall") as info:
        train.qlora_train_and_judge(make_ctx(shared, lora_lr=0.0), "llamafied")
    assert info.value.evidence["quantized_modules"] == {"Linear4bit": 14}


# ---------------------------------------------------------------------------------------------
# completion-only masking on padding-free (packed) batches, as unsloth makes them


def _padding_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """SFTConfig(padding_free=True), as unsloth's SFTTrainer sets it by default: trl's own
    DataCollatorForLanguageModeling then concatenates the batch's examples into one row."""
    original = train.training_arguments

    def padding_free(
        cls: Any, out: Path, run: lora_train.LoraRun, device: str, **extra: Any
    ) -> Any:
        if "padding_free" in getattr(cls, "__dataclass_fields__", {}):
            extra["padding_free"] = True
        return original(cls, out, run, device, **extra)

    monkeypatch.setattr(train, "training_arguments", padding_free)


def _needs_padding_free_collator() -> None:
    from trl import SFTConfig

    if "padding_free" not in SFTConfig.__dataclass_fields__:
        pytest.skip("this trl has no padding-free collator")


@needs_trl
def test_trl_sft_judges_masking_per_packed_segment(
    shared: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A padding-free batch holds both examples in one row: masked [73] where the prompts have
    [35, 38] is the two prompts, masked exactly (the old per-row check failed here)."""
    _needs_padding_free_collator()
    _padding_free(monkeypatch)
    ctx = make_ctx(shared)
    model, tokenizer, _, _ = train.load_route(ctx, "llamafied")
    _, info = train.run_sft_trainer(ctx, model, tokenizer, lora_train.LoraRun(), tmp_path)
    expected = sorted(train.prompt_token_counts(tokenizer, 2))
    assert info["batch_shape"][0] == 1 and info["packed"] is True and info["segments"] == 2
    assert info["segments_from"].startswith("position_ids restarting")
    assert info["prompt_tokens_masked"] == sum(expected)
    assert info["prompt_tokens_masked_per_example"] == expected
    assert info["prompt_tokens_with_label"] == 0 and info["completion_tokens_masked"] == 0


@needs_trl
def test_trl_sft_shows_the_prompt_tokens_that_carry_a_label_in_a_packed_batch(
    shared: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collator that leaves the second packed example's system turn in the loss: the verdict names
    those prompt tokens, their positions in the packed row and their labels."""
    _needs_padding_free_collator()
    _padding_free(monkeypatch)
    import trl.trainer.sft_trainer as sft

    collator = sft.DataCollatorForLanguageModeling
    original = collator.torch_call

    def leaks(self: Any, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = original(self, examples)
        second = int((out["position_ids"][0] == 0).nonzero()[1].item())
        out["labels"][0, second + 1 : second + 5] = out["input_ids"][0, second + 1 : second + 5]
        return out

    monkeypatch.setattr(collator, "torch_call", leaks)
    ctx = make_ctx(shared)
    model, tokenizer, _, _ = train.load_route(ctx, "llamafied")
    with pytest.raises(
        Failed, match=r"the loss is taken on prompt tokens \(4 prompt tokens carry a label\)"
    ) as info:
        train.run_sft_trainer(ctx, model, tokenizer, lora_train.LoraRun(), tmp_path)
    ev = info.value.evidence
    assert ev["packed"] is True and ev["prompt_tokens_with_label"] == 4
    leak = ev["prompt_tokens_with_label_examples"][0]
    assert leak["segment"] == 1 and len(leak["positions"]) == 4 and -100 not in leak["labels"]


@needs_trl
def test_segments_from_unsloths_packed_seq_lengths(shared: dict[str, Any]) -> None:
    """unsloth's wrapped collator adds packed_seq_lengths (and may drop attention_mask): without
    position_ids the segments come from those lengths, the same as from the position resets."""
    _needs_padding_free_collator()
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    ctx = make_ctx(shared)
    _, tokenizer, _, _ = train.load_route(ctx, "llamafied")
    prompts = train.prompt_token_ids(tokenizer, 2)
    examples = []
    for prompt, (_, _, answer) in zip(prompts, train.CHAT_CONVERSATIONS, strict=False):
        completion = tokenizer(answer + "[|endofturn|]", add_special_tokens=False)["input_ids"]
        examples.append(
            {
                "input_ids": prompt + completion,
                "completion_mask": [0] * len(prompt) + [1] * len(completion),
            }
        )
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    by_position = train.label_masking(batch, prompts)
    batch.pop("position_ids")
    batch["packed_seq_lengths"] = torch.tensor([len(e["input_ids"]) for e in examples])
    by_length = train.label_masking(batch, prompts)
    assert by_length["segments_from"].startswith("packed_seq_lengths")
    for got in (by_position, by_length):
        assert got["packed"] and got["prompt_tokens_masked_per_example"] == sorted(
            map(len, prompts)
        )
        assert got["prompt_tokens_with_label"] == 0 and got["completion_tokens_masked"] == 0


def test_the_remote_code_unsloth_sft_runs_before_the_first_llama_layout_load(
    shared: dict[str, Any],
) -> None:
    """Loading a "llama" checkpoint through unsloth (unsloth.llamafied) replaces peft's
    PeftModelForCausalLM.forward for the whole process with one that passes causal_mask= to the
    model, which EXAONE 3.5's remote forward rejects: the remote-code SFT route must run before it,
    or it judges what an earlier check left behind (the old order ran it after)."""
    from probes.checks import unsloth, unsloth_train

    ctx = make_ctx(shared, pins={"unsloth": "2026.10.9", "trl": "1.15.0"})
    ctx.spec["checks"] = ["unsloth", "train", "adapter"]
    names = [n for n, _ in unsloth.checks(ctx)]
    llama_layout = [n for n in names if n.endswith("llamafied") or n in unsloth_train_llama(names)]
    first_llama = min(names.index(n) for n in llama_layout)
    for name in unsloth_train.REMOTE_CODE_ROUTES:
        assert names.index(name) < first_llama, names
    assert names.index("lora-train.unsloth") == names.index("unsloth.load.exaone3.5") + 1
    assert unsloth_train.peft_forward() == "peft.peft_model.PeftModelForCausalLM.forward"


def unsloth_train_llama(names: list[str]) -> list[str]:
    """The checks that load the llamafied checkpoint through unsloth besides *-llamafied ones."""
    return [n for n in names if n in ("train.qlora.unsloth", "adapter.unsloth-merged")]


# ---------------------------------------------------------------------------------------------
# throughput.qlora's two recipes


@needs_bnb
@pytest.mark.parametrize("prepare", [True, False])
def test_qlora_recipes_differ_in_what_stays_bf16(
    shared: dict[str, Any], tmp_path: Path, prepare: bool
) -> None:
    """throughput.qlora (PEFT's prepare_model_for_kbit_training) and throughput.qlora-no-prepare
    build the same 4-bit model; the recipe casts every weight that is not 4-bit to fp32, the other
    keeps them bf16. Both train (measure_training on CPU, the tiny llamafied fixture)."""
    from probes.checks import throughput
    from probes.fixtures.checkpoints import llamafy_exaone35, write_exaone35

    folder = llamafy_exaone35(write_exaone35(tmp_path / "tiny"), tmp_path / "llama")
    model, base, info = throughput.qlora_model(folder, prepare=prepare, device="cpu")
    assert info["prepare_model_for_kbit_training"] is prepare
    assert info["quantized_modules"] == {"Linear4bit": 14}
    census = info["non_4bit_params_by_dtype"]
    assert set(census) == ({"float32"} if prepare else {"bfloat16"}), census
    m = throughput.measure_training(
        model, batch=2, seq=16, steps=2, warmup=1, vocab_size=512, device="cpu"
    )
    assert len(m.step_times) == 2 and all(x == x for x in m.losses)
