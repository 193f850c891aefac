"""Peak GPU memory of a throughput configuration, estimated before anything is allocated.

A configuration that cannot fit is `infra` at once, with the estimate and the card's memory, instead of
after allocating the whole card (eager attention at 4x2048 took 135 GiB of the H200's 139.8 before it
failed, about a minute of device time). The model, per stack family:

  peak = weights (bf16, 2 bytes per parameter)
       + LoRA state (fp32 parameter, gradient and two AdamW moments: 16 bytes per LoRA parameter)
       + logits (HF stacks: bf16 logits, their fp32 copy for the loss, its log-softmax and gradient,
         2 + 4 + 4 + 4 bytes per token and vocabulary entry; unsloth's chunked loss keeps none)
       + tokens x layers x the activations one token leaves in one layer (calibrated, see below)
       + eager attention only: layers x batch x heads x seq^2 x 6 bytes (the fp32 softmax output that
         softmax's backward needs, and its bf16 copy that the product with V saves)

The per-token activation figure is calibrated at one measured point per family (CALIBRATION: the run's
peak from torch.cuda.max_memory_allocated), so the estimate reproduces that point and extrapolates
linearly in tokens; the eager term is first principles (the score matrices sdpa never materialises).
Stacks whose memory this does not model (gradient checkpointing, Liger's fused loss, QLoRA) get no
estimate and are never refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CALIBRATION", "MemoryEstimate", "estimate_peak", "lora_param_count", "param_count",
           "EAGER_BYTES_PER_SCORE", "family_of"]

GIB = 1024 ** 3
EAGER_BYTES_PER_SCORE = 4 + 2
HF_LOGIT_BYTES = 2 + 4 + 4 + 4
LORA_STATE_BYTES = 4 * 4

# family -> (the measured check, batch, seq, peak GiB, where it was read)
CALIBRATION: dict[str, tuple[str, int, int, float, str]] = {
    "hf": ("throughput.sdpa-llamafied", 4, 2048, 53.95,
           "reports/h200/20261129T174853Z-h200-b (NVIDIA H200; 54.03 in other cells, 53.94-54.03 on the H100)"),
    "unsloth": ("throughput.unsloth", 4, 2048, 20.89,
                "reports/h200/20261129T174853Z-h200-b (NVIDIA H200; 19.53-20.89 across cells, 20.89 on the H100)"),
}
# the throughput stacks whose memory the model covers, by family (attention from the stack name)
FAMILIES = {"sdpa": "hf", "sdpa-llamafied": "hf", "eager": "hf", "flash_attention_2": "hf",
            "flash_attention_4": "hf", "sdpa-exaone4": "hf", "flash_attention_4-exaone4": "hf",
            "unsloth": "unsloth"}


def family_of(stack: str) -> str | None:
    return FAMILIES.get(stack)


def param_count(shape: dict[str, Any]) -> int:
    """Parameters of the Llama-layout model of `shape` (tied embedding counted once)."""
    h, f, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
    untied = 0 if shape.get("tie_word_embeddings", True) else v * h
    return shape["num_layers"] * per_layer + v * h + untied + h


def lora_param_count(shape: dict[str, Any], rank: int) -> int:
    """LoRA r on the seven linear layers of every layer: r x (in + out) each."""
    h, f = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = rank * ((h + h) * 2 + (h + kv) * 2 + (h + f) * 3)
    return shape["num_layers"] * per_layer


@dataclass(frozen=True)
class MemoryEstimate:
    stack: str
    batch: int
    seq: int
    total_bytes: int
    parts: dict[str, int]
    calibration: str

    @property
    def gib(self) -> float:
        return self.total_bytes / GIB

    def evidence(self) -> dict[str, Any]:
        return {"estimated_peak_gib": round(self.gib, 2),
                "estimate_parts_gib": {k: round(v / GIB, 2) for k, v in self.parts.items()},
                "estimate_calibration": self.calibration, "estimate_model": __doc__.split("\n\n")[1].strip()}


def _fixed_and_logits(shape: dict[str, Any], family: str, tokens: int, rank: int) -> dict[str, int]:
    parts = {"weights": 2 * param_count(shape), "lora_state": LORA_STATE_BYTES * lora_param_count(shape, rank)}
    parts["logits"] = HF_LOGIT_BYTES * tokens * shape["vocab_size"] if family == "hf" else 0
    return parts


def activation_bytes_per_token_layer(shape: dict[str, Any], family: str, rank: int) -> float:
    """The calibration point's peak less its weights, LoRA state and logits, per token and layer."""
    _, batch, seq, peak_gib, _ = CALIBRATION[family]
    tokens = batch * seq
    fixed = sum(_fixed_and_logits(shape, family, tokens, rank).values())
    return (peak_gib * GIB - fixed) / (tokens * shape["num_layers"])


def estimate_peak(shape: dict[str, Any], stack: str, batch: int, seq: int, rank: int = 16) -> MemoryEstimate | None:
    """The estimated peak of `stack` at batch x seq on the model of `shape`, or None for a stack the model
    does not cover."""
    family = family_of(stack)
    if family is None:
        return None
    tokens = batch * seq
    parts = _fixed_and_logits(shape, family, tokens, rank)
    parts["activations"] = int(activation_bytes_per_token_layer(shape, family, rank) * tokens * shape["num_layers"])
    if stack == "eager":
        parts["eager_scores"] = (EAGER_BYTES_PER_SCORE * shape["num_layers"] * batch
                                 * shape["num_attention_heads"] * seq * seq)
    name, cb, cs, peak, where = CALIBRATION[family]
    return MemoryEstimate(stack, batch, seq, sum(parts.values()), parts,
                          f"activations per token and layer from {name} at {cb}x{cs}: {peak} GiB, {where}")
