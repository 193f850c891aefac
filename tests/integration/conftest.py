"""The Docker engine the integration tests run on, found once per module the same way everywhere.

A missing engine or base image skips the tests that need them, with the reason; with
PINMATRIX_REQUIRE_DOCKER=1 (set by .ci/run) it fails them instead, so CI cannot go green by
skipping.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from pinmatrix.runners.engine import Engine, engine_message, find_engine
from pinmatrix.runners.docker import DEFAULT_BASE_IMAGE


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
