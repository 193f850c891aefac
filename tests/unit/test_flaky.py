"""The flaky-verdict rules of pinmatrix/run/flaky.py on result documents (the pipeline-level rerun,
with a genuinely stateful check, is in tests/integration/test_faults.py)."""
from __future__ import annotations

from typing import Any

from pinmatrix.results import validate
from pinmatrix.run.flaky import (
    Recheck,
    deterministic_failures,
    failed_groups,
    group_of,
    merge_attempts,
)
from pinmatrix.status import cell_status
from probes import signatures

GROUPS = ["imports", "attention", "lora-train", "unsloth", "generate"]


def _check(name: str, status: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "status": status, "duration_s": 0.5}
    if status == "fail":
        out["error"] = {"type": "RuntimeError", "message": "boom", "signature": "fp-000000000000"}
    if status == "pass":
        out["evidence"] = {"n": 1}
    return out


def _doc(*checks: dict[str, Any]) -> dict[str, Any]:
    return {"schema": 1, "cell": {"id": "c", "hash": "h", "pins": {}},
            "environment": {"python": "3.11", "device": "cpu", "packages": {}},
            "checks": list(checks),
            "started": "s", "finished": "f"}


def test_group_of_follows_the_contract_table() -> None:
    assert (
        group_of("lora-train.unsloth") == "unsloth"
        and group_of("lora-train.hf-peft") == "lora-train"
    )
    assert group_of("attention.sdpa") == "attention" and group_of("kernel.xformers") == "kernels"
    assert group_of("imports") == "imports" and group_of("exaone3.5.remote-code") == "exaone3.5"


def test_only_failed_groups_are_rerun() -> None:
    doc = _doc(_check("imports", "pass"), _check("attention.sdpa", "fail"),
               _check("lora-train.unsloth", "fail"))
    assert failed_groups(doc, GROUPS) == ["attention", "unsloth"]
    assert failed_groups(_doc(_check("imports", "pass")), GROUPS) == []
    # unknown: rerun all
    assert failed_groups(_doc(_check("mystery.check", "fail")), GROUPS) == GROUPS


def test_a_failure_with_a_deterministic_signature_is_not_rerun() -> None:
    abi = _check("attention.xformers-kernel", "fail")
    abi["error"]["signature"] = "xformers-cuda-ops-not-built-for-this-torch"
    assert signatures.is_deterministic("xformers-cuda-ops-not-built-for-this-torch")
    assert not signatures.is_deterministic("fp-000000000000") and not signatures.is_deterministic(
        "cuda-out-of-memory"
    )
    # the only failure is deterministic: nothing to rerun
    assert failed_groups(_doc(_check("imports", "pass"), abi), GROUPS) == []
    assert deterministic_failures(_doc(abi)) == ["attention.xformers-kernel"]
    # an unknown failure beside it still sends its own group (and only it) to the rerun
    doc = _doc(abi, _check("lora-train.hf-peft", "fail"))
    assert failed_groups(doc, GROUPS) == ["lora-train"]
    assert Recheck(not_rerun=["attention.xformers-kernel"]).describe() == \
        "not rerun (deterministic signature): attention.xformers-kernel"
    # every non-infra catalogue entry says which it is: none is left to the default by accident
    assert all("deterministic" in e for e in signatures.load_catalogue() if not e["infra"])


def test_fail_then_pass_and_pass_then_fail_are_flaky_with_both_attempts() -> None:
    first = _doc(_check("imports", "pass"), _check("attention.sdpa", "fail"),
                 _check("attention.eager", "pass"))
    second = _doc(_check("attention.sdpa", "pass"), _check("attention.eager", "fail"))
    merged, flaky = merge_attempts(first, second, ["attention"], GROUPS)
    assert sorted(flaky) == ["attention.eager", "attention.sdpa"]
    by = {c["name"]: c for c in merged["checks"]}
    assert [a["status"] for a in by["attention.sdpa"]["attempts"]] == ["fail", "pass"]
    assert [a["status"] for a in by["attention.eager"]["attempts"]] == ["pass", "fail"]
    assert by["attention.sdpa"]["status"] == by["attention.eager"]["status"] == "flaky"
    # the failing side is kept
    assert by["attention.sdpa"]["error"]["signature"] == "fp-000000000000"
    assert by["imports"] == _check("imports", "pass")
    assert validate(merged) is None and cell_status(merged["checks"]) == "partial"


def test_same_outcome_twice_keeps_it() -> None:
    first = _doc(_check("imports", "pass"), _check("lora-train.hf-peft", "fail"))
    merged, flaky = merge_attempts(first, _doc(_check("lora-train.hf-peft", "fail")),
                                   ["lora-train"], GROUPS)
    assert flaky == []
    check = merged["checks"][1]
    assert check["status"] == "fail" and len(check["attempts"]) == 2
    assert cell_status(merged["checks"]) == "broken"
    merged, flaky = merge_attempts(first, _doc(_check("lora-train.hf-peft", "infra")),
                                   ["lora-train"], GROUPS)
    # infra on the rerun is not a verdict
    assert flaky == [] and merged["checks"][1] == first["checks"][1]
