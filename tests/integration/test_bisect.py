"""Release bisect on a real break: the EXAONE 3.5 remote code (revision-faithful fixture) loads on
transformers 4.57.6 and not from 5.0.0. Real uv, real venvs, real probes, the real package index."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "tests" / "data" / "matrices" / "exaone35-verdicts.yaml"
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)


def bisect(
    root: Path, venvs: Path, *args: str, matrix: Path = MATRIX
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pinmatrix",
            "bisect",
            *args,
            "--matrix",
            str(matrix),
            "--runner",
            "venv",
            "--cpu",
            "--no-flaky-rerun",
            "--reports",
            str(root / "reports"),
            "--venv-dir",
            str(venvs),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=2400,
        env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS)},
    )


def test_first_bad_release_of_the_remote_code_break(tmp_path: Path, venvs_once) -> None:
    proc = bisect(tmp_path, venvs_once, "transformers", "4.57.6..5.1.0", "--check",
                  "exaone3.5.remote-code")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (folder,) = (tmp_path / "reports").glob("*-bisect-transformers")
    doc = json.loads((folder / "bisect.json").read_text())
    assert (doc["last_good"], doc["first_bad"]) == ("4.57.6", "5.0.0")
    assert doc["releases_in_range"] == ["4.57.6", "5.0.0", "5.1.0"]
    n = len(doc["releases_in_range"])
    assert doc["judgements"] == doc["probes_run"] <= math.ceil(math.log2(n)) + 1
    bad = doc["steps"]["5.0.0"]["checks"]["exaone3.5.remote-code"]
    assert (bad["status"], bad["signature"]) == ("fail", "transformers-tied-weights-keys-list")
    assert doc["release_notes"].endswith("/v5.0.0")
    md = (folder / "bisect.md").read_text()
    assert "**First bad release: transformers 5.0.0** (last good: 4.57.6)" in md
    assert "first bad release: transformers 5.0.0" in proc.stdout

    # warm: every step's result is in the cache, so the same bisect runs no probe again
    again = bisect(tmp_path, venvs_once, "transformers", "4.57.6..5.1.0", "--check",
                  "exaone3.5.remote-code")
    assert again.returncode == 0, again.stdout[-3000:]
    newest = sorted(p for p in (tmp_path / "reports").iterdir()
                    if re.fullmatch(r".*-bisect-transformers(\.\d+)?", p.name))[-1]
    steps = json.loads((newest / "bisect.json").read_text())["steps"]
    assert all(step.get("reused_from") for step in steps.values()), steps
    assert json.loads((newest / "bisect.json").read_text())["probes_run"] == 0


def test_ends_not_as_claimed_are_bad_input(tmp_path: Path, venvs_once) -> None:
    proc = bisect(tmp_path, venvs_once, "transformers", "5.0.0..5.1.0", "--check",
                  "exaone3.5.remote-code")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "5.0.0 is bad, not good" in proc.stderr


def readme_bisect_lines() -> list[list[str]]:
    """Every `nox -s bisect -- …` line of the README, as the arguments nox passes on."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    prefix = "nox -s bisect -- "
    found = {line.strip() for line in lines if line.strip().startswith(prefix)}
    return [shlex.split(line[len(prefix):], comments=True) for line in sorted(found)]


def test_every_readme_bisect_line_plans_on_the_default_matrix() -> None:
    """As written, on matrix.yaml (nox -s bisect passes --matrix matrix.yaml): the release list from
    the real index, the held stacks, the companions at each end, every step matrix loaded back.
    The probing of these lines needs the GPU host's stack; one full run is below."""
    lines = readme_bisect_lines()
    assert len(lines) >= 4, lines
    for args in lines:
        proc = subprocess.run(
            [sys.executable, "-m", "pinmatrix", "bisect", "--matrix", str(ROOT / "matrix.yaml"),
             *args, "--plan"],
            capture_output=True, text=True, cwd=ROOT, timeout=300,
        )
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "step matrices written and loaded back" in proc.stdout, proc.stdout
        if not any(a.startswith("unsloth=") for a in args):
            # three stacks besides transformers: the newest first, companions follow transformers
            assert "stack 1 of 3: " in proc.stdout and "unsloth=2026.10.9" in proc.stdout
            assert "flash-attn-4=" in proc.stdout


def test_first_good_release_of_native_exaone4(tmp_path: Path, venvs_once) -> None:
    """Since when does transformers load EXAONE 4 natively? Before 4.54 the check is skipped as
    absent: that is the bad end, not infra."""
    proc = bisect(tmp_path, venvs_once, "transformers", "4.53.3..4.54.1", "--first-good",
                  "--check", "exaone4.native",
                  matrix=ROOT / "tests" / "data" / "matrices" / "exaone4-native.yaml")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (folder,) = (tmp_path / "reports").glob("*-bisect-transformers")
    doc = json.loads((folder / "bisect.json").read_text())
    assert (doc["direction"], doc["last_bad"], doc["first_good"]) == ("first-good", "4.53.3",
                                                                       "4.54.0")
    assert doc["steps"]["4.53.3"]["detail"].startswith("absent: exaone4.native")
    assert doc["judgements"] == doc["probes_run"] + doc["probes_from_cache"]
    assert "first good release: transformers 4.54.0 (last bad 4.53.3)" in proc.stdout
    md = (folder / "bisect.md").read_text()
    assert "**First good release: transformers 4.54.0** (last bad: 4.53.3)" in md
    assert "Last bad message (`exaone4.native`): Exaone4ForCausalLM absent" in md
