"""run_check: statuses, errors with signatures, warnings, timeouts, JSON-safe evidence."""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import pytest

from probes import signatures
from probes.context import Context
from probes.framework import CheckTimeout, Failed, Infra, Skip, jsonable, run_check
from probes.schema_check import load_schema, validate
from probes.signatures import classify

CHECK_SCHEMA = load_schema()["$defs"]["check"]
SCHEMA = load_schema()


def make_ctx(tmp_path: Path, device: str = "cpu", requested: str = "auto", **pins) -> Context:
    spec = {"id": "t", "hash": "h", "pins": {"python": "3.11", **pins}, "checks": [],
            "settings": {}}
    return Context(spec=spec, device=device, work_dir=tmp_path, requested_device=requested)


def run(fn, tmp_path: Path, timeout_s=30.0, name="demo.check"):
    result = run_check(name, fn, make_ctx(tmp_path), timeout_s)
    assert validate(result, {**CHECK_SCHEMA, "$defs": SCHEMA["$defs"]}) == [], result
    return result


def test_pass_keeps_evidence(tmp_path: Path) -> None:
    result = run(lambda ctx: {"loss": [2.0, 1.5], "ok": True}, tmp_path)
    assert result["status"] == "pass"
    assert result["evidence"] == {"loss": [2.0, 1.5], "ok": True}
    assert result["duration_s"] >= 0 and "error" not in result


def test_skip_has_reason(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        raise Skip("needs a GPU")
    result = run(fn, tmp_path)
    assert (result["status"], result["reason"]) == ("skip", "needs a GPU")


def test_infra_has_reason_and_error(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        raise Infra("CUDA out of memory at 4x2048")
    result = run(fn, tmp_path)
    assert result["status"] == "infra" and result["reason"] == "CUDA out of memory at 4x2048"
    assert result["error"]["signature"] == "cuda-out-of-memory"


def test_failed_keeps_evidence_and_signature(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        raise Failed("loss did not fall", evidence={"losses": [1.0, float("nan")]})
    result = run(fn, tmp_path)
    assert result["status"] == "fail"
    assert result["evidence"] == {"losses": [1.0, "nan"]}
    assert result["error"]["type"] == "Failed" and result["error"]["message"] == "loss did not fall"
    assert result["error"]["signature"].startswith("fp-") and result["error"]["known"] is False


def test_failed_from_a_known_cause_takes_its_signature(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        try:
            raise ImportError("/x/flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")
        except ImportError as exc:
            raise Failed("flash-attn kernel unavailable") from exc
    result = run(fn, tmp_path)
    assert result["status"] == "fail"
    assert (result["error"]["signature"],
            result["error"]["type"]) == ("flash-attn-abi-mismatch", "ImportError")


def test_unexpected_exception_is_a_classified_fail(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        raise ValueError("'aimv2' is already used by a Transformers config, pick another name.")
    result = run(fn, tmp_path)
    assert result["status"] == "fail"
    error = result["error"]
    assert (error["type"], error["signature"],
            error["known"]) == ("ValueError", "unsloth-aimv2-config-clash", True)
    assert "raise ValueError" in error["traceback_tail"]
    assert len(error["traceback_tail"].splitlines()) <= 30


def test_catalogue_infra_exception_becomes_infra(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
    result = run(fn, tmp_path)
    assert result["status"] == "infra" and result["error"]["signature"] == "cuda-out-of-memory"
    assert result["reason"]


def test_system_exit_inside_a_check_is_a_fail(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        raise SystemExit(2)
    assert run(fn, tmp_path)["status"] == "fail"


def test_timeout_is_infra(tmp_path: Path) -> None:
    def fn(ctx):
        end = time.monotonic() + 10
        while time.monotonic() < end:
            pass
        return {}
    start = time.monotonic()
    result = run(fn, tmp_path, timeout_s=0.3)
    assert time.monotonic() - start < 5
    assert result["status"] == "infra"
    assert (
        result["error"]["type"] == "CheckTimeout"
        and result["error"]["signature"] == "check-timeout"
    )
    # The alarm is disarmed afterwards: a later slow-ish check is not interrupted.
    assert run(lambda ctx: (time.sleep(0.5), {})[1], tmp_path, timeout_s=30)["status"] == "pass"


def test_warnings_and_log_records_are_captured(tmp_path: Path) -> None:
    quiet = logging.getLogger("demo.nopropagate")
    quiet.propagate = False

    def fn(ctx):
        warnings.warn("Unsloth should be imported before transformers", UserWarning, stacklevel=1)
        logging.getLogger("demo.lib").warning("attention fell back to eager")
        logging.getLogger("demo.lib").info("not collected")
        quiet.error("from a logger that does not propagate")
        return {}
    result = run(fn, tmp_path)
    assert result["warnings"] == ["UserWarning: Unsloth should be imported before transformers",
                                  "WARNING demo.lib: attention fell back to eager",
                                  "ERROR demo.nopropagate: from a logger that does not propagate"]
    # Handlers are removed afterwards.
    assert not any(
        type(h).__name__ == "_WarningLog" for h in logging.getLogger().handlers + quiet.handlers
    )


def test_one_crash_does_not_affect_the_next_check(tmp_path: Path) -> None:
    def boom(ctx) -> None:
        raise RuntimeError("boom")
    results = [run(boom, tmp_path), run(lambda ctx: {"x": 1}, tmp_path)]
    assert [r["status"] for r in results] == ["fail", "pass"]


def test_odd_names_are_made_schema_safe(tmp_path: Path) -> None:
    assert run(lambda ctx: {}, tmp_path,
               name="Attention.XFormers Kernel")["name"] == "attention.xformers-kernel"


def test_jsonable() -> None:
    assert jsonable({"a": (1, float("inf")), 2: {float("-inf")}, "o": object}) == \
        {"a": [1, "inf"], "2": ["-inf"], "o": "<class 'object'>"}


def test_jsonable_never_keeps_tensors() -> None:
    torch = pytest.importorskip("torch")
    out = jsonable({"scalar": torch.tensor(1.5), "t": torch.zeros(2, 3)})
    assert out["scalar"] == 1.5
    assert out["t"] == "<Tensor shape=[2, 3] dtype=torch.float32>"


def test_context_require(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, xformers="none", pytest="8")
    with pytest.raises(Skip, match="xformers not in this cell"):
        ctx.require("xformers")
    with pytest.raises(Skip, match="not installed"):
        ctx.require("surely-not-installed-pkg")
    assert ctx.require("pytest")   # installed in the test interpreter
    with pytest.raises(Skip, match="needs a GPU"):
        ctx.require_gpu()
    with pytest.raises(Infra, match="asked for cuda"):
        make_ctx(tmp_path, requested="cuda").require_gpu()
    make_ctx(tmp_path, device="cuda").require_gpu()


def test_check_timeout_message_classifies() -> None:
    assert classify("CheckTimeout", str(CheckTimeout("check exceeded its timeout of 1 s"))).infra


def test_plain_transformers_groups_run_before_unsloth_whatever_the_matrix_order() -> None:
    from probes.checks import run_order

    order = run_order(["throughput", "unsloth", "lora-train", "imports", "bogus", "generate",
                       "attention"])
    assert order.index("unsloth") > max(
        order.index(g) for g in ("lora-train", "generate", "attention")
    )
    assert order.index("throughput") > order.index("unsloth")
    assert order[0] == "imports" and order[-1] == "bogus"


class _ChunkedLogProbFunction:
    """Stands where trl 1.15.0 keeps its fused LM-head loss (trl/trainer/utils.py): its `apply`
    launches a triton kernel, and triton without a GPU raises the driver error below."""

    @staticmethod
    def apply(*args) -> None:
        raise RuntimeError("0 active drivers ([]). There should only be one.")


def _sft_step(ctx):
    return _ChunkedLogProbFunction.apply(1, 2)


def test_triton_without_a_gpu_is_skip_needs_a_gpu_not_fail(tmp_path: Path) -> None:
    result = run(_sft_step, tmp_path, name="train.trl-sft")
    assert result["status"] == "skip", result
    assert result["reason"] == "needs a GPU (trl-sft-fused-lm-head-needs-triton)"
    # the error stays as the evidence of why it could not run here
    assert result["error"]["signature"] == "trl-sft-fused-lm-head-needs-triton"


def test_the_same_gpu_path_failing_on_a_gpu_host_is_not_skipped(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, device="cuda")
    result = run_check("train.trl-sft", _sft_step, ctx, 30.0)
    assert result["status"] == "fail"
    assert result["error"]["signature"] == "trl-sft-fused-lm-head-needs-triton"


def test_a_really_broken_stack_still_fails_on_cpu(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        raise TypeError("SFTTrainer.__init__() got an unexpected keyword argument 'tokenizer'")
    result = run(fn, tmp_path, name="train.trl-sft")
    assert result["status"] == "fail"
    assert result["error"]["signature"] == "trl-sfttrainer-tokenizer-removed"


def test_a_failed_bar_caused_by_a_gpu_path_is_skip_on_cpu(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        try:
            _ChunkedLogProbFunction.apply()
        except RuntimeError as exc:
            raise Failed("the trainer logged no loss", {"losses": []}) from exc
    result = run(fn, tmp_path, name="train.trl-sft")
    assert result["status"] == "skip" and result["reason"].startswith("needs a GPU")
    assert result["evidence"] == {"losses": []}


def test_bitsandbytes_gpu_path_is_skip_on_cpu_and_fail_on_gpu(tmp_path: Path) -> None:
    def fn(ctx) -> None:
        raise RuntimeError("Could not find the bitsandbytes CUDA binary at "
                           "/x/libbitsandbytes_cuda128.so")
    assert run(fn, tmp_path)["status"] == "skip"
    on_gpu = run_check("kernel.bitsandbytes", fn, make_ctx(tmp_path, device="cuda"), 30.0)
    assert on_gpu["status"] == "fail"


def test_every_catalogue_entry_says_what_it_means() -> None:
    for entry in signatures.load_catalogue():
        assert entry["means"] in signatures.MEANINGS, entry["id"]
        if entry["means"] == signatures.HOST:
            assert entry["infra"] is True, entry["id"]
        if entry["means"] == signatures.STACK:
            assert entry["infra"] is False, entry["id"]
