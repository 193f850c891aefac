"""Liger Kernel on a Llama model: require it, and prove from the modules that its patch took.

`apply_liger_kernel_to_llama(model=m)` (liger_kernel/transformers/monkey_patch.py, liger-kernel 0.8.5)
replaces, by default: transformers' `modeling_llama.apply_rotary_pos_emb` (Liger's RoPE),
`modeling_llama.LlamaRMSNorm` and `LlamaMLP` (for models built afterwards), and on the given model
instance every RMSNorm's and every decoder MLP's `forward` (bound into the module's `__dict__`) and the
causal LM's `forward` (fused linear cross entropy). Liger only logs, at INFO, when it has nothing to
patch (EXAONE 3.5's remote-code `exaone` type has no Liger patch at all), so the log proves nothing:
`liger_patch_report` looks at which function each module's forward actually is, and `verify_liger`
fails unless every one of them is Liger's. liger-kernel 0.8.5 refuses transformers < 5.0.0 at import
(catalogue: liger-kernel-needs-transformers-5).
"""
from __future__ import annotations

import sys
from typing import Any

from probes.framework import Failed

__all__ = ["require_liger", "liger_patch_report", "verify_liger", "forward_origin"]

LIGER_MODULE_PREFIX = "liger_kernel."


def require_liger(ctx: Any) -> dict[str, Any]:
    """Skip where the cell leaves liger-kernel out or has no GPU (Liger's kernels are Triton GPU
    kernels); then import its transformers integration, so a liger-kernel that cannot be used here fails
    with the import's own error."""
    version = ctx.require("liger-kernel")
    ctx.require_gpu()
    from liger_kernel.transformers import apply_liger_kernel_to_llama  # noqa: F401 - the import is the check

    return {"liger_kernel": version}


def forward_origin(module: Any) -> str:
    """The Python module that defines the function `module(...)` runs as its forward: an instance-level
    `forward` (what Liger binds into `module.__dict__`) wins over the class's."""
    bound = vars(module).get("forward")
    func = getattr(bound, "__func__", bound) if bound is not None else getattr(type(module), "forward", None)
    return getattr(func, "__module__", None) or "?"


def _causal_lm(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (PeftModel.get_base_model), else `model`."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def liger_patch_report(model: Any) -> dict[str, Any]:
    """Per place Liger patches on a Llama model: how many modules run Liger's forward, and which do not."""
    lm = _causal_lm(model)
    inner = getattr(lm, getattr(lm, "base_model_prefix", "model"), lm)
    layers = list(getattr(inner, "layers", []))
    places: dict[str, list[tuple[str, Any]]] = {
        "rms_norm": [("model.norm", getattr(inner, "norm", None))]
        + [(f"layers.{i}.{n}", getattr(layer, n, None)) for i, layer in enumerate(layers)
           for n in ("input_layernorm", "post_attention_layernorm")],
        "swiglu_mlp": [(f"layers.{i}.mlp", getattr(layer, "mlp", None)) for i, layer in enumerate(layers)],
        "causal_lm_forward": [(type(lm).__name__, lm)],
    }
    report: dict[str, Any] = {"model_class": f"{type(lm).__module__}.{type(lm).__name__}",
                              "decoder_layers": len(layers)}
    for place, entries in places.items():
        origins = {name: (forward_origin(mod) if mod is not None else "absent") for name, mod in entries}
        patched = [n for n, o in origins.items() if o.startswith(LIGER_MODULE_PREFIX)]
        report[place] = {"patched": len(patched), "of": len(origins),
                         "forward_modules": sorted(set(origins.values())),
                         "unpatched": [n for n in origins if n not in patched][:8]}
    llama_module = sys.modules.get(type(lm).__module__)
    rope = getattr(llama_module, "apply_rotary_pos_emb", None)
    report["rope"] = {"apply_rotary_pos_emb": f"{getattr(rope, '__module__', '?')}."
                                              f"{getattr(rope, '__name__', '?')}" if rope else None}
    return report


def verify_liger(model: Any) -> dict[str, Any]:
    """The report, or Failed (with it) when any RMSNorm, decoder MLP or the causal LM forward is not
    Liger's, or when the model has no decoder layers to patch."""
    report = liger_patch_report(model)
    short = [place for place in ("rms_norm", "swiglu_mlp", "causal_lm_forward")
             if report[place]["patched"] != report[place]["of"]]
    if not report["decoder_layers"] or short:
        detail = "; ".join(f"{p}: {report[p]['patched']}/{report[p]['of']} run Liger's forward "
                           f"(forwards from {', '.join(report[p]['forward_modules'])})" for p in short)
        raise Failed(f"Liger Kernel's patch did not take on {report['model_class']}: "
                     f"{detail or 'no decoder layers found'}", {"liger_patch": report})
    return report
