"""Check group "attention": which attention backends does this stack accept and run, and do they agree?

For each backend the EXAONE 3.5 model is loaded as the team guide does
(`AutoModelForCausalLM.from_pretrained(path, attn_implementation=X, trust_remote_code=True)`), and the
evidence records whether transformers accepted the option, whether the forward pass ran, and the max
|logits - eager logits| on the same ids, which must be within the dtype's tolerance:
  - attention.eager / .sdpa: always; .flash_attention_2: needs flash-attn and CUDA;
  - attention.xformers: the guide's `attn_implementation="xformers"` tried as written (needs xformers in the cell);
  - attention.xformers-kernel: xformers.ops.memory_efficient_attention registered through transformers'
    AttentionInterface and called inside the model's attention (needs xformers and CUDA);
  - attention.flash_attention_4 / attention.flash_attention_4-exaone4: FlashAttention 4 (PyPI
    `flash-attn-4`, CuTe DSL, compiled just in time, Hopper and later) on the llamafied EXAONE 3.5 and on
    native EXAONE 4; needs flash-attn-4, CUDA and compute capability >= 9.

FlashAttention 4 and the remote code. transformers (5.x; 4.57.6 has no `flash_attention_4` and rejects the
name) detects FA4 by the distribution `flash-attn-4` owning the `flash_attn` import package
(utils/import_utils.py is_flash_attn_4_available) and imports `from flash_attn.cute import
flash_attn_func, flash_attn_varlen_func` (modeling_flash_attention_utils.py _lazy_imports). Before that,
PreTrainedModel._flash_attn_can_dispatch refuses any model class whose `_supports_flash_attn` is False,
and EXAONE 3.5's remote code (hub and our fixtures) declares only the 4.x attribute
`_supports_flash_attn_2 = True`: so on transformers 5.x `attn_implementation="flash_attention_4"` on the
remote code raises "ExaoneForCausalLM does not support Flash Attention 4 yet" whether or not FA4 is
installed (catalogue: transformers-remote-code-no-flash-attn-flag). Where it is accepted, the remote
code's own ExaoneAttention picks its flash class for any name containing "flash" and calls
transformers' `_flash_attention_forward`, which runs whichever flash implementation transformers loaded.
The checks therefore run on the llamafied model (LlamaForCausalLM, same weights) and on Exaone4, and
record the remote code's attempt as evidence (`remote_code_attempt`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from probes.checks.exaone35 import load_remote_code_model
from probes.checks.model_load import dtype_kwargs, fixed_input_ids, logits_evidence, run_dtype
from probes.context import Skip
from probes.framework import Failed
from probes.models import ModelHandle, llamafied_folder, resolve_model

__all__ = ["TOLERANCE", "checks", "compare_backend", "eager_reference", "register_kernel", "xformers_kernel_attention",
           "require_flash_attn_4", "fa4_first_call"]

# (atol, rtol) on logits vs eager in the same dtype: |diff| <= atol + rtol * max|eager logits|.
# fp32 backends differ only by summation order; bf16/fp16 round every matmul, so their bar is wider.
TOLERANCE = {"float32": (1e-4, 1e-4), "bfloat16": (2e-2, 2e-2), "float16": (5e-3, 5e-3)}
XFORMERS_KERNEL_NAME = "xformers_kernel"


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _forward(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def _load(ctx: Any, handle: ModelHandle, route: str, implementation: str) -> Any:
    if route == "remote-code":
        return load_remote_code_model(handle, ctx, attn_implementation=implementation).model
    from transformers import AutoModelForCausalLM

    if route == "native":   # EXAONE 4: transformers' own class, the hub snapshot or the tiny fixture
        ident = handle.repo if handle.source == "hub-cache" else str(handle.path)
        extra = {"revision": handle.revision} if handle.source == "hub-cache" else {}
        return AutoModelForCausalLM.from_pretrained(ident, attn_implementation=implementation,
                                                    **extra, **dtype_kwargs(run_dtype(ctx)))

    return AutoModelForCausalLM.from_pretrained(str(llamafied_folder(ctx, handle)), attn_implementation=implementation,
                                                **dtype_kwargs(run_dtype(ctx)))


def eager_reference(ctx: Any, handle: ModelHandle, *, route: str | None = None) -> Any:
    """(ids, eager logits, vocab, route) on the fixed ids, computed once per run (the bar every backend is
    held to). The route is the remote code; where the remote code of this revision does not load on this
    transformers (exaone3.5.remote-code says why), the llamafied model, so that the question these checks
    answer, which attention backends this stack runs, still gets an answer."""
    key = ("attention.eager-logits", str(handle.path), ctx.device, route)
    if key not in ctx.cache:
        reason = "asked for by the check" if route else None
        if route is None:
            route = "remote-code"
            try:
                model = _load(ctx, handle, route, "eager")
            except Exception as exc:  # noqa: BLE001 - recorded as the reason for the other route
                route, reason = "llamafied", f"remote code does not load: {type(exc).__name__}: {str(exc)[:300]}"
                model = _load(ctx, handle, route, "eager")
        else:
            model = _load(ctx, handle, route, "eager")
        model = model.to(ctx.device).eval()
        ids = fixed_input_ids(model.config.vocab_size, ctx.device)
        ctx.cache[key] = (ids, _forward(model, ids), model.config.vocab_size, {"route": route, "route_reason": reason})
        del model
    return ctx.cache[key]


def compare_backend(ctx: Any, implementation: str, handle: ModelHandle | None = None, *,
                    route: str | None = None) -> dict[str, Any]:
    """Load with `attn_implementation=implementation` as the guide writes it, run, compare with eager.
    `route` forces the model: "llamafied" for a kernel registered through transformers' AttentionInterface,
    which only models that dispatch through that registry call (EXAONE 3.5's remote code picks among its
    own eager / sdpa / flash classes)."""
    import torch

    handle = handle or resolve_model(ctx, "exaone3.5")
    dtype = run_dtype(ctx)
    ids, reference, vocab, route_info = eager_reference(ctx, handle, route=route)
    evidence: dict[str, Any] = {**handle.evidence(), **route_info, "requested": implementation,
                                "dtype": _dtype_name(dtype), "device": ctx.device}
    try:
        model = _load(ctx, handle, route_info["route"], implementation)
    except Exception as exc:
        evidence["accepted"] = False
        raise Failed(f"transformers rejected attn_implementation={implementation!r}: "
                     f"{type(exc).__name__}: {exc}", evidence) from exc
    used = getattr(model.config, "_attn_implementation", None)
    evidence.update(accepted=True, attn_implementation=used)
    if used != implementation:
        raise Failed(f"asked for attn_implementation={implementation!r} but the model runs {used!r}", evidence)
    model.to(ctx.device).eval()
    try:
        logits = _forward(model, ids)
    except Exception as exc:
        evidence["ran"] = False
        raise Failed(f"attn_implementation={implementation!r} was accepted but the forward pass raised "
                     f"{type(exc).__name__}: {exc}", evidence) from exc
    evidence["ran"] = True
    try:
        evidence.update(logits_evidence(logits, ids.shape[0], ids.shape[1], vocab))
    except Failed as exc:
        raise Failed(exc.message, {**evidence, **exc.evidence}) from None
    atol, rtol = TOLERANCE[_dtype_name(dtype)]
    scale = reference.abs().max().item()
    diff = (logits - reference).abs()
    evidence.update(
        max_abs_diff_vs_eager=diff.max().item(),
        mean_abs_diff_vs_eager=diff.mean().item(),
        argmax_agreement=(logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
        tolerance=atol + rtol * scale,
        tolerance_rule=f"|diff| <= {atol:g} + {rtol:g} * max|eager logits| ({_dtype_name(dtype)})",
    )
    if not evidence["max_abs_diff_vs_eager"] <= evidence["tolerance"]:
        raise Failed(f"{implementation} logits differ from eager by {evidence['max_abs_diff_vs_eager']:.3g} "
                     f"> tolerance {evidence['tolerance']:.3g}", evidence)
    del model
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    return evidence


def _causal_bias_for(q_len: int, k_len: int, mask: Any) -> Any:
    """The xformers bias for causal attention with queries aligned to the end of the keys (KV cache).
    Padding masks are refused rather than silently ignored."""
    import torch
    from xformers.ops import fmha

    if mask is not None:
        allowed = mask if mask.dtype == torch.bool else mask == 0
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=allowed.device).tril(k_len - q_len)
        if not bool((allowed[..., :q_len, :k_len] == causal).all()):
            raise NotImplementedError("xformers kernel adapter: padding masks are not supported")
    if q_len == k_len:
        return fmha.attn_bias.LowerTriangularMask()
    return fmha.attn_bias.LowerTriangularFromBottomRightMask()


def xformers_kernel_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                              scaling: float | None = None, dropout: float = 0.0, **_: Any) -> tuple[Any, None]:
    """transformers attention-function signature over xformers.ops.memory_efficient_attention.
    q/k/v arrive as [B, heads, T, D]; xformers wants [B, T, heads, D]; KV heads are expanded for GQA."""
    from xformers.ops import memory_efficient_attention

    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    bias = _causal_bias_for(q.shape[1], k.shape[1], attention_mask)
    out = memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout, scale=scaling)
    return out, None  # already [B, T, heads, D], as transformers' attention functions return


def register_kernel(name: str, function: Callable[..., Any]) -> None:
    """Register an attention function (and sdpa's mask builder for it) with transformers' registries."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def _require_xformers(ctx: Any) -> str:
    version = ctx.installed("xformers")
    if ctx.pins.get("xformers") == "none" or version is None:
        raise Skip("xformers not in this cell")
    return version


def _require_flash_attn(ctx: Any) -> str:
    version = ctx.installed("flash-attn") or ctx.installed("flash_attn")
    if "none" in (ctx.pins.get("flash-attn"), ctx.pins.get("flash_attn")) or version is None:
        raise Skip("flash-attn not in this cell")
    return version


FA4_DISTRIBUTION = "flash-attn-4"
FA4_MIN_CAPABILITY = 9   # Hopper; transformers' FLASH_ATTENTION_COMPATIBILITY_MATRIX[4] says the same


def require_flash_attn_4(ctx: Any) -> dict[str, Any]:
    """The gates of every FlashAttention 4 check, in order: skip where the cell leaves flash-attn-4 out
    or (on a CPU run) where there is no GPU, skip below compute capability 9; then import
    `flash_attn.cute` as transformers does, so a package that is installed but cannot be used fails
    with the import's own signature (e.g. flash-attn-4-cutlass-dsl-missing)."""
    version = ctx.require(FA4_DISTRIBUTION)
    ctx.require_gpu()
    import importlib

    import torch

    major, minor = torch.cuda.get_device_capability()
    if major < FA4_MIN_CAPABILITY:
        raise Skip(f"FlashAttention 4 needs compute capability >= {FA4_MIN_CAPABILITY}.0 (Hopper); "
                   f"this GPU is {major}.{minor}")
    cute = importlib.import_module("flash_attn.cute")
    return {"flash_attn_4": version, "flash_attn_cute_version": getattr(cute, "__version__", None),
            "compute_capability": f"{major}.{minor}",
            "cute_dsl_cache": {k: os.environ.get(k) for k in FA4_CACHE_ENV}}


# FA4's persistent JIT cache (flash_attn/cute/cache_utils.py, flash-attn-4 4.0.0b36): off unless
# FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1, in FLASH_ATTENTION_CUTE_DSL_CACHE_DIR (default
# /tmp/$USER/flash_attention_cute_dsl_cache); the runners set both (pinmatrix/environ/compile_cache.py).
FA4_CACHE_ENV = ("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR")


def fa4_first_call(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int) -> dict[str, Any]:
    """Time flash_attn.cute.flash_attn_func forward + backward at one attention shape twice: the first
    call compiles the CuTe DSL kernels just in time (or loads them from the persistent cache), the second
    runs them compiled. Their difference is the compile time, kept apart from every timed training step."""
    import time

    import torch
    from flash_attn.cute import flash_attn_func

    def call() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        q = torch.randn(batch, seq, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(batch, seq, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn_like(k, requires_grad=True)
        out = flash_attn_func(q, k, v, causal=True)
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    first = call()
    second = call()
    cache_dir = os.environ.get("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR")
    return {"shape_bshd": [batch, seq, heads, head_dim], "kv_heads": kv_heads,
            "first_call_s": round(first, 3), "second_call_s": round(second, 4),
            "jit_compile_s": round(max(first - second, 0.0), 3),
            "persistent_cache": os.environ.get("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED") == "1",
            "cache_files_after": (sum(1 for _ in Path(cache_dir).rglob("*") if _.is_file())
                                  if cache_dir and Path(cache_dir).is_dir() else None)}


def _remote_code_fa4_attempt(ctx: Any) -> dict[str, Any]:
    """What the remote-code EXAONE 3.5 does with attn_implementation="flash_attention_4" here."""
    from probes import signatures

    try:
        handle = resolve_model(ctx, "exaone3.5")
        model = _load(ctx, handle, "remote-code", "flash_attention_4")
    except Exception as exc:  # noqa: BLE001 - recorded, not judged
        found = signatures.classify(type(exc).__name__, str(exc))
        return {"accepted": False, "error": f"{type(exc).__name__}: {str(exc)[:400]}", "signature": found.id}
    used = getattr(model.config, "_attn_implementation", None)
    del model
    return {"accepted": True, "attn_implementation": used}


def _check_flash_attention_4(ctx: Any, model: str) -> dict[str, Any]:
    info = require_flash_attn_4(ctx)
    if model == "exaone4":
        from probes.checks.exaone4 import native_class

        native_class()
        handle, route = resolve_model(ctx, "exaone4"), "native"
        info["remote_code_attempt"] = None
    else:
        handle, route = resolve_model(ctx, "exaone3.5"), "llamafied"
        info["remote_code_attempt"] = _remote_code_fa4_attempt(ctx)
    try:
        return {**info, **compare_backend(ctx, "flash_attention_4", handle, route=route)}
    except Failed as exc:
        exc.evidence.update(info)
        raise


def check_flash_attention_4(ctx: Any) -> dict[str, Any]:
    return _check_flash_attention_4(ctx, "exaone3.5")


def check_flash_attention_4_exaone4(ctx: Any) -> dict[str, Any]:
    return _check_flash_attention_4(ctx, "exaone4")


def check_eager(ctx: Any) -> dict[str, Any]:
    return compare_backend(ctx, "eager")


def check_sdpa(ctx: Any) -> dict[str, Any]:
    return compare_backend(ctx, "sdpa")


def check_flash_attention_2(ctx: Any) -> dict[str, Any]:
    version = _require_flash_attn(ctx)
    ctx.require_gpu()
    return {"flash_attn": version, **compare_backend(ctx, "flash_attention_2")}


def check_xformers_guide(ctx: Any) -> dict[str, Any]:
    version = _require_xformers(ctx)
    try:
        return {"xformers": version, **compare_backend(ctx, "xformers")}
    except Failed as exc:
        exc.evidence["xformers"] = version
        raise


def check_xformers_kernel(ctx: Any) -> dict[str, Any]:
    version = _require_xformers(ctx)
    ctx.require_gpu()  # xformers' memory-efficient kernels are CUDA kernels
    try:
        register_kernel(XFORMERS_KERNEL_NAME, xformers_kernel_attention)
    except ImportError as exc:
        raise Skip(f"this transformers has no AttentionInterface to register a kernel with ({exc})") from exc
    try:
        # On the llamafied model: EXAONE 3.5's remote code never calls a kernel registered with
        # AttentionInterface (it picks among its own classes by name, and an unknown name means eager with
        # the mask transformers builds for the registered name), so only LlamaForCausalLM can host it.
        return {"xformers": version, "registered_as": XFORMERS_KERNEL_NAME,
                **compare_backend(ctx, XFORMERS_KERNEL_NAME, route="llamafied")}
    except Failed as exc:
        exc.evidence.update(xformers=version, registered_as=XFORMERS_KERNEL_NAME)
        raise


def checks(ctx: Any) -> list[tuple[str, Callable[[Any], dict[str, Any]]]]:
    return [
        ("attention.eager", check_eager),
        ("attention.sdpa", check_sdpa),
        ("attention.flash_attention_2", check_flash_attention_2),
        ("attention.xformers", check_xformers_guide),
        ("attention.xformers-kernel", check_xformers_kernel),
        ("attention.flash_attention_4", check_flash_attention_4),
        ("attention.flash_attention_4-exaone4", check_flash_attention_4_exaone4),
    ]
