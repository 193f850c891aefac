"""Tiny real arguments for the transformers callables a remote-code file calls, so that the surface
check can call each one on CPU the way the file does (probes/checks/surface.py).

A recorded call form is a callable, its positional count and its keyword names
(probes/remote_code_surface.py). To call it, each argument needs a value. Values are chosen by what
they are (an attention mask, input embeddings, a config), small (batch 1, 3 tokens, hidden size 8)
and real (torch tensors, a real transformers config), so that the call runs through where the stack
allows it. A callable or keyword not listed here gets None: Python binds arguments before any of the
body runs, so a keyword the callable does not take is still rejected at the call, and a body that
fails on None fails later, which judges nothing (the check says so).

Some calls return something the file then uses the way the call form implies: a decorator factory
(`add_start_docstrings(...)`) is applied to a method, as the file's `@...` line does. `then` does
that; `cleanup` undoes a call's side effect on transformers' globals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["CallArgs", "call_args", "knows_keyword", "tiny_config"]

SEQ, HIDDEN, HEADS, HEAD_DIM = 3, 8, 2, 4


@dataclass
class CallArgs:
    args: list[Any]
    kwargs: dict[str, Any]
    then: Callable[[Any], Any] | None = None      # applied to the call's result
    cleanup: Callable[[], None] | None = None     # undoes a side effect of the call


def _torch() -> Any:
    import torch

    return torch


def tiny_config() -> Any:
    """A real transformers config of a one-layer model (Llama's: every release in range has it)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=16, hidden_size=HIDDEN, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=32,
                       attn_implementation="sdpa")


def _embeds() -> Any:
    return _torch().zeros(1, SEQ, HIDDEN)


def _mask() -> Any:
    torch = _torch()
    return torch.ones(1, SEQ, dtype=torch.long)


def _heads() -> Any:
    return _torch().zeros(1, SEQ, HEADS, HEAD_DIM)


def _output_type() -> Any:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return CausalLMOutputWithPast


# keyword name -> a value of what the keyword means
_KEYWORDS: dict[str, Callable[[], Any]] = {
    "attention_mask": _mask,
    "input_embeds": _embeds,
    "inputs_embeds": _embeds,
    "cache_position": lambda: _torch().arange(SEQ),
    "position_ids": lambda: _torch().arange(SEQ)[None],
    "past_key_values": lambda: None,
    "config": tiny_config,
    "last_hidden_state": _embeds,
    "hidden_states": lambda: None,
    "attentions": lambda: None,
    "loss": lambda: None,
    "logits": lambda: _torch().zeros(1, SEQ, 16),
    "start_logits": lambda: _torch().zeros(1, SEQ),
    "end_logits": lambda: _torch().zeros(1, SEQ),
    "is_training": lambda: False,
    "past_key_values_length": lambda: 0,
    "dropout": lambda: 0.0,
    "is_causal": lambda: True,
    "checkpoint": lambda: "pinmatrix/surface-probe",
    "config_class": lambda: "PretrainedConfig",
    "output_type": _output_type,
    "bos_token_id": lambda: 1,
    "eos_token_id": lambda: 2,
}


def _method_doc(decorator: Any) -> Any:
    """Apply a docstring decorator to a model's forward, as `@decorator` above `def forward` does."""
    def forward(self: Any, input_ids: Any = None, attention_mask: Any = None) -> Any:
        """Runs the model."""

    forward.__qualname__ = "PinmatrixSurfaceProbeForCausalLM.forward"
    return decorator(forward)


def _append_probe() -> CallArgs:
    class PinmatrixSurfaceProbeNorm:
        pass

    def cleanup() -> None:
        from transformers import pytorch_utils

        layers = getattr(pytorch_utils, "ALL_LAYERNORM_LAYERS", [])
        while PinmatrixSurfaceProbeNorm in layers:
            layers.remove(PinmatrixSurfaceProbeNorm)

    return CallArgs([PinmatrixSurfaceProbeNorm], {}, cleanup=cleanup)


# the callable's dotted name, from its last two parts -> its positional arguments (and then/cleanup)
_POSITIONAL: dict[str, Callable[[], CallArgs]] = {
    "DynamicCache.from_legacy_cache": lambda: CallArgs([((_heads().transpose(1, 2), _heads().transpose(1, 2)),)], {}),
    "AttentionMaskConverter._ignore_causal_mask_sdpa": lambda: CallArgs([_mask()], {}),
    "AttentionMaskConverter._unmask_unattended": lambda: CallArgs(
        [_torch().zeros(1, 1, SEQ, SEQ), _torch().finfo(_torch().float32).min], {}),
    "modeling_flash_attention_utils._flash_attention_forward": lambda: CallArgs(
        [_heads(), _heads(), _heads(), None, SEQ], {}),
    "PreTrainedModel.__init__": lambda: CallArgs([tiny_config()], {}),
    "ALL_LAYERNORM_LAYERS.append": _append_probe,
    "utils.add_start_docstrings": lambda: CallArgs(["The model.", "Its inputs."], {}, then=_method_doc),
    "utils.add_start_docstrings_to_model_forward": lambda: CallArgs(["Args: input_ids"], {}, then=_method_doc),
    "utils.add_code_sample_docstrings": lambda: CallArgs([], {}, then=_method_doc),
    "logging.get_logger": lambda: CallArgs(["pinmatrix.surface"], {}),
}


def call_args(dotted: str, positional: int, keywords: list[str], star_args: bool = False) -> CallArgs:
    """Arguments for calling `dotted` with `positional` positional arguments and these keywords. A
    form that forwards `*args` passes what the callable needs positionally (`super().__init__(*args)`
    of a model forwards its config)."""
    key = ".".join(dotted.split(".")[-2:])
    built = _POSITIONAL[key]() if key in _POSITIONAL else CallArgs([], {})
    if star_args:
        positional = max(positional, len(built.args))
    args = list(built.args[:positional]) + [None] * max(0, positional - len(built.args))
    kwargs = {k: (_KEYWORDS[k]() if k in _KEYWORDS else None) for k in keywords}
    return CallArgs(args, {**built.kwargs, **kwargs}, built.then, built.cleanup)


def knows_keyword(name: str) -> bool:
    """Whether a value of what `name` means is known here."""
    return name in _KEYWORDS
