"""Check group "generate": greedy generation works with a LoRA adapter attached to EXAONE 3.5.

Passes when `generate()` on the peft model
  - returns exactly the requested number of new tokens (min_new_tokens = max_new_tokens = N, so an
    early EOS cannot shorten a correct run);
  - returns the same tokens on a second call (greedy is deterministic);
  - produced finite logits at every generated position;
and the adapter is really in the forward path (logits with the adapter differ from logits with it disabled).
"""
from __future__ import annotations

import math
import time
from typing import Any

from probes.checks.lora_train import _free_memory, build_hf_peft_model, fixed_batch
from probes.framework import Failed

__all__ = ["checks", "check_generate", "generate_and_judge", "DEFAULT_NEW_TOKENS", "PROMPT_TOKENS"]

DEFAULT_NEW_TOKENS = 16
PROMPT_TOKENS = 8


def _greedy(model: Any, input_ids: Any, new_tokens: int, pad_token_id: int, use_cache: bool) -> tuple[Any, Any, float]:
    import torch

    start = time.monotonic()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            num_beams=1,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad_token_id,
            use_cache=use_cache,
            output_logits=True,
            return_dict_in_generate=True,
        )
    if input_ids.is_cuda:
        torch.cuda.synchronize()
    seconds = time.monotonic() - start
    sequences = out.sequences if hasattr(out, "sequences") else out
    logits = getattr(out, "logits", None)
    return sequences, logits, seconds


def _adapter_logit_delta(model: Any, input_ids: Any) -> float | None:
    """max |logits(adapter on) - logits(adapter off)|; None where the model offers no way to disable it."""
    import torch

    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        return None
    with torch.no_grad():
        on = model(input_ids=input_ids).logits.float()
        with disable():
            off = model(input_ids=input_ids).logits.float()
    return float((on - off).abs().max().item())


def generate_and_judge(model: Any, input_ids: Any, new_tokens: int, *, pad_token_id: int = 0) -> dict[str, Any]:
    """Run greedy generation twice and judge it; Failed names every bar that was missed."""
    import torch

    model.eval()
    prompt_len = int(input_ids.shape[1])
    try:
        first, logits, first_s = _greedy(model, input_ids, new_tokens, pad_token_id, use_cache=True)
    except Exception as exc:
        # Tell a broken KV cache apart from a broken forward: retry once without the cache.
        try:
            _greedy(model, input_ids, new_tokens, pad_token_id, use_cache=False)
        except Exception:
            raise Failed(f"generate() raised {type(exc).__name__}: {exc}") from exc
        raise Failed(f"generate() with the KV cache raised {type(exc).__name__}: {exc}; "
                     f"without the cache it runs") from exc
    second, _, second_s = _greedy(model, input_ids, new_tokens, pad_token_id, use_cache=True)

    produced = int(first.shape[1]) - prompt_len
    new_ids = first[0, prompt_len:].tolist()
    deterministic = first.shape == second.shape and bool(torch.equal(first.cpu(), second.cpu()))
    if logits is None:
        steps_with_logits, nonfinite_steps = 0, None
    else:
        finite_per_step = [bool(torch.isfinite(step.float()).all().item()) for step in logits]
        steps_with_logits = len(finite_per_step)
        nonfinite_steps = [i for i, ok in enumerate(finite_per_step) if not ok]
    delta = _adapter_logit_delta(model, input_ids)
    evidence: dict[str, Any] = {
        "prompt_tokens": prompt_len,
        "requested_new_tokens": new_tokens,
        "new_tokens": produced,
        "tokens": new_ids,
        "deterministic": deterministic,
        "second_call_tokens": second[0, prompt_len:].tolist() if not deterministic else None,
        "logit_steps": steps_with_logits,
        "nonfinite_logit_steps": nonfinite_steps,
        "adapter_logit_delta": delta,
        "time_s": round(first_s, 4),
        "second_time_s": round(second_s, 4),
        "tokens_per_s": round(produced / first_s, 2) if first_s > 0 and produced > 0 else None,
        "bar": "new tokens == requested; identical on a second call; every step's logits finite; "
               "adapter changes the logits",
    }
    problems: list[str] = []
    if produced != new_tokens:
        problems.append(f"generated {produced} new tokens, requested {new_tokens}")
    if not deterministic:
        problems.append("greedy generation differed between two identical calls")
    if logits is None or steps_with_logits != produced:
        problems.append(f"generate() returned logits for {steps_with_logits} steps, expected {produced}")
    elif nonfinite_steps:
        problems.append(f"non-finite logits at generation steps {nonfinite_steps[:8]}")
    if delta is not None and not (math.isfinite(delta) and delta > 0):
        problems.append(f"the LoRA adapter does not change the logits (max |delta| = {delta})")
    if problems:
        raise Failed("; ".join(problems), evidence)
    return evidence


def check_generate(ctx: Any) -> dict[str, Any]:
    new_tokens = int(ctx.settings.get("generate_tokens", DEFAULT_NEW_TOKENS))
    seed = int(ctx.settings.get("seed", 0))
    # init_lora_weights=False: A and B both random, so the adapter really alters the output
    # (the default B = 0 would make "attached" indistinguishable from "absent").
    model, info = build_hf_peft_model(ctx, init_lora_weights=False)
    try:
        vocab = int(model.get_input_embeddings().weight.shape[0])
        prompt = fixed_batch(vocab, 1, PROMPT_TOKENS, seed, ctx.device)
        pad = getattr(model.config, "pad_token_id", None)
        model.config.use_cache = True   # build_hf_peft_model turns it off for training
        try:
            evidence = generate_and_judge(model, prompt, new_tokens, pad_token_id=0 if pad is None else int(pad))
        except Failed as exc:
            exc.evidence = {**info, **exc.evidence}
            raise
    finally:
        del model
        _free_memory(ctx.device)
    return {**info, **evidence}


def checks(ctx: Any) -> list[tuple[str, Any]]:
    return [("generate", check_generate)]
