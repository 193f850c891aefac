"""The Docker engine the integration tests run on, found once per module the same way everywhere.

A missing engine or base image skips the tests that need them, with the reason; with
PINMATRIX_REQUIRE_DOCKER=1 (set by .ci/run) it fails them instead, so CI cannot go green by
skipping.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pinmatrix.containers.engine import Engine, engine_message, find_engine
from pinmatrix.runners.docker import DEFAULT_BASE_IMAGE


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every integration test in one pytest-xdist group (`--dist loadgroup`, noxfile.py): they run
    one after another on one worker, in file order, so a module's fixtures are built once and the
    session's once per run, while the unit tests run on the other workers."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here + os.sep):
            item.add_marker(pytest.mark.xdist_group("integration"))


@pytest.fixture(scope="session")
def venvs_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One venv folder for the runs that need a stack installed but not a fresh build of it. The
    venv runner keys each venv by its lock (pinmatrix/runners/venv.py), so the first run that needs
    torch 2.13.0+cpu with transformers 4.57.6 builds it and every later module reuses it: built once
    per test run (the integration tests run one after another, on one worker). The tests of the
    build itself (a build log, the venv step timings, an interrupt mid-install) keep their own."""
    return tmp_path_factory.mktemp("venvs-once")


def unavailable(reason: str) -> None:
    if os.environ.get("PINMATRIX_REQUIRE_DOCKER") == "1":
        pytest.fail(f"PINMATRIX_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def engine() -> Engine:
    found = find_engine()
    if found is None:
        unavailable(engine_message())
    assert found is not None
    if subprocess.run(found.cmd("image", "inspect", DEFAULT_BASE_IMAGE),
                      capture_output=True).returncode != 0:
        unavailable(f"base image {DEFAULT_BASE_IMAGE} missing: run docker/base/build-base.sh")
    return found
