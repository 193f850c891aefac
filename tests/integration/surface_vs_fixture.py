"""Run inside a venv holding one transformers release (see test_surface_executed.py): the surface
check of each known EXAONE 3.5 revision, and the revision-faithful fixture executed: loaded through
its remote code and run forward, as given and with only its list `_tied_weights_keys` made a dict
(LG-AI-EXAONE/EXAONE-3.5 PR #7), so that on transformers 5 the forward pass, and the calls in
it, run too. A profiler records every transformers callable of a fact that the fixture's own code
entered; the exception a run ends with names the fact it was raised in. Prints one JSON line."""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from probes.context import Context
from probes.models import ModelHandle
from probes.signatures import classify

warnings.filterwarnings("ignore")

FIXTURE_FILES = ("modeling_exaone.py", "configuration_exaone.py")


def surface_findings(revision: str) -> list[dict[str, Any]]:
    from probes.checks.exaone35 import EXAONE35_REGISTRY_KEYS
    from probes.checks.surface import check_surface
    from probes.fixtures.checkpoints import revision_facts

    out = []
    for name, entry in sorted(revision_facts(revision)["files"].items()):
        for finding in check_surface(entry["surface"], subscript_keys=EXAONE35_REGISTRY_KEYS):
            out.append({"file": name, "dotted": _dotted(finding.id), **finding.as_dict()})
    return out


def _dotted(fact_id: str) -> str:
    return fact_id.split(":", 1)[1].split("(", 1)[0] if fact_id.startswith("call:") else ""


def _fact_codes(revision: str) -> dict[Any, str]:
    """code object -> the dotted callable of a call fact, for every call fact that resolves here.
    A code object several callables share (transformers 5's ModelOutput classes share one compat
    __init__) names none of them: entering it would not say which one the fixture called."""
    from probes.checks.surface import _target_codes, resolve_dotted
    from probes.fixtures.checkpoints import revision_facts

    codes: dict[Any, set[str]] = {}
    for entry in revision_facts(revision)["files"].values():
        for dotted in entry["surface"]["calls"]:
            try:
                target = resolve_dotted(dotted)
            except (ImportError, AttributeError):
                continue
            for code in _target_codes(target):
                codes.setdefault(code, set()).add(dotted)
    return {code: next(iter(names)) for code, names in codes.items() if len(names) == 1}


def execute_fixture(revision: str, work: Path, patched: bool) -> dict[str, Any]:
    import torch

    from probes.checks.exaone35 import load_remote_code_model
    from probes.fixtures.checkpoints import write_exaone35

    # one folder name per run: transformers names the dynamic module after the folder, and a second
    # load under the same name may reuse the first one's module (some 5.x releases do)
    name = f"EXAONE-3.5-2.4B-Instruct-{revision}-{'patched' if patched else 'as-given'}"
    folder = write_exaone35(work / name, revision=revision)
    if patched:
        code = (folder / "modeling_exaone.py").read_text()
        old = '_tied_weights_keys = ["lm_head.weight"]'
        assert code.count(old) == 1
        (folder / "modeling_exaone.py").write_text(
            code.replace(old, '_tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}')
        )
    handle = ModelHandle(
        "exaone3.5",
        folder,
        "fixture",
        "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
        "main",
        "remote-code",
        revision,
    )
    ctx = Context(spec={"models": [], "pins": {}}, device="cpu", work_dir=work)
    codes = _fact_codes(revision)
    entered: set[str] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if (
            event == "call"
            and frame.f_code in codes
            and frame.f_back is not None
            and frame.f_back.f_code.co_filename.endswith(FIXTURE_FILES)
        ):
            entered.add(codes[frame.f_code])

    result: dict[str, Any] = {"revision": revision, "patched": patched}
    sys.setprofile(profile)
    try:
        model = load_remote_code_model(handle, ctx).model
        ids = torch.tensor([[1, 2, 3, 4]])
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        result["outcome"] = "runs"
    except Exception as exc:  # noqa: BLE001 - what the fixture meets is the observation
        sys.setprofile(None)
        text = "".join(traceback.format_exception(exc))
        result.update(
            outcome="fails",
            error_type=type(exc).__name__,
            message=str(exc)[:500],
            signature=classify(type(exc).__name__, str(exc), text).id,
        )
        # the fact the failure was raised at: the callee of the fixture's innermost frame
        tb, raised_in = exc.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.endswith(FIXTURE_FILES):
                callee = tb.tb_next
                raised_in = codes.get(callee.tb_frame.f_code) if callee is not None else None
                result["fixture_line"] = tb.tb_lineno
            tb = tb.tb_next
        result["raised_in"] = raised_in
    finally:
        sys.setprofile(None)
    result["entered"] = sorted(entered)
    return result


def main() -> None:
    import transformers

    from probes.fixtures.checkpoints import EXAONE35_REVISIONS

    work = Path(sys.argv[1])
    out: dict[str, Any] = {"transformers": transformers.__version__, "revisions": {}}
    for revision in EXAONE35_REVISIONS:
        out["revisions"][revision] = {
            "facts": surface_findings(revision),
            "runs": [execute_fixture(revision, work, patched) for patched in (False, True)],
        }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
