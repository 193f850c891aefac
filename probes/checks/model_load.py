"""Shared evidence for the model-loading checks (exaone3.5, exaone4, attention).

- `load_pretrained`: from_pretrained with loading info and transformers' own load messages captured;
- `compare_to_checkpoint`: every loaded tensor against the checkpoint file (catches silent random init);
- `logits_evidence`: shape and finiteness of a forward pass, as numbers;
- `remote_code_files`: sha256 of the remote-code files transformers actually imported.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import re
import sys
from pathlib import Path
from typing import Any, Callable

from probes.framework import Failed

__all__ = [
    "LoadResult", "compare_to_checkpoint", "dtype_kwargs", "fixed_input_ids", "judge_loading",
    "load_pretrained", "logits_evidence", "remote_code_files", "run_dtype", "sha256_file",
]

# transformers' words for weights that did not come from the checkpoint (4.x warnings, 5.x load report).
LOAD_PROBLEM = re.compile(r"newly initialized|were not used|not used when initializing|MISSING|UNEXPECTED|MISMATCH",
                          re.IGNORECASE)
INPUT_BATCH, INPUT_SEQ, INPUT_SEED = 2, 16, 1234


def run_dtype(ctx: Any) -> Any:
    """fp32 on CPU (exact comparisons, no bf16 matmul on every CPU), bf16 on CUDA (what fine-tuning uses)."""
    import torch

    return torch.bfloat16 if ctx.device == "cuda" else torch.float32


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """`dtype=` where from_pretrained knows it (transformers >= 4.56), else the older `torch_dtype=`."""
    from transformers import PreTrainedModel

    params = inspect.signature(PreTrainedModel.from_pretrained).parameters
    import transformers

    major_minor = tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    if "dtype" in params or major_minor >= (4, 56):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed log call must not break loading
            self.lines.append(str(record.msg))


class LoadResult:
    def __init__(self, model: Any, info: dict[str, Any], log_lines: list[str]) -> None:
        self.model = model
        self.info = info
        self.log_lines = log_lines


def load_pretrained(loader: Callable[..., Any], ident: str, **kwargs: Any) -> LoadResult:
    """`loader(ident, output_loading_info=True, **kwargs)` with the transformers logger's messages kept."""
    handler = _Collect()
    logger = logging.getLogger("transformers")
    previous = logger.level
    logger.addHandler(handler)
    if previous == logging.NOTSET or previous > logging.INFO:
        logger.setLevel(logging.INFO)  # the 4.x "newly initialized" message is a warning, but some are info
    try:
        loaded = loader(ident, output_loading_info=True, **kwargs)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
    return LoadResult(model, {k: list(v) if isinstance(v, (list, set, tuple)) else v for k, v in (info or {}).items()},
                      handler.lines)


def _tied_names(model: Any) -> set[str]:
    """Names of tensors that share storage with another tensor of the model (tied embeddings)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            tied.update((name, seen[ptr]))
        else:
            seen[ptr] = name
    return tied


def judge_loading(result: LoadResult) -> dict[str, Any]:
    """Loading info as evidence; Failed when transformers reports weights it initialised or ignored."""
    tied = _tied_names(result.model)
    missing = [k for k in result.info.get("missing_keys", []) if k not in tied]
    unexpected = list(result.info.get("unexpected_keys", []))
    mismatched = [str(m) for m in result.info.get("mismatched_keys", [])]
    messages = [line[:500] for line in result.log_lines if LOAD_PROBLEM.search(line)]
    evidence = {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": mismatched,
                "load_messages": messages}
    if missing or unexpected or mismatched or messages:
        raise Failed(
            f"checkpoint did not load cleanly: {len(missing)} newly initialized "
            f"({', '.join(missing[:5])}), {len(unexpected)} not used ({', '.join(unexpected[:5])}), "
            f"{len(mismatched)} mismatched; messages: {' | '.join(m[:200] for m in messages[:3])}",
            evidence,
        )
    return evidence


def _checkpoint_tensors(folder: Path):
    """Yield (name, tensor) for every tensor stored in the checkpoint folder (safetensors, else .bin)."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        return
    import torch

    bins = sorted(folder.glob("*.bin"))
    if not bins:
        raise FileNotFoundError(f"{folder}: no *.safetensors or *.bin weights to compare against")
    for file in bins:
        for key, tensor in torch.load(str(file), map_location="cpu", weights_only=True).items():
            yield key, tensor


def _max_diff(loaded: Any, expected: Any) -> float:
    """max |loaded - expected|, where equal values (nan/inf included: a faithful copy of a bad checkpoint
    is still a faithful load) count 0 and a non-finite value on one side only counts inf."""
    import torch

    if not loaded.numel():
        return 0.0
    a, b = loaded.float(), expected.float()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
    diff = torch.nan_to_num(diff, nan=float("inf"))
    return diff.max().item()


def compare_to_checkpoint(model: Any, folder: str | Path) -> dict[str, Any]:
    """Compare every model tensor with the checkpoint's: the checkpoint tensor is cast to the loaded dtype,
    so a faithful load differs by exactly 0. Failed on any difference, on model tensors the checkpoint
    lacks (unless tied to one it has) and on checkpoint tensors the model has no place for."""
    import torch

    folder = Path(folder)
    state = model.state_dict()
    compared: set[str] = set()
    unused: list[str] = []
    max_diff, worst = 0.0, None
    with torch.no_grad():
        for key, stored in _checkpoint_tensors(folder):
            if key not in state:
                unused.append(key)
                continue
            loaded = state[key]
            if tuple(loaded.shape) != tuple(stored.shape):
                raise Failed(f"{key}: loaded shape {list(loaded.shape)} != checkpoint {list(stored.shape)}",
                             {"tensor": key})
            expected = stored.to(device=loaded.device, dtype=loaded.dtype)
            diff = _max_diff(loaded, expected)
            if worst is None or diff > max_diff:
                max_diff, worst = diff, key
            compared.add(key)
    # A tensor the checkpoint lacks is fine only when it shares storage with one it has (tied lm_head).
    storage = {name: t.data_ptr() for name, t in model.state_dict(keep_vars=True).items()}
    covered = {storage[k] for k in compared if k in storage}
    not_in_checkpoint = sorted(k for k in state if k not in compared and storage.get(k) not in covered)
    evidence = {"tensors_compared": len(compared), "max_weight_diff": max_diff, "worst_tensor": worst,
                "not_in_checkpoint": not_in_checkpoint[:20], "unused_checkpoint_tensors": unused[:20]}
    if not_in_checkpoint or unused:
        raise Failed(f"weights not from the checkpoint: {len(not_in_checkpoint)} model tensors absent from it "
                     f"({', '.join(not_in_checkpoint[:5])}), {len(unused)} checkpoint tensors unused "
                     f"({', '.join(unused[:5])})", evidence)
    if max_diff != 0.0:
        raise Failed(f"loaded weights differ from the checkpoint: max |diff| {max_diff:g} in {worst}", evidence)
    return evidence


def fixed_input_ids(vocab_size: int, device: str, batch: int = INPUT_BATCH, seq: int = INPUT_SEQ) -> Any:
    """The same token ids every run (own generator: the global RNG state of other checks does not matter)."""
    import torch

    gen = torch.Generator().manual_seed(INPUT_SEED)
    # Skip the first ids (special tokens in every tokenizer here).
    return torch.randint(8, vocab_size, (batch, seq), generator=gen).to(device)


def logits_evidence(logits: Any, batch: int, seq: int, vocab: int) -> dict[str, Any]:
    """Numbers about one forward pass; Failed on a wrong shape or any non-finite logit."""
    import torch

    shape = list(logits.shape)
    values = logits.detach().float()
    finite = torch.isfinite(values)
    evidence = {
        "logits_shape": shape,
        "nonfinite_logits": int((~finite).sum().item()),
        "logits_mean": values[finite].mean().item() if finite.any() else None,
        "logits_std": values[finite].std().item() if finite.sum() > 1 else None,
        "logits_absmax": values[finite].abs().max().item() if finite.any() else None,
    }
    if shape != [batch, seq, vocab]:
        raise Failed(f"logits shape {shape}, expected {[batch, seq, vocab]}", evidence)
    if evidence["nonfinite_logits"]:
        raise Failed(f"{evidence['nonfinite_logits']} of {values.numel()} logits are not finite", evidence)
    return evidence


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def remote_code_files(model: Any, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """sha256 of each remote-code module transformers imported for this model (its class and its config
    class), read from the copies in transformers' modules cache; `matches_checkpoint` says whether each
    equals the file of the same name in the checkpoint folder."""
    files: dict[str, Any] = {}
    for cls in (type(model), type(model.config)):
        module = sys.modules.get(cls.__module__)
        file = getattr(module, "__file__", None)
        if not file or "transformers_modules" not in cls.__module__:
            continue
        entry: dict[str, Any] = {"sha256": sha256_file(file), "path": file, "module": cls.__module__}
        if checkpoint is not None and (Path(checkpoint) / Path(file).name).is_file():
            entry["matches_checkpoint"] = sha256_file(Path(checkpoint) / Path(file).name) == entry["sha256"]
        files[Path(file).name] = entry
    return files
