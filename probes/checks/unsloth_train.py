"""The unsloth routes of the "train" and "adapter" groups (GPU; listed by the unsloth group).

  train.trl-sft.unsloth             FastLanguageModel.from_pretrained (remote-code EXAONE 3.5) ->
                                    FastLanguageModel.get_peft_model -> trl.SFTTrainer, as unsloth's docs show
  train.trl-sft.unsloth-llamafied   the same on the llamafied checkpoint (unsloth's Llama fast path)
  train.qlora.unsloth               FastLanguageModel.from_pretrained(load_in_4bit=True) on the llamafied
                                    checkpoint + LoRA, lora-train's loop and bar
  adapter.unsloth-merged            a LoRA trained through unsloth, written by its save_pretrained_merged
                                    (merged_16bit) and reloaded with AutoModelForCausalLM: logits within the
                                    bf16 merge tolerance of the unsloth model's

They run in the probe's main interpreter, which imported unsloth first (probes/processes.py); "reloaded
with plain transformers" therefore means transformers' own AutoModelForCausalLM class, in a process whose
transformers unsloth has patched. Every check is judged by the same bars as its plain counterpart.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from probes.checks.lora_train import (
    EXAONE35_LORA_TARGETS,
    LLAMA_LORA_TARGETS,
    LORA_ALPHA,
    LORA_RANK,
    LoraRun,
    _free_memory,
    _is_oom,
    fixed_batch,
    model_summary,
    run_lora_steps,
    train_and_judge,
)
from probes.framework import Failed, Infra, Skip

__all__ = ["checks_for", "REMOTE_CODE_ROUTES", "peft_forward", "check_trl_sft_unsloth", "check_trl_sft_unsloth_llamafied", "check_qlora_unsloth",
           "check_unsloth_merged"]


# Checks that train the remote-code model: the unsloth group runs them before any Llama-layout load.
REMOTE_CODE_ROUTES = ("train.trl-sft.unsloth",)


def peft_forward() -> str:
    """Whose forward peft's PeftModelForCausalLM has now: peft's own, or the one unsloth's Llama-family fast
    path (FastLlamaModel.pre_patch) puts there for the whole process, which passes causal_mask= down."""
    from peft import PeftModelForCausalLM

    forward = PeftModelForCausalLM.forward
    return f"{getattr(forward, '__module__', '?')}.{getattr(forward, '__qualname__', '?')}"


def _load(ctx: Any, route: str, *, load_in_4bit: bool = False, seq: int = 256) -> tuple[Any, dict[str, Any], tuple[str, ...]]:
    from probes.checks.lora_train import resolve_exaone35
    from probes.checks.unsloth import load_with_unsloth
    from probes.models import llamafied_folder

    handle = resolve_exaone35(ctx)
    if route == "llamafied":
        path, remote, targets = llamafied_folder(ctx, handle), False, LLAMA_LORA_TARGETS
    else:
        path, remote, targets = Path(handle.path), True, EXAONE35_LORA_TARGETS
    try:
        loaded = load_with_unsloth(path, max_seq_length=seq, trust_remote_code=remote, load_in_4bit=load_in_4bit)
    except Exception as exc:
        raise Failed(f"FastLanguageModel.from_pretrained failed on the {route} EXAONE 3.5"
                     f"{' in 4 bit' if load_in_4bit else ''}: {type(exc).__name__}: {exc}",
                     {"model": model_summary(handle), "route": route}) from exc
    info = {"model": model_summary(handle), "route": route,
            **{k: v for k, v in loaded.info.items() if k != "output_tail"}}
    return loaded, info, targets


def _peft(loaded: Any, targets: tuple[str, ...], seed: int) -> Any:
    import torch
    from unsloth import FastLanguageModel

    torch.manual_seed(seed)
    return FastLanguageModel.get_peft_model(
        loaded.model, r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none",
        target_modules=list(targets), use_gradient_checkpointing=False, random_state=seed)


def _trl_sft(ctx: Any, route: str) -> dict[str, Any]:
    from probes.checks.train import judge_trainer_run, require_trl, run_sft_trainer
    from probes.checks.unsloth import require_unsloth

    require_unsloth(ctx)
    trl_version = require_trl(ctx)
    run = LoraRun.from_settings(ctx.settings)
    loaded = model = None
    try:
        loaded, info, targets = _load(ctx, route)
        info.update(trl=trl_version, lora_rank=LORA_RANK, lora_alpha=LORA_ALPHA)
        model = _peft(loaded, targets, run.seed)
        info["peft_forward"] = peft_forward()
        out = Path(tempfile.mkdtemp(prefix=f"sft-unsloth-{route}-", dir=str(ctx.work_dir)))
        try:
            recorder, used = run_sft_trainer(ctx, model, loaded.tokenizer, run, out)
            info.update(used)
            evidence = judge_trainer_run(model, recorder, run, targets)
        except Failed as exc:
            exc.evidence = {**info, **exc.evidence}
            raise
        return {**info, **evidence}
    except Exception as exc:
        if _is_oom(exc):
            raise Infra(f"CUDA out of memory in SFTTrainer through unsloth ({route})") from exc
        raise
    finally:
        loaded = model = None
        _free_memory("cuda")


def check_trl_sft_unsloth(ctx: Any) -> dict[str, Any]:
    return _trl_sft(ctx, "remote-code")


def check_trl_sft_unsloth_llamafied(ctx: Any) -> dict[str, Any]:
    return _trl_sft(ctx, "llamafied")


def check_qlora_unsloth(ctx: Any) -> dict[str, Any]:
    from probes.checks.train import quantized_inventory
    from probes.checks.unsloth import require_unsloth

    require_unsloth(ctx)
    ctx.require("bitsandbytes")
    run = LoraRun.from_settings(ctx.settings)
    loaded = model = None
    try:
        loaded, info, targets = _load(ctx, "llamafied", load_in_4bit=True, seq=max(run.seq, 64))
        info.update(quantized_inventory(loaded.model))
        if not info["quantized_modules"].get("Linear4bit"):
            raise Failed("FastLanguageModel.from_pretrained(load_in_4bit=True) loaded no Linear4bit layer", info)
        model = _peft(loaded, targets, run.seed)
        try:
            evidence = train_and_judge(model, run, vocab_size=int(model.get_input_embeddings().weight.shape[0]),
                                       device="cuda", targets=targets)
        except Failed as exc:
            exc.evidence = {**info, **exc.evidence}
            raise
        return {**info, **evidence}
    except Exception as exc:
        if _is_oom(exc):
            raise Infra("CUDA out of memory in unsloth QLoRA training") from exc
        raise
    finally:
        loaded = model = None
        _free_memory("cuda")


def check_unsloth_merged(ctx: Any) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from probes.checks.adapter import MERGE_REL_TOL, compare_logits, logits_of
    from probes.checks.lora_train import torch_dtype_kwargs
    from probes.checks.unsloth import require_unsloth

    require_unsloth(ctx)
    run = LoraRun.from_settings(ctx.settings)
    loaded = model = merged = None
    try:
        loaded, info, targets = _load(ctx, "llamafied", seq=max(run.seq, 64))
        model = _peft(loaded, targets, run.seed)
        if not hasattr(model, "save_pretrained_merged"):
            raise Skip(f"unsloth {info.get('unsloth')} gives the LoRA model no save_pretrained_merged")
        vocab = int(model.get_input_embeddings().weight.shape[0])
        record = run_lora_steps(model, fixed_batch(vocab, run.batch, run.seq, run.seed, "cuda"),
                                steps=run.steps, lr=run.lr)
        ids = fixed_batch(vocab, 2, 16, run.seed + 1, "cuda")
        reference = logits_of(model, ids)
        with model.disable_adapter():
            base = logits_of(model, ids)
        folder = Path(tempfile.mkdtemp(prefix="unsloth-merged-", dir=str(ctx.work_dir)))
        model.save_pretrained_merged(str(folder), loaded.tokenizer, save_method="merged_16bit")
        files = sorted(p.name for p in folder.iterdir())
        merged = AutoModelForCausalLM.from_pretrained(str(folder), **torch_dtype_kwargs(torch.bfloat16)).to("cuda")
        got = compare_logits(logits_of(merged, ids), reference)
        effect = compare_logits(reference, base)
        tol = MERGE_REL_TOL["bfloat16"]
        evidence = {**info, "train_losses": [round(x, 6) for x in record.losses], "saved_files": files,
                    "save_method": "merged_16bit", "reloaded_class": type(merged).__name__,
                    "merge_relative_max_diff": got["relative_max_diff"], "merge_max_abs_diff": got["max_abs_diff"],
                    "merge_argmax_agreement": got.get("argmax_agreement"),
                    "adapter_effect_relative": effect["relative_max_diff"], "merge_tolerance": tol,
                    "merge_bar": f"max |reloaded merged - unsloth LoRA model| logits <= {tol} x max |logits| (bf16)"}
        problems = []
        if not effect["relative_max_diff"] > tol:
            problems.append(f"the trained adapter barely changes the logits ({effect['relative_max_diff']:.3g})")
        if not got["relative_max_diff"] <= tol:
            problems.append(f"the merged checkpoint reloaded with transformers differs from the unsloth model: "
                            f"relative max diff {got['relative_max_diff']:.3g} > {tol}")
        if problems:
            raise Failed("; ".join(problems), evidence)
        return evidence
    except Exception as exc:
        if _is_oom(exc):
            raise Infra("CUDA out of memory in adapter.unsloth-merged") from exc
        raise
    finally:
        loaded = model = merged = None
        _free_memory("cuda")


def checks_for(ctx: Any) -> list[tuple[str, Any]]:
    """The unsloth routes of the groups the cell asks for (none when neither train nor adapter is listed)."""
    groups = set(ctx.spec.get("checks") or [])
    out: list[tuple[str, Any]] = []
    if "train" in groups:
        out += [("train.trl-sft.unsloth", check_trl_sft_unsloth),
                ("train.trl-sft.unsloth-llamafied", check_trl_sft_unsloth_llamafied),
                ("train.qlora.unsloth", check_qlora_unsloth)]
    if "adapter" in groups:
        out.append(("adapter.unsloth-merged", check_unsloth_merged))
    return out
