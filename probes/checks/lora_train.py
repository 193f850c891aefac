"""Check group "lora-train": does LoRA training with transformers + peft actually learn on EXAONE 3.5?

`lora-train.hf-peft` attaches LoRA (r=16) to every linear layer of the EXAONE 3.5 model, trains a few
steps on one fixed, seeded batch (which the model can memorise) and passes only when all of these hold:
  - the loss is finite at every step and falls (last-k mean clearly below first-k mean);
  - every LoRA A/B matrix received a non-zero gradient at some step;
  - the frozen base weights are bit-identical before and after training.

The training loop and the bar live in `train_and_judge`, which the unsloth group reuses so both stacks
are judged by the same numbers.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable

from probes.framework import Failed, Infra

__all__ = [
    "EXAONE35_LORA_TARGETS", "LLAMA_LORA_TARGETS", "LoraRun", "TrainRecord", "checks",
    "adapter_inventory", "fixed_batch", "load_causal_lm", "lora_config", "lora_parameters",
    "run_lora_steps", "judge_lora_training", "train_and_judge", "torch_dtype_kwargs",
]

# EXAONE 3.5's linear layers, named explicitly (not "all-linear") so a renamed module shows up as missing.
EXAONE35_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "c_fc_0", "c_fc_1", "c_proj")
# The same layers after llamafy_exaone35 (attention out_proj -> o_proj, c_fc_0/c_fc_1/c_proj -> gate/up/down).
LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

LORA_RANK = 16
LORA_ALPHA = 32
# The learning bar. Training repeats one fixed batch with no dropout, and LoRA's B starts at
# zero, so losses[0] is exactly the untrained model's loss on that batch: the reference needs no
# window. The end is the mean of the last END_WINDOW steps (fewer when the run is shorter; never step 0),
# which steadies a high lr's step-to-step wobble. A stack that cannot learn (lr 0, no gradient reaching
# the adapters) repeats losses[0] exactly, ratio 1.0; a stack that learns is below MAX_LOSS_RATIO for
# every step count from MIN_STEPS, at every lr in LR_RANGE and batch in BATCH_RANGE (measured on the
# fixture: the weakest, lr 1e-3 x batch 16 after 4 steps, is 0.9959; a settled 400-step run ~0.79).
# The old bar, mean(last quarter) / mean(first quarter) <= 0.95, failed working stacks: over 400 steps
# the loss settles inside the first quarter (0.9757), and over 2 to 4 steps one update is < 5%.
MAX_LOSS_RATIO = 0.998
END_WINDOW = 3
MIN_STEPS = 4
MAX_STEPS = 10_000          # pinmatrix/matrix/load.py SETTING_BOUNDS["lora_steps"]
LR_RANGE = (1e-3, 2e-2)     # where the bar is verified (tests/unit/test_checks_training.py)
BATCH_RANGE = (1, 16)


@dataclass(frozen=True)
class LoraRun:
    """How one LoRA training check trains: from the cell's settings, with defaults that pass on the fixture."""

    steps: int = 12
    lr: float = 5e-3
    batch: int = 2
    seq: int = 32
    seed: int = 0

    @property
    def window(self) -> int:
        """k: how many of the last steps are averaged (never step 0, the reference)."""
        return max(1, min(END_WINDOW, self.steps - 1))

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "LoraRun":
        steps = int(settings.get("lora_steps", cls.steps))
        if not MIN_STEPS <= steps <= MAX_STEPS:
            raise ValueError(f"settings.lora_steps must be from {MIN_STEPS} (to see the loss fall) "
                             f"to {MAX_STEPS}, got {steps}")
        return cls(
            steps=steps,
            lr=float(settings.get("lora_lr", cls.lr)),
            batch=int(settings.get("lora_batch", cls.batch)),
            seq=int(settings.get("lora_seq", cls.seq)),
            seed=int(settings.get("seed", cls.seed)),
        )


@dataclass
class TrainRecord:
    """What one training run measured; judged by `judge_lora_training`."""

    losses: list[float]
    lora_names: list[str]
    never_nonzero_grad: list[str]       # LoRA tensors whose gradient was None or all-zero at every step
    last_step_zero_grad: int            # of those, how many were zero at the final step alone
    lora_numel: int
    trainable_numel: int
    total_numel: int
    base_tensors: int
    base_changed: list[str]
    base_max_abs_diff: float
    seconds: float


# ---------------------------------------------------------------------------------------------------------
# Building blocks (also used by generate, unsloth and throughput)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():   # "0rc1", "dev0": stop at the first pre-release marker
            break
    return tuple(parts)


def torch_dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """The dtype keyword `from_pretrained` / `from_config` accept: `dtype` from transformers 4.56, `torch_dtype` before."""
    import transformers

    return {"dtype": dtype} if _version_tuple(transformers.__version__) >= (4, 56) else {"torch_dtype": dtype}


def device_dtype(device: str) -> Any:
    """fp32 on CPU (bf16 matmuls there are slow and lossy); bf16 on CUDA, as people train."""
    import torch

    return torch.bfloat16 if device == "cuda" else torch.float32


def load_causal_lm(path: str, *, device: str, dtype: Any, revision: str | None = None,
                   attn_implementation: str | None = None, trust_remote_code: bool = True) -> Any:
    """AutoModelForCausalLM from a local folder (or hub id at `revision`), moved to `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **torch_dtype_kwargs(dtype)}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval()


def resolve_exaone35(ctx: Any) -> Any:
    """The EXAONE 3.5 model handle for this run (the tiny fixture, or the real model where the hub cache has it)."""
    from probes.models import resolve_model

    return resolve_model(ctx, "exaone3.5")


def _handle_revision(handle: Any) -> str | None:
    """Pass a revision only for hub ids; a local folder is already that revision."""
    import os

    path = str(getattr(handle, "path", ""))
    return None if os.path.isdir(path) else getattr(handle, "revision", None)


def model_summary(handle: Any) -> dict[str, Any]:
    if hasattr(handle, "evidence"):
        return handle.evidence()
    return {"path": str(getattr(handle, "path", handle)), "source": getattr(handle, "source", None),
            "revision": getattr(handle, "revision", None)}


def fixed_batch(vocab_size: int, batch: int, seq: int, seed: int, device: str) -> Any:
    """One seeded batch of token ids (avoiding the first few ids, often special tokens); labels are the ids."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    low = 4 if vocab_size > 8 else 0
    return torch.randint(low, vocab_size, (batch, seq), generator=generator).to(device)


def lora_config(targets: Iterable[str], *, rank: int = LORA_RANK, alpha: int = LORA_ALPHA,
                dropout: float = 0.0, init_lora_weights: Any = True) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                      bias="none", task_type="CAUSAL_LM", init_lora_weights=init_lora_weights)


def lora_parameters(model: Any) -> dict[str, Any]:
    """name -> parameter for every LoRA A/B matrix (peft names them ...lora_A.<adapter>.weight)."""
    return {name: p for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name}


def adapter_inventory(model: Any, targets: Iterable[str]) -> dict[str, Any]:
    """Which modules got an adapter, counted per target name; `missing` lists targets that got none."""
    adapted = [name for name, module in model.named_modules()
               if hasattr(module, "lora_A") and len(getattr(module, "lora_A", {}) or {}) > 0]
    per_target: dict[str, int] = {target: 0 for target in targets}
    other: list[str] = []
    for name in adapted:
        leaf = name.rsplit(".", 1)[-1]
        if leaf in per_target:
            per_target[leaf] += 1
        else:
            other.append(name)
    return {
        "adapted_modules": len(adapted),
        "adapters_per_target": per_target,
        "missing_targets": [target for target, count in per_target.items() if count == 0],
        "unexpected_adapted": other[:20],
        "adapted_examples": adapted[:len(per_target)],
    }


def _base_snapshot(model: Any, lora_names: set[str]) -> dict[str, Any]:
    """A CPU copy of every non-LoRA parameter: the frozen base the training must leave bit-identical."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if name not in lora_names}


def _compare_base(model: Any, snapshot: dict[str, Any]) -> tuple[list[str], float]:
    import torch

    changed: list[str] = []
    max_diff = 0.0
    current = dict(model.named_parameters())
    for name, before in snapshot.items():
        after = current[name].detach().to("cpu")
        if not torch.equal(before, after):
            changed.append(name)
            diff = (after.float() - before.float()).abs().max().item()
            max_diff = max(max_diff, diff if math.isfinite(diff) else float("inf"))
    return changed, max_diff


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or "out of memory" in str(exc).lower()


def run_lora_steps(model: Any, input_ids: Any, *, steps: int, lr: float) -> TrainRecord:
    """Train the parameters that require grad with AdamW on one fixed batch; record losses and gradients."""
    import torch

    lora = lora_parameters(model)
    snapshot = _base_snapshot(model, set(lora))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise Failed("no parameter requires grad after attaching LoRA", {"lora_tensors": len(lora)})
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    attention_mask = torch.ones_like(input_ids)
    seen_nonzero = {name: False for name in lora}
    last_zero = 0
    losses: list[float] = []
    model.train()
    start = time.monotonic()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
        loss = out.loss if hasattr(out, "loss") else out[0]
        if loss is None:
            raise Failed("the model returned no loss for labels=input_ids", {"losses": losses})
        loss.backward()
        losses.append(float(loss.detach().float().item()))
        last_zero = 0
        for name, p in lora.items():
            nonzero = p.grad is not None and bool((p.grad != 0).any().item())
            seen_nonzero[name] = seen_nonzero[name] or nonzero
            last_zero += 0 if nonzero else 1
        optimizer.step()
    if input_ids.is_cuda:
        torch.cuda.synchronize()
    seconds = time.monotonic() - start
    model.eval()
    changed, max_diff = _compare_base(model, snapshot)
    return TrainRecord(
        losses=losses,
        lora_names=sorted(lora),
        never_nonzero_grad=sorted(name for name, seen in seen_nonzero.items() if not seen),
        last_step_zero_grad=last_zero,
        lora_numel=sum(p.numel() for p in lora.values()),
        trainable_numel=sum(p.numel() for p in trainable),
        total_numel=sum(p.numel() for p in model.parameters()),
        base_tensors=len(snapshot),
        base_changed=changed,
        base_max_abs_diff=max_diff,
        seconds=seconds,
    )


def judge_lora_training(record: TrainRecord, run: LoraRun) -> dict[str, Any]:
    """Evidence for a pass, or Failed naming every bar that was missed (with the same evidence)."""
    losses = record.losses
    k = max(1, min(run.window, len(losses) - 1))
    finite = all(math.isfinite(x) for x in losses)
    start = losses[0] if losses else float("nan")
    end = sum(losses[-k:]) / k if losses else float("nan")
    ratio = end / start if finite and len(losses) >= 2 and start > 0 else float("nan")
    evidence: dict[str, Any] = {
        "steps": run.steps, "lr": run.lr, "batch": run.batch, "seq": run.seq, "seed": run.seed,
        "losses": [round(x, 6) if math.isfinite(x) else str(x) for x in losses],
        "start_loss": start, "end_k_mean": end, "k": k, "drop_ratio": ratio,
        "loss_bar": f"every loss finite and mean(last {k}) <= {MAX_LOSS_RATIO} x the loss before "
                    "training (step 0)",
        "lora_tensors": len(record.lora_names),
        "lora_params": record.lora_numel,
        "zero_grad_lora_tensors": len(record.never_nonzero_grad),
        "zero_grad_examples": record.never_nonzero_grad[:10],
        "zero_grad_at_last_step": record.last_step_zero_grad,
        "grad_bar": "every LoRA A/B tensor has a non-zero gradient at some step",
        "base_tensors_checked": record.base_tensors,
        "base_changed_tensors": len(record.base_changed),
        "base_changed_examples": record.base_changed[:10],
        "base_max_abs_diff": record.base_max_abs_diff,
        "base_bar": "every non-LoRA parameter bit-identical (torch.equal) before and after",
        "trainable_params": record.trainable_numel,
        "total_params": record.total_numel,
        "trainable_fraction": record.trainable_numel / record.total_numel if record.total_numel else None,
        "train_seconds": round(record.seconds, 3),
    }
    problems: list[str] = []
    if not record.lora_names:
        problems.append("no LoRA tensors found in the model")
    if not finite:
        bad = next(i for i, x in enumerate(losses) if not math.isfinite(x))
        problems.append(f"loss not finite at step {bad} ({losses[bad]})")
    elif not ratio <= MAX_LOSS_RATIO:
        problems.append(f"loss did not fall: mean(last {k}) / loss at step 0 = {ratio:.4f} > {MAX_LOSS_RATIO}")
    if record.never_nonzero_grad:
        problems.append(f"{len(record.never_nonzero_grad)} of {len(record.lora_names)} LoRA tensors never got a "
                        f"non-zero gradient (e.g. {record.never_nonzero_grad[0]})")
    if record.base_changed:
        problems.append(f"{len(record.base_changed)} frozen base tensors changed during training "
                        f"(max |diff| {record.base_max_abs_diff:.3g}, e.g. {record.base_changed[0]})")
    if problems:
        raise Failed("; ".join(problems), evidence)
    return evidence


def train_and_judge(model: Any, run: LoraRun, *, vocab_size: int, device: str,
                    targets: Iterable[str]) -> dict[str, Any]:
    """Check adapter placement, train, and judge: the whole lora-train bar for an already-LoRA'd model."""
    targets = tuple(targets)
    inventory = adapter_inventory(model, targets)
    input_ids = fixed_batch(vocab_size, run.batch, run.seq, run.seed, device)
    try:
        record = run_lora_steps(model, input_ids, steps=run.steps, lr=run.lr)
        evidence = judge_lora_training(record, run)
    except Failed as exc:
        exc.evidence = {**inventory, "targets": list(targets), **exc.evidence}
        raise
    except Exception as exc:
        if device == "cuda" and _is_oom(exc):
            raise Infra(f"CUDA out of memory in LoRA training at {run.batch}x{run.seq}") from exc
        raise
    if inventory["missing_targets"]:
        raise Failed(f"LoRA was not attached to {inventory['missing_targets']}",
                     {**inventory, "targets": list(targets), **evidence})
    return {**inventory, "targets": list(targets), **evidence}


# ---------------------------------------------------------------------------------------------------------
# The check


def build_hf_peft_model(ctx: Any, *, init_lora_weights: Any = True, llamafied: bool = False) -> tuple[Any, dict[str, Any]]:
    """EXAONE 3.5 on ctx.device with LoRA r16 on all seven linear layers (peft): through its remote code
    (the pinned revision, or its stand-in), or `llamafied` (LlamaForCausalLM, the same weights)."""
    import torch
    from peft import get_peft_model

    from probes.models import llamafied_folder

    handle = resolve_exaone35(ctx)
    dtype = device_dtype(ctx.device)
    if llamafied:
        path, revision, remote, targets = str(llamafied_folder(ctx, handle)), None, False, LLAMA_LORA_TARGETS
    else:
        path, revision, remote, targets = str(handle.path), _handle_revision(handle), True, EXAONE35_LORA_TARGETS
    base = load_causal_lm(path, device=ctx.device, dtype=dtype, revision=revision, trust_remote_code=remote)
    base.config.use_cache = False  # training: no KV cache to build
    torch.manual_seed(int(ctx.settings.get("seed", 0)))  # LoRA A (and B when random) init is reproducible
    model = get_peft_model(base, lora_config(targets, init_lora_weights=init_lora_weights))
    info = {"model": model_summary(handle), "device": ctx.device, "dtype": str(dtype).replace("torch.", ""),
            "model_class": type(base).__name__, "route": "llamafied" if llamafied else "remote-code",
            "lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0}
    return model, info


def check_hf_peft(ctx: Any, *, llamafied: bool = False) -> dict[str, Any]:
    run = LoraRun.from_settings(ctx.settings)
    model, info = build_hf_peft_model(ctx, llamafied=llamafied)
    targets = LLAMA_LORA_TARGETS if llamafied else EXAONE35_LORA_TARGETS
    try:
        vocab = int(model.get_input_embeddings().weight.shape[0])
        evidence = train_and_judge(model, run, vocab_size=vocab, device=ctx.device, targets=targets)
    except Failed as exc:
        exc.evidence = {**info, **exc.evidence}
        raise
    finally:
        del model
        _free_memory(ctx.device)
    return {**info, **evidence}


def check_hf_peft_llamafied(ctx: Any) -> dict[str, Any]:
    return check_hf_peft(ctx, llamafied=True)


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def checks(ctx: Any) -> list[tuple[str, Any]]:
    # The llamafied route trains too, so a cell whose remote code breaks still answers "can I LoRA-train
    # EXAONE 3.5 with this stack?" for the route that remains.
    return [("lora-train.hf-peft", check_hf_peft), ("lora-train.hf-peft-llamafied", check_hf_peft_llamafied)]


