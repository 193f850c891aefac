"""Groups "imports" and "kernels", on real packages and on deliberately broken ones built here.

The broken stacks are real importable packages (with dist-info, so importlib.metadata sees them)
written into tmp_path: a kernel package whose op raises the real error text, one that returns wrong
numbers, one whose import fails. The end-to-end tests run `python -m probes` on them in a
subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from probes.checks import group_checks
from probes.context import Context
from probes.environment import ImportRecord
from probes.framework import Failed, error_record, run_check
from probes.schema_check import load_schema, validate

REPO = Path(__file__).resolve().parents[2]
FAKE_MODULES = ("xformers", "flash_attn", "bitsandbytes", "brokenpkg", "unsloth")

XFORMERS_CANT_LOAD = (
    "xFormers can't load C++/CUDA extensions. xFormers was built for:\n"
    "    PyTorch 2.5.1+cu124 with CUDA 1204 (you have 2.13.0+cpu)\n"
    "    Python  3.11.9 (you have 3.11.7)\n"
    "  Please reinstall xformers (see https://github.com/facebookresearch/xformers#installing-xformers)"
)
FLASH_ABI = (
    "{root}/flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: "
    "_ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"
)

# A correct memory-efficient attention in plain torch (BMHK layout), scaled by `factor` to break it.
XFORMERS_OPS = """
import math, torch
FACTOR = {factor}
def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None):
    {raise_line}
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(qt @ kt.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return ((w @ vt) * FACTOR).transpose(1, 2)
"""

BNB_FUNCTIONAL = """
import torch
class State:
    def __init__(self, absmax): self.absmax = absmax
def quantize_blockwise(A, blocksize=4096, **kw):
    {raise_line}
    absmax = A.abs().max()
    return torch.round(A / absmax * 127 {skew}).to(torch.int8).view(torch.uint8), State(absmax)
def dequantize_blockwise(q, state, **kw):
    return q.view(torch.int8).float() / 127 * state.absmax
"""


def write_package(root: Path, dist: str, version: str, files: dict[str, str]) -> None:
    """A real installed-looking package: module files plus <dist>-<version>.dist-info/METADATA."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")


def fake_xformers(root: Path, factor: float = 1.0, raise_line: str = "pass") -> None:
    write_package(
        root,
        "xformers",
        "0.0.35",
        {
            "xformers/__init__.py": "",
            "xformers/ops/__init__.py": XFORMERS_OPS.format(factor=factor, raise_line=raise_line),
        },
    )


def fake_flash_attn(root: Path, broken: bool) -> None:
    body = (
        f"raise ImportError({FLASH_ABI.format(root=root)!r})"
        if broken
        else "def flash_attn_func(q, k, v, dropout_p=0.0, causal=False):\n"
        "    raise AssertionError('not on cpu')\n"
    )
    write_package(root, "flash-attn", "2.8.3", {"flash_attn/__init__.py": body})


def fake_bitsandbytes(root: Path, raise_line: str = "pass", skew: str = "") -> None:
    write_package(
        root,
        "bitsandbytes",
        "0.50.2",
        {
            "bitsandbytes/__init__.py": "from . import functional\n",
            "bitsandbytes/functional.py": BNB_FUNCTIONAL.format(raise_line=raise_line, skew=skew),
        },
    )


def fake_broken_import(root: Path) -> None:
    write_package(
        root,
        "brokenpkg",
        "1.0",
        {"brokenpkg/__init__.py": "import _brokenpkg_native  # not there\n"},
    )


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder on sys.path for fake packages; their modules are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    # A real package of the same name may already be imported (on a GPU host, say): set it aside
    # (monkeypatch puts it back afterwards: re-importing bitsandbytes would re-register torch ops).
    for name in _fake_named_modules():
        monkeypatch.delitem(sys.modules, name)
    yield root
    for name in _fake_named_modules():
        del sys.modules[name]


def _fake_named_modules() -> list[str]:
    return [name for name in list(sys.modules) if name.split(".")[0] in FAKE_MODULES]


def ctx_for(tmp_path: Path, device: str = "cpu", **pins) -> Context:
    spec = {
        "id": "t",
        "hash": "h",
        "pins": {"python": "3.11", "unsloth": "none", **pins},
        "checks": ["imports", "kernels"],
        "settings": {},
    }
    return Context(spec=spec, device=device, work_dir=tmp_path)


def run_group(group: str, ctx: Context) -> dict[str, dict]:
    return {name: run_check(name, fn, ctx, 60) for name, fn in group_checks(group, ctx)}


# ---------------------------------------------------------------- imports


def test_imports_pass_records_versions(tmp_path: Path) -> None:
    pytest.importorskip("json")
    result = run_group("imports", ctx_for(tmp_path, pytest="9"))["imports"]
    assert result["status"] == "pass", result
    assert result["evidence"]["packages"]["pytest"]["imports"] is True
    assert result["evidence"]["packages"]["pytest"]["installed"]


def test_imports_fail_on_a_pinned_package_that_does_not_import(tmp_path: Path, site) -> None:
    fake_broken_import(site)
    result = run_group("imports", ctx_for(tmp_path, brokenpkg="1.0"))["imports"]
    assert result["status"] == "fail"
    package = result["evidence"]["packages"]["brokenpkg"]
    assert package == {
        "installed": "1.0",
        "imports": False,
        "error": "ModuleNotFoundError: No module named '_brokenpkg_native'",
    }
    assert result["error"]["type"] == "ModuleNotFoundError"
    assert result["error"]["signature"].startswith("fp-")
    assert "_brokenpkg_native" in result["error"]["traceback_tail"]


def test_imports_fail_with_the_import_errors_signature(tmp_path: Path, site) -> None:
    fake_flash_attn(site, broken=True)
    result = run_group("imports", ctx_for(tmp_path, **{"flash-attn": "2.8.3"}))["imports"]
    assert result["status"] == "fail"
    assert (
        result["error"]["signature"] == "flash-attn-abi-mismatch"
        and result["error"]["known"] is True
    )


def test_imports_fail_on_a_pinned_package_that_is_missing(tmp_path: Path) -> None:
    result = run_group("imports", ctx_for(tmp_path, **{"surely-missing": "1.0"}))["imports"]
    assert result["status"] == "fail"
    assert result["evidence"]["missing"] == ["surely-missing"]


# ---------------------------------------------------------------- kernels (need torch)

torch_required = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("torch"), reason="needs torch"
)


@torch_required
def test_kernels_skip_when_not_in_the_cell(tmp_path: Path) -> None:
    results = run_group(
        "kernels", ctx_for(tmp_path, xformers="none", **{"flash-attn": "none"}, bitsandbytes="none")
    )
    assert {n: (r["status"], r["reason"]) for n, r in results.items()} == {
        "kernel.xformers": ("skip", "xformers not in this cell"),
        "kernel.flash-attn": ("skip", "flash-attn not in this cell"),
        "kernel.bitsandbytes": ("skip", "bitsandbytes not in this cell"),
    }


@torch_required
def test_xformers_correct_kernel_passes(tmp_path: Path, site) -> None:
    fake_xformers(site)
    result = run_group("kernels", ctx_for(tmp_path, xformers="0.0.35"))["kernel.xformers"]
    assert result["status"] == "pass", result
    ev = result["evidence"]
    assert (
        ev["device"] == "cpu"
        and ev["dtype"] == "float32"
        and ev["max_abs_err"] <= ev["tolerance"] == 1e-4
    )


@torch_required
def test_xformers_wrong_numbers_fail(tmp_path: Path, site) -> None:
    fake_xformers(site, factor=1.05)
    result = run_group("kernels", ctx_for(tmp_path, xformers="0.0.35"))["kernel.xformers"]
    assert result["status"] == "fail"
    assert result["evidence"]["max_abs_err"] > result["evidence"]["tolerance"]
    assert "disagrees with the PyTorch reference" in result["error"]["message"]


@torch_required
def test_xformers_extension_error_fails_with_signature(tmp_path: Path, site) -> None:
    fake_xformers(site, raise_line=f"raise RuntimeError({XFORMERS_CANT_LOAD!r})")
    result = run_group("kernels", ctx_for(tmp_path, xformers="0.0.35"))["kernel.xformers"]
    assert result["status"] == "fail"
    assert result["error"]["signature"] == "xformers-extensions-not-loaded"
    assert result["error"]["message"].startswith("xFormers can't load C++/CUDA extensions")


@torch_required
def test_xformers_without_cpu_operator_skips_on_cpu(tmp_path: Path, site) -> None:
    fake_xformers(
        site,
        raise_line="raise NotImplementedError('No operator found for "
        "`memory_efficient_attention_forward` with inputs: ...')",
    )
    result = run_group("kernels", ctx_for(tmp_path, xformers="0.0.35"))["kernel.xformers"]
    assert result["status"] == "skip" and result["reason"].startswith("needs a GPU")


@torch_required
def test_flash_attn_broken_extension_fails_even_on_cpu(tmp_path: Path, site) -> None:
    fake_flash_attn(site, broken=True)
    result = run_group("kernels", ctx_for(tmp_path, **{"flash-attn": "2.8.3"}))["kernel.flash-attn"]
    assert result["status"] == "fail"
    assert result["error"]["signature"] == "flash-attn-abi-mismatch"


@torch_required
def test_flash_attn_skips_on_cpu(tmp_path: Path, site) -> None:
    fake_flash_attn(site, broken=False)
    result = run_group("kernels", ctx_for(tmp_path, **{"flash-attn": "2.8.3"}))["kernel.flash-attn"]
    assert (result["status"], result["reason"]) == ("skip", "needs a GPU")


@torch_required
def test_bitsandbytes_round_trip_passes(tmp_path: Path, site) -> None:
    fake_bitsandbytes(site)
    result = run_group("kernels", ctx_for(tmp_path, bitsandbytes="0.50.2"))["kernel.bitsandbytes"]
    assert result["status"] == "pass", result
    assert (
        result["evidence"]["blockwise8"]["max_abs_err"]
        <= result["evidence"]["blockwise8"]["tolerance"]
    )


@torch_required
def test_bitsandbytes_wrong_numbers_fail(tmp_path: Path, site) -> None:
    fake_bitsandbytes(site, skew="+ 9")
    result = run_group("kernels", ctx_for(tmp_path, bitsandbytes="0.50.2"))["kernel.bitsandbytes"]
    assert result["status"] == "fail" and "round trip is off" in result["error"]["message"]


@torch_required
def test_bitsandbytes_cuda_setup_failure_on_a_cpu_host_needs_a_gpu(tmp_path: Path, site) -> None:
    """bitsandbytes' CUDA setup failing on a host without a GPU says the host lacks the GPU path,
    not that the stack is broken: skip "needs a GPU", the signature and the error kept. On a GPU
    host the same entry is a fail (tests/unit/test_probe_framework.py runs both hosts)."""
    fake_bitsandbytes(
        site,
        raise_line="raise RuntimeError('\\n  CUDA Setup failed despite GPU being available. "
        "Please run the following command to get more information')",
    )
    result = run_group("kernels", ctx_for(tmp_path, bitsandbytes="0.50.2"))["kernel.bitsandbytes"]
    assert result["status"] == "skip" and result["error"]["signature"] == "bitsandbytes-cuda-setup"
    assert result["reason"].startswith("needs a GPU")


# ---------------------------------------------------------------- registry


def test_missing_group_module_is_a_fail_named_after_the_group(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    result = run_group("no-such-group", ctx)["no-such-group"]
    assert result["status"] == "fail" and result["error"]["type"] == "LookupError"


# ---------------------------------------------------------------- end to end: python -m probes


def run_probe(
    tmp_path: Path, pins: dict, site: Path | None, only: str | None = None
) -> tuple[int, dict, str]:
    spec = {
        "id": "e2e",
        "hash": "0" * 64,
        "pins": {"python": "3.11", "unsloth": "none", **pins},
        "runner": "venv",
        "models": [],
        "checks": ["imports", "kernels", "exaone3.5"],
        "settings": {"device": "cpu", "check_timeout_s": 120},
    }
    (tmp_path / "cell.json").write_text(json.dumps(spec))
    out = tmp_path / "out" / "result.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, REPO) if p)
    cmd = [
        sys.executable,
        "-m",
        "probes",
        "--cell",
        str(tmp_path / "cell.json"),
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
    ] + (["--only", only] if only else [])
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    document = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, document, proc.stderr


def assert_schema_valid(document: dict) -> None:
    schema = load_schema()
    assert validate(document, schema) == []
    try:  # the host's validator too, where installed (not in every cell image)
        import jsonschema
    except ImportError:
        return
    jsonschema.Draft202012Validator(schema).validate(document)


@torch_required
def test_probe_end_to_end_on_this_stack_with_unsloth_first(tmp_path: Path) -> None:
    """The real CPU stack plus a (fake, working) unsloth: schema-valid, skips, and unsloth imported
    first."""
    torch_version = __import__("importlib.metadata").metadata.version("torch")
    site = tmp_path / "site"
    fake_unsloth(site)
    rc, document, stderr = run_probe(
        tmp_path,
        {
            "torch": torch_version,
            "unsloth": "2026.10.9",
            "xformers": "none",
            "flash-attn": "none",
            "bitsandbytes": "none",
        },
        site,
        only="imports,kernels",
    )
    assert rc == 0, stderr
    assert_schema_valid(document)
    checks = {c["name"]: c for c in document["checks"]}
    assert {n: c["status"] for n, c in checks.items()} == {
        "imports": "pass",
        "kernel.xformers": "skip",
        "kernel.flash-attn": "skip",
        "kernel.bitsandbytes": "skip",
    }
    env = document["environment"]
    # The spec forces cpu; gpu fields still describe the machine (a GPU host has them).
    assert env["device"] == "cpu" and env["torch"].split("+")[0] == torch_version.split("+")[0]
    assert env["packages"]["torch"] == {"installed": torch_version, "imports": True, "error": None}
    # unsloth went first: its import saw no transformers/peft/trl, so it did not warn.
    assert list(env["packages"])[0] == "unsloth"
    assert env["packages"]["unsloth"] == {"installed": "2026.10.9", "imports": True, "error": None}
    assert "unsloth" not in checks["imports"]["evidence"]["import_warnings"]
    assert not list((tmp_path / "out").glob(".*tmp")), "the temp file was left behind"


@torch_required
def test_probe_end_to_end_on_a_broken_stack(tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_xformers(site, raise_line=f"raise RuntimeError({XFORMERS_CANT_LOAD!r})")
    fake_flash_attn(site, broken=True)
    fake_bitsandbytes(site, skew="+ 9")
    fake_broken_import(site)
    rc, document, stderr = run_probe(
        tmp_path,
        {"xformers": "0.0.35", "flash-attn": "2.8.3", "bitsandbytes": "0.50.2", "brokenpkg": "1.0"},
        site,
        only="kernels,imports",
    )
    assert rc == 0, stderr
    assert_schema_valid(document)
    checks = {c["name"]: c for c in document["checks"]}
    assert {n: c["status"] for n, c in checks.items()} == {
        "imports": "fail",
        "kernel.xformers": "fail",
        "kernel.flash-attn": "fail",
        "kernel.bitsandbytes": "fail",
    }
    assert checks["kernel.xformers"]["error"]["signature"] == "xformers-extensions-not-loaded"
    assert checks["kernel.flash-attn"]["error"]["signature"] == "flash-attn-abi-mismatch"
    assert "round trip is off" in checks["kernel.bitsandbytes"]["error"]["message"]
    # imports names both failures; its signature is the first failing package's (flash-attn before
    # brokenpkg).
    assert set(checks["imports"]["evidence"]["failed"]) == {"flash-attn", "brokenpkg"}
    assert checks["imports"]["error"]["signature"] == "flash-attn-abi-mismatch"
    packages = document["environment"]["packages"]
    assert (
        packages["flash-attn"]["imports"] is False
        and "undefined symbol" in packages["flash-attn"]["error"]
    )
    assert packages["brokenpkg"] == {
        "installed": "1.0",
        "imports": False,
        "error": "ModuleNotFoundError: No module named '_brokenpkg_native'",
    }


def test_probe_bad_spec_exits_3_and_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "cell.json").write_text('{\n  "id": "x",\n  oops\n}')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "probes",
            "--cell",
            str(tmp_path / "cell.json"),
            "--out",
            str(tmp_path / "r.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert f"{tmp_path / 'cell.json'}:3:" in proc.stderr
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- unsloth import order and GPU-only
# imports

FAKE_UNSLOTH = """
import sys, warnings
BEFORE = sorted(m for m in ("transformers", "peft", "trl") if m in sys.modules)
if BEFORE:
    warnings.warn("WARNING: Unsloth should be imported before " + ", ".join(BEFORE) +
                  " to ensure all optimizations are applied.")
{extra}
"""


def fake_unsloth(root: Path, extra: str = "") -> None:
    write_package(
        root, "unsloth", "2026.10.9", {"unsloth/__init__.py": FAKE_UNSLOTH.format(extra=extra)}
    )


def test_unsloth_without_accelerator_is_gpu_only_on_cpu_and_infra_on_cuda(tmp_path: Path,
                                                                          site) -> None:
    fake_unsloth(
        site,
        extra="raise NotImplementedError('Unsloth cannot find any torch accelerator? "
        "You need a GPU.')",
    )
    on_cpu = run_group("imports", ctx_for(tmp_path, unsloth="2026.10.9"))["imports"]
    assert on_cpu["status"] == "pass" and on_cpu["evidence"]["needs_gpu"] == ["unsloth"]
    on_gpu = run_group("imports", ctx_for(tmp_path, device="cuda", unsloth="2026.10.9"))["imports"]
    assert on_gpu["status"] == "infra" and on_gpu["error"]["signature"] == "unsloth-no-accelerator"


def test_late_unsloth_import_warning_is_recorded(tmp_path: Path, site) -> None:
    pytest.importorskip("transformers")  # the point: transformers imported before unsloth
    fake_unsloth(site)
    result = run_group("imports", ctx_for(tmp_path, unsloth="2026.10.9"))["imports"]
    assert any(
        "Unsloth should be imported before" in w
        for w in result["evidence"]["import_warnings"]["unsloth"]
    )


@torch_required
@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("bitsandbytes"), reason="bitsandbytes not installed"
)
def test_real_bitsandbytes_kernel(tmp_path: Path) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    version = __import__("importlib.metadata").metadata.version("bitsandbytes")
    result = run_group("kernels", ctx_for(tmp_path, device=device, bitsandbytes=version))[
        "kernel.bitsandbytes"
    ]
    assert result["status"] == "pass", result
    assert result["evidence"]["blockwise8"]["max_abs_err"] > 0  # a real 8-bit round trip is lossy


def test_op_failure_is_blamed_on_the_import_warning_that_explains_it(tmp_path: Path) -> None:
    """As seen on the H100: xformers warns at import that its extensions did not load, then the op
    fails with a generic "No operator found"; the check's signature is the warning's."""
    from probes.checks.kernels import _with_import_cause

    ctx = ctx_for(tmp_path, device="cuda", xformers="0.0.35")
    op_error = NotImplementedError(
        "No operator found for `memory_efficient_attention_forward` with inputs:"
    )
    assert _with_import_cause(ctx, "xformers", op_error, {}) is op_error  # no records: unchanged
    ctx.cache["imports"] = {
        "xformers": ImportRecord(
            "xformers",
            "0.0.35",
            True,
            warnings=[f"WARNING xformers: WARNING[XFORMERS]: {XFORMERS_CANT_LOAD}"],
        )
    }
    evidence: dict = {}
    failed = _with_import_cause(ctx, "xformers", op_error, evidence)
    assert isinstance(failed, Failed) and "xFormers can't load" in evidence["import_warning"]
    error, found = error_record(failed)
    assert (error["type"], error["signature"]) == (
        "NotImplementedError",
        "xformers-extensions-not-loaded",
    )
    assert error["message"].startswith("NotImplementedError: No operator found")


# ---------------------------------------------------------------- the plain interpreter of an
# unsloth cell


def _split_spec(tmp_path: Path, pins: dict, checks: list[str]) -> Path:
    spec = {
        "id": "split",
        "hash": "0" * 64,
        "pins": {"python": "3.11", **pins},
        "runner": "venv",
        "models": [],
        "checks": checks,
        "settings": {"device": "cpu", "check_timeout_s": 300},
    }
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(spec))
    return path


def _probe(tmp_path: Path, spec: Path, site: Path, **env_extra: str) -> tuple[int, dict, str]:
    out = tmp_path / "out" / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(site), str(REPO))), **env_extra}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "probes",
            "--cell",
            str(spec),
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc.returncode, (json.loads(out.read_text()) if out.exists() else {}), proc.stderr


@torch_required
def test_unsloth_cell_runs_plain_transformers_checks_in_an_interpreter_that_never_imports_unsloth(
    tmp_path: Path,
) -> None:
    torch_version = __import__("importlib.metadata").metadata.version("torch")
    site, marker = tmp_path / "site", tmp_path / "unsloth-imported-by"
    fake_unsloth(
        site,
        extra="import os\nopen(os.environ['FAKE_UNSLOTH_MARKER'], 'a').write(f'{os.getpid()}\\n')",
    )
    spec = _split_spec(
        tmp_path,
        {
            "torch": torch_version,
            "unsloth": "2026.10.9",
            "xformers": "none",
            "flash-attn": "none",
            "bitsandbytes": "none",
        },
        ["throughput", "unsloth", "lora-train", "exaone3.5", "kernels", "imports"],
    )
    rc, document, stderr = _probe(tmp_path, spec, site, FAKE_UNSLOTH_MARKER=str(marker))
    assert rc == 0, stderr
    assert_schema_valid(document)
    statuses = {c["name"]: c["status"] for c in document["checks"]}
    # the plain checks really ran (in the child, whose lines are tagged) and passed
    assert (
        statuses["exaone3.5.remote-code"] == "pass" and statuses["lora-train.hf-peft"] == "pass"
    ), stderr
    assert (
        "[probe:plain] exaone3.5.remote-code: pass" in stderr
        and "[probe:plain] lora-train.hf-peft: pass" in stderr
    )
    assert (
        "[probe] imports: pass" in stderr
    )  # imports stays with the process that imported unsloth first
    # exactly one interpreter imported unsloth: the main one (the child ran, and did not)
    assert len(marker.read_text().split()) == 1
    assert list(document["environment"]["packages"])[0] == "unsloth"
    # results in run order, whichever process produced them
    names = [c["name"] for c in document["checks"]]
    assert names[:6] == [
        "imports",
        "kernel.xformers",
        "kernel.flash-attn",
        "kernel.bitsandbytes",
        "exaone3.5.surface",
        "exaone3.5.remote-code",
    ]
    assert (
        names.index("lora-train.hf-peft")
        < names.index("unsloth.load.exaone3.5")
        < names.index("throughput.sdpa")
    )
    assert names[-2:] == [
        "throughput.unsloth",
        "throughput.unsloth-qlora",
    ]  # the main interpreter's, last
    assert statuses["throughput.unsloth"] == statuses["throughput.unsloth-qlora"] == "skip"


@torch_required
def test_unsloth_cell_runs_train_and_adapter_plain_and_their_unsloth_routes_in_the_main_interpreter(
    tmp_path: Path,
) -> None:
    """The groups in a cell that pins unsloth: Trainer / SFTTrainer / adapter checks run in
    the plain
    interpreter; train.trl-sft.unsloth & co. are the unsloth group's, in the main one (skip on
    CPU)."""
    pytest.importorskip("peft")
    torch_version = __import__("importlib.metadata").metadata.version("torch")
    site = tmp_path / "site"
    fake_unsloth(site)
    spec = _split_spec(
        tmp_path,
        {"torch": torch_version, "unsloth": "2026.10.9", "trl": "none", "bitsandbytes": "none"},
        ["adapter", "unsloth", "train", "imports"],
    )
    rc, document, stderr = _probe(tmp_path, spec, site)
    assert rc == 0, stderr
    assert_schema_valid(document)
    checks = {c["name"]: c for c in document["checks"]}
    assert checks["train.hf-trainer-llamafied"]["status"] == "pass", checks[
        "train.hf-trainer-llamafied"
    ]
    assert "[probe:plain] train.hf-trainer-llamafied: pass" in stderr
    assert "[probe:plain] adapter.roundtrip-llamafied: pass" in stderr
    assert checks["train.trl-sft"]["reason"] == "trl not in this cell"
    for name in (
        "train.trl-sft.unsloth",
        "train.trl-sft.unsloth-llamafied",
        "train.qlora.unsloth",
        "adapter.unsloth-merged",
    ):
        assert checks[name]["status"] == "skip" and checks[name]["reason"] == "needs a GPU", checks[
            name
        ]
        assert f"[probe] {name}: skip" in stderr  # the main interpreter's
    names = [c["name"] for c in document["checks"]]
    assert (
        names.index("train.hf-trainer")
        < names.index("adapter.roundtrip")
        < names.index("unsloth.load.exaone3.5")
    )


@torch_required
def test_a_crash_in_the_plain_interpreter_is_infra_for_its_checks_and_the_rest_stands(
    tmp_path: Path,
) -> None:
    torch_version = __import__("importlib.metadata").metadata.version("torch")
    site = tmp_path / "site"
    fake_unsloth(site)
    fake_xformers(site, raise_line="import ctypes; ctypes.string_at(0)")  # a kernel that segfaults
    spec = _split_spec(
        tmp_path,
        {
            "torch": torch_version,
            "unsloth": "2026.10.9",
            "xformers": "0.0.35",
            "flash-attn": "none",
            "bitsandbytes": "none",
        },
        ["imports", "kernels", "exaone3.5"],
    )
    rc, document, stderr = _probe(tmp_path, spec, site)
    assert rc == 0, stderr
    assert_schema_valid(document)
    checks = {c["name"]: c for c in document["checks"]}
    assert checks["imports"]["status"] == "pass"
    for name in (
        "kernel.xformers",
        "kernel.flash-attn",
        "kernel.bitsandbytes",
        "exaone3.5.remote-code",
    ):
        assert checks[name]["status"] == "infra", checks[name]
        assert "killed by signal 11" in checks[name]["reason"]
