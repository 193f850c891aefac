"""Check group "exaone3.5": does EXAONE 3.5 load through its remote code and compute sane logits?

`exaone3.5.remote-code` loads `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` at the
pinned revision (the real model when the hub cache holds it, else our clean-room fixture), then:
  - fails when transformers reports newly initialised or unused weights, or when any loaded tensor
    differs from the checkpoint's (silent random initialisation);
  - runs one forward pass on fixed ids: logits must be finite and shaped [batch, seq, vocab];
  - records the sha256 of the remote-code files transformers actually imported.
"""
from __future__ import annotations

from typing import Any

from probes.checks.model_load import (
    compare_to_checkpoint, dtype_kwargs, fixed_input_ids, judge_loading, load_pretrained, logits_evidence,
    remote_code_files, run_dtype,
)
from probes.framework import Failed
from probes.models import ModelHandle, resolve_model

__all__ = ["checks", "check_remote_code", "load_remote_code_model"]


def load_remote_code_model(handle: ModelHandle, ctx: Any, **kwargs: Any) -> Any:
    """The guide's call: AutoModelForCausalLM + trust_remote_code, by repo id at the pinned revision when
    the hub cache holds it (offline), else from the fixture folder. Returns a LoadResult."""
    from transformers import AutoModelForCausalLM

    options = {"trust_remote_code": True, **dtype_kwargs(run_dtype(ctx)), **kwargs}
    if handle.source == "hub-cache":
        return load_pretrained(AutoModelForCausalLM.from_pretrained, handle.repo, revision=handle.revision, **options)
    return load_pretrained(AutoModelForCausalLM.from_pretrained, str(handle.path), **options)


def check_remote_code(ctx: Any, handle: ModelHandle | None = None) -> dict[str, Any]:
    import torch

    handle = handle or resolve_model(ctx, "exaone3.5")
    evidence: dict[str, Any] = handle.evidence()
    loaded = load_remote_code_model(handle, ctx)
    model = loaded.model
    evidence["model_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    evidence["remote_code"] = remote_code_files(model, handle.path)
    if not evidence["remote_code"]:
        raise Failed(f"{evidence['model_class']} is not remote code: trust_remote_code did not load the "
                     "checkpoint's modeling file", evidence)
    evidence["n_params"] = sum(p.numel() for p in model.parameters())
    evidence["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    try:
        evidence.update(judge_loading(loaded))
        evidence.update(compare_to_checkpoint(model, handle.path))
    except Failed as exc:
        raise Failed(exc.message, {**evidence, **exc.evidence}) from None

    model.to(ctx.device).eval()
    vocab = model.config.vocab_size
    ids = fixed_input_ids(vocab, ctx.device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    try:
        evidence.update(logits_evidence(logits, ids.shape[0], ids.shape[1], vocab))
    except Failed as exc:
        raise Failed(exc.message, {**evidence, **exc.evidence}) from None
    return evidence


def checks(ctx: Any) -> list[tuple[str, Any]]:
    return [("exaone3.5.remote-code", check_remote_code)]
