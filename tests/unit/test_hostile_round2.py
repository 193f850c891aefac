"""Hostile input, second round, class by class (the run-folder trust rule itself is
tests/unit/test_hostile_run_folders.py): bounded reads of the matrix and remote code, strict JSON
output, one writer per run folder, the orphaned probe of a killed harness, every flag and variable
checked up front, and a console that is never a terminal-control channel."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinmatrix.cli.main import parse
from pinmatrix.console import OWN_CONTROL, escape
from pinmatrix.errors import ResumeError
from pinmatrix.fsio import (
    Refused,
    append_line,
    confined,
    load_json,
    plain_name,
    read_bytes_bounded,
    strict_json,
)
from pinmatrix.matrix.load import MAX_MATRIX_BYTES
from pinmatrix.outcome import Outcome
from pinmatrix.report.html import MAX_SHOWN_CHARS, e
from pinmatrix.report.write import write_report
from pinmatrix.run.doctor import Diagnosis, _cache_folders
from pinmatrix.run.options import run_options
from pinmatrix.run.state import lock_run_folder, open_run_dir, release_run_folder
from pinmatrix.runners.venv import PROBE_PID_NAME, end_orphan_probe, record_probe

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"


def _pinmatrix(*args: str, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pinmatrix", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "PINMATRIX_DOCKER": "/nonexistent/docker", **(env or {})})


# --- 2. nothing hangs: FIFOs and devices are never opened ---------------------------------------

def test_fifo_and_device_are_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(Refused, match="FIFO"):
        read_bytes_bounded(fifo, 100)
    with pytest.raises(Refused, match="character device"):
        read_bytes_bounded(Path("/dev/zero"), 100)
    assert time.monotonic() - started < 1


# --- 3. every read is bounded -------------------------------------------------------------------

@pytest.mark.parametrize("case", ["dev-zero", "fifo", "oversized", "deep-flow", "deep-block",
                                  "many-excludes"])
def test_matrix_over_a_cap_exits_2_naming_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / "m.yaml"
    if case == "dev-zero":
        path = Path("/dev/zero")
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "oversized":
        path.write_text(CI.read_text() + "#" * MAX_MATRIX_BYTES)
    elif case == "deep-flow":
        path.write_text("axes: " + "[" * 10_000 + "]" * 10_000 + "\n")
    elif case == "deep-block":
        path.write_text("".join(f"{' ' * i}k{i}:\n" for i in range(200)))
    elif case == "many-excludes":
        path.write_text(CI.read_text() + "exclude:\n" + "  - {torch: '9.9'}\n" * 20_001)
    started = time.monotonic()
    proc = _pinmatrix("list", "--matrix", str(path), timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # 20,001 rules are parsed before they are counted (under 1 MiB): seconds, on a loaded machine
    # tens of them; the others stop before parsing
    assert time.monotonic() - started < (120 if case == "many-excludes" else 30)


def test_deep_json_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 10_000 + "]" * 10_000)
    with pytest.raises(Refused, match="nested deeper"):
        load_json(path)
    path.write_text("[" * 70 + "]" * 70)  # under the recursion limit, over the cap
    with pytest.raises(Refused, match="nested deeper"):
        load_json(path)


@pytest.mark.parametrize("source", ["x = " + "-" * 10_000 + "1", "x = 1" + " + 1" * 100_000,
                                    "x = " + "[" * 10_000 + "]" * 10_000])
def test_remote_code_surface_deep_expression_exits_2(tmp_path: Path, source: str) -> None:
    path = tmp_path / "modeling_x.py"
    path.write_text(source + "\n")
    proc = _pinmatrix("remote-code-surface", str(path))
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_huge_string_in_a_result_is_cut_in_html() -> None:
    shown = e("x" * (MAX_SHOWN_CHARS * 50))
    assert len(shown) < MAX_SHOWN_CHARS + 100 and "characters, cut" in shown


# --- 4. strict JSON: NaN and infinity are written as null, and flagged --------------------------

finite_or_not = st.recursive(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=5),
              st.none()),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=4), children, max_size=4)),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(finite_or_not)
def test_strict_json_is_strict_and_flags_every_nonfinite(value) -> None:
    clean, flagged = strict_json(value)

    def refuse(name: str) -> None:
        raise AssertionError(name)

    json.loads(json.dumps(clean, allow_nan=False), parse_constant=refuse)
    count = [0]

    def walk(v) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            count[0] += 1
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(value)
    assert len(flagged) == count[0]


def test_summary_with_a_nan_result_is_strict_and_flags_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cell = "py3.11-torch2.13.0-tf5.17.0"
    result = {"schema": 1, "cell": {"id": cell, "hash": "a" * 64, "pins": {"python": "3.11"}},
              "environment": {"python": "3.11", "device": "cpu", "packages": {}},
              "checks": [{"name": "imports", "status": "pass", "duration_s": float("nan"),
                          "evidence": {"loss": float("inf")}}],
              "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:01Z"}
    (run / "cells").mkdir(parents=True)
    (run / "cells" / f"{cell}.json").write_text(json.dumps(result))
    outcome = Outcome(cell=cell, hash="a" * 64, pins={"python": "3.11"}, runner="venv",
                      stage="done", result=f"cells/{cell}.json").to_json()
    outcome["timings"] = {"run_s": float("nan"), "build_s": float("inf")}  # as a foreign tool
    (run / "outcomes").mkdir()
    (run / "outcomes" / f"{cell}.json").write_text(json.dumps(outcome))
    write_report(run)
    text = (run / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = json.loads(text)
    assert summary["nonfinite"], summary.get("nonfinite")


# --- 1. paths and names from records ------------------------------------------------------------

@given(st.text(max_size=30))
def test_confined_never_leaves_the_folder(relative: str) -> None:
    root = Path("/nonexistent-root")
    found = confined(root, relative)
    assert found is None  # nothing exists there; and nothing outside is ever named
    if plain_name(relative):
        assert "/" not in relative and relative not in (".", "..")


def test_run_dir_made_for_another_matrix_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(CI.read_text() + "\n# another matrix\n")
    run = tmp_path / "shared"
    run.mkdir()

    (run / "run.json").write_text(json.dumps({
        "run_id": "shared", "matrix": str(other), "runner": "venv", "device": "cpu",
        "matrix_sha256": hashlib.sha256(other.read_bytes()).hexdigest(), "selection": []}))
    opts = SimpleNamespace(resume=None, run_dir=run, matrix_path=CI, selectors=(), cpu=True,
                           reports_dir=tmp_path / "reports", shard=None, finalize=True)
    with pytest.raises(ResumeError, match="differs"):
        open_run_dir(opts, lambda: {})
    release_run_folder(run)


# --- 5. one writer per run folder ---------------------------------------------------------------

HOLD = """
import sys, time
from types import SimpleNamespace
from pathlib import Path
from pinmatrix.run.state import lock_run_folder
lock_run_folder(Path(sys.argv[1]), SimpleNamespace(shard=None, finalize=True), "--resume")
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_writer_of_a_run_folder_exits_2(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        opts = SimpleNamespace(shard=None, finalize=True)
        with pytest.raises(ResumeError, match="another pinmatrix process"):
            lock_run_folder(tmp_path, opts, "--resume")
        shard = SimpleNamespace(shard=(1, 2), finalize=True)  # shards share, but not with it
        with pytest.raises(ResumeError):
            lock_run_folder(tmp_path, shard, "--run-dir")
    finally:
        holder.kill()
        holder.wait()
    lock_run_folder(tmp_path, SimpleNamespace(shard=None, finalize=True), "--resume")  # freed
    release_run_folder(tmp_path)


def test_a_linked_lock_file_is_replaced_never_opened(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".writer.lock").symlink_to(victim)
    lock_run_folder(run, SimpleNamespace(shard=None, finalize=True), "matrix")
    release_run_folder(run)
    assert victim.read_text() == "keep" and not (run / ".writer.lock").is_symlink()


def test_history_is_never_appended_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    history = tmp_path / "history.jsonl"
    history.symlink_to(victim)
    append_line(history, "{}")
    assert victim.read_text() == "keep\n" and history.read_text() == "{}\n"


# --- 2. the orphaned probe of a SIGKILLed harness ----------------------------------------------

def test_a_resumed_run_ends_the_orphaned_probe_of_its_cell(tmp_path: Path) -> None:

    # the probe as the venv runner starts it: its own session, so the harness's death spares it
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                              start_new_session=True)
    try:
        record_probe(tmp_path, orphan.pid)
        started = time.monotonic()
        said = end_orphan_probe(tmp_path, grace_s=5)
        assert said and str(orphan.pid) in said
        assert orphan.wait(timeout=10) is not None
        assert time.monotonic() - started < 10
        assert not (tmp_path / PROBE_PID_NAME).exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)
    try:  # the pid file names this pid, but another start time: another process
        (tmp_path / PROBE_PID_NAME).write_text(json.dumps({"pid": bystander.pid, "start": "1"}))
        assert end_orphan_probe(tmp_path, grace_s=1) is None
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# --- 6. every flag and variable checked up front ------------------------------------------------

CASES = {
    "empty-venv-dir-variable": ((), {"PINMATRIX_VENV_DIR": ""}, "PINMATRIX_VENV_DIR"),
    "relative-venv-dir-variable": ((), {"PINMATRIX_VENV_DIR": "rel/venvs"}, "relative"),
    "compile-cache-dir-is-a-file": ((), {"PINMATRIX_COMPILE_CACHE_DIR": "/etc/passwd"},
                                    "PINMATRIX_COMPILE_CACHE_DIR"),
    "torch-backend": (("--torch-backend", "cuda-please"), {}, "--torch-backend"),
    "torch-backend-variable": ((), {"PINMATRIX_TORCH_BACKEND": "cuda-please"}, "TORCH_BACKEND"),
    "venv-python-not-python": (("--venv-python", "/etc/passwd"), {},
                               "not a Python interpreter"),
    "extra-site-unknown-axis": (("--extra-site", "torchh=2.1:/tmp"), {}, "not an axis"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_flag_or_variable_exits_2_before_anything_runs(tmp_path: Path, case: str) -> None:
    args, env, named = CASES[case]
    started = time.monotonic()
    proc = _pinmatrix("matrix", "--matrix", str(CI), "--runner", "venv", "--cpu", "--reports",
                      str(tmp_path / "reports"), *args, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "reports").exists()  # refused before a run folder was made
    assert time.monotonic() - started < 30


def test_doctor_blocks_on_an_unwritable_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("a file where a folder must be")
    diag = Diagnosis()
    opts = SimpleNamespace(no_install=False, venv_dir=None, compile_cache=False)
    env = {k: v for k, v in os.environ.items() if k not in ("UV_CACHE_DIR", "XDG_CACHE_HOME")}
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update({**env, "HOME": str(home)})
        finding = _cache_folders(opts, diag)  # venvs default under the host's HOME: not checked
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert finding.ok is False and diag.blockers and "uv's cache" in diag.blockers[0]


# --- 7. the console is not a terminal-control channel ------------------------------------------

@given(st.text())
def test_escaped_text_holds_no_control_character(text: str) -> None:
    shown = escape(text).replace(OWN_CONTROL, "")
    assert all(c in "\n\t" or (c.isprintable() or c == " ") or c.isspace() and c not in "\r\x0b\x0c"
               or ord(c) > 0x9f and c not in "\u2028\u2029"
               for c in shown)
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown


def test_a_file_name_with_escape_sequences_is_printed_escaped(tmp_path: Path) -> None:
    name = tmp_path / "m\x1b]0;pwned\x07\x1b[2J.yaml"
    proc = _pinmatrix("list", "--matrix", str(name))
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "\\x1b]0;pwned\\x07" in proc.stderr


def test_a_relative_venv_dir_is_made_absolute_up_front(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Cells run in other folders: a relative --venv-dir made every cell infra."""

    monkeypatch.chdir(tmp_path)
    args = parse(["matrix", "--matrix", str(CI), "--runner", "venv", "--venv-dir", "rel/venvs"])
    opts = run_options(args)
    assert opts.venv_dir == tmp_path / "rel" / "venvs" and opts.venv_dir.is_absolute()
