"""Run folders built from real probe results, for the report-format, diff and browser tests.

`probe_result` runs the real probe (`python -m probes`) on a CPU stack: the ready venv, plus, for
the broken stack, a real `xformers` package whose import raises the catalogued error
(tests/unit/real_results.py builds it). Results are cached per probes/ digest, cell id and stack.

`cpu_throughput_checks` measures real LoRA-free training steps of a tiny Llama on this CPU with the
probe's own `measure_training`: the probe runs throughput only on GPUs, so this is how a CPU test
gets throughput evidence that was measured rather than typed in.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from real_results import BASE_PINS, PROBE_PYTHON, STACKS, _site_with

from pinmatrix.fsio import write_json_atomic
from pinmatrix.outcome import Outcome
from pinmatrix.probes_source import probes_digest
from pinmatrix.run.options import REPO_ROOT

CELL_ID = "py3.11-torch2.13.0+cpu-tf5.17.0-peft0.21.2"


def probe_result(cache: Path, cell_id: str, stack: str, pins: dict[str, str], *,
                 checks: tuple[str, ...] = ("imports", "kernels")) -> Path:
    """A result file written by the real probe for `stack` (a key of real_results.STACKS). Cached
    per stack: `add_cell` relabels it with the cell id and pins of the row it stands for."""
    key = f"{stack}.{'-'.join(checks)}"
    folder = Path(cache) / probes_digest()[:16] / "runs"
    out = folder / f"{key}.json"
    if out.is_file():
        return out
    work = folder / f"{key}.work"
    shutil.rmtree(work, ignore_errors=True)
    site = _site_with(STACKS[stack][1], work / "site")
    site.mkdir(parents=True, exist_ok=True)
    spec = work / "cell.json"
    spec.write_text(json.dumps({"id": cell_id, "hash": f"hash-{stack}", "pins": pins,
                                "runner": "venv",
                                "models": [], "checks": list(checks),
                                "settings": {"device": "cpu"}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(site)])}
    proc = subprocess.run([str(PROBE_PYTHON), "-m", "probes", "--cell", str(spec), "--out",
                           str(out),
                           "--work", str(work / "w")], env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"probe failed for {stack} (exit "
                           f"{proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    shutil.rmtree(work, ignore_errors=True)
    return out


def add_cell(run: Path, cell_id: str, pins: dict[str, str], result: Path, *,
             hash_: str | None = None,
             extra_checks: list[dict[str, Any]] = ()) -> None:
    """Put a real result into a run folder as the pipeline does: cells/<id>.json +
    outcomes/<id>.json."""
    data = json.loads(Path(result).read_text())
    # one probe run per stack serves many cells
    data["cell"]["id"], data["cell"]["pins"] = cell_id, dict(pins)
    data["checks"] += list(extra_checks)
    if hash_:
        data["cell"]["hash"] = hash_
    write_json_atomic(run / "cells" / f"{cell_id}.json", data)
    Outcome(cell=cell_id, hash=data["cell"]["hash"], pins=pins, runner="venv", stage="done",
            result=f"cells/{cell_id}.json").write(run)


def new_run(root: Path, run_id: str) -> Path:
    run = Path(root) / run_id
    (run / "cells").mkdir(parents=True)
    write_json_atomic(run / "run.json", {"run_id": run_id, "matrix": "tests/data/matrices/ci.yaml",
                                         "runner": "venv", "selection": [], "device": "cpu",
                                         "started": "2026-11-27T17:00:00+00:00"})
    return run


def cpu_throughput_checks(stacks: tuple[str, ...] = ("sdpa", "eager")) -> list[dict[str, Any]]:
    """throughput.<stack> checks whose evidence is a real training measurement on this CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from probes.checks.throughput import measure_training

    out = []
    for stack in stacks:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2,
                             attn_implementation=stack)
        model = LlamaForCausalLM(config)
        m = measure_training(model, batch=2, seq=32, steps=3, warmup=1, vocab_size=128,
                             device="cpu")
        out.append({"name": f"throughput.{stack}", "status": "pass",
                    "duration_s": round(sum(m.step_times), 4),
                    "evidence": {"tokens_per_s": round(m.tokens_per_s, 1), "batch": 2, "seq": 32,
                                 "steps": 3, "device": "cpu",
                                 "losses": [round(x, 4) for x in m.losses]}})
    return out


def standard_run(root: Path, cache: Path, run_id: str = "20261127T172100Z") -> Path:
    """Three real cells (works, broken on a catalogued signature, broken on an unknown one), an
    unresolvable cell, an infra cell and a damaged result: every kind of row the report shows."""
    run = new_run(root, run_id)
    good = {**BASE_PINS}
    add_cell(run, CELL_ID, good, probe_result(cache, CELL_ID, "good", good),
             extra_checks=cpu_throughput_checks())
    xf_id, xf = (
        "py3.11-torch2.13.0+cpu-tf5.17.0-xformers0.0.35",
        {**BASE_PINS, "xformers": "0.0.35"},
    )
    add_cell(run, xf_id, xf, probe_result(cache, xf_id, "xformers-broken", xf))
    trl_id, trl = "py3.11-torch2.13.0+cpu-tf4.57.6-trl0.99.0", {**BASE_PINS,
                                                                "transformers": "4.57.6",
                                                                "trl": "0.99.0"}
    add_cell(run, trl_id, trl, probe_result(cache, trl_id, "trl-broken", trl))
    Outcome(cell="py3.11-torch2.13.0+cpu-tf4.57.6-unsloth2026.1.1", hash=None,
            pins={**BASE_PINS, "transformers": "4.57.6", "unsloth": "2026.1.1"}, runner="venv",
            stage="resolve",
            status="unresolvable",
            reason="Because unsloth==2026.1.1 depends on transformers>=4.58 and you require "
                   "transformers==4.57.6,\n"
                   "we can conclude that your requirements are unsatisfiable.").write(run)
    Outcome(cell="py3.11-torch2.13.0+cpu-tf5.17.0-unsloth2026.1.1", hash="h-prep",
            pins={**BASE_PINS, "unsloth": "2026.1.1"}, runner="venv", stage="prepare",
            status="infra",
            reason="uv pip install failed (exit 2): Connection reset by peer",
            signature="venv-install-failed").write(run)
    return run
