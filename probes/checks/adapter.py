"""Check group "adapter": does a trained LoRA adapter survive save, reload and merge?

  adapter.roundtrip             EXAONE 3.5 through its remote code
  adapter.roundtrip-llamafied   the llamafied EXAONE 3.5 (LlamaForCausalLM, same weights)

Each check trains LoRA r16 on all seven linear layers with lora-train's loop (so the adapter is not the
identity: lora_B starts at zero), then
  1. `save_pretrained` writes the adapter; a fresh base is loaded from the checkpoint and
     `PeftModel.from_pretrained` attaches the saved adapter; the logits on fixed inputs must be
     identical (torch.equal) to the trained model's;
  2. `merge_and_unload()` on the reloaded model gives a plain model whose logits must lie within
     MERGE_REL_TOL x max |logits| of the adapter model's (the tolerance is stated in evidence);
  3. the adapter must matter: its logits differ from the base's by more than the merge tolerance,
     otherwise neither comparison could see a lost or mis-scaled adapter.

The unsloth route (`adapter.unsloth-merged`: `save_pretrained_merged`, reloaded with plain transformers)
lives in the unsloth group.
"""
from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

from probes.checks.lora_train import LoraRun, _free_memory, _is_oom, fixed_batch, run_lora_steps
from probes.framework import Failed, Infra

__all__ = ["checks", "MERGE_REL_TOL", "merge_tolerance", "logits_of", "compare_logits", "roundtrip_and_judge"]

# merge_and_unload adds scale * B @ A into the base weight. In fp32 that changes the rounding of one
# addition per weight: on the tiny fixture the merged logits differ from the adapter model's by ~1e-7 of
# max |logits|. In bf16 the merged weight is rounded to 8 bits of mantissa (relative 2^-9 per weight),
# which on real models moves logits by up to ~1% of their range. A merge with a wrong scale or a lost
# adapter moves them by the adapter's whole effect, which the check requires to exceed the tolerance.
MERGE_REL_TOL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}
INPUT_BATCH, INPUT_SEQ = 2, 16


def merge_tolerance(dtype: Any) -> float:
    return MERGE_REL_TOL.get(str(dtype).replace("torch.", ""), MERGE_REL_TOL["bfloat16"])


def logits_of(model: Any, input_ids: Any) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits.float().cpu()


def compare_logits(candidate: Any, reference: Any) -> dict[str, Any]:
    if tuple(candidate.shape) != tuple(reference.shape):
        return {"shape": list(candidate.shape), "reference_shape": list(reference.shape), "identical": False,
                "max_abs_diff": float("inf"), "relative_max_diff": float("inf")}
    diff = (candidate - reference).abs()
    max_diff = float(diff.max().item())
    ref_max = float(reference.abs().max().item())
    return {"identical": bool((candidate == reference).all().item()), "max_abs_diff": max_diff,
            "relative_max_diff": max_diff / ref_max if ref_max else (0.0 if max_diff == 0 else float("inf")),
            "reference_max_abs": ref_max,
            "argmax_agreement": float((candidate.argmax(-1) == reference.argmax(-1)).float().mean().item())}


def _files(folder: Path) -> dict[str, Any]:
    return {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()[:16]}
            for p in sorted(folder.iterdir()) if p.is_file()}


def roundtrip_and_judge(model: Any, load_base: Callable[[], Any], folder: Path, input_ids: Any, *,
                        after_save: Callable[[Path], None] | None = None,
                        before_merge: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Save `model`'s adapter into `folder`, reload it onto `load_base()`, merge; judge all three bars.

    `after_save` / `before_merge` let a test break the stack on purpose (tamper with the saved file,
    change the merge scale); the check itself passes none."""
    from peft import PeftModel

    dtype = next(p for p in model.parameters() if not p.requires_grad).dtype
    tol = merge_tolerance(dtype)
    trained = logits_of(model, input_ids)
    with model.disable_adapter():
        base_logits = logits_of(model, input_ids)
    effect = compare_logits(trained, base_logits)
    model.save_pretrained(str(folder))
    if after_save is not None:
        after_save(folder)
    evidence: dict[str, Any] = {"saved_files": _files(folder), "input_shape": list(input_ids.shape),
                                "adapter_effect_relative": effect["relative_max_diff"],
                                "adapter_effect_bar": f"relative max |adapter - base| logits > {tol} (the merge "
                                                      f"tolerance), so a lost or mis-scaled adapter is visible"}
    reloaded = PeftModel.from_pretrained(load_base(), str(folder))
    reloaded_logits = logits_of(reloaded, input_ids)
    reload = compare_logits(reloaded_logits, trained)
    evidence.update({"reload_identical": reload["identical"], "reload_max_abs_diff": reload["max_abs_diff"],
                     "reload_bar": "logits of the reloaded adapter on a fresh base == the trained model's (torch.equal)"})
    if before_merge is not None:
        before_merge(reloaded)
    merged = reloaded.merge_and_unload()
    leftover = sum(1 for _, m in merged.named_modules() if hasattr(m, "lora_A"))
    merged_logits = logits_of(merged, input_ids)
    merge = compare_logits(merged_logits, trained)
    evidence.update({"merged_class": type(merged).__name__, "merged_lora_modules_left": leftover,
                     "merge_max_abs_diff": merge["max_abs_diff"], "merge_relative_max_diff": merge["relative_max_diff"],
                     "merge_argmax_agreement": merge.get("argmax_agreement"), "merge_dtype": str(dtype).replace("torch.", ""),
                     "merge_tolerance": tol,
                     "merge_bar": f"max |merged - adapter| logits <= {tol} x max |adapter logits| "
                                  f"({str(dtype).replace('torch.', '')} weights)"})
    problems: list[str] = []
    if not (math.isfinite(effect["relative_max_diff"]) and effect["relative_max_diff"] > tol):
        problems.append(f"the trained adapter barely changes the logits (relative {effect['relative_max_diff']:.3g} "
                        f"<= {tol}); save/merge cannot be judged")
    if not reload["identical"]:
        problems.append(f"the reloaded adapter gives different logits (max |diff| {reload['max_abs_diff']:.3g})")
    if leftover:
        problems.append(f"merge_and_unload left {leftover} LoRA modules in the model")
    if not (math.isfinite(merge["relative_max_diff"]) and merge["relative_max_diff"] <= tol):
        problems.append(f"merged logits differ from the adapter model's: relative max diff "
                        f"{merge['relative_max_diff']:.3g} > {tol}")
    if problems:
        raise Failed("; ".join(problems), evidence)
    return evidence


def check_roundtrip(ctx: Any, route: str) -> dict[str, Any]:
    from probes.checks.train import load_route

    run = LoraRun.from_settings(ctx.settings)
    model = None
    try:
        model, _, targets, info = load_route(ctx, route)
        base_path = _base_path(ctx, route)
        remote = route == "remote-code"
        vocab = int(model.get_input_embeddings().weight.shape[0])
        train_ids = fixed_batch(vocab, run.batch, run.seq, run.seed, ctx.device)
        record = run_lora_steps(model, train_ids, steps=run.steps, lr=run.lr)
        info["train_losses"] = [round(x, 6) for x in record.losses]
        ids = fixed_batch(vocab, INPUT_BATCH, INPUT_SEQ, run.seed + 1, ctx.device)
        folder = Path(tempfile.mkdtemp(prefix=f"adapter-{route}-", dir=str(ctx.work_dir)))

        def load_base() -> Any:
            from probes.checks.lora_train import device_dtype, load_causal_lm

            return load_causal_lm(base_path, device=ctx.device, dtype=device_dtype(ctx.device),
                                  trust_remote_code=remote)

        try:
            evidence = roundtrip_and_judge(model, load_base, folder, ids)
        except Failed as exc:
            exc.evidence = {**info, **exc.evidence}
            raise
        return {**info, "adapter_folder": str(folder), **evidence}
    except Exception as exc:
        if ctx.device == "cuda" and _is_oom(exc):
            raise Infra("CUDA out of memory in adapter.roundtrip") from exc
        raise
    finally:
        model = None
        _free_memory(ctx.device)


def _base_path(ctx: Any, route: str) -> str:
    from probes.checks.lora_train import resolve_exaone35
    from probes.models import llamafied_folder

    handle = resolve_exaone35(ctx)
    return str(llamafied_folder(ctx, handle)) if route == "llamafied" else str(handle.path)


def check_roundtrip_remote(ctx: Any) -> dict[str, Any]:
    return check_roundtrip(ctx, "remote-code")


def check_roundtrip_llamafied(ctx: Any) -> dict[str, Any]:
    return check_roundtrip(ctx, "llamafied")


def checks(ctx: Any) -> list[tuple[str, Any]]:
    return [("adapter.roundtrip", check_roundtrip_remote), ("adapter.roundtrip-llamafied", check_roundtrip_llamafied)]
