"""Check group "throughput" (GPU only): LoRA training speed and peak memory of each stack.

Model: EXAONE 3.5 at the 2.4B shape (30 layers, hidden 2560, 32 / 8 KV heads, FFN 7168, vocab 102400,
tied embeddings) with random bf16 weights, built directly on the GPU. The HF stacks use our remote-code
ExaoneForCausalLM (config.json + code files, no weights, through AutoConfig/AutoModelForCausalLM with
trust_remote_code=True) with attn_implementation = sdpa / eager / flash_attention_2, LoRA r16 on all seven
linear layers (peft defaults: adapters kept in fp32), AdamW. The unsloth stack loads the same shape in
Llama layout through FastLanguageModel (its Llama fast path is the only fast route for EXAONE 3.5).

Timing: `warmup` steps are run and discarded, then `steps` steps are each timed between two
torch.cuda.synchronize() calls. One step = zero_grad + forward(labels) + backward + optimizer.step.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from probes.checks.lora_train import (
    EXAONE35_LORA_TARGETS,
    LLAMA_LORA_TARGETS,
    LORA_ALPHA,
    LORA_RANK,
    _free_memory,
    _is_oom,
    fixed_batch,
    lora_config,
    torch_dtype_kwargs,
)
from probes.framework import Failed, Infra, Skip
from probes.registry import speed_baselines

__all__ = ["checks", "ThroughputRun", "Measurement", "measure_training", "flops_per_token", "peak_flops",
           "HF_STACKS", "STACKS", "GIB", "QLORA_RECIPES", "qlora_model"]

HF_STACKS = ("sdpa", "eager", "flash_attention_2")
# gradient checkpointing (the memory-limited setting), FlashAttention 4, Liger, Liger + FA4
STACKS = (*HF_STACKS, "flash_attention_4", "sdpa-gc", "liger", "liger-fa4", "unsloth")
# the stacks measured again at each extra configuration (settings.throughput.configs); eager is left
# out: it materialises the seq x seq attention matrix per head, which at 8192 tokens does not fit
CONFIG_STACKS = ("sdpa", "flash_attention_2", "flash_attention_4", "sdpa-gc", "liger", "liger-fa4",
                 "unsloth")
GIB = 1024 ** 3
TPS_CACHE_PREFIX = "tokens_per_s:"   # ctx.cache key of each passed measurement, by check name

# Dense bf16 tensor-core peak per GPU (vendor datasheets, no sparsity). Matched against
# torch.cuda.get_device_name(); first match wins, so the more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("H100", "PCIE"), 756e12, "H100 PCIe"),
    (("H100", "NVL"), 835e12, "H100 NVL"),
    (("H100",), 989.4e12, "H100 SXM"),
    (("H200",), 989.4e12, "H200"),
    (("GH200",), 989.4e12, "GH200"),
    (("B200",), 2250e12, "B200"),
    (("A100",), 312e12, "A100"),
    (("L40S",), 362e12, "L40S"),
    (("A10G",), 70e12, "A10G"),
    (("L4",), 121e12, "L4"),
)

MFU_CONVENTION = ("model FLOPs per token = 6*N + 12*L*d*S (PaLM appendix B convention: N = parameters of the "
                  "model with the tied embedding counted once, as the LM-head matmul; L layers, d hidden size, "
                  "S sequence length; attention not halved for causality). mfu = tokens/s * that / peak. "
                  "lora_flops_utilization uses 4*N + 12*L*d*S instead: with a frozen base, backward computes "
                  "input gradients only (2N) and no weight gradients, so this is closer to the work done.")


@dataclass(frozen=True)
class ThroughputRun:
    batch: int = 4
    seq: int = 2048
    steps: int = 6
    warmup: int = 2
    gradient_checkpointing: bool = False
    lr: float = 1e-4
    lora_dropout: float = 0.0
    peak_tflops: float | None = None          # override the table (per GPU, dense bf16)
    stacks: tuple[str, ...] = STACKS
    seed: int = 0
    configs: tuple[tuple[int, int], ...] = ()   # extra (batch, seq) configurations
    suffix: str = ""                            # ".1x8192" when this run is one of them

    def at(self, config: tuple[int, int] | None) -> "ThroughputRun":
        """This run at an extra configuration (batch, seq), its check names suffixed `.BxS`."""
        if config is None:
            return self
        from probes.registry import shape_suffix

        return replace(self, batch=config[0], seq=config[1], suffix="." + shape_suffix(*config))

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "ThroughputRun":
        raw = dict(settings.get("throughput") or {})
        run = cls(
            batch=int(raw.get("batch", cls.batch)),
            seq=int(raw.get("seq", cls.seq)),
            steps=int(raw.get("steps", cls.steps)),
            warmup=int(raw.get("warmup", cls.warmup)),
            gradient_checkpointing=bool(raw.get("gradient_checkpointing", cls.gradient_checkpointing)),
            lr=float(raw.get("lr", cls.lr)),
            lora_dropout=float(raw.get("lora_dropout", cls.lora_dropout)),
            peak_tflops=float(raw["peak_tflops"]) if raw.get("peak_tflops") is not None else None,
            stacks=tuple(raw.get("stacks", STACKS)),
            seed=int(settings.get("seed", cls.seed)),
            configs=tuple((int(c["batch"]), int(c["seq"])) for c in raw.get("configs") or ()),
        )
        if any(b < 1 or q < 2 for b, q in run.configs):
            raise ValueError(f"settings.throughput.configs out of range: {raw}")
        if run.steps < 1 or run.warmup < 0 or run.batch < 1 or run.seq < 2:
            raise ValueError(f"settings.throughput out of range: {raw}")
        return run

    def describe(self) -> dict[str, Any]:
        return {"batch": self.batch, "seq": self.seq, "tokens_per_step": self.batch * self.seq,
                "configuration": f"{self.batch}x{self.seq}" + (" (extra)" if self.suffix else ""),
                "steps_timed": self.steps, "warmup_steps": self.warmup,
                "gradient_checkpointing": self.gradient_checkpointing, "optimizer": f"AdamW lr={self.lr}",
                "lora": f"r={LORA_RANK} alpha={LORA_ALPHA} dropout={self.lora_dropout}, all 7 linear layers"}


@dataclass
class Measurement:
    step_times: list[float]
    losses: list[float]
    tokens_per_step: int
    peak_mem_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_step(self) -> float:
        return statistics.median(self.step_times)

    @property
    def tokens_per_s(self) -> float:
        """Tokens over the median timed step: one slow step (a GC pause, a clock dip) does not move it.
        On the H200 a mean over six steps read 32,251 tokens/s where five steps took 0.213-0.217 s and
        one 0.450 s; the median step gives 38,049, what three reruns of that cell measured."""
        return self.tokens_per_step / self.median_step

    @property
    def tokens_per_s_mean(self) -> float:
        return self.tokens_per_step * len(self.step_times) / sum(self.step_times)

    @property
    def spread(self) -> dict[str, float]:
        """tokens/s at the fastest and slowest timed step, and the relative spread of step times."""
        fastest, slowest = min(self.step_times), max(self.step_times)
        return {"tokens_per_s_min": round(self.tokens_per_step / slowest, 1),
                "tokens_per_s_max": round(self.tokens_per_step / fastest, 1),
                "step_time_rel_spread": round((slowest - fastest) / self.median_step, 4)}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def measure_training(model: Any, *, batch: int, seq: int, steps: int, warmup: int, vocab_size: int,
                     device: str, lr: float = 1e-4, seed: int = 0) -> Measurement:
    """Time `steps` LoRA training steps after `warmup` untimed ones, on one fixed random batch."""
    import torch

    input_ids = fixed_batch(vocab_size, batch, seq, seed, device)
    attention_mask = torch.ones_like(input_ids)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise Failed("no trainable parameters after attaching LoRA")
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    model.train()
    times: list[float] = []
    warmup_times: list[float] = []
    losses: list[float] = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
        loss = out.loss if hasattr(out, "loss") else out[0]
        loss.backward()
        optimizer.step()
        _sync(device)
        elapsed = time.perf_counter() - start
        losses.append(float(loss.detach().float().item()))   # after the timed region: .item() syncs
        (times if i >= warmup else warmup_times).append(elapsed)
    # the first call apart: a kernel compiled just in time (FlashAttention 4's CuTe DSL, Triton) is
    # compiled there, so it never enters the timed median
    extra = {"warmup_step_times_s": [round(t, 4) for t in warmup_times],
             "first_step_s": round((warmup_times or times)[0], 4)}
    return Measurement(step_times=times, losses=losses, tokens_per_step=batch * seq, extra=extra)


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq: int, weight_grad_factor: int = 6) -> float:
    """6N + 12·L·d·S (or 4N + ... for LoRA's no-weight-gradient backward, weight_grad_factor=4)."""
    return weight_grad_factor * n_params + 12 * n_layers * hidden * seq


def peak_flops(gpu_name: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"settings.throughput.peak_tflops = {override_tflops}"
    upper = gpu_name.upper()
    for needles, flops, label in PEAK_BF16_FLOPS:
        if all(n in upper for n in needles):
            return flops, f"{label} dense bf16 {flops / 1e12:g} TFLOP/s"
    return None, f"no peak FLOP/s known for {gpu_name!r}; set settings.throughput.peak_tflops"


def _shape() -> dict[str, Any]:
    from probes.fixtures.checkpoints import EXAONE35_2P4B_SHAPE

    return dict(EXAONE35_2P4B_SHAPE)


def _config_folder(ctx: Any) -> Path:
    """A weightless EXAONE 3.5 checkpoint folder at the 2.4B shape: config.json (auto_map) + the remote code
    of the fixture standing in for the matrix's pinned hub revision."""
    from probes.fixtures import checkpoints

    folder = Path(ctx.work_dir) / "throughput" / "exaone35-2.4b-config"
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        from probes.models import pinned_fixture_revision

        revision = pinned_fixture_revision(ctx, "exaone3.5")
        for name in checkpoints.REMOTE_CODE_FILES:
            shutil.copyfile(checkpoints.FIXTURE_ROOT / revision / name, folder / name)
        config = checkpoints.exaone35_config_dict("tiny")
        config.update(_shape())
        config["torch_dtype"] = "bfloat16"
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _check_shape(model: Any, shape: dict[str, Any]) -> dict[str, Any]:
    """Confirm the built model really has the 2.4B shape (a config field silently ignored would not)."""
    n_params = sum(p.numel() for p in model.parameters())   # parameters() yields a tied tensor once
    config = model.config
    layers = getattr(config, "num_layers", None) or getattr(config, "num_hidden_layers", None)
    got = {"layers": layers, "hidden": config.hidden_size, "heads": config.num_attention_heads,
           "kv_heads": config.num_key_value_heads, "ffn": config.intermediate_size, "vocab": config.vocab_size,
           "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False))}
    want = {"layers": shape["num_layers"], "hidden": shape["hidden_size"], "heads": shape["num_attention_heads"],
            "kv_heads": shape["num_key_value_heads"], "ffn": shape["intermediate_size"], "vocab": shape["vocab_size"],
            "tied_embeddings": bool(shape["tie_word_embeddings"])}
    if got != want:
        raise Failed(f"the built model's shape {got} is not the 2.4B shape {want}")
    return {"n_params": n_params, "shape": got}


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device())


def _evidence(ctx: Any, run: ThroughputRun, stack: str, m: Measurement, n_params: int, shape: dict[str, Any],
              extra: dict[str, Any]) -> dict[str, Any]:
    gpu = _gpu_name()
    peak, peak_source = peak_flops(gpu, run.peak_tflops)
    model_flops = flops_per_token(n_params, shape["layers"], shape["hidden"], run.seq)
    lora_flops = flops_per_token(n_params, shape["layers"], shape["hidden"], run.seq, weight_grad_factor=4)
    tps = m.tokens_per_s
    name = f"throughput.{stack}{run.suffix}"
    ctx.cache[TPS_CACHE_PREFIX + name] = tps
    # The baseline is HF+PEFT sdpa on the same model family at the same configuration (registry.
    # speed_baselines): for EXAONE 3.5 the remote code, else (its revision fails on this transformers)
    # the llamafied model, same weights, same math; for EXAONE 4 its own sdpa run.
    sdpa, basis = None, None
    for candidate in speed_baselines(name):
        if ctx.cache.get(TPS_CACHE_PREFIX + candidate) is not None:
            sdpa, basis = ctx.cache[TPS_CACHE_PREFIX + candidate], candidate
            break
    evidence = {
        "stack": stack,
        **run.describe(),
        **m.extra,
        **extra,
        "gpu": gpu,
        "tokens_per_s": round(tps, 1),
        "tokens_per_s_basis": f"median of {len(m.step_times)} timed steps",
        "tokens_per_s_mean": round(m.tokens_per_s_mean, 1),
        **m.spread,
        "step_time_s": round(m.median_step, 4),
        "step_time_s_median": round(m.median_step, 4),
        "step_times_s": [round(t, 4) for t in m.step_times],
        "peak_mem_gib": round(m.peak_mem_bytes / GIB, 2) if m.peak_mem_bytes is not None else None,
        "peak_mem_source": "torch.cuda.max_memory_allocated() (reset before building the model)",
        "losses": [round(x, 4) for x in m.losses],
        "n_params": n_params,
        "model_flops_per_token": model_flops,
        "mfu": round(tps * model_flops / peak, 4) if peak else None,
        "lora_flops_utilization": round(tps * lora_flops / peak, 4) if peak else None,
        "peak_flops_per_gpu": peak,
        "peak_flops_source": peak_source,
        "mfu_convention": MFU_CONVENTION,
        "speedup_vs_sdpa": round(tps / sdpa, 3) if sdpa else None,
        "speedup_basis": (f"tokens/s divided by {basis}'s tokens/s from this run" if sdpa
                          else f"none of {', '.join(speed_baselines(name))} passed earlier in this run"),
        "baseline": basis if sdpa else None,
        "reference": "DESIGN.md: HF+PEFT sdpa, H100, 4x2048, r16 all linear ~16-17k tokens/s, ~54 GiB peak",
        # unsloth patches transformers/peft globally at import; HF numbers taken after it are marked.
        "unsloth_imported_in_process": "unsloth" in sys.modules,
    }
    if not all(math.isfinite(x) for x in m.losses):
        raise Failed(f"non-finite training loss on the {stack} stack: {m.losses}", evidence)
    return evidence


def _oom_infra(run: ThroughputRun, stack: str, exc: BaseException) -> Infra:
    return Infra(f"CUDA out of memory at {run.batch}x{run.seq} ({stack}, gradient checkpointing "
                 f"{'on' if run.gradient_checkpointing else 'off'}): {str(exc).splitlines()[0][:300]}")


def _prepare(ctx: Any, stack: str, config: tuple[int, int] | None = None) -> ThroughputRun:
    ctx.require_gpu()
    run = ThroughputRun.from_settings(ctx.settings)
    if stack not in run.stacks:
        raise Skip(f"{stack} not in settings.throughput.stacks")
    return run.at(config)


def fits_on_card(stack: str, run: ThroughputRun, total_bytes: int | None = None) -> dict[str, Any]:
    """The estimated peak of `stack` at the run's configuration (probes/checks/memory_estimate.py), as
    evidence; Infra before anything is allocated when it exceeds the card's memory. Nothing for a stack
    the estimate does not model, or with gradient checkpointing on."""
    from probes.checks.memory_estimate import estimate_peak

    estimate = None if run.gradient_checkpointing else estimate_peak(_shape(), stack, run.batch, run.seq, LORA_RANK)
    if estimate is None:
        return {}
    if total_bytes is None:
        import torch

        total_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if estimate.total_bytes > total_bytes:
        parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in estimate.parts.items())
        raise Infra(f"estimated peak {estimate.gib:.1f} GiB at {run.batch}x{run.seq} ({stack}) exceeds the card's "
                    f"{total_bytes / GIB:.1f} GiB: not run, nothing allocated (GiB: {parts}; "
                    f"probes/checks/memory_estimate.py)")
    return {**estimate.evidence(), "card_memory_gib": round(total_bytes / GIB, 2)}


def _reset_gpu() -> None:
    import torch

    _free_memory("cuda")
    torch.cuda.reset_peak_memory_stats()


def _llama_config_dict(ctx: Any) -> dict[str, Any]:
    """The llamafied tiny fixture's config.json with the 2.4B dimensions (rope scaling, norms and tying
    follow llamafy_exaone35)."""
    from probes.fixtures.checkpoints import llamafy_exaone35, write_exaone35

    key = ("throughput.llama-config",)
    if key not in ctx.cache:
        tiny = write_exaone35(Path(ctx.work_dir) / "throughput" / "exaone35-tiny")
        tiny_llama = llamafy_exaone35(tiny, Path(ctx.work_dir) / "throughput" / "llama-tiny")
        shape = _shape()
        config_dict = json.loads((tiny_llama / "config.json").read_text())
        config_dict.update({
            "vocab_size": shape["vocab_size"], "hidden_size": shape["hidden_size"],
            "intermediate_size": shape["intermediate_size"], "num_hidden_layers": shape["num_layers"],
            "num_attention_heads": shape["num_attention_heads"], "num_key_value_heads": shape["num_key_value_heads"],
            "head_dim": shape["hidden_size"] // shape["num_attention_heads"],
            "max_position_embeddings": shape["max_position_embeddings"],
            "tie_word_embeddings": shape["tie_word_embeddings"],
        })
        ctx.cache[key] = config_dict
    return dict(ctx.cache[key])


def _exaone4_config(ctx: Any) -> Any:
    """transformers' native Exaone4Config with the 2.4B dimensions of the EXAONE 3.5 throughput shape
    (30 layers, hidden 2560, 32 / 8 KV heads, FFN 7168, vocab 102400, tied embeddings), so that its
    figures sit beside EXAONE 3.5's; the rest (QK-norm, sliding-window pattern) stays Exaone4Config's
    defaults. Not the 1.2B hub model: a random-weight model of a stated shape."""
    import transformers

    if not hasattr(transformers, "Exaone4Config"):
        raise Skip(f"Exaone4ForCausalLM absent before transformers 4.54 (installed {transformers.__version__})")
    shape = _shape()
    return transformers.Exaone4Config(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_attention_heads"], num_key_value_heads=shape["num_key_value_heads"],
        head_dim=shape["hidden_size"] // shape["num_attention_heads"],
        max_position_embeddings=shape["max_position_embeddings"], tie_word_embeddings=shape["tie_word_embeddings"],
        bos_token_id=1, eos_token_id=2, pad_token_id=0)


def check_hf(ctx: Any, attn: str, *, llamafied: bool = False, stack: str | None = None,
             model_kind: str | None = None, gradient_checkpointing: bool | None = None,
             liger: bool = False, config: tuple[int, int] | None = None) -> dict[str, Any]:
    """HF + PEFT at the 2.4B shape with one attention implementation: on our remote-code EXAONE 3.5, or
    (`llamafied`) on LlamaForCausalLM with the same dimensions, the baseline where the remote code fails,
    or (`model_kind="exaone4"`) on transformers' native Exaone4ForCausalLM at the same dimensions.
    `gradient_checkpointing` overrides the setting (throughput.sdpa-gc); `liger` applies Liger Kernel's
    apply_liger_kernel_to_llama to the llamafied model before LoRA and proves it took (probes/checks/liger.py);
    `config` is an extra (batch, seq) configuration."""
    kind = model_kind or ("llamafied" if llamafied else "remote-code")
    stack = stack or (f"{attn}-llamafied" if llamafied else attn)
    # a cell that leaves the package out says so first, on any machine (the table's most useful reason)
    if attn == "flash_attention_4":
        ctx.require("flash-attn-4")
    if liger:
        ctx.require("liger-kernel")
    run = _prepare(ctx, stack if stack in STACKS else attn, config)
    if gradient_checkpointing is not None:
        run = replace(run, gradient_checkpointing=gradient_checkpointing)
    extra: dict[str, Any] = {}
    if attn == "flash_attention_2":
        ctx.require("flash-attn")
    if attn == "flash_attention_4":
        from probes.checks.attention import require_flash_attn_4

        extra.update(require_flash_attn_4(ctx))
    if liger:
        from probes.checks.liger import require_liger

        extra.update(require_liger(ctx))
    else:
        extra.update(fits_on_card(stack, run))   # before anything is allocated
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    shape = _shape()
    if kind == "llamafied":
        config_dict = _llama_config_dict(ctx)
        config_dict.pop("model_type", None)
        model_config = LlamaConfig.from_dict(config_dict)  # read as from_pretrained reads config.json
        targets = LLAMA_LORA_TARGETS
    elif kind == "exaone4":
        model_config = _exaone4_config(ctx)
        targets = LLAMA_LORA_TARGETS   # Exaone4 names its projections as Llama does
    else:
        model_config = AutoConfig.from_pretrained(str(_config_folder(ctx)), trust_remote_code=True)
        targets = EXAONE35_LORA_TARGETS
    model = base = None
    _reset_gpu()
    try:
        if attn == "flash_attention_4":
            from probes.checks.attention import fa4_first_call

            head_dim = shape["hidden_size"] // shape["num_attention_heads"]
            extra["fa4_jit"] = fa4_first_call(run.batch, run.seq, shape["num_attention_heads"],
                                              shape["num_key_value_heads"], head_dim)
            _reset_gpu()
        build_start = time.monotonic()
        with _liger_scope(liger) as liger_state:
            with torch.device("cuda"):   # initialise straight on the GPU: a 2.4B CPU init takes minutes
                base = AutoModelForCausalLM.from_config(model_config, trust_remote_code=kind == "remote-code",
                                                        attn_implementation=attn,
                                                        **torch_dtype_kwargs(torch.bfloat16))
            base.config.use_cache = False
            effective = getattr(base.config, "_attn_implementation", None)
            if effective != attn:
                raise Failed(f"requested attn_implementation={attn!r} but the model runs {effective!r}")
            checked = _check_shape(base, shape)
            if liger:
                from liger_kernel.transformers import apply_liger_kernel_to_llama

                apply_liger_kernel_to_llama(model=base)
            if run.gradient_checkpointing:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                base.enable_input_require_grads()
            torch.manual_seed(run.seed)
            model = get_peft_model(base, lora_config(targets, dropout=run.lora_dropout))
            if liger:
                from probes.checks.liger import verify_liger

                extra["liger_patch"] = verify_liger(model)   # Failed when a module kept its forward
            build_s = time.monotonic() - build_start
            m = measure_training(model, batch=run.batch, seq=run.seq, steps=run.steps, warmup=run.warmup,
                                 vocab_size=shape["vocab_size"], device="cuda", lr=run.lr, seed=run.seed)
            m.peak_mem_bytes = torch.cuda.max_memory_allocated()
        if liger_state:
            extra["liger_restored"] = liger_state
        adapter_dtypes = sorted({str(p.dtype).replace("torch.", "") for n, p in model.named_parameters()
                                 if p.requires_grad})
        extra.update({"model_class": f"{type(base).__module__}.{type(base).__name__}",
                      "attn_implementation": effective, "adapter_dtype": adapter_dtypes, "base_dtype": "bfloat16",
                      "build_s": round(build_s, 2),
                      "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)})
        if attn == "flash_attention_4":
            extra["jit_compile_note"] = ("fa4_jit: flash_attn.cute.flash_attn_func forward+backward at the "
                                         "model's attention shape, first call (JIT compile, or a load from "
                                         "the compile cache) and second call timed apart before the model is "
                                         "built; first_step_s: the first training step, never in the median")
        return _evidence(ctx, run, stack, m, checked["n_params"], checked["shape"], extra)
    except Exception as exc:
        if _is_oom(exc):
            raise _oom_infra(run, stack, exc) from exc
        raise
    finally:
        model = base = None
        _free_memory("cuda")


@contextlib.contextmanager
def _liger_scope(active: bool) -> Iterator[dict[str, Any]]:
    """Liger patches transformers' modeling_llama module itself (apply_rotary_pos_emb, LlamaRMSNorm,
    LlamaMLP; liger_kernel/transformers/monkey_patch.py), not only the model it is given: every Llama
    built later in the process would run Liger's kernels. The module's attributes are put back after
    the Liger checks, and the evidence says which were."""
    state: dict[str, Any] = {}
    if not active:
        yield state
        return
    from transformers.models.llama import modeling_llama

    names = ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")
    saved = {n: getattr(modeling_llama, n) for n in names if hasattr(modeling_llama, n)}
    saved_forward = modeling_llama.LlamaForCausalLM.forward
    try:
        yield state
    finally:
        for n, value in saved.items():
            if getattr(modeling_llama, n) is not value:
                setattr(modeling_llama, n, value)
                state[n] = "restored"
        if modeling_llama.LlamaForCausalLM.forward is not saved_forward:
            modeling_llama.LlamaForCausalLM.forward = saved_forward
            state["LlamaForCausalLM.forward"] = "restored"


def _llama_folder(ctx: Any) -> Path:
    """A random-weight Llama-layout checkpoint at the EXAONE 3.5 2.4B shape, for unsloth's Llama fast path.

    The config is the llamafied tiny fixture's (so rope scaling, norms and tying follow llamafy_exaone35)
    with the 2.4B dimensions; the tokenizer files come along. Written once per run (about 4.8 GB)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(ctx.work_dir) / "throughput" / "llama-2.4b"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    config_dict = _llama_config_dict(ctx)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, **torch_dtype_kwargs(torch.bfloat16))
    model.save_pretrained(str(folder), safe_serialization=True)
    del model
    _free_memory("cuda")
    tiny_llama = Path(ctx.work_dir) / "throughput" / "llama-tiny"  # written by _llama_config_dict
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (tiny_llama / name).exists():
            shutil.copyfile(tiny_llama / name, folder / name)
    return folder


def check_unsloth(ctx: Any, config: tuple[int, int] | None = None) -> dict[str, Any]:
    """unsloth's FastLanguageModel on the 2.4B shape in Llama layout (its fast path), same loop and bar."""
    run = _prepare(ctx, "unsloth", config)
    from probes.checks.unsloth import load_with_unsloth, require_unsloth

    require_unsloth(ctx)
    estimate = fits_on_card("unsloth", run)
    import torch
    from unsloth import FastLanguageModel

    shape = _shape()
    folder = _llama_folder(ctx)
    model = loaded = None
    _reset_gpu()
    try:
        build_start = time.monotonic()
        loaded = load_with_unsloth(folder, max_seq_length=run.seq, trust_remote_code=False)
        llama_shape = _check_shape(loaded.model, shape)
        torch.manual_seed(run.seed)
        model = FastLanguageModel.get_peft_model(
            loaded.model, r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=run.lora_dropout, bias="none",
            target_modules=list(LLAMA_LORA_TARGETS),
            use_gradient_checkpointing="unsloth" if run.gradient_checkpointing else False,
            random_state=run.seed)
        build_s = time.monotonic() - build_start
        m = measure_training(model, batch=run.batch, seq=run.seq, steps=run.steps, warmup=run.warmup,
                             vocab_size=shape["vocab_size"], device="cuda", lr=run.lr, seed=run.seed)
        m.peak_mem_bytes = torch.cuda.max_memory_allocated()
        info = {k: v for k, v in loaded.info.items() if k != "output_tail"}
        extra = {"route_taken": info.get("route"), "unsloth_load": info, "build_s": round(build_s, 2), **estimate,
                 "checkpoint": "random-weight Llama-layout 2.4B written by the probe (llamafied EXAONE 3.5 config)",
                 "gradient_checkpointing_mode": "unsloth" if run.gradient_checkpointing else "off",
                 "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        return _evidence(ctx, run, "unsloth", m, llama_shape["n_params"], llama_shape["shape"], extra)
    except Exception as exc:
        if _is_oom(exc):
            raise _oom_infra(run, "unsloth", exc) from exc
        raise
    finally:
        model = loaded = None
        _free_memory("cuda")


def _meta_param_count(config: Any) -> int:
    """Parameters of the bf16 model for `config`, counted on the meta device (a 4-bit model's packed
    tensors would undercount them, and MFU is defined on the model's parameters)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


QLORA_RECIPES = {
    "qlora": ("PEFT's recipe: prepare_model_for_kbit_training (casts every weight that is not 4-bit, "
              "embeddings, norms and LM head, to fp32, and makes the inputs require grad)"),
    "qlora-no-prepare": ("no prepare_model_for_kbit_training: the weights that are not 4-bit stay bf16, as "
                         "loaded; LoRA adapters as peft makes them"),
}


def qlora_model(folder: Path, *, prepare: bool, device: str, seed: int = 0, dropout: float = 0.0,
                gradient_checkpointing: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model, 4-bit base, evidence): `folder` loaded in 4-bit NF4 through BitsAndBytesConfig, with or
    without prepare_model_for_kbit_training, then LoRA r16 on the seven linear layers. The evidence counts
    the parameters that are not 4-bit by dtype after the recipe, so the row shows what it cost."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from probes.checks.train import nf4_config, quantized_inventory

    base = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=nf4_config(),
                                                device_map={"": 0 if device == "cuda" else "cpu"},
                                                attn_implementation="sdpa", **torch_dtype_kwargs(torch.bfloat16))
    base.config.use_cache = False
    quant = quantized_inventory(base)
    if not quant["quantized_modules"].get("Linear4bit"):
        raise Failed("BitsAndBytesConfig(load_in_4bit=True) loaded no Linear4bit layer", quant)
    if prepare:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    census: dict[str, int] = {}
    for _, param in base.named_parameters():
        if param.dtype in (torch.uint8, torch.int8):   # the packed 4-bit weights
            continue
        key = str(param.dtype).replace("torch.", "")
        census[key] = census.get(key, 0) + param.numel()
    torch.manual_seed(seed)
    model = get_peft_model(base, lora_config(LLAMA_LORA_TARGETS, dropout=dropout))
    info = {"recipe": "qlora" if prepare else "qlora-no-prepare", "prepare_model_for_kbit_training": prepare,
            "recipe_note": QLORA_RECIPES["qlora" if prepare else "qlora-no-prepare"],
            "non_4bit_params_by_dtype": census, **quant,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return model, base, info


def check_qlora(ctx: Any, *, prepare: bool = True) -> dict[str, Any]:
    """HF + PEFT QLoRA at the throughput shape: the llamafied 2.4B checkpoint loaded in 4-bit NF4 through
    BitsAndBytesConfig, LoRA r16 on the seven linear layers, with PEFT's prepare_model_for_kbit_training
    (throughput.qlora) or without it (throughput.qlora-no-prepare); tokens/s and peak memory beside the bf16
    LoRA figure of this run (speedup_vs_sdpa: below 1 means slower). On the H200, PEFT's recipe read 6.3k
    tokens/s, a third of bf16 LoRA, and ran out of memory on an H100's 80 GB: users choose between the two."""
    stack = "qlora" if prepare else "qlora-no-prepare"
    if ctx.pins.get("bitsandbytes") == "none":
        raise Skip("bitsandbytes not in this cell")
    ctx.require_gpu()
    run = ThroughputRun.from_settings(ctx.settings)
    ctx.require("bitsandbytes")
    import torch
    from transformers import AutoConfig

    shape = _shape()
    folder = _llama_folder(ctx)
    model = base = None
    _reset_gpu()
    try:
        build_start = time.monotonic()
        model, base, info = qlora_model(folder, prepare=prepare, device="cuda", seed=run.seed,
                                        dropout=run.lora_dropout, gradient_checkpointing=run.gradient_checkpointing)
        checked = _check_shape(base, shape)
        build_s = time.monotonic() - build_start
        m = measure_training(model, batch=run.batch, seq=run.seq, steps=run.steps, warmup=run.warmup,
                             vocab_size=shape["vocab_size"], device="cuda", lr=run.lr, seed=run.seed)
        m.peak_mem_bytes = torch.cuda.max_memory_allocated()
        n_params = _meta_param_count(AutoConfig.from_pretrained(str(folder)))
        extra = {"model_class": f"{type(base).__module__}.{type(base).__name__}", "attn_implementation": "sdpa",
                 "quantization": "BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute bf16)", **info,
                 "checkpoint": "random-weight Llama-layout 2.4B written by the probe (llamafied EXAONE 3.5 config)",
                 "build_s": round(build_s, 2), "n_params_source": "bf16 model of the same config on the meta device"}
        return _evidence(ctx, run, stack, m, n_params, checked["shape"], extra)
    except Exception as exc:
        if _is_oom(exc):
            raise _oom_infra(run, stack, exc) from exc
        raise
    finally:
        model = base = None
        _free_memory("cuda")


def check_qlora_no_prepare(ctx: Any) -> dict[str, Any]:
    return check_qlora(ctx, prepare=False)


def check_unsloth_qlora(ctx: Any) -> dict[str, Any]:
    """unsloth's own 4-bit loading (FastLanguageModel.from_pretrained(load_in_4bit=True)) of the same
    checkpoint, its Llama fast path, LoRA r16; same loop, same shape."""
    run = _prepare(ctx, "unsloth")
    from probes.checks.unsloth import load_with_unsloth, require_unsloth

    require_unsloth(ctx)
    ctx.require("bitsandbytes")
    import torch
    from transformers import AutoConfig
    from unsloth import FastLanguageModel

    from probes.checks.train import quantized_inventory

    shape = _shape()
    folder = _llama_folder(ctx)
    model = loaded = None
    _reset_gpu()
    try:
        build_start = time.monotonic()
        loaded = load_with_unsloth(folder, max_seq_length=run.seq, trust_remote_code=False, load_in_4bit=True)
        quant = quantized_inventory(loaded.model)
        if not quant["quantized_modules"].get("Linear4bit"):
            raise Failed("FastLanguageModel.from_pretrained(load_in_4bit=True) loaded no Linear4bit layer", quant)
        checked = _check_shape(loaded.model, shape)
        torch.manual_seed(run.seed)
        model = FastLanguageModel.get_peft_model(
            loaded.model, r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=run.lora_dropout, bias="none",
            target_modules=list(LLAMA_LORA_TARGETS),
            use_gradient_checkpointing="unsloth" if run.gradient_checkpointing else False, random_state=run.seed)
        build_s = time.monotonic() - build_start
        m = measure_training(model, batch=run.batch, seq=run.seq, steps=run.steps, warmup=run.warmup,
                             vocab_size=shape["vocab_size"], device="cuda", lr=run.lr, seed=run.seed)
        m.peak_mem_bytes = torch.cuda.max_memory_allocated()
        info = {k: v for k, v in loaded.info.items() if k != "output_tail"}
        n_params = _meta_param_count(AutoConfig.from_pretrained(str(folder)))
        extra = {"route_taken": info.get("route"), "unsloth_load": info, "build_s": round(build_s, 2), **quant,
                 "quantization": "unsloth load_in_4bit=True", "n_params_source": "bf16 model of the same config on the meta device",
                 "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        return _evidence(ctx, run, "unsloth-qlora", m, n_params, checked["shape"], extra)
    except Exception as exc:
        if _is_oom(exc):
            raise _oom_infra(run, "unsloth-qlora", exc) from exc
        raise
    finally:
        model = loaded = None
        _free_memory("cuda")


class _StepTimer:
    """Times each optimizer step of a (SFT)Trainer between two torch.cuda.synchronize() calls."""

    def __init__(self, device: str = "cuda") -> None:
        self.device = device
        self.times: list[float] = []
        self.losses: list[float] = []
        self._start = 0.0

    def callback(self) -> Any:
        from transformers import TrainerCallback

        timer = self

        class _Timer(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                _sync(timer.device)
                timer._start = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                _sync(timer.device)
                timer.times.append(time.perf_counter() - timer._start)

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                if logs and "loss" in logs:
                    timer.losses.append(float(logs["loss"]))

        return _Timer()


def trainer_measurement(ctx: Any, kind: str, model: Any, tokenizer: Any, run: ThroughputRun,
                        vocab: int, device: str = "cuda") -> tuple[Measurement, dict[str, Any]]:
    """warmup + steps optimizer steps through transformers.Trainer or trl.SFTTrainer on one fixed batch of
    pre-tokenized rows (batch size = rows, so every step is one batch x seq); only the last `steps` count."""
    import tempfile

    import torch

    from probes.checks.lora_train import LoraRun
    from probes.checks.train import training_arguments

    ids = fixed_batch(vocab, run.batch, run.seq, run.seed, "cpu").tolist()
    rows = [{"input_ids": row, "attention_mask": [1] * len(row)} for row in ids]
    lora_run = LoraRun(steps=run.warmup + run.steps, lr=run.lr, batch=run.batch, seq=run.seq, seed=run.seed)
    out = Path(tempfile.mkdtemp(prefix=f"throughput-{kind}-", dir=str(ctx.work_dir)))
    timer = _StepTimer(device)
    if kind == "trainer":
        from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

        args = training_arguments(TrainingArguments, out, lora_run, device)
        trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                          data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
                          callbacks=[timer.callback()])
        used = {"trainer": "transformers.Trainer", "collator": "DataCollatorForLanguageModeling(mlm=False)"}
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        fields = getattr(SFTConfig, "__dataclass_fields__", {})
        extra = {("max_length" if "max_length" in fields else "max_seq_length"): run.seq}
        if "packing" in fields:
            extra["packing"] = False
        args = training_arguments(SFTConfig, out, lora_run, device, **extra)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[timer.callback()])
        used = {"trainer": "trl.SFTTrainer", "dataset": "pre-tokenized input_ids (no chat template at this shape)"}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    times = timer.times[run.warmup:]
    if len(times) != run.steps:
        raise Failed(f"{used['trainer']} ran {len(timer.times)} steps, expected {run.warmup + run.steps}")
    m = Measurement(step_times=times, losses=timer.losses, tokens_per_step=run.batch * run.seq,
                    peak_mem_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else None)
    used["bf16_autocast"] = bool(getattr(args, "bf16", False))
    return m, used


def check_trainer(ctx: Any) -> dict[str, Any]:
    """tokens/s through transformers.Trainer and trl.SFTTrainer beside the raw loop, on the llamafied 2.4B
    shape with sdpa (the baseline every cell has): what a user of the trainers actually gets."""
    run = _prepare(ctx, "sdpa")
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from probes.checks.train import load_tokenizer

    shape = _shape()
    config_dict = _llama_config_dict(ctx)
    config_dict.pop("model_type", None)
    tokenizer = load_tokenizer(str(Path(ctx.work_dir) / "throughput" / "llama-tiny"), trust_remote_code=False)
    model = base = None
    _reset_gpu()
    results: dict[str, Any] = {}
    try:
        with torch.device("cuda"):
            base = AutoModelForCausalLM.from_config(LlamaConfig.from_dict(config_dict), attn_implementation="sdpa",
                                                    **torch_dtype_kwargs(torch.bfloat16))
        base.config.use_cache = False
        checked = _check_shape(base, shape)
        torch.manual_seed(run.seed)
        model = get_peft_model(base, lora_config(LLAMA_LORA_TARGETS, dropout=run.lora_dropout))
        torch.cuda.reset_peak_memory_stats()
        raw = measure_training(model, batch=run.batch, seq=run.seq, steps=run.steps, warmup=run.warmup,
                               vocab_size=shape["vocab_size"], device="cuda", lr=run.lr, seed=run.seed)
        raw.peak_mem_bytes = torch.cuda.max_memory_allocated()
        results["raw_loop"] = raw
        kinds = ["trainer"]
        trl_note = None
        if ctx.pins.get("trl") == "none" or ctx.installed("trl") is None:
            trl_note = "trl not in this cell"
        else:
            kinds.append("sft_trainer")
        used: dict[str, Any] = {}
        for kind in kinds:
            _free_memory("cuda")
            m, info = trainer_measurement(ctx, "trainer" if kind == "trainer" else "sft", model, tokenizer, run,
                                           shape["vocab_size"])
            results[kind] = m
            used[kind] = info
        raw_tps = raw.tokens_per_s
        figures = {kind: {"tokens_per_s": round(m.tokens_per_s, 1), "step_time_s_median": round(m.median_step, 4),
                          "peak_mem_gib": round(m.peak_mem_bytes / GIB, 2) if m.peak_mem_bytes else None,
                          "vs_raw_loop": round(m.tokens_per_s / raw_tps, 3),
                          "losses": [round(x, 4) for x in m.losses]}
                   for kind, m in results.items()}
        extra = {"model_class": f"{type(base).__module__}.{type(base).__name__}", "attn_implementation": "sdpa",
                 "stacks_measured": figures, "trainers": used, "sft_trainer_skipped": trl_note,
                 "note": "tokens/s of each stack on the same model object, one after another; the raw loop "
                         "is lora-train's loop (no autocast, no clipping); the trainers use the probe's "
                         "TrainingArguments (bf16 autocast, constant lr, no clipping, no checkpoints)"}
        headline = results.get("sft_trainer") or results["trainer"]
        return _evidence(ctx, run, "trainer", headline, checked["n_params"], checked["shape"], extra)
    except Exception as exc:
        if _is_oom(exc):
            raise _oom_infra(run, "trainer", exc) from exc
        raise
    finally:
        model = base = None
        _free_memory("cuda")


def _hf_check(attn: str, *, llamafied: bool = False, **kw: Any) -> Callable[[Any], dict[str, Any]]:
    def check(ctx: Any) -> dict[str, Any]:
        return check_hf(ctx, attn, llamafied=llamafied, **kw)
    check.__name__ = f"check_throughput_{kw.get('stack') or attn}{'_llamafied' if llamafied else ''}"
    return check


def _speed_checks(config: tuple[int, int] | None) -> list[tuple[str, Callable[[Any], dict[str, Any]]]]:
    """(stack, check) of the speed checks that run at every configuration, in run order."""
    def unsloth(ctx: Any) -> dict[str, Any]:
        return check_unsloth(ctx, config)

    return [
        *((attn, _hf_check(attn, config=config)) for attn in ("sdpa", "flash_attention_2")),
        ("sdpa-llamafied", _hf_check("sdpa", llamafied=True, config=config)),
        ("sdpa-gc", _hf_check("sdpa", llamafied=True, stack="sdpa-gc", gradient_checkpointing=True,
                              config=config)),
        ("flash_attention_4", _hf_check("flash_attention_4", llamafied=True, stack="flash_attention_4",
                                        config=config)),
        ("sdpa-exaone4", _hf_check("sdpa", stack="sdpa-exaone4", model_kind="exaone4", config=config)),
        ("flash_attention_4-exaone4", _hf_check("flash_attention_4", stack="flash_attention_4-exaone4",
                                                model_kind="exaone4", config=config)),
        # Liger last among the HF stacks: it patches modeling_llama (restored after each Liger check)
        ("liger", _hf_check("sdpa", llamafied=True, stack="liger", liger=True, config=config)),
        ("liger-fa4", _hf_check("flash_attention_4", llamafied=True, stack="liger-fa4", liger=True,
                                config=config)),
        ("unsloth", unsloth),
    ]


def checks(ctx: Any) -> list[tuple[str, Any]]:
    # sdpa on the llamafied model right after the remote-code runs: the speed baseline wherever the
    # remote code of the pinned revision does not load on this transformers.
    main = dict(_speed_checks(None))
    out = [("throughput.sdpa", main["sdpa"]), ("throughput.eager", _hf_check("eager")),
           ("throughput.flash_attention_2", main["flash_attention_2"]),
           ("throughput.sdpa-llamafied", main["sdpa-llamafied"]),
           # through the trainers, and QLoRA, beside the figures above
           ("throughput.trainer", check_trainer),
           ("throughput.qlora", check_qlora),
           ("throughput.qlora-no-prepare", check_qlora_no_prepare),
           # the memory-limited setting, FlashAttention 4, EXAONE 4, Liger
           *((f"throughput.{stack}", main[stack]) for stack in
             ("sdpa-gc", "flash_attention_4", "sdpa-exaone4", "flash_attention_4-exaone4", "liger",
              "liger-fa4")),
           ]
    try:
        configs = ThroughputRun.from_settings(ctx.settings).configs
    except (ValueError, TypeError, KeyError):
        configs = ()   # the checks themselves report the bad settings
    from probes.registry import shape_suffix

    extra = [(f"throughput.{stack}.{shape_suffix(*config)}", stack, check)
             for config in configs for stack, check in _speed_checks(config)]
    # every HF stack at every configuration before unsloth's stacks (unsloth patches transformers)
    out += [(name, check) for name, stack, check in extra if stack != "unsloth"]
    out += [("throughput.unsloth", main["unsloth"]), ("throughput.unsloth-qlora", check_unsloth_qlora)]
    out += [(name, check) for name, stack, check in extra if stack == "unsloth"]
    return out
