"""Check group "train": LoRA training the way users run it, through transformers' Trainer and TRL's SFTTrainer.

  train.hf-trainer            transformers.Trainer + PEFT LoRA r16 on all seven linear layers, on a small chat
                              dataset rendered with the model's chat template; EXAONE 3.5 through its remote code
  train.hf-trainer-llamafied  the same on the llamafied EXAONE 3.5 (LlamaForCausalLM, same weights)
  train.trl-sft               trl.SFTTrainer + SFTConfig on the same conversations, completion-only loss where
                              the installed trl offers it (the spelling it needed is recorded); remote code
  train.trl-sft-llamafied     the same on the llamafied model
  train.trl-sft.exaone4       the same on native Exaone4ForCausalLM (skip before transformers 4.54)
  train.qlora, train.qlora-llamafied (GPU)
                              4-bit NF4 through BitsAndBytesConfig + LoRA, judged by the same bar

Every check is judged by lora-train's bar (`probes.checks.lora_train.judge_lora_training`): the loss the
trainer logged at each step is finite and falls to <= MAX_LOSS_RATIO of its start, every LoRA A/B tensor
got a non-zero gradient at some step, and the frozen base stayed bit-identical. The trainer sees one batch
of `lora_batch` conversations at every step (batch size = dataset size), so like lora-train it can memorise.

Besides training, each trainer check records which API spellings the installed versions accept (the old
`tokenizer=` beside `processing_class=`, `SFTConfig(max_seq_length=)` beside `max_length=`, the old
`DataCollatorForCompletionOnlyLM`): the breaks users hit when they copy a tutorial onto a newer stack. A
rejected spelling is evidence with its signature, not a failure: the check fails only when no spelling trains.

The unsloth routes (`train.trl-sft.unsloth`, `train.qlora.unsloth`) live in the unsloth group, which runs
in the interpreter that imported unsloth (probes/processes.py).
"""
from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Callable

from probes.checks.lora_train import (
    EXAONE35_LORA_TARGETS,
    LLAMA_LORA_TARGETS,
    LORA_ALPHA,
    LORA_RANK,
    LoraRun,
    TrainRecord,
    _base_snapshot,
    _compare_base,
    _free_memory,
    _handle_revision,
    _is_oom,
    adapter_inventory,
    device_dtype,
    judge_lora_training,
    load_causal_lm,
    lora_config,
    lora_parameters,
    model_summary,
    resolve_exaone35,
)
from probes.framework import Failed, Infra, Skip

__all__ = ["checks", "CHAT_CONVERSATIONS", "EXAONE4_LORA_TARGETS", "TrainerRecorder", "chat_dataset",
           "prompt_completion_dataset", "load_route", "run_hf_trainer", "run_sft_trainer", "judge_trainer_run",
           "api_forms_trainer", "api_forms_trl", "completion_only_spelling", "require_trl", "batch_segments",
           "label_masking", "judge_masking", "prompt_token_ids", "prompt_token_counts"]

# Exaone4ForCausalLM's linear layers (transformers' modeling_exaone4: Llama-style names).
EXAONE4_LORA_TARGETS = LLAMA_LORA_TARGETS

# A small chat dataset: system + user + assistant. Short, so the tiny fixture's byte-level tokenizer keeps
# every conversation under ~120 tokens; varied, so the model cannot pass by predicting one repeated string.
CHAT_CONVERSATIONS: tuple[tuple[str, str, str], ...] = (
    ("You are a helpful assistant.", "What is LoRA?", "LoRA trains two small matrices beside a frozen weight."),
    ("You are a helpful assistant.", "Name an attention kernel.", "Flash attention is one; sdpa is another."),
    ("Answer briefly.", "What does EXAONE speak?", "EXAONE speaks Korean and English."),
    ("Answer briefly.", "How is speed measured?", "In tokens per second, after warm-up."),
    ("You are a helpful assistant.", "What stays frozen?", "The base weights stay frozen; only adapters learn."),
    ("Answer briefly.", "2 + 3 = ?", "2 + 3 = 5."),
    ("You are a helpful assistant.", "What is a chat template?", "A rule that turns messages into one string."),
    ("Answer briefly.", "Which dog is lazy?", "The lazy dog, under the quick brown fox."),
)


def _conversations(n: int) -> list[tuple[str, str, str]]:
    return [CHAT_CONVERSATIONS[i % len(CHAT_CONVERSATIONS)] for i in range(n)]


def chat_messages(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": s}, {"role": "user", "content": u}, {"role": "assistant", "content": a}]
            for s, u, a in _conversations(n)]


def chat_dataset(tokenizer: Any, n: int, max_length: int = 256) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """n conversations rendered with the tokenizer's own chat template and tokenized (what a Trainer user
    feeds DataCollatorForLanguageModeling). Evidence: the rendered first example and the token lengths."""
    if not getattr(tokenizer, "chat_template", None):
        raise Failed("the model's tokenizer has no chat_template", {"tokenizer": type(tokenizer).__name__})
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in chat_messages(n)]
    rows = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)
        rows.append({"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"])})
    lengths = [len(r["input_ids"]) for r in rows]
    return rows, {"examples": n, "token_lengths": lengths, "rendered_example": texts[0][:400],
                  "chat_template_markers": _markers_in(texts[0])}


def _markers_in(text: str) -> dict[str, bool]:
    from probes.fixtures.checkpoints import EXAONE35_CHAT_FACTS

    marks = {**EXAONE35_CHAT_FACTS["role_markers"], "end_of_turn": EXAONE35_CHAT_FACTS["end_of_turn"]}
    return {name: mark in text for name, mark in marks.items()}


def prompt_completion_dataset(n: int) -> list[dict[str, Any]]:
    """The same conversations in TRL's conversational prompt-completion form."""
    return [{"prompt": m[:2], "completion": m[2:]} for m in chat_messages(n)]


# ---------------------------------------------------------------------------------------------------------
# Recording what the trainer did (losses, gradients, the frozen base) for lora-train's judge


class TrainerRecorder:
    """Losses as the trainer logged them (logging_steps=1) and, through tensor hooks on every LoRA A/B
    matrix, whether each received a non-zero gradient; the base is snapshotted for the bit-identical bar."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lora = lora_parameters(model)
        self.snapshot = _base_snapshot(model, set(self.lora))
        self.seen_nonzero = {name: False for name in self.lora}
        self.step_nonzero: dict[str, bool] = {}
        self.losses: list[float] = []
        self.log_history: list[dict[str, Any]] = []
        self._handles = [p.register_hook(self._hook(name)) for name, p in self.lora.items() if p.requires_grad]
        self.start = time.monotonic()

    def _hook(self, name: str) -> Callable[[Any], None]:
        def hook(grad: Any) -> None:
            nonzero = grad is not None and bool((grad != 0).any().item())
            self.seen_nonzero[name] = self.seen_nonzero[name] or nonzero
            self.step_nonzero[name] = self.step_nonzero.get(name, False) or nonzero
        return hook

    def callback(self) -> Any:
        from transformers import TrainerCallback

        recorder = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                recorder.step_nonzero = {}

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                logs = dict(logs or {})
                recorder.log_history.append(logs)
                if "loss" in logs:
                    recorder.losses.append(float(logs["loss"]))

        return _Callback()

    def record(self) -> TrainRecord:
        for handle in self._handles:
            handle.remove()
        changed, max_diff = _compare_base(self.model, self.snapshot)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return TrainRecord(
            losses=list(self.losses),
            lora_names=sorted(self.lora),
            never_nonzero_grad=sorted(n for n, seen in self.seen_nonzero.items() if not seen),
            last_step_zero_grad=sum(1 for n in self.lora if not self.step_nonzero.get(n, False)),
            lora_numel=sum(p.numel() for p in self.lora.values()),
            trainable_numel=sum(p.numel() for p in trainable),
            total_numel=sum(p.numel() for p in self.model.parameters()),
            base_tensors=len(self.snapshot),
            base_changed=changed,
            base_max_abs_diff=max_diff,
            seconds=time.monotonic() - self.start,
        )


def judge_trainer_run(model: Any, recorder: TrainerRecorder, run: LoraRun, targets: tuple[str, ...]) -> dict[str, Any]:
    """lora-train's bar on what the trainer did, plus adapter placement (train_and_judge's checks)."""
    inventory = adapter_inventory(model, targets)
    record = recorder.record()
    if len(record.losses) != run.steps:
        raise Failed(f"the trainer logged {len(record.losses)} losses for {run.steps} steps",
                     {**inventory, "log_history": recorder.log_history[-5:]})
    try:
        evidence = judge_lora_training(record, run)
    except Failed as exc:
        exc.evidence = {**inventory, "targets": list(targets), **exc.evidence}
        raise
    evidence["loss_source"] = "the trainer's own logged loss (logging_steps=1), one value per optimizer step"
    if inventory["missing_targets"]:
        raise Failed(f"LoRA was not attached to {inventory['missing_targets']}",
                     {**inventory, "targets": list(targets), **evidence})
    return {**inventory, "targets": list(targets), **evidence}


# ---------------------------------------------------------------------------------------------------------
# Models and API forms


def require_trl(ctx: Any) -> str:
    return ctx.require("trl")


def load_tokenizer(path: str, *, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_route(ctx: Any, route: str, *, quantization: Any = None) -> tuple[Any, Any, tuple[str, ...], dict[str, Any]]:
    """(peft model, tokenizer, LoRA targets, info) for route "remote-code" | "llamafied" | "exaone4"."""
    import torch
    from peft import get_peft_model

    from probes.models import llamafied_folder, resolve_model

    dtype = device_dtype(ctx.device)
    if route == "exaone4":
        from probes.checks.exaone4 import native_class

        native_class()   # Skip before transformers 4.54
        try:
            handle = resolve_model(ctx, "exaone4")
        except ImportError as exc:
            raise Skip(str(exc)) from exc
        path, revision, remote, targets = str(handle.path), _handle_revision(handle), False, EXAONE4_LORA_TARGETS
    else:
        handle = resolve_exaone35(ctx)
        if route == "llamafied":
            path, revision, remote, targets = str(llamafied_folder(ctx, handle)), None, False, LLAMA_LORA_TARGETS
        else:
            path, revision, remote, targets = str(handle.path), _handle_revision(handle), True, EXAONE35_LORA_TARGETS
    if quantization is not None:
        from transformers import AutoModelForCausalLM

        from probes.checks.lora_train import torch_dtype_kwargs

        kwargs: dict[str, Any] = {"trust_remote_code": remote, "quantization_config": quantization,
                                  "device_map": {"": 0 if ctx.device == "cuda" else "cpu"}, **torch_dtype_kwargs(dtype)}
        if revision:
            kwargs["revision"] = revision
        base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    else:
        base = load_causal_lm(path, device=ctx.device, dtype=dtype, revision=revision, trust_remote_code=remote)
    base.config.use_cache = False
    tokenizer = load_tokenizer(path, trust_remote_code=remote)
    torch.manual_seed(int(ctx.settings.get("seed", 0)))
    model = get_peft_model(base, lora_config(targets))
    info = {"model": model_summary(handle), "route": route, "device": ctx.device,
            "dtype": str(dtype).replace("torch.", ""), "model_class": type(base).__name__,
            "lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0,
            "tokenizer_class": type(tokenizer).__name__}
    return model, tokenizer, targets, info


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _outcome(fn: Callable[[], Any]) -> str:
    """'accepted', or 'rejected: Type: message [signature]' for one API spelling tried on its own."""
    from probes import signatures

    try:
        fn()
        return "accepted"
    except Exception as exc:   # noqa: BLE001 - the outcome is the evidence
        found = signatures.classify(type(exc).__name__, str(exc), "")
        return f"rejected: {type(exc).__name__}: {str(exc)[:300]} [{found.id}]"


def training_arguments(cls: Any, output_dir: Path, run: LoraRun, device: str, **extra: Any) -> Any:
    """TrainingArguments (or SFTConfig) for lora-train's run: one batch of run.batch examples per step,
    AdamW at a constant lr, no weight decay and no gradient clipping (lora-train's raw loop has neither, and
    its bar is calibrated on that loop), every step logged, nothing saved or reported."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), per_device_train_batch_size=run.batch, gradient_accumulation_steps=1,
        max_steps=run.steps, learning_rate=run.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, save_strategy="no", report_to=[], seed=run.seed,
        dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch", bf16=(device == "cuda"),
        remove_unused_columns=False, **extra)
    fields = getattr(cls, "__dataclass_fields__", {})
    if device == "cpu":
        kwargs["use_cpu" if "use_cpu" in fields else "no_cuda"] = True
    return cls(**kwargs)


def api_forms_trainer(model: Any, args: Any, tokenizer: Any) -> dict[str, Any]:
    """Which tokenizer keyword transformers.Trainer takes: processing_class (>= 4.46) and/or tokenizer."""
    from transformers import Trainer

    return {
        "Trainer(processing_class=)": "accepted" if _accepts(Trainer.__init__, "processing_class")
        else "rejected: not a parameter of Trainer.__init__",
        "Trainer(tokenizer=)": _outcome(lambda: Trainer(model=model, args=args, tokenizer=tokenizer)),
    }


def run_hf_trainer(ctx: Any, model: Any, tokenizer: Any, run: LoraRun, out: Path,
                   used: dict[str, Any] | None = None) -> tuple[TrainerRecorder, dict[str, Any]]:
    """Train `model` with transformers.Trainer on the chat dataset; the recorder and what was used
    (also written into `used` as it is learnt, so a failure in train() keeps it as evidence)."""
    info = used if used is not None else {}
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    rows, data_info = chat_dataset(tokenizer, run.batch)
    args = training_arguments(TrainingArguments, out, run, ctx.device)
    forms = api_forms_trainer(model, args, tokenizer)
    keyword = "processing_class" if forms["Trainer(processing_class=)"] == "accepted" else "tokenizer"
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)
    batch = collator(rows)
    supervised = int((batch["labels"] != -100).sum().item())
    info.update({"trainer": "transformers.Trainer", "tokenizer_keyword": keyword, "api_forms": forms,
                 "collator": "DataCollatorForLanguageModeling(mlm=False)", "supervised_tokens": supervised,
                 "lr_scheduler": "constant", "max_grad_norm": args.max_grad_norm, **data_info})
    recorder = TrainerRecorder(model)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                      callbacks=[recorder.callback()], **{keyword: tokenizer})
    trainer.train()
    return recorder, info


# ---------------------------------------------------------------------------------------------------------
# TRL


def completion_only_spelling(sft_config_cls: Any) -> str:
    """How the installed trl asks for loss on the completion only: a prompt-completion dataset with
    `completion_only_loss` (trl >= 0.19), else the DataCollatorForCompletionOnlyLM collator, else none."""
    if "completion_only_loss" in getattr(sft_config_cls, "__dataclass_fields__", {}):
        return "completion_only_loss"
    try:
        from trl import DataCollatorForCompletionOnlyLM  # noqa: F401
        return "DataCollatorForCompletionOnlyLM"
    except ImportError:
        return "none"


def api_forms_trl(model: Any, tokenizer: Any, out: Path, args: Any = None, dataset: Any = None) -> dict[str, Any]:
    import trl
    from trl import SFTConfig, SFTTrainer

    fields = getattr(SFTConfig, "__dataclass_fields__", {})

    def has_collator() -> None:
        from trl import DataCollatorForCompletionOnlyLM  # noqa: F401

    return {
        "SFTTrainer(processing_class=)": "accepted" if _accepts(SFTTrainer.__init__, "processing_class")
        else "rejected: not a parameter of SFTTrainer.__init__",
        # tried for real (a trl that still takes it builds a trainer, a newer one raises the TypeError users see)
        "SFTTrainer(tokenizer=)": _outcome(lambda: SFTTrainer(model=model, args=args, train_dataset=dataset,
                                                              tokenizer=tokenizer)),
        "SFTConfig(max_seq_length=)": _outcome(lambda: SFTConfig(output_dir=str(out), max_seq_length=128,
                                                                  report_to=[])),
        "SFTConfig(max_length=)": "accepted" if "max_length" in fields else "rejected: not a field of SFTConfig",
        "SFTConfig(completion_only_loss=)": "accepted" if "completion_only_loss" in fields
        else "rejected: not a field of SFTConfig",
        "SFTConfig(assistant_only_loss=)": "accepted" if "assistant_only_loss" in fields
        else "rejected: not a field of SFTConfig",
        "trl.DataCollatorForCompletionOnlyLM": _outcome(has_collator),
        "trl": getattr(trl, "__version__", None),
    }


def run_sft_trainer(ctx: Any, model: Any, tokenizer: Any, run: LoraRun, out: Path,
                    trainer_cls: Any = None, used: dict[str, Any] | None = None) -> tuple[TrainerRecorder, dict[str, Any]]:
    """Train `model` with trl.SFTTrainer + SFTConfig on the conversations, completion-only where offered
    (what was used is also written into `used` before train(), as in run_hf_trainer)."""
    info = used if used is not None else {}
    from trl import SFTConfig, SFTTrainer

    trainer_cls = trainer_cls or SFTTrainer
    spelling = completion_only_spelling(SFTConfig)
    fields = getattr(SFTConfig, "__dataclass_fields__", {})
    extra: dict[str, Any] = {}
    length_field = "max_length" if "max_length" in fields else "max_seq_length"
    extra[length_field] = 256
    if "packing" in fields:
        extra["packing"] = False
    collator = None
    if spelling == "completion_only_loss":
        extra["completion_only_loss"] = True
        dataset_rows: list[dict[str, Any]] = prompt_completion_dataset(run.batch)
        data_form = "conversational prompt-completion (prompt: system+user, completion: assistant)"
    else:
        dataset_rows = [{"messages": m} for m in chat_messages(run.batch)]
        data_form = "conversational messages"
        if spelling == "DataCollatorForCompletionOnlyLM":
            from trl import DataCollatorForCompletionOnlyLM

            from probes.fixtures.checkpoints import EXAONE35_CHAT_FACTS

            collator = DataCollatorForCompletionOnlyLM(
                response_template=EXAONE35_CHAT_FACTS["generation_prompt"], tokenizer=tokenizer)
    from datasets import Dataset

    dataset = Dataset.from_list(dataset_rows)
    args = training_arguments(SFTConfig, out, run, ctx.device, **extra)
    forms = api_forms_trl(model, tokenizer, out, args, dataset)
    keyword = "processing_class" if _accepts(SFTTrainer.__init__, "processing_class") else "tokenizer"
    recorder = TrainerRecorder(model)
    kwargs: dict[str, Any] = {keyword: tokenizer}
    if collator is not None:
        kwargs["data_collator"] = collator
    info.update({"tokenizer_keyword": keyword, "completion_only": spelling, "length_field": length_field,
                 "dataset_form": data_form, "examples": run.batch, "api_forms": forms})
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, callbacks=[recorder.callback()], **kwargs)
    info["trainer"] = f"{type(trainer).__module__}.{type(trainer).__name__}"
    if spelling != "none":
        judge_masking(trainer, tokenizer, run.batch, spelling, info)
    trainer.train()
    return recorder, info


def prompt_token_ids(tokenizer: Any, n: int) -> list[list[int]]:
    """Each example's prompt (system + user turns + generation prompt) tokenized on its own: what
    completion-only loss must mask. Text first, then the tokenizer, so no return type can interfere."""
    ids = []
    for example in prompt_completion_dataset(n):
        text = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
        ids.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return ids


def prompt_token_counts(tokenizer: Any, n: int) -> list[int]:
    return [len(ids) for ids in prompt_token_ids(tokenizer, n)]


def batch_segments(batch: Any) -> tuple[list[tuple[int, int, int]], str]:
    """(row, start, end) of every example in a collated batch, and where the boundaries came from.

    A padding-free batch (trl's collator with padding_free=True, which unsloth turns on for SFTTrainer)
    concatenates the examples into one row with no attention_mask: each example restarts position_ids
    at 0, and unsloth's wrapped collator also adds their lengths as `packed_seq_lengths`. A padded batch
    holds one example per row, its padding marked by attention_mask. Padding after packed examples has
    position 0 too: one-token segments are padding (no example here is one token long)."""
    labels = batch["labels"]
    rows, width = int(labels.shape[0]), int(labels.shape[1])
    positions = batch.get("position_ids")
    if positions is not None:
        out = []
        for row in range(rows):
            starts = [j for j in range(width) if int(positions[row][j]) == 0] + [width]
            out += [(row, a, b) for a, b in zip(starts, starts[1:]) if b - a > 1]
        return out, "position_ids restarting at 0 (a padding-free batch)" if len(out) > rows else "position_ids"
    lengths = batch.get("packed_seq_lengths")
    if lengths is not None and rows == 1:
        out, start = [], 0
        for length in [int(x) for x in lengths.reshape(-1).tolist()]:
            out.append((0, start, min(start + length, width)))
            start += length
        return out, "packed_seq_lengths (unsloth's padding-free collator)"
    mask = batch.get("attention_mask")
    out = []
    for row in range(rows):
        end = int(mask[row].sum().item()) if mask is not None else width
        first = int(mask[row].nonzero()[0].item()) if mask is not None and end else 0
        out.append((row, first, first + end))
    return out, "one example per row (attention_mask)"


def _match_prompt(ids: list[int], prompts: list[list[int]]) -> int | None:
    """Index of the longest prompt whose tokens open the segment, or None."""
    best = None
    for i, prompt in enumerate(prompts):
        if prompt and ids[:len(prompt)] == prompt and (best is None or len(prompt) > len(prompts[best])):
            best = i
    return best


def label_masking(batch: Any, prompts: list[list[int]], tokenizer: Any = None) -> dict[str, Any]:
    """Per example of a collated batch (a packed segment or a padded row): how many tokens are masked out
    of the labels (-100), and, against the prompt that opens it, how many prompt tokens still carry a
    label and how many completion tokens lost theirs."""
    labels, ids = batch["labels"], batch["input_ids"]
    segments, source = batch_segments(batch)
    per_segment, leaks, prefix = [], [], True
    total = supervised = 0
    for k, (row, start, end) in enumerate(segments):
        seg_ids = [int(x) for x in ids[row][start:end].tolist()]
        seg_labels = [int(x) for x in labels[row][start:end].tolist()]
        masked = [lab == -100 for lab in seg_labels]
        count = sum(masked)
        total += end - start
        supervised += end - start - count
        prefix = prefix and all(masked[:count])
        entry: dict[str, Any] = {"segment": k, "row": row, "start": start, "tokens": end - start, "masked": count}
        match = _match_prompt(seg_ids, prompts)
        if match is not None:
            plen = len(prompts[match])
            labelled = [j for j in range(plen) if not masked[j]]
            entry.update(prompt_tokens=plen, prompt_tokens_with_label=len(labelled),
                         completion_tokens_masked=sum(masked[plen:]))
            if labelled:
                shown = labelled[:12]
                leak = {"segment": k, "positions": [start + j for j in shown],
                        "token_ids": [seg_ids[j] for j in shown], "labels": [seg_labels[j] for j in shown]}
                if tokenizer is not None:
                    leak["text"] = tokenizer.decode([seg_ids[j] for j in shown])[:200]
                leaks.append(leak)
        per_segment.append(entry)
    aligned = all("prompt_tokens" in e for e in per_segment)
    return {"batch_shape": [int(x) for x in labels.shape], "segments_from": source, "segments": len(segments),
            "packed": len(segments) > int(labels.shape[0]), "per_segment": per_segment,
            "batch_tokens": total, "supervised_tokens": supervised, "prompt_tokens_masked": total - supervised,
            "supervised_fraction": supervised / total if total else None,
            "prompt_tokens_masked_per_example": sorted(e["masked"] for e in per_segment),
            "masked_tokens_are_a_prefix": prefix, "segments_aligned_to_prompts": aligned,
            "prompt_tokens_with_label": sum(e.get("prompt_tokens_with_label", 0) for e in per_segment),
            "completion_tokens_masked": sum(e.get("completion_tokens_masked", 0) for e in per_segment),
            "prompt_tokens_with_label_examples": leaks[:4]}


def first_batch(trainer: Any) -> Any:
    """The first batch the trainer's own dataloader (and so its own collator, as unsloth wrapped it) yields."""
    return next(iter(trainer.get_train_dataloader()))


def judge_masking(trainer: Any, tokenizer: Any, n: int, spelling: str, info: dict[str, Any]) -> None:
    """Completion-only loss, judged per example as the trainer batches them: a padding-free batch packs
    several examples into one row, so each packed segment is judged against the prompt that opens it.
    Fails with the prompt tokens that carry a label when the loss reaches into a prompt."""
    try:
        batch = first_batch(trainer)
    except Exception as exc:   # noqa: BLE001 - recorded; the training itself is what is judged
        info["label_masking"] = f"could not read a batch: {type(exc).__name__}: {exc}"[:300]
        return
    if batch.get("labels") is None:
        info["label_masking"] = "no labels in the collated batch"
        return
    prompts = prompt_token_ids(tokenizer, n)
    masking = label_masking(batch, prompts, tokenizer)
    expected = sorted(len(p) for p in prompts)
    got = masking["prompt_tokens_masked_per_example"]
    info.update(masking, prompt_tokens_expected_per_example=expected, masking_matches_prompts=got == expected,
                masking_bar="each example's labels (each packed segment's, in a padding-free batch) mask exactly "
                            "its prompt (system + user turns and the [|assistant|] generation prompt, tokenized "
                            "on their own) and nothing after it")
    if not masking["prompt_tokens_masked"]:
        raise Failed(f"completion-only loss was asked for ({spelling}) but no prompt token was masked out of "
                     f"the labels", info)
    if masking["prompt_tokens_with_label"]:
        raise Failed(f"completion-only loss ({spelling}) masked {got} prompt tokens per example where the chat "
                     f"template's prompts have {expected}: the loss is taken on prompt tokens "
                     f"({masking['prompt_tokens_with_label']} prompt tokens carry a label)", info)
    if masking["completion_tokens_masked"]:
        raise Failed(f"completion-only loss ({spelling}) masked {got} tokens per example where the chat "
                     f"template's prompts have {expected}: {masking['completion_tokens_masked']} completion "
                     f"tokens carry no label", info)
    if not masking["segments_aligned_to_prompts"] and (got != expected or not masking["masked_tokens_are_a_prefix"]):
        raise Failed(f"completion-only loss ({spelling}) masked {got} tokens per example where the chat template's "
                     f"prompts have {expected}, and no prompt opens the batch's examples", info)


# ---------------------------------------------------------------------------------------------------------
# The checks


def failed_with_evidence(exc: BaseException, evidence: dict[str, Any]) -> Failed:
    """A Failed carrying what was learnt before `exc` (API forms, dataset, route) and classified by `exc`
    itself: its type, message and full traceback are the `source` the framework classifies first."""
    import traceback

    failed = Failed(f"{type(exc).__name__}: {exc}", dict(evidence))
    failed.source = (type(exc).__name__, str(exc),   # type: ignore[attr-defined]
                     "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return failed


def _train_check(ctx: Any, route: str, trainer: str, *, quantization: Any = None) -> dict[str, Any]:
    import tempfile

    if trainer == "trl-sft":
        trl_version = require_trl(ctx)
    run = LoraRun.from_settings(ctx.settings)
    model, tokenizer, targets, info = load_route(ctx, route, quantization=quantization)
    if trainer == "trl-sft":
        info["trl"] = trl_version
    out = Path(tempfile.mkdtemp(prefix=f"{trainer}-{route}-", dir=str(ctx.work_dir)))
    try:
        try:
            runner = run_hf_trainer if trainer == "hf-trainer" else run_sft_trainer
            recorder, _ = runner(ctx, model, tokenizer, run, out, used=info)
            evidence = judge_trainer_run(model, recorder, run, targets)
        except Failed as exc:
            exc.evidence = {**info, **exc.evidence}
            raise
        except Exception as exc:
            if ctx.device == "cuda" and _is_oom(exc):
                raise Infra(f"CUDA out of memory in {trainer} training") from exc
            raise failed_with_evidence(exc, info) from exc
        return {**info, **evidence}
    finally:
        model = None
        _free_memory(ctx.device)


def check_hf_trainer(ctx: Any) -> dict[str, Any]:
    return _train_check(ctx, "remote-code", "hf-trainer")


def check_hf_trainer_llamafied(ctx: Any) -> dict[str, Any]:
    return _train_check(ctx, "llamafied", "hf-trainer")


def check_trl_sft(ctx: Any) -> dict[str, Any]:
    return _train_check(ctx, "remote-code", "trl-sft")


def check_trl_sft_llamafied(ctx: Any) -> dict[str, Any]:
    return _train_check(ctx, "llamafied", "trl-sft")


def check_trl_sft_exaone4(ctx: Any) -> dict[str, Any]:
    return _train_check(ctx, "exaone4", "trl-sft")


# ---------------------------------------------------------------------------------------------------------
# QLoRA (GPU)


def nf4_config() -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def quantized_inventory(model: Any) -> dict[str, Any]:
    """How many linear layers are bitsandbytes 4-bit, and with which quant type."""
    kinds: dict[str, int] = {}
    quant_types: set[str] = set()
    for _, module in model.named_modules():
        name = type(module).__name__
        # bitsandbytes' own layers only: peft's LoRA wrapper around one is also called Linear4bit
        if name in ("Linear4bit", "Linear8bitLt") and type(module).__module__.startswith("bitsandbytes"):
            kinds[name] = kinds.get(name, 0) + 1
            weight = getattr(module, "weight", None)
            state = getattr(weight, "quant_state", None)
            if state is not None and getattr(state, "quant_type", None):
                quant_types.add(str(state.quant_type))
    return {"quantized_modules": kinds, "quant_types": sorted(quant_types)}


def _qlora_check(ctx: Any, route: str) -> dict[str, Any]:
    """NF4 base + LoRA through the raw lora-train loop (train_and_judge), on the GPU."""
    if ctx.pins.get("bitsandbytes") == "none":
        raise Skip("bitsandbytes not in this cell")
    ctx.require_gpu()
    ctx.require("bitsandbytes")
    return qlora_train_and_judge(ctx, route)


def qlora_train_and_judge(ctx: Any, route: str) -> dict[str, Any]:
    """The body of train.qlora on ctx.device (the check itself asks for a GPU; bitsandbytes >= 0.46 also
    quantizes and trains NF4 on the CPU, which is how the unit tests exercise this on a CPU stack)."""
    from probes.checks.lora_train import train_and_judge

    run = LoraRun.from_settings(ctx.settings)
    model = None
    try:
        model, _, targets, info = load_route(ctx, route, quantization=nf4_config())
        quant = quantized_inventory(model)
        info.update(quant, quantization="BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute bf16)")
        if not quant["quantized_modules"].get("Linear4bit"):
            raise Failed("BitsAndBytesConfig(load_in_4bit=True) loaded no Linear4bit layer", info)
        vocab = int(model.get_input_embeddings().weight.shape[0])
        try:
            evidence = train_and_judge(model, run, vocab_size=vocab, device=ctx.device, targets=targets)
        except Failed as exc:
            exc.evidence = {**info, **exc.evidence}
            raise
        return {**info, **evidence}
    except Exception as exc:
        if ctx.device == "cuda" and _is_oom(exc):
            raise Infra("CUDA out of memory in QLoRA training") from exc
        raise
    finally:
        model = None
        _free_memory(ctx.device)


def check_qlora(ctx: Any) -> dict[str, Any]:
    return _qlora_check(ctx, "remote-code")


def check_qlora_llamafied(ctx: Any) -> dict[str, Any]:
    return _qlora_check(ctx, "llamafied")


def checks(ctx: Any) -> list[tuple[str, Any]]:
    # Each EXAONE 3.5 check on both routes, as lora-train: the remote code where it loads (and its load's
    # signature where it does not), and the llamafied model on every transformers release.
    return [
        ("train.hf-trainer", check_hf_trainer),
        ("train.hf-trainer-llamafied", check_hf_trainer_llamafied),
        ("train.trl-sft", check_trl_sft),
        ("train.trl-sft-llamafied", check_trl_sft_llamafied),
        ("train.trl-sft.exaone4", check_trl_sft_exaone4),
        ("train.qlora", check_qlora),
        ("train.qlora-llamafied", check_qlora_llamafied),
    ]
