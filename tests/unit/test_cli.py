"""Command-line errors: bad input exits 2 with one clear line, and nothing is written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pinmatrix.cli.main import build_parser, main
from pinmatrix.run.options import package_sources as _sources

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"
BAD = ROOT / "tests" / "data" / "matrices" / "bad" / "02-unknown-axis.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_prints_the_selected_cells(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--matrix", str(CI), "transformers=5.17.0")
    assert code == 0
    (cell,) = out.split()
    assert "-tf5.17.0-" in cell


def test_options_and_selectors_may_interleave(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "tf=4.57.6", "--matrix", str(CI), "--cpu")
    assert code == 0 and "-tf4.57.6-" in out and len(out.split()) == 1


@pytest.mark.parametrize("selector, words", [
    ("transformers=9.9.9", "matches no cell"),
    ("transformer=5.17.0", "unknown axis"),
    ("nonsense", "expected AXIS=VALUE"),
])
def test_bad_selector_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, selector,
                              words) -> None:
    reports = tmp_path / "reports"
    code, out, err = run(capsys, "matrix", "--matrix", str(CI), "--reports", str(reports),
                         "--runner", "venv", selector)
    assert code == 2
    assert err.startswith("error: cell selector") and words in err and selector in err
    assert not reports.exists()


def test_bad_runner_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    code, _, err = run(capsys, "matrix", "--matrix", str(CI), "--reports", str(reports), "--runner",
                       "singularity")
    assert code == 2 and "--runner 'singularity'" in err and "auto, docker, podman, venv" in err
    assert not reports.exists()


def test_bad_matrix_exits_2_naming_file_and_line(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    code, _, err = run(capsys, "matrix", "--matrix", str(BAD), "--reports", str(reports),
                       "--runner", "venv")
    assert code == 2
    assert f"{BAD}:6:3:" in err and "unknown axis 'transformer'" in err
    assert not reports.exists()


def test_missing_matrix_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "list", "--matrix", str(tmp_path / "nope.yaml"))
    assert code == 2 and "file not found" in err


@pytest.mark.parametrize("argv, words", [
    ([], "a command is required"),
    (["frob"], "unknown command 'frob'"),
    (["list", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["list", "--timeout", "abc"], "invalid float value"),
    (["matrix", "--timeout", "-5"], "more than 0"),
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv, words) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and words in err


def test_report_without_a_run_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "report", "--reports", str(tmp_path))
    assert code == 2 and "no run folder" in err


def test_module_entry_point_exit_code() -> None:
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", "list", "--matrix", str(BAD)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown axis" in proc.stderr


def test_torch_backend_reaches_uv(monkeypatch: pytest.MonkeyPatch) -> None:
    """--torch-backend auto follows the torch pin's variant; without it uv is told nothing."""

    monkeypatch.delenv("PINMATRIX_TORCH_BACKEND", raising=False)
    args = build_parser().parse_args(["resolve", "--torch-backend", "auto"])
    assert _sources(args).uv_args("2.11.0+cu130")[-2:] == ["--torch-backend", "cu130"]
    plain = build_parser().parse_args(["resolve"])
    assert "--torch-backend" not in _sources(plain).uv_args("2.11.0+cu130")


def test_offline_sources_ask_no_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--offline reaches the resolver: find-links only, --no-index --offline, and its own cache
    key (a lock made from a wheelhouse alone is not the index's lock)."""

    monkeypatch.delenv("PINMATRIX_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    args = build_parser().parse_args(["matrix", "--offline", "--find-links", str(tmp_path),
                                      "--index-url", "https://mirror.invalid/simple"])
    sources = _sources(args)
    assert sources.offline
    assert sources.uv_args("2.13.0+cpu") == ["--find-links", str(tmp_path), "--no-index",
                                             "--offline"]
    online = _sources(build_parser().parse_args(["matrix", "--find-links", str(tmp_path),
                                                 "--index-url", "https://mirror.invalid/simple"]))
    assert "--index-url" in online.uv_args(None) and "--offline" not in online.uv_args(None)
    assert online.identity() != sources.identity()
