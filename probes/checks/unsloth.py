"""Check group "unsloth": does unsloth load EXAONE, which code path does it take, and can it train it?

  unsloth.load.exaone3.5   FastLanguageModel.from_pretrained on the remote-code EXAONE 3.5 checkpoint
  unsloth.load.exaone4     the same on EXAONE 4.0 (native in transformers >= 4.54)
  unsloth.llamafied        EXAONE 3.5 converted to the Llama layout, loaded through unsloth's Llama fast
                           path; logits compared with the remote-code model (tolerance stated in evidence)
  lora-train.unsloth       FastLanguageModel.get_peft_model + the lora-train bar (probes/checks/lora_train.py)

How unsloth dispatches (read from unsloth/models/loader.py, 2025-2026 releases): FastLanguageModel
.from_pretrained reads the config's model_type and hands "llama", "mistral", "qwen2", "qwen3", "gemma",
"gemma2" (and a few more) to its own hand-written fast classes (FastLlamaModel, ...). Every other model
type, including remote-code ones such as EXAONE 3.5's "exaone", goes to the generic FastModel /
FastBaseModel path, which loads the transformers (or remote-code) class and patches what its compiler
recognises. It also defaults to load_in_4bit=True and use_gradient_checkpointing="unsloth"; both are
turned off here so the comparison is 16-bit LoRA without recomputation.

Which route was taken is recorded three ways: the unsloth loader classes that were actually called
(a transparent wrapper on their from_pretrained, removed afterwards), the module that defines the
returned model's forward functions, and unsloth's printed banner / log lines.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from probes.checks.lora_train import (
    EXAONE35_LORA_TARGETS,
    LLAMA_LORA_TARGETS,
    LORA_ALPHA,
    LORA_RANK,
    LoraRun,
    _free_memory,
    _is_oom,
    fixed_batch,
    load_causal_lm,
    model_summary,
    train_and_judge,
)
from probes.framework import Failed, Infra, Skip

__all__ = ["checks", "require_unsloth", "load_with_unsloth", "describe_route", "logits_parity",
           "PARITY_REL_TOL", "UnslothLoad"]

# Llamafied parity bar: max |logits_unsloth(bf16) - logits_remote_code(fp32)| <= PARITY_REL_TOL * max |logits_ref|.
# On the tiny fixture, bf16 vs fp32 of the *same* code differs by ~0.4% of max |logits| (CPU, transformers
# 5.17), and unsloth 2026.10.9's Llama fast path on an H100 gave 0.40% too; 3% leaves room for unsloth's
# fused bf16 kernels while a wrong weight mapping (swapped gate/up, wrong rope) is off by tens of percent.
PARITY_REL_TOL = 0.03
OUTPUT_TAIL_CHARS = 4000


def require_unsloth(ctx: Any) -> str:
    """Skip reasons in order: a cell that leaves unsloth out says so (the most useful reason in the
    table), then no GPU (unsloth cannot even import on CPU), then unsloth pinned but not installed."""
    if ctx.pins.get("unsloth") == "none":
        raise Skip("unsloth not in this cell")
    ctx.require_gpu()
    return ctx.require("unsloth")


class _Tee(io.TextIOBase):
    """Writes to the real stream and keeps a copy, so unsloth's prints still reach the cell log."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.buffer_text = io.StringIO()

    def write(self, text: str) -> int:  # type: ignore[override]
        self.buffer_text.write(text)
        try:  # noqa: SIM105
            self.real.write(text)
        except Exception:   # noqa: BLE001 - a closed real stream must not break the load
            pass
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self.real.flush()


@contextlib.contextmanager
def _capture_output() -> Iterator[_Tee]:
    tee = _Tee(sys.stdout)
    err = _Tee(sys.stderr)
    with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(err):
        yield tee
    tee.buffer_text.write(err.buffer_text.getvalue())


@contextlib.contextmanager
def _spy_on_loaders(calls: list[str]) -> Iterator[None]:
    """Record which unsloth loader classes' from_pretrained run (FastLlamaModel, FastModel, FastBaseModel...).

    A thin pass-through wrapper is set on each class's own `from_pretrained` and removed on exit.
    Anything unexpected about unsloth's internals only disables the spy; the load itself is untouched."""
    restore: list[tuple[type, Any]] = []
    try:
        from unsloth.models import loader
        for name in dir(loader):
            cls = getattr(loader, name)
            if (not isinstance(cls, type) or not name.startswith("Fast") or name == "FastLanguageModel"
                    or "from_pretrained" not in cls.__dict__):
                continue
            original = cls.__dict__["from_pretrained"]
            if not isinstance(original, staticmethod):
                continue

            def wrapper(*args: Any, __fn: Callable = original.__func__, __name: str = name, **kwargs: Any) -> Any:
                calls.append(__name)
                return __fn(*args, **kwargs)

            cls.from_pretrained = staticmethod(wrapper)
            restore.append((cls, original))
    except Exception as exc:   # noqa: BLE001
        calls.append(f"<spy unavailable: {type(exc).__name__}: {exc}>")
    try:
        yield
    finally:
        for cls, original in restore:
            cls.from_pretrained = original


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """Set one environment variable for the block (unsloth's generic path otherwise sends its
    compile log to /dev/null unless UNSLOTH_ENABLE_LOGGING=1)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _forward_module(obj: Any) -> str | None:
    forward = getattr(type(obj), "forward", None)
    func = getattr(forward, "__func__", forward)
    return getattr(func, "__module__", None)


def describe_route(model: Any, dispatched: list[str]) -> dict[str, Any]:
    """Where the returned model's code comes from, and what that says about unsloth's route."""
    inner = getattr(model, "model", None) or getattr(model, "transformer", None)
    layers = getattr(inner, "layers", None) or getattr(inner, "h", None)
    layer = layers[0] if layers is not None and len(layers) else None
    attention = None
    if layer is not None:
        attention = getattr(layer, "self_attn", None) or getattr(getattr(layer, "attn", None), "attention", None)
    modules = {
        "model_forward": _forward_module(model),
        "decoder_forward": _forward_module(inner) if inner is not None else None,
        "layer_forward": _forward_module(layer) if layer is not None else None,
        "attention_forward": _forward_module(attention) if attention is not None else None,
    }
    fast = sorted({m.rsplit(".", 1)[-1] for m in modules.values() if m and m.startswith("unsloth.models.")
                   and m.rsplit(".", 1)[-1] not in ("vision", "_utils", "loader")})
    compiled = any(m and "unsloth_compiled" in m for m in modules.values())
    fast_dispatch = [name for name in dispatched if name not in ("FastModel", "FastBaseModel") and not name.startswith("<")]
    if fast or fast_dispatch:
        route = f"fast:{(fast or [d.replace('Fast', '').replace('Model', '').lower() for d in fast_dispatch])[0]}"
    elif compiled:
        route = "generic:compiled"
    else:
        route = "generic:unpatched"
    return {
        "route": route,
        "dispatched_to": dispatched,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "forward_modules": modules,
        "route_rule": "fast:<arch> = unsloth's own fast class (FastLlamaModel...) ran and/or forwards come from "
                      "unsloth.models.<arch>; generic:compiled = FastModel path with unsloth_compiled_cache "
                      "forwards; generic:unpatched = FastModel path, model code untouched",
    }


class UnslothLoad:
    """The outcome of one FastLanguageModel.from_pretrained: model, tokenizer and what happened."""

    def __init__(self, model: Any, tokenizer: Any, info: dict[str, Any]) -> None:
        self.model, self.tokenizer, self.info = model, tokenizer, info


def load_with_unsloth(path: str | Path, *, max_seq_length: int, trust_remote_code: bool,
                      dtype: Any = None, load_in_4bit: bool = False) -> UnslothLoad:
    """FastLanguageModel.from_pretrained on the GPU, offline, with the route recorded: in 16 bit, or
    (`load_in_4bit`, the QLoRA checks) with unsloth's own 4-bit loading."""
    import torch
    import unsloth  # noqa: F401 - must be imported (it patches transformers) before FastLanguageModel is used
    from unsloth import FastLanguageModel

    dispatched: list[str] = []
    kwargs: dict[str, Any] = dict(
        model_name=str(path),
        max_seq_length=max_seq_length,
        dtype=dtype or torch.bfloat16,
        load_in_4bit=load_in_4bit,
        trust_remote_code=trust_remote_code,
        use_gradient_checkpointing=False,
        use_exact_model_name=True,   # a local folder: no mapping to unsloth's hub mirrors
        local_files_only=True,       # the probe is offline
    )
    start = time.monotonic()
    with _capture_output() as out, _spy_on_loaders(dispatched), _env("UNSLOTH_ENABLE_LOGGING", "1"):
        model, tokenizer = FastLanguageModel.from_pretrained(**kwargs)
    seconds = time.monotonic() - start
    text = out.buffer_text.getvalue()
    banner = [line.strip() for line in text.splitlines() if "unsloth" in line.lower() and line.strip()]
    info = {
        "unsloth": getattr(unsloth, "__version__", None),
        "from_pretrained_kwargs": {k: (str(v) if k == "dtype" else v) for k, v in kwargs.items()},
        "load_s": round(seconds, 3),
        "unsloth_messages": banner[:30],
        "output_tail": text[-OUTPUT_TAIL_CHARS:],
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        **describe_route(model, dispatched),
    }
    return UnslothLoad(model, tokenizer, info)


def _forward_logits(model: Any, input_ids: Any) -> Any:
    import torch

    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return out.logits if hasattr(out, "logits") else out[0]


def _check_logits(logits: Any, batch: int, seq: int, vocab: int) -> dict[str, Any]:
    import torch

    shape = list(getattr(logits, "shape", []))
    finite = bool(torch.isfinite(logits.float()).all().item()) if shape else False
    evidence = {"logits_shape": shape, "expected_shape": [batch, seq, vocab], "logits_finite": finite}
    if shape != [batch, seq, vocab]:
        raise Failed(f"logits shape {shape}, expected {[batch, seq, vocab]}", evidence)
    if not finite:
        raise Failed("non-finite logits from the unsloth-loaded model", evidence)
    return evidence


def _vocab(model: Any) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


# ctx.cache key of the remote-code EXAONE 3.5 that unsloth.load.exaone3.5 loaded and checked, handed to
# lora-train.unsloth (the next check) so that one process loads it through unsloth once, not twice
# (a load is 6-18 s on the H100, most of it unsloth patching and compiling).
SHARED_EXAONE35 = "unsloth.exaone3.5.loaded"


def _train_seq_length(ctx: Any) -> int:
    return max(LoraRun.from_settings(ctx.settings).seq, 64)


def _load_check(ctx: Any, name: str, trust_remote_code: bool, keep_as: str | None = None) -> dict[str, Any]:
    require_unsloth(ctx)
    from probes.models import resolve_model

    try:
        handle = resolve_model(ctx, name)
    except ImportError as exc:   # write_exaone4 before transformers 4.54
        raise Skip(str(exc)) from exc
    seq = 16
    try:
        loaded = load_with_unsloth(handle.path, max_seq_length=_train_seq_length(ctx),
                                   trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise Failed(f"FastLanguageModel.from_pretrained failed on {name}: {type(exc).__name__}: {exc}",
                     {"model": model_summary(handle)}) from exc
    kept = False
    try:
        vocab = _vocab(loaded.model)
        ids = fixed_batch(vocab, 1, seq, int(ctx.settings.get("seed", 0)), "cuda")
        evidence = {"model": model_summary(handle), **loaded.info}
        try:
            evidence.update(_check_logits(_forward_logits(loaded.model, ids), 1, seq, vocab))
        except Failed as exc:
            exc.evidence = {**evidence, **exc.evidence}
            raise
        if keep_as is not None:   # only a load that passed is handed on
            ctx.cache[keep_as] = loaded
            kept = True
        return evidence
    finally:
        if not kept:
            loaded = None
            _free_memory("cuda")


def check_load_exaone35(ctx: Any) -> dict[str, Any]:
    return _load_check(ctx, "exaone3.5", trust_remote_code=True, keep_as=SHARED_EXAONE35)


def check_load_exaone4(ctx: Any) -> dict[str, Any]:
    return _load_check(ctx, "exaone4", trust_remote_code=False)


def _llamafied_folder(ctx: Any, source: Path) -> Path:
    from probes.models import llamafied_folder

    return llamafied_folder(ctx, source)


def logits_parity(candidate: Any, reference: Any, rel_tol: float = PARITY_REL_TOL) -> dict[str, Any]:
    """Compare logits in fp32; pass when max |diff| <= rel_tol * max |reference|."""
    cand, ref = candidate.float(), reference.float()
    if cand.shape != ref.shape:
        return {"parity": False, "candidate_shape": list(cand.shape), "reference_shape": list(ref.shape)}
    diff = (cand - ref).abs()
    max_diff, ref_max = float(diff.max().item()), float(ref.abs().max().item())
    return {
        "parity": math.isfinite(max_diff) and max_diff <= rel_tol * ref_max,
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(diff.mean().item()),
        "reference_max_abs": ref_max,
        "relative_max_diff": max_diff / ref_max if ref_max else None,
        "argmax_agreement": float((cand.argmax(-1) == ref.argmax(-1)).float().mean().item()),
        "tolerance": f"max|unsloth bf16 - remote-code fp32| <= {rel_tol} x max|remote-code logits|",
    }


def check_llamafied(ctx: Any) -> dict[str, Any]:
    import torch

    from probes.models import resolve_model

    require_unsloth(ctx)
    handle = resolve_model(ctx, "exaone3.5")
    llama_dir = _llamafied_folder(ctx, Path(handle.path))
    seed = int(ctx.settings.get("seed", 0))
    # The reference is the remote-code model. Where its code does not load on this transformers (every
    # 5.x release for the hub's EXAONE 3.5 code), it is the same weights through transformers' own
    # LlamaForCausalLM, in this process: after `import unsloth`, so not independent of unsloth's global
    # patches, which the evidence says. Without it this check would fail for the remote code's break.
    reference_kind = "remote code"
    try:
        reference = load_causal_lm(str(handle.path), device="cuda", dtype=torch.float32)
        vocab = _vocab(reference)
        ids = fixed_batch(vocab, 2, 32, seed, "cuda")
        ref_logits = _forward_logits(reference, ids).float()
    except Exception as exc:  # noqa: BLE001 - exaone3.5.remote-code reports this failure itself
        reference = None
        _free_memory("cuda")
        reference_kind = (f"LlamaForCausalLM (transformers) on the llamafied weights, after import unsloth: "
                          f"the remote code fails here ({type(exc).__name__}: {str(exc)[:160]})")
        reference = load_causal_lm(str(llama_dir), device="cuda", dtype=torch.float32, trust_remote_code=False)
        vocab = _vocab(reference)
        ids = fixed_batch(vocab, 2, 32, seed, "cuda")
        ref_logits = _forward_logits(reference, ids).float()
    del reference
    _free_memory("cuda")
    try:
        loaded = load_with_unsloth(llama_dir, max_seq_length=64, trust_remote_code=False)
    except Exception as exc:
        raise Failed(f"unsloth could not load the llamafied checkpoint: {type(exc).__name__}: {exc}",
                     {"model": model_summary(handle), "llamafied": str(llama_dir)}) from exc
    try:
        logits = _forward_logits(loaded.model, ids)
        evidence = {"model": model_summary(handle), "llamafied": str(llama_dir), **loaded.info,
                    "parity_reference": reference_kind,
                    **_check_logits(logits, 2, 32, vocab), **logits_parity(logits, ref_logits)}
    finally:
        loaded = logits = None
        _free_memory("cuda")
    if not evidence["route"].startswith("fast:llama"):
        raise Failed(f"unsloth did not take its Llama fast path for the llamafied checkpoint "
                     f"(route {evidence['route']})", evidence)
    if not evidence.get("parity"):
        raise Failed(f"llamafied logits through unsloth differ from the reference ({reference_kind[:40]}): "
                     f"relative max diff {evidence.get('relative_max_diff')} > {PARITY_REL_TOL}", evidence)
    return evidence


def check_lora_train_unsloth(ctx: Any) -> dict[str, Any]:
    """The lora-train bar through FastLanguageModel.get_peft_model: the remote-code model where unsloth
    loads it, otherwise the llamafied copy (the route is recorded)."""
    import torch

    from probes.models import resolve_model

    shared = ctx.cache.pop(SHARED_EXAONE35, None)   # first, so no path below leaves it holding GPU memory
    require_unsloth(ctx)
    from unsloth import FastLanguageModel

    run = LoraRun.from_settings(ctx.settings)
    handle = resolve_model(ctx, "exaone3.5")
    attempts: list[dict[str, Any]] = []
    loaded, targets = None, EXAONE35_LORA_TARGETS
    if shared is not None:
        loaded = shared
        attempts.append({"route": "exaone3.5-remote-code", "loaded": True,
                         "loaded_by": "unsloth.load.exaone3.5 (the same model object, passed on)"})
    for label, path, remote, tgt in (("exaone3.5-remote-code", Path(handle.path), True, EXAONE35_LORA_TARGETS),
                                     ("llamafied", None, False, LLAMA_LORA_TARGETS)):
        if loaded is not None:
            break
        try:
            path = path or _llamafied_folder(ctx, Path(handle.path))
            loaded = load_with_unsloth(path, max_seq_length=_train_seq_length(ctx), trust_remote_code=remote)
            targets = tgt
            attempts.append({"route": label, "loaded": True})
        except Exception as exc:   # noqa: BLE001 - try the next route, keep the reason
            attempts.append({"route": label, "loaded": False, "error": f"{type(exc).__name__}: {exc}"[:1000]})
    if loaded is None:
        raise Failed("unsloth loaded neither the remote-code nor the llamafied EXAONE 3.5", {"attempts": attempts})
    info = {"model": model_summary(handle), "attempts": attempts, **loaded.info, "lora_rank": LORA_RANK,
            "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0}
    model = None
    try:
        torch.manual_seed(run.seed)
        with _capture_output() as out:
            model = FastLanguageModel.get_peft_model(
                loaded.model, r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none",
                target_modules=list(targets), use_gradient_checkpointing=False, random_state=run.seed)
        info["get_peft_model_messages"] = [l.strip() for l in out.buffer_text.getvalue().splitlines()
                                           if l.strip()][:20]
        evidence = train_and_judge(model, run, vocab_size=_vocab(model), device="cuda", targets=targets)
    except Failed as exc:
        exc.evidence = {**info, **exc.evidence}
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise Infra(f"CUDA out of memory in unsloth LoRA training at {run.batch}x{run.seq}") from exc
        raise
    finally:
        model = loaded = None
        _free_memory("cuda")
    return {**info, **evidence}


def checks(ctx: Any) -> list[tuple[str, Any]]:
    # The unsloth routes of the train and adapter groups run here, in the interpreter that imported unsloth
    # (probes/processes.py), and only where the cell asks for those groups.
    from probes.checks import unsloth_train

    extra = unsloth_train.checks_for(ctx)
    remote = [check for check in extra if check[0] in unsloth_train.REMOTE_CODE_ROUTES]
    # lora-train.unsloth directly after unsloth.load.exaone3.5: it trains the model that check loaded.
    # The remote-code routes before the first Llama-layout load (unsloth.llamafied): loading a "llama" model
    # runs unsloth's FastLlamaModel.pre_patch, which replaces peft's PeftModelForCausalLM.forward for the
    # whole process with one that passes causal_mask= to the model, and EXAONE 3.5's remote forward takes
    # no such keyword. Run after it, a remote-code route would judge that process state, not the route a
    # user who loads only EXAONE 3.5 takes (catalogue: unsloth-peft-forward-causal-mask-remote-code).
    return [
        ("unsloth.load.exaone3.5", check_load_exaone35),
        ("lora-train.unsloth", check_lora_train_unsloth),
        *remote,
        ("unsloth.load.exaone4", check_load_exaone4),
        ("unsloth.llamafied", check_llamafied),
        *[check for check in extra if check not in remote],
    ]

