"""Check group "exaone3.5": does EXAONE 3.5 load, through its remote code and llamafied, and compute the
right logits? Answered per known hub revision of the remote code, with what each verdict rests on.

Checks, in run order:
  exaone3.5.surface[.REV]      every transformers fact the remote code depends on (imports, call keywords,
                               class-attribute forms, buffers) executed against the installed
                               transformers on CPU, before any load (probes/checks/surface.py): each
                               call made with the recorded keywords and tiny real arguments. Facts that
                               fail for one root cause share its signature. Without a suffix: the matrix's pinned revision (the
                               real file when the hub cache holds it, else the facts of its stand-in).
  exaone3.5.remote-code[.REV]  `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`:
                               fails when transformers reports newly initialised or unused weights, when a
                               loaded tensor differs from the checkpoint, on non-finite or misshapen logits,
                               and when the logits differ from the llamafied model's (same weights, same
                               math): a buffer left uninitialised gives finite, wrong logits. Records the
                               sha256 of the remote-code files transformers imported.
  exaone3.5.llamafied          the same weights renamed into LlamaForCausalLM, loaded by plain transformers.

The suffixed checks cover the known revisions other than the pinned one's stand-in (the facts files in
probes/fixtures/exaone35/revisions/), so every cell answers for each revision users may have pinned.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from probes.checks.model_load import (
    compare_to_checkpoint,
    dtype_kwargs,
    fixed_input_ids,
    judge_loading,
    load_pretrained,
    logits_evidence,
    remote_code_files,
    run_dtype,
)
from probes.framework import Failed
from probes.models import ModelHandle, llamafied_folder, resolve_model

__all__ = ["checks", "check_remote_code", "check_surface_facts", "check_llamafied", "load_remote_code_model",
           "PARITY_TOLERANCE"]

# (atol, rtol) of remote-code logits against the llamafied model's, in the run dtype:
# |diff| <= atol + rtol * max|llamafied logits|. The math is the same, so fp32 differs by summation
# order alone; bf16 rounds every matmul.
PARITY_TOLERANCE = {"float32": (1e-4, 1e-4), "bfloat16": (2e-2, 2e-2), "float16": (5e-3, 5e-3)}
# The keys EXAONE 3.5's config looks up in transformers' registries (config.json: activation_function,
# rope_scaling.rope_type of the 2.4B checkpoint).
EXAONE35_REGISTRY_KEYS = {"ACT2FN": ["silu"], "ROPE_INIT_FUNCTIONS": ["llama3"]}
# The order findings are reported in when a surface fails: what breaks the import comes first, then what
# breaks building the model, then calls and buffers, which break later or silently.
_KIND_ORDER = {"import": 0, "class-form": 1, "subscript": 2, "call": 3, "buffer": 4}


def load_remote_code_model(handle: ModelHandle, ctx: Any, **kwargs: Any) -> Any:
    """The guide's call: AutoModelForCausalLM + trust_remote_code, by repo id at the pinned revision when
    the hub cache holds it (offline), else from the fixture folder. Returns a LoadResult."""
    from transformers import AutoModelForCausalLM

    options = {"trust_remote_code": True, **dtype_kwargs(run_dtype(ctx)), **kwargs}
    if handle.source == "hub-cache":
        return load_pretrained(AutoModelForCausalLM.from_pretrained, handle.repo, revision=handle.revision, **options)
    return load_pretrained(AutoModelForCausalLM.from_pretrained, str(handle.path), **options)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def llamafied_logits(ctx: Any, handle: ModelHandle) -> tuple[Any, Any, dict[str, Any]]:
    """(ids, logits, evidence) of the llamafied copy of `handle`'s checkpoint through LlamaForCausalLM,
    computed once per run and checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    key = ("exaone3.5.llamafied-logits", str(handle.path), ctx.device)
    if key not in ctx.cache:
        folder = llamafied_folder(ctx, handle)
        loaded = load_pretrained(AutoModelForCausalLM.from_pretrained, str(folder), **dtype_kwargs(run_dtype(ctx)))
        model = loaded.model
        evidence: dict[str, Any] = {"llamafied": str(folder),
                                    "model_class": f"{type(model).__module__}.{type(model).__qualname__}"}
        evidence.update(judge_loading(loaded))
        evidence.update(compare_to_checkpoint(model, folder))
        model.to(ctx.device).eval()
        ids = fixed_input_ids(model.config.vocab_size, ctx.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        evidence.update(logits_evidence(logits, ids.shape[0], ids.shape[1], model.config.vocab_size))
        ctx.cache[key] = (ids, logits, evidence)
        del model
    return ctx.cache[key]


def check_llamafied(ctx: Any) -> dict[str, Any]:
    handle = resolve_model(ctx, "exaone3.5")
    _, _, evidence = llamafied_logits(ctx, handle)
    return {**handle.evidence(), **evidence, "route": "llamafied"}


def check_remote_code(ctx: Any, handle: ModelHandle | None = None) -> dict[str, Any]:
    import torch

    handle = handle or resolve_model(ctx, "exaone3.5")
    evidence: dict[str, Any] = {**handle.evidence(), "route": "remote-code"}
    try:
        loaded = load_remote_code_model(handle, ctx)
    except Exception as exc:
        raise Failed(f"the remote code of {handle.basis} does not load: {type(exc).__name__}: {exc}",
                     evidence) from exc
    model = loaded.model
    evidence["model_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    evidence["remote_code"] = remote_code_files(model, handle.path)
    if not evidence["remote_code"]:
        raise Failed(f"{evidence['model_class']} is not remote code: trust_remote_code did not load the "
                     "checkpoint's modeling file", evidence)
    evidence["n_params"] = sum(p.numel() for p in model.parameters())
    evidence["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    try:
        evidence.update(judge_loading(loaded))
        evidence.update(compare_to_checkpoint(model, handle.path))
    except Failed as exc:
        raise Failed(exc.message, {**evidence, **exc.evidence}) from None

    model.to(ctx.device).eval()
    vocab = model.config.vocab_size
    ids = fixed_input_ids(vocab, ctx.device)
    with torch.no_grad():
        # use_cache=False: the path LoRA training takes (the KV-cache path is the generate check's). On
        # transformers 5 a copy patched past its load-time break (the dict _tied_weights_keys of
        # LG-AI-EXAONE/EXAONE-3.5 PR #7) gets here, and its uninitialised inv_freq shows in the parity below.
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits.float()
    del model
    try:
        evidence.update(logits_evidence(logits, ids.shape[0], ids.shape[1], vocab))
    except Failed as exc:
        raise Failed(exc.message, {**evidence, **exc.evidence}) from None

    ref_ids, reference, _ = llamafied_logits(ctx, handle)
    if not torch.equal(ref_ids, ids):
        raise Failed("the llamafied reference ran on other token ids", evidence)
    atol, rtol = PARITY_TOLERANCE[_dtype_name(run_dtype(ctx))]
    diff = (logits - reference).abs()
    evidence.update(max_abs_diff_vs_llamafied=diff.max().item(), mean_abs_diff_vs_llamafied=diff.mean().item(),
                    argmax_agreement_vs_llamafied=(logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
                    parity_tolerance=atol + rtol * reference.abs().max().item(),
                    parity_rule=f"|diff| <= {atol:g} + {rtol:g} * max|llamafied logits| ({_dtype_name(run_dtype(ctx))})")
    if not evidence["max_abs_diff_vs_llamafied"] <= evidence["parity_tolerance"]:
        raise Failed(f"remote-code logits differ from the llamafied model's (same weights) by "
                     f"{evidence['max_abs_diff_vs_llamafied']:.3g} > {evidence['parity_tolerance']:.3g}: the "
                     "model runs but computes something else (an uninitialised buffer, a dropped scaling)", evidence)
    return evidence


def _facts_for(handle: ModelHandle) -> tuple[dict[str, Any], dict[str, Any]]:
    """(surfaces by file name, evidence) for the model the handle stands for: the real remote-code files
    when they are in the hub cache (extracted here, and compared with the facts file of the revision
    they should match), else the facts file of the fixture's revision."""
    from probes.fixtures.checkpoints import fixture_revision_for, revision_facts
    from probes.remote_code_surface import compare, extract_file

    if handle.source != "hub-cache":
        facts = revision_facts(handle.fixture_revision or fixture_revision_for(handle.revision))
        surfaces = {name: entry["surface"] for name, entry in facts["files"].items()}
        return surfaces, {"facts": f"probes/fixtures/exaone35/revisions/{facts['revision']}.json",
                          "facts_revision": facts["revision"], "hub_commit": facts.get("hub_commit")}
    facts = revision_facts(fixture_revision_for(handle.revision))
    surfaces, files, differences = {}, {}, {}
    for name, entry in facts["files"].items():
        path = Path(handle.path) / name
        if not path.is_file():
            differences[name] = [f"- the hub snapshot has no {name}"]
            continue
        extracted = extract_file(path)
        surfaces[name] = extracted["surface"]
        files[name] = extracted["sha256"]
        differences[name] = compare(entry["surface"], extracted["surface"])
    # A difference is a finding about our facts (the hub file moved on, or the facts were wrong), not
    # about the stack: it is reported, and the real file's own surface is what gets checked.
    return surfaces, {"facts": "extracted from the hub snapshot", "sha256": files,
                      "differences_from_facts_file": {k: v for k, v in differences.items() if v},
                      "facts_revision": facts["revision"]}


def check_surface_facts(ctx: Any, handle: ModelHandle | None = None) -> dict[str, Any]:
    from probes.checks.surface import check_surface

    handle = handle or resolve_model(ctx, "exaone3.5")
    surfaces, evidence = _facts_for(handle)
    config = json.loads((Path(handle.path) / "config.json").read_text(encoding="utf-8"))
    evidence = {**handle.evidence(), **evidence}
    findings = []
    for name, surface in sorted(surfaces.items()):
        for finding in check_surface(surface, subscript_keys=EXAONE35_REGISTRY_KEYS,
                                     tie_word_embeddings=bool(config.get("tie_word_embeddings", True))):
            findings.append({"file": name, **finding.as_dict()})
    failed = sorted((f for f in findings if not f["ok"]), key=lambda f: _KIND_ORDER.get(f["kind"], 9))
    causes: dict[str, dict[str, Any]] = {}
    for f in failed:  # one root cause, one signature: the facts it breaks listed under it
        entry = causes.setdefault(f["signature"], {"signature": f["signature"], "known": f["known"],
                                                   "cause": f["cause"], "facts": []})
        entry["facts"].append(f["id"])
    evidence.update(facts_checked=len(findings), facts_failed=failed,
                    failed_fact_ids=[f["id"] for f in failed],
                    facts_not_judged=[{"id": f["id"], "why": f["detail"]["not_judged"]}
                                      for f in findings if not f["judged"]],
                    causes=list(causes.values()),
                    signatures=sorted(causes))
    if failed:
        first = failed[0]
        exc = Failed(f"{len(failed)} of {len(findings)} remote-code facts fail on this transformers, "
                     f"from {len(causes)} cause(s): "
                     + "; ".join(f"{c['cause']} [{c['signature']}]: {', '.join(c['facts'])}"
                                 for c in causes.values()),
                     evidence)
        exc.source = (first["error_type"], first["message"], "")  # classified by the first fact that breaks
        raise exc
    return evidence


def checks(ctx: Any) -> list[tuple[str, Any]]:
    from probes.fixtures.checkpoints import EXAONE35_REVISIONS
    from probes.models import pinned_fixture_revision

    pinned = pinned_fixture_revision(ctx, "exaone3.5")
    listed: list[tuple[str, Any]] = [("exaone3.5.surface", check_surface_facts),
                                     ("exaone3.5.remote-code", check_remote_code)]
    for revision in EXAONE35_REVISIONS:
        if revision == pinned:
            continue

        def handle_of(ctx: Any, revision: str = revision) -> ModelHandle:
            return resolve_model(ctx, "exaone3.5", fixture_revision=revision)

        listed.append((f"exaone3.5.surface.{revision}", lambda ctx, h=handle_of: check_surface_facts(ctx, h(ctx))))
        listed.append((f"exaone3.5.remote-code.{revision}", lambda ctx, h=handle_of: check_remote_code(ctx, h(ctx))))
    listed.append(("exaone3.5.llamafied", check_llamafied))
    return listed
