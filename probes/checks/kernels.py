"""Group "kernels": one real op of each compiled-kernel package, checked against plain PyTorch.

Importing is not enough: a package can import while its extension fails to load, so each check
calls an op on the cell's device and compares it with a reference computed in float32.
"""
from __future__ import annotations

import importlib
import math
from typing import Any

from probes import signatures
from probes.context import Context, Skip
from probes.framework import CheckFn, Failed

# Tolerances on max |kernel - reference|: float32 kernels are near-exact, half precision is not.
ATTN_TOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
SEED = 1234


def checks(ctx: Context) -> list[tuple[str, CheckFn]]:
    return [("kernel.xformers", check_xformers), ("kernel.flash-attn", check_flash_attn),
            ("kernel.bitsandbytes", check_bitsandbytes)]


def _torch():
    try:
        import torch
    except Exception as exc:   # noqa: BLE001 - no torch: nothing to compare against
        raise Skip(f"torch does not import here: {type(exc).__name__}: {exc}") from None
    return torch


def reference_attention(q, k, v):
    """softmax(Q K^T / sqrt(d)) V in float32; tensors in (batch, seq, heads, head_dim) layout."""
    torch = _torch()
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))          # -> (b, h, s, d)
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return (torch.softmax(scores, dim=-1) @ vf).transpose(1, 2)           # -> (b, s, h, d)


def _attention_inputs(device: str, dtype_name: str, shape=(2, 64, 4, 32)):
    torch = _torch()
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    dtype = getattr(torch, dtype_name)
    return [torch.randn(*shape, generator=generator).to(device=device, dtype=dtype) for _ in range(3)]


def compare(out, ref, tolerance: float, what: str, evidence: dict[str, Any]) -> dict[str, Any]:
    """Fill `evidence` with the comparison; raise Failed when shapes differ or the error exceeds `tolerance`."""
    torch = _torch()
    evidence["output_shape"] = list(out.shape)
    if tuple(out.shape) != tuple(ref.shape):
        raise Failed(f"{what} returned shape {list(out.shape)}, expected {list(ref.shape)}", evidence)
    diff = (out.float().cpu() - ref.float().cpu()).abs()
    finite = bool(torch.isfinite(out.float()).all())
    evidence.update(max_abs_err=float(diff.max()) if finite else float("nan"), tolerance=tolerance, finite=finite)
    if not finite or not diff.max() <= tolerance:
        raise Failed(f"{what} disagrees with the PyTorch reference: max abs error "
                     f"{evidence['max_abs_err']} > tolerance {tolerance}", evidence)
    return evidence


def check_xformers(ctx: Context) -> dict:
    version = ctx.require("xformers")
    _torch()
    ops = importlib.import_module("xformers.ops")
    # xformers has CPU operators in some versions: try the cell's device and report what ran.
    dtype = "float16" if ctx.device == "cuda" else "float32"
    q, k, v = _attention_inputs(ctx.device, dtype)
    evidence: dict[str, Any] = {"version": version, "device": ctx.device, "dtype": dtype,
                                "shape_bshd": list(q.shape), "op": "xformers.ops.memory_efficient_attention"}
    try:
        out = ops.memory_efficient_attention(q, k, v)
    except NotImplementedError as exc:
        if ctx.device == "cpu" and "No operator found" in str(exc):
            raise Skip("needs a GPU: this xformers has no CPU operator for memory_efficient_attention") from exc
        cause = _with_import_cause(ctx, "xformers", exc, evidence)
        if cause is exc:
            raise
        raise cause from exc
    return compare(out, reference_attention(q, k, v), ATTN_TOL[dtype], "xformers memory_efficient_attention", evidence)


def _with_import_cause(ctx: Context, package: str, exc: BaseException, evidence: dict[str, Any]) -> BaseException:
    """`exc`, or a Failed naming the root cause when the package warned about it at import.

    xformers, for one, only *warns* at import that its extensions did not load ("built for
    PyTorch X"), and the op later fails with a generic "No operator found": the warning is the cause.
    """
    record = (ctx.cache.get("imports") or {}).get(package)
    for warning in getattr(record, "warnings", []):
        found = signatures.classify("ImportWarning", warning)
        if found.known:
            evidence["import_warning"] = warning
            failed = Failed(f"{type(exc).__name__}: {exc}\n(at import, {package} said: {warning})", evidence)
            failed.source = (type(exc).__name__, warning, "")
            return failed
    return exc


def check_flash_attn(ctx: Context) -> dict:
    version = ctx.require("flash-attn")
    _torch()
    # Import before the GPU gate: a flash-attn whose extension cannot load fails on CPU hosts too.
    interface = importlib.import_module("flash_attn")
    ctx.require_gpu()   # flash-attn's kernels are CUDA-only
    dtype = "bfloat16"
    q, k, v = _attention_inputs("cuda", dtype)
    evidence: dict[str, Any] = {"version": version, "device": "cuda", "dtype": dtype,
                                "shape_bshd": list(q.shape), "op": "flash_attn.flash_attn_func"}
    out = interface.flash_attn_func(q, k, v, dropout_p=0.0, causal=False)
    return compare(out, reference_attention(q, k, v), ATTN_TOL[dtype], "flash_attn_func", evidence)


def check_bitsandbytes(ctx: Context) -> dict:
    version = ctx.require("bitsandbytes")
    torch = _torch()
    bnb = importlib.import_module("bitsandbytes")
    functional = importlib.import_module("bitsandbytes.functional")
    device = ctx.device
    evidence: dict[str, Any] = {"version": version, "device": device}
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    weight = torch.randn(256, 256, generator=generator).to(device)
    # 8-bit blockwise round trip: the dynamic code's worst case is about 1% of each block's absmax.
    try:
        quantized, state = functional.quantize_blockwise(weight, blocksize=256)
        restored = functional.dequantize_blockwise(quantized, state)
    except NotImplementedError as exc:
        if device == "cpu":
            raise Skip(f"needs a GPU: bitsandbytes has no CPU blockwise quantisation here ({exc})") from exc
        raise
    absmax = float(weight.abs().max())
    err = float((restored.float() - weight).abs().max())
    evidence["blockwise8"] = {"max_abs_err": err, "absmax": absmax, "tolerance": 0.02 * absmax,
                              "quantized_dtype": str(quantized.dtype)}
    if not math.isfinite(err) or err > 0.02 * absmax or quantized.dtype != torch.uint8:
        raise Failed(f"bitsandbytes 8-bit blockwise round trip is off: max abs error {err} "
                     f"> {0.02 * absmax} (dtype {quantized.dtype})", evidence)
    if device == "cuda":
        _linear4bit(bnb, functional, torch, weight, generator, evidence, "cuda")
        return evidence
    # The 4-bit path on CPU exists only in newer releases (0.4x multi-backend): run it where it
    # exists and judge its numbers, but its absence on CPU is not a verdict on the stack.
    try:
        _linear4bit(bnb, functional, torch, weight, generator, evidence, "cpu")
    except Failed:
        raise
    except Exception as exc:   # noqa: BLE001 - recorded, not judged (see above)
        evidence["linear4bit"] = {"not_run_on_cpu": f"{type(exc).__name__}: {exc}"[:500]}
    return evidence


def _linear4bit(bnb, functional, torch, weight, generator, evidence: dict[str, Any], device: str) -> None:
    """NF4 Linear4bit forward (the QLoRA path) against x @ dequantized(W)^T, plus the quantisation error."""
    compute_dtype = torch.float16 if device == "cuda" else torch.float32
    dense = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        dense.weight.copy_(weight.cpu())
    layer = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=False,
                              compute_dtype=compute_dtype, quant_type="nf4")
    layer.load_state_dict(dense.state_dict())
    layer = layer.to(device)                       # quantises the weight on the move
    if layer.weight.data.dtype != torch.uint8:
        raise NotImplementedError(f"Linear4bit did not quantise its weight on {device}")
    x = torch.randn(8, weight.shape[1], generator=generator).to(device, compute_dtype)
    out = layer(x)
    dequant = functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    expected = x.float() @ dequant.t()
    forward_err = float((out.float() - expected).abs().max())
    # fp16 accumulation over 256 products: half a percent of the output scale (seen: 0.03 of 56 on H100).
    forward_tol = 5e-3 * float(expected.abs().max()) + 1e-2
    quant_err = float((dequant - weight.float()).abs().mean() / weight.float().abs().mean())
    evidence["linear4bit"] = {"device": device, "compute_dtype": str(compute_dtype),
                              "forward_max_abs_err": forward_err, "forward_tolerance": forward_tol,
                              "weight_mean_rel_err": quant_err, "weight_tolerance": 0.2}
    if not (forward_err <= forward_tol and quant_err <= 0.2):
        raise Failed(f"bitsandbytes Linear4bit (nf4) is off: forward error {forward_err} (tol {forward_tol}), "
                     f"weight mean relative error {quant_err} (tol 0.2)", evidence)
