"""unsloth's documented SFT path on EXAONE 3.5, outside the probe:
FastLanguageModel.from_pretrained -> FastLanguageModel.get_peft_model -> trl SFTTrainer
(completion-only loss on prompt-completion data) -> train(). GPU only (unsloth does not import
without one; --rehearse-cpu runs the same path without unsloth, padding-free, to try the script).

It answers two questions about the probe's `train.trl-sft.unsloth*` verdicts:

1. Were the rows packed? unsloth turns on trl's padding-free batching for SFTTrainer, which
   concatenates a batch's examples into one row; each example then restarts position_ids at 0
   (and unsloth's wrapped collator adds `packed_seq_lengths`). The script prints the first
   batch's shape and, per packed segment, how many labels are masked (-100) against how many
   tokens the example's prompt has, and how many prompt tokens carry a label. It finds the
   segments itself, not through the probe's code.
2. Does the remote-code model break? unsloth's Llama-family fast path (FastLlamaModel.pre_patch,
   run by loading a "llama" checkpoint) replaces peft's PeftModelForCausalLM.forward for the
   whole process with one that always passes `causal_mask=` down to the model; EXAONE 3.5's
   remote ExaoneForCausalLM.forward takes no **kwargs. Each scenario runs in a fresh
   interpreter, so the order is the only difference:
     remote                 the remote-code checkpoint alone
     llamafied              the llamafied checkpoint alone
     llamafied-then-remote  both in one process, as the probe's unsloth group did
                            (unsloth.llamafied ran before train.trl-sft.unsloth)

Checkpoints: --remote DIR / --llamafied DIR, else the tiny clean-room fixtures are written
under --work (probes.fixtures.checkpoints; the conversations are the probe's own, from
probes.checks.train). Output: human lines, then one JSON line per route prefixed `RESULT `.

    python tools/repro_unsloth_sft.py                    # every scenario, each in its own process
    python tools/repro_unsloth_sft.py --scenario remote  # one of them, in this process
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIOS = {
    "remote": ["remote"],
    "llamafied": ["llamafied"],
    "llamafied-then-remote": ["llamafied", "remote"],
}
TARGETS = {
    "remote": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc_0", "c_fc_1", "c_proj"],
    "llamafied": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def checkpoints(args: argparse.Namespace) -> dict[str, Path]:
    from probes.fixtures.checkpoints import llamafy_exaone35, write_exaone35

    work = Path(args.work)
    remote = Path(args.remote) if args.remote else work / "exaone35"
    if not args.remote and not (remote / "config.json").exists():
        write_exaone35(remote)
    llamafied = Path(args.llamafied) if args.llamafied else work / "exaone35-llamafied"
    if not args.llamafied and not (llamafied / "config.json").exists():
        llamafy_exaone35(remote, llamafied)
    return {"remote": remote, "llamafied": llamafied}


def segments(batch: dict[str, Any]) -> tuple[list[tuple[int, int, int]], str]:
    labels = batch["labels"]
    rows, width = labels.shape
    if batch.get("position_ids") is not None:
        pos = batch["position_ids"].tolist()
        out = []
        for r in range(rows):
            starts = [j for j in range(width) if pos[r][j] == 0] + [width]
            out += [(r, a, b) for a, b in zip(starts, starts[1:], strict=False) if b - a > 1]
        return out, "position_ids"
    if batch.get("packed_seq_lengths") is not None and rows == 1:
        out, start = [], 0
        for n in batch["packed_seq_lengths"].reshape(-1).tolist():
            out.append((0, start, start + int(n)))
            start += int(n)
        return out, "packed_seq_lengths"
    mask = batch.get("attention_mask")
    return [(r, 0, int(mask[r].sum()) if mask is not None else width) for r in range(rows)], "rows"


def first_batch_report(trainer: Any, tokenizer: Any, prompts: list[list[int]]) -> dict[str, Any]:
    batch = next(iter(trainer.get_train_dataloader()))
    segs, source = segments(batch)
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    per = []
    for r, a, b in segs:
        seg_ids, seg_labels = ids[r][a:b], labels[r][a:b]
        match = max((p for p in prompts if seg_ids[: len(p)] == p), key=len, default=None)
        entry = {"start": a, "tokens": b - a, "masked": sum(x == -100 for x in seg_labels)}
        if match is not None:
            entry["prompt_tokens"] = len(match)
            entry["prompt_tokens_with_label"] = sum(x != -100 for x in seg_labels[: len(match)])
            entry["completion_tokens_masked"] = sum(x == -100 for x in seg_labels[len(match) :])
        per.append(entry)
    collator = trainer.data_collator
    return {
        "batch_keys": sorted(batch.keys()),
        "batch_shape": list(batch["input_ids"].shape),
        "segments_from": source,
        "packed": len(segs) > batch["input_ids"].shape[0],
        "segments": per,
        "collator": f"{type(collator).__module__}.{type(collator).__name__}",
        "collator_padding_free": getattr(collator, "padding_free", None),
        "args_padding_free": getattr(trainer.args, "padding_free", None),
        "args_packing": getattr(trainer.args, "packing", None),
    }


def run_route(route: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from probes.checks.train import prompt_completion_dataset

    result: dict[str, Any] = {"route": route, "checkpoint": str(path)}
    stage = "import"
    try:
        import torch

        if args.rehearse_cpu:
            unsloth = None
        else:
            import unsloth  # noqa: F401 - first, as unsloth's docs say
            from unsloth import FastLanguageModel  # isort: skip
        import peft
        import transformers
        import trl
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        result.update(
            unsloth=getattr(unsloth, "__version__", "not used (--rehearse-cpu)"),
            trl=trl.__version__,
            transformers=transformers.__version__,
            peft=peft.__version__,
            torch=torch.__version__,
        )
        stage = "from_pretrained"
        if unsloth is None:  # the same path without unsloth, padding-free as unsloth sets it
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(
                str(path), trust_remote_code=(route == "remote")
            )
            tokenizer = AutoTokenizer.from_pretrained(
                str(path), trust_remote_code=(route == "remote")
            )
        else:
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=str(path),
                max_seq_length=256,
                dtype=torch.bfloat16,
                load_in_4bit=False,
                trust_remote_code=(route == "remote"),
                use_gradient_checkpointing=False,
                use_exact_model_name=True,
                local_files_only=True,
            )
        result["model_class"] = type(model).__name__
        stage = "get_peft_model"
        if unsloth is None:
            model = peft.get_peft_model(
                model,
                peft.LoraConfig(
                    r=16,
                    lora_alpha=32,
                    lora_dropout=0.0,
                    target_modules=TARGETS[route],
                    task_type="CAUSAL_LM",
                ),
            )
        else:
            model = FastLanguageModel.get_peft_model(
                model,
                r=16,
                lora_alpha=32,
                lora_dropout=0.0,
                bias="none",
                target_modules=TARGETS[route],
                use_gradient_checkpointing=False,
                random_state=0,
            )
        forward = peft.PeftModelForCausalLM.forward
        result["peft_forward"] = f"{forward.__module__}.{forward.__qualname__}"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        data = prompt_completion_dataset(args.batch)
        prompts = []
        for example in data:
            text = tokenizer.apply_chat_template(
                example["prompt"], tokenize=False, add_generation_prompt=True
            )
            prompts.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        result["prompt_tokens_per_example"] = [len(p) for p in prompts]
        fields = SFTConfig.__dataclass_fields__
        config = SFTConfig(
            output_dir=tempfile.mkdtemp(prefix=f"repro-{route}-"),
            per_device_train_batch_size=args.batch,
            max_steps=args.steps,
            learning_rate=5e-3,
            lr_scheduler_type="constant",
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            bf16=unsloth is not None,
            seed=0,
            disable_tqdm=True,
            completion_only_loss=True,
            **({"padding_free": True, "use_cpu": True} if unsloth is None else {}),
            **{("max_length" if "max_length" in fields else "max_seq_length"): 256},
        )
        stage = "SFTTrainer"
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(data),
            processing_class=tokenizer,
        )
        result.update(first_batch_report(trainer, tokenizer, prompts))
        stage = "train"
        start = time.monotonic()
        out = trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        result.update(
            train="ok",
            train_s=round(time.monotonic() - start, 2),
            losses=[round(x, 4) for x in losses],
            train_loss=getattr(out, "training_loss", None),
        )
    except Exception as exc:  # noqa: BLE001 - the failure is the answer
        frames = traceback.extract_tb(exc.__traceback__)
        result.update(
            train="error",
            stage=stage,
            error=f"{type(exc).__name__}: {exc}"[:600],
            frames=[
                f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}" for f in frames[-8:]
            ],
        )
    return result


def describe(result: dict[str, Any]) -> str:
    lines = [
        f"[{result['route']}] unsloth {result.get('unsloth')}, trl {result.get('trl')}, "
        f"transformers {result.get('transformers')}; "
        f"PeftModelForCausalLM.forward = {result.get('peft_forward')}"
    ]
    if "batch_shape" in result:
        lines.append(
            f"  first batch {result['batch_shape']} keys {result['batch_keys']}: "
            f"{'PACKED' if result['packed'] else 'not packed'} "
            f"({len(result['segments'])} segments from "
            f"{result['segments_from']}; args.padding_free={result['args_padding_free']}, collator "
            f"padding_free={result['collator_padding_free']})"
        )
        for s in result["segments"]:
            lines.append(
                f"    segment at {s['start']}: {s['tokens']} tokens, {s['masked']} masked; prompt "
                f"{s.get('prompt_tokens')} tokens, "
                f"{s.get('prompt_tokens_with_label')} prompt tokens with a label, "
                f"{s.get('completion_tokens_masked')} completion tokens masked"
            )
    if result.get("train") == "ok":
        lines.append(f"  trained: losses {result['losses'][:3]} ... {result['losses'][-3:]}")
    else:
        lines.append(f"  FAILED at {result.get('stage')}: {result.get('error')}")
        lines += [f"      {f}" for f in result.get("frames", [])]
    return "\n".join(lines)


def main() -> int:
    # the GPU machines reach no hub: nothing may be fetched (as the probe sets, probes/models.py)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(key, "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["all", *SCENARIOS], default="all")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "repro-unsloth-sft"))
    parser.add_argument(
        "--remote", help="an EXAONE 3.5 remote-code checkpoint folder (default: the fixture)"
    )
    parser.add_argument(
        "--llamafied", help="its llamafied folder (default: the fixture, llamafied)"
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--rehearse-cpu",
        action="store_true",
        help="no unsloth: transformers + peft + SFTTrainer(padding_free=True) on the CPU, "
        "to try the script itself",
    )
    args = parser.parse_args()
    if args.scenario == "all":
        rc = 0
        for name in SCENARIOS:
            print(f"=== scenario {name} (a fresh interpreter)", flush=True)
            argv = [
                sys.executable,
                __file__,
                "--scenario",
                name,
                "--work",
                args.work,
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
            ]
            argv += [f"--remote={args.remote}"] if args.remote else []
            argv += [f"--llamafied={args.llamafied}"] if args.llamafied else []
            argv += ["--rehearse-cpu"] if args.rehearse_cpu else []
            rc = max(rc, subprocess.run(argv).returncode)
        return rc
    paths = checkpoints(args)
    failed = False
    for route in SCENARIOS[args.scenario]:
        result = {"scenario": args.scenario, **run_route(route, paths[route], args)}
        print(describe(result), flush=True)
        print("RESULT " + json.dumps(result), flush=True)
        failed = failed or result.get("train") != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
