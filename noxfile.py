#!/usr/bin/env -S uv run --script
# /// script
# dependencies = ["nox>=2024.3.2", "pyyaml>=6", "packaging>=23", "jsonschema>=4.18"]
# ///
"""Thin wiring around `python -m pinmatrix` (pinmatrix/cli/main.py holds the logic).

nox -l                          one session per cell of matrix.yaml, tagged `cell`
nox -s matrix -- [selectors] [--runner docker|podman|venv|auto] [--cpu]
nox -s report                   merge reports/latest again
nox -s nightly -- [selectors]   run, diff with the previous run, history; red only on new breakages
nox -s resolve -- [selectors]   locks only; prints the resolvable/unresolvable table
nox -s bisect -- PACKAGE GOOD..BAD [--check CHECK] [--signature SIG] [selectors]
                                the first bad release, each step a real cell
nox -s bench -- [selectors]     resolve timings (cold, warm, whole stage), then the scale numbers
                                (cells/hour, unchanged rerun, rebuild, scheduler overhead), then
                                the CPU route cold by stage -> reports/bench/
nox -s matrix -- --on slurm     one Slurm job array, one cell per task (pinmatrix/run/slurm.py)
nox -s house                    package shape numbers -> reports/house.json
nox -s lint                     ruff and mypy (CI runs it before the tests)
nox -s tests -- [pytest args]
nox -t cell                     every cell, one session each (then `nox -s report`)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
# the matrix the sessions use
MATRIX = Path(os.environ.get("PINMATRIX_MATRIX", ROOT / "matrix.yaml"))
PYTHON = "3.11"  # the harness's own Python; each cell's Python comes from matrix.yaml

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["matrix"]
nox.options.reuse_existing_virtualenvs = True


def _cell_ids() -> list[str]:
    """The default matrix's cell ids. A bad matrix.yaml must not crash `nox -l`: say why, list no
    cells."""
    sys.path.insert(0, str(ROOT))
    try:
        # nox may run without the harness's dependencies: the import is the probe for them
        from pinmatrix.errors import MatrixError  # noqa: PLC0415 - see above
        from pinmatrix.matrix.load import load_matrix  # noqa: PLC0415 - see above
    # nox runs without the harness's dependencies (pipx, uv tool): ask a throwaway env
    except ImportError:
        return _cell_ids_via_uv()
    finally:
        sys.path.pop(0)
    try:
        return [cell.id for cell in load_matrix(MATRIX).expand()]
    except MatrixError as exc:
        print(f"noxfile: no cell sessions: {exc}", file=sys.stderr)
        return []
    except Exception as exc:  # e.g. a live axis with the index unreachable
        print(f"noxfile: no cell sessions: {MATRIX}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []


def _cell_ids_via_uv() -> list[str]:
    uv = shutil.which("uv")
    if uv is None:
        print(
            "noxfile: no cell sessions: this nox lacks pyyaml/packaging/jsonschema and uv is "
            "absent "
            "(`nox -s matrix` still runs every cell)",
            file=sys.stderr,
        )
        return []
    proc = subprocess.run(
        [
            uv,
            "run",
            "--quiet",
            "--no-project",
            "--python",
            PYTHON,
            "--with",
            "pyyaml>=6",
            "--with",
            "packaging>=23",
            "--with",
            "jsonschema>=4.18",
            "python",
            "-m",
            "pinmatrix",
            "list",
            "--matrix",
            str(MATRIX),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        print(f"noxfile: no cell sessions: {proc.stderr.strip()}", file=sys.stderr)
        return []
    return proc.stdout.split()


CELL_IDS = _cell_ids()


def _install_harness(session: nox.Session) -> None:
    # silent=False: uv's own lines (resolved, prepared, installed) as each phase ends; a silent
    # install of the harness was the longest quiet stretch of a cold `nox -s matrix` (12 s)
    session.install("-e", f"{ROOT}[test]" if session.name == "tests" else str(ROOT),
                    silent=False)


def _find_links_args() -> list[str]:
    """A wheelhouse for the CPU torch wheel (air-gapped hosts, this CI): PINMATRIX_FIND_LINKS, else
    pip's own."""
    wheelhouse = os.environ.get("PINMATRIX_FIND_LINKS") or os.environ.get("PIP_FIND_LINKS")
    return [arg for link in (wheelhouse or "").split() for arg in ("--find-links", link)]


def _pinmatrix(session: nox.Session, command: str, *args: str) -> None:
    session.run(
        "python", "-m", "pinmatrix", command, "--matrix", str(MATRIX), *args, *session.posargs
    )


@nox.session(python=PYTHON)
def matrix(session: nox.Session) -> None:
    """Every selected cell (selectors, --runner, --cpu after --), then the merged report."""
    _install_harness(session)
    _pinmatrix(session, "matrix")


@nox.session(python=PYTHON)
def doctor(session: nox.Session) -> None:
    """Can this host judge the matrix? One line per capability, with its remedy when missing."""
    _install_harness(session)
    _pinmatrix(session, "doctor")


@nox.session(python=PYTHON, tags=["cell"])
@nox.parametrize("cell", CELL_IDS, ids=CELL_IDS)
def cell(session: nox.Session, cell: str) -> None:
    """One cell of matrix.yaml (its own run folder and report)."""
    _install_harness(session)
    _pinmatrix(session, "matrix", cell)


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """Merge the latest run folder again (`-- --run reports/<id>` for another)."""
    _install_harness(session)
    session.run("python", "-m", "pinmatrix", "report", *session.posargs)


@nox.session(python=PYTHON)
def nightly(session: nox.Session) -> None:
    """The matrix with live axes expanded now, diffed with the previous run (`-- --previous DIR`,
    else the newest earlier run in reports/), appended to reports/history.jsonl; fails only on new
    breakages."""
    session.install(f"{ROOT}[report]")  # matplotlib for the throughput chart
    _pinmatrix(session, "nightly")


@nox.session(python=PYTHON)
def bisect(session: nox.Session) -> None:
    """PACKAGE GOOD..BAD [--check CHECK_OR_GROUP] [selectors]: the first bad release, each step a
    real
    cell (pinmatrix/bisect/run.py)."""
    _install_harness(session)
    _pinmatrix(session, "bisect")


@nox.session(python=PYTHON)
def resolve(session: nox.Session) -> None:
    """Resolve the selected cells' locks, build and run nothing."""
    _install_harness(session)
    _pinmatrix(session, "resolve")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Resolve time per cell (cold, warm) and of the whole stage ->
    reports/bench/resolve-<UTC>.json."""
    _install_harness(session)
    session.run(
        "python", str(ROOT / "tools" / "bench.py"), "--matrix", str(MATRIX), *session.posargs
    )
    # Scale numbers: cells/hour, unchanged rerun, transformers-only rebuild, scheduler
    # overhead.
    # On the CI matrix (CPU): these are the numbers this host can produce without a GPU.
    session.run(
        "python",
        str(ROOT / "tools" / "bench_scale.py"),
        "--matrix",
        os.environ.get(
            "PINMATRIX_BENCH_MATRIX", str(ROOT / "tests" / "data" / "matrices" / "ci.yaml")
        ),
    )
    # Release bisect: a first and a warm bisect of transformers 4.57.6..5.17.0 on one CPU
    # check -> reports/bench/bisect-<UTC>.json.
    session.run("python", str(ROOT / "tools" / "bench_bisect.py"))
    # The CPU route cold, by stage (installs, probes) -> reports/bench/route-<UTC>.json.
    # The longest of the four (the default matrix, every cache empty): PINMATRIX_BENCH_ROUTE=0
    # skips it; PINMATRIX_BENCH_ROUTE_ARGS passes arguments (e.g. --venv-python 3.12=PATH).
    if os.environ.get("PINMATRIX_BENCH_ROUTE", "1") != "0":
        session.run("python", str(ROOT / "tools" / "bench_route.py"), "--matrix", str(MATRIX),
                    *os.environ.get("PINMATRIX_BENCH_ROUTE_ARGS", "").split())


@nox.session(python=PYTHON)
def house(session: nox.Session) -> None:
    """Numbers about the package's shape (cycles, long functions, imports inside functions, untyped
    option reads, runner-kind strings), into reports/house.json: tools/house_metrics.py."""
    session.run("python", str(ROOT / "tools" / "house_metrics.py"), "--json",
                str(ROOT / "reports" / "house.json"))


@nox.session(python=PYTHON)
def which(session: nox.Session) -> None:
    """Does a stack work? `nox -s which -- FILE|--here [--purpose P] [--report RUN]` (the
    harness brings pip-requirements-parser; --here answers for this session's interpreter)."""
    _install_harness(session)
    session.run("python", "-m", "pinmatrix", "which", *session.posargs,
                success_codes=[0, 1, 4])


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff on the repository and `mypy --strict` on pinmatrix/ (both configured in
    pyproject.toml), then mypy on tests/ (see _mypy_tests)."""
    session.install("-e", str(ROOT), "ruff>=0.6", "mypy>=1.10", "types-PyYAML", "types-jsonschema",
                    "pytest>=8", "hypothesis>=6")
    session.run("ruff", "check", str(ROOT))
    session.run("mypy", "--config-file", str(ROOT / "pyproject.toml"))
    _mypy_tests(session)


# tests/ is not strict yet: its fakes stand in for typed objects (a Proc for a CompletedProcess, a
# str where an Outcome goes) and about 190 such errors remain even with untyped defs allowed.
# Until they are fixed it is checked with check_untyped_defs and reported, not a gate.
TESTS_LOOSE = ("--allow-untyped-defs", "--allow-incomplete-defs", "--allow-untyped-calls",
               "--allow-untyped-decorators", "--allow-any-generics", "--no-warn-return-any",
               "--check-untyped-defs")


def _mypy_tests(session: nox.Session) -> None:
    """Two runs: tests/conftest.py and tests/integration/conftest.py are both top-level modules
    named `conftest` to mypy (tests/ has no __init__.py files)."""
    config = ("--config-file", str(ROOT / "pyproject.toml"), *TESTS_LOOSE)
    tests = ROOT / "tests"
    session.run("mypy", *config, str(tests / "conftest.py"), str(tests / "console.py"),
                str(tests / "cpu_stack.py"), str(tests / "unit"), success_codes=[0, 1])
    session.run("mypy", *config, str(tests / "integration"), env={"MYPYPATH": str(tests)},
                success_codes=[0, 1])


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite: unit, then integration (real uv, real venvs, real Docker where an engine
    exists)."""
    _install_harness(session)
    # The probe unit tests run the real CPU stack (torch, transformers, peft) in this session's
    # venv.
    session.install(*_find_links_args(), "-r", str(ROOT / "tests" / "probe-stack.txt"),
                    silent=False)
    # The slowest 20 tests are listed at the end, so a slow CI names its cause.
    if session.posargs:
        session.run("pytest", "--durations=20", "-ra", *session.posargs)
        return
    # Unit tests on every core (tests/unit/real_results.py makes its shared results under a lock),
    # then the integration tests in one process: they share real venvs and Docker images, and
    # test_interrupt measures timings that a second worker beside it would spoil.
    session.run("pytest", "tests/unit", "-n", "auto", "--durations=20", "-ra")
    session.run("pytest", "tests/integration", "--durations=20", "-ra")


if __name__ == "__main__":
    nox.main()
