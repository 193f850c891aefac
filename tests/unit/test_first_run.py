"""The first run, as a new user meets it: honest exit codes, an inconsistent prepared environment
named as such, one cause said once. Real runs of `python -m pinmatrix` that end before any probe."""
from __future__ import annotations

import importlib.metadata
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pinmatrix.cell import Cell, Lock
from pinmatrix.environ.interpreters import find, uv_could_not_get_python
from pinmatrix.errors import EXIT_BAD_INPUT, EXIT_HARNESS, EXIT_INFRA, EXIT_OK, InfraError
from pinmatrix.outcome import Outcome
from pinmatrix.report.html import render_html
from pinmatrix.report.markdown import render_markdown
from pinmatrix.report.summary import merge
from pinmatrix.runners.venv import VenvRunner

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"


def pinmatrix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pinmatrix", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_the_exit_codes_are_distinct() -> None:
    assert len({EXIT_OK, EXIT_HARNESS, EXIT_BAD_INPUT, EXIT_INFRA}) == 4


@pytest.mark.skipif(md.version("transformers") != "4.57.6",
                    reason="needs the test venv (transformers 4.57.6, torch 2.13.0+cpu, "
                           "peft 0.21.2)")
def test_an_inconsistent_prepared_environment_is_infra_and_exits_3(tmp_path: Path) -> None:
    site = tmp_path / "site" / "tokenizers-0.23.2.dist-info"
    site.mkdir(parents=True)
    (site / "METADATA").write_text("Metadata-Version: 2.1\nName: tokenizers\nVersion: 0.23.2\n")

    try:
        bnb = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        bnb = "none"
    matrix = tmp_path / "ci.yaml"
    text = CI.read_text()
    assert "bitsandbytes: [none]" in text
    matrix.write_text(text.replace("bitsandbytes: [none]", f'bitsandbytes: ["{bnb}"]'
                                   if bnb != "none" else "bitsandbytes: [none]"))
    proc = pinmatrix("matrix", "--matrix", str(matrix), "--runner", "venv", "--no-install", "--cpu",
                     "transformers=4.57.6", "--venv-python", sys.executable,
                     "--extra-site", str(site.parent), "--reports", str(tmp_path / "reports"),
                     "--venv-dir", str(tmp_path / "venvs"))
    assert proc.returncode == EXIT_INFRA, proc.stdout + proc.stderr
    assert "could not be judged (infra): exit 3" in proc.stderr
    summary = json.loads((tmp_path / "reports" / "latest" / "summary.json").read_text())
    (cell,) = summary["cells"]
    assert cell["status"] == "infra"
    (infra,) = summary["infra"]
    assert infra["signature"] == "environment-inconsistent"
    words = "transformers 4.57.6 requires tokenizers<=0.23.0,>=0.22.0; found 0.23.2"
    assert words in infra["reason"]


def _absent_python() -> str | None:
    for version in ("3.9", "3.8", "3.7"):
        if find(version).source in (None, "downloadable"):
            return version
    return None


@pytest.mark.skipif(__import__("shutil").which("uv") is None, reason="needs uv")
def test_a_python_uv_cannot_download_is_said_in_words(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The real uv, asked for an interpreter this host lacks, with its download pointed at a closed
    port: the cell's infra reason says what is missing and what to do, not uv's DNS error."""

    version = _absent_python()
    if version is None:
        pytest.skip("every candidate Python is on this host")
    monkeypatch.setenv("UV_PYTHON_INSTALL_MIRROR", "http://127.0.0.1:9")
    cell = Cell(pins={"python": version})
    lock = Lock(cell_id=cell.id, python=version, torch_lock="", full_lock="")
    with pytest.raises(InfraError) as err:
        VenvRunner(venv_root=tmp_path / "venvs", compile_cache_root=None).prepare(cell, lock)
    assert err.value.signature == "python-unavailable"
    assert err.value.reason == (
        f"Python {version} is not on this host and uv could not download it: install it, pass "
        f"`--venv-python {version}=/path`, or use Docker")
    assert "127.0.0.1:9" in err.value.log_tail  # uv's own words are kept in the log


def test_one_cause_is_said_once_in_the_summary(tmp_path: Path) -> None:
    """Three cells' outcomes as the pipeline writes them: two share a cause, one has its own."""

    words = ("Python 3.12 is not on this host and uv could not download it: install it, pass "
             "`--venv-python 3.12=/path`, or use Docker")
    for name, reason, sig in (("a", words, "python-unavailable"),
                              ("b", words, "python-unavailable"),
                              ("c", "uv venv failed (exit 2): disk", "venv-create-failed")):
        Outcome(cell=f"py3.12-{name}", hash=None, pins={"python": "3.12"}, runner="venv",
                stage="prepare", status="infra", reason=reason, signature=sig).write(tmp_path)
    summary = merge(tmp_path)
    shared = [c for c in summary["causes"] if len(c["cells"]) > 1]
    assert shared == [{"signature": "python-unavailable", "reason": words, "remedy": None,
                       "cells": ["py3.12-a", "py3.12-b"]}]
    md = render_markdown(summary)
    assert md.count("is not on this host") == 1
    assert "2 cells, one cause" in md and "`py3.12-a`, `py3.12-b`" in md
    assert "`py3.12-c` cell: uv venv failed (exit 2): disk" in md
    assert "remedy: see the cell's build log" not in md  # c is alone: told as it is
    html = render_html(summary, tmp_path)
    section = html[html.index("<section id=infra>"):]
    section = section[:section.index("</section>")]
    assert section.count("is not on this host") == 1 and "2 cells, one cause" in section


def test_uv_s_wrapped_words_still_say_the_python_could_not_be_downloaded() -> None:
    """uv wraps its errors to COLUMNS: at 80 (a narrow terminal, a pytest-xdist worker) the URL
    leaves the "Failed to download" line, and the cell read as a failed venv instead of a missing
    Python with its remedy."""

    wrapped = ("error: Request failed after 3 retries in 8.8s\n  cause: Failed to download\n"
               "  `http://127.0.0.1:9/20251031/cpython-3.9.25%2B20251031-x86_64-unknown-linux-gnu-"
               "install_only_stripped.tar.gz`\n  cause: error sending request for url\n")
    assert uv_could_not_get_python(wrapped)
    assert not uv_could_not_get_python("error: Failed to download\n  `https://pypi.org/x.whl`\n")
