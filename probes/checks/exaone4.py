"""Check group "exaone4": does transformers' native EXAONE 4.0 class load and compute sane logits?

`exaone4.native` is `skip` before transformers 4.54 (the class does not exist there). Otherwise it loads
`transformers.Exaone4ForCausalLM` (the pinned hub snapshot when cached, else a tiny fixture written with
transformers' own classes), fails on newly initialised / unused / differing weights, and runs one forward
pass whose logits must be finite and shaped [batch, seq, vocab].
"""
from __future__ import annotations

from typing import Any

from probes.checks.model_load import (
    compare_to_checkpoint,
    dtype_kwargs,
    fixed_input_ids,
    judge_loading,
    load_pretrained,
    logits_evidence,
    run_dtype,
)
from probes.context import Skip
from probes.framework import Failed
from probes.models import ModelHandle, resolve_model

__all__ = ["checks", "check_native", "native_class"]


def native_class() -> Any:
    """transformers.Exaone4ForCausalLM, or Skip naming the installed version when it predates 4.54."""
    import transformers

    cls = getattr(transformers, "Exaone4ForCausalLM", None)
    if cls is None:
        raise Skip(f"Exaone4ForCausalLM absent before transformers 4.54 (installed {transformers.__version__})")
    return cls


def check_native(ctx: Any, handle: ModelHandle | None = None) -> dict[str, Any]:
    import torch

    cls = native_class()
    handle = handle or resolve_model(ctx, "exaone4")
    evidence: dict[str, Any] = handle.evidence()
    ident = handle.repo if handle.source == "hub-cache" else str(handle.path)
    extra = {"revision": handle.revision} if handle.source == "hub-cache" else {}
    loaded = load_pretrained(cls.from_pretrained, ident, **dtype_kwargs(run_dtype(ctx)), **extra)
    model = loaded.model
    evidence["model_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    evidence["n_params"] = sum(p.numel() for p in model.parameters())
    evidence["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    try:
        evidence.update(judge_loading(loaded))
        evidence.update(compare_to_checkpoint(model, handle.path))
        model.to(ctx.device).eval()
        vocab = model.config.vocab_size
        ids = fixed_input_ids(vocab, ctx.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        evidence.update(logits_evidence(logits, ids.shape[0], ids.shape[1], vocab))
    except Failed as exc:
        raise Failed(exc.message, {**evidence, **exc.evidence}) from None
    return evidence


def checks(ctx: Any) -> list[tuple[str, Any]]:
    return [("exaone4.native", check_native)]
