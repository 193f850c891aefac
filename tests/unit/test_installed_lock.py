"""--no-install: the lock read off a prepared interpreter, and the pins checked against it."""
from __future__ import annotations

import importlib.metadata as md
import sys

import pytest

from pinmatrix.cell import Cell
from pinmatrix.environ.installed import lock_from_environment, pin_mismatches
from pinmatrix.resolve.uv import ResolveInfraError

PY = "{}.{}".format(*sys.version_info[:2])
PACKAGING = md.version("packaging")


def test_lock_is_what_the_interpreter_holds() -> None:
    cell = Cell(pins={"python": PY, "packaging": PACKAGING, "not-a-real-package-xyz": "none"})
    lock = lock_from_environment(cell, sys.executable)
    assert f"packaging=={PACKAGING}" in lock.full_lock.splitlines()
    assert lock.pinned()["packaging"] == PACKAGING
    assert lock.python == PY


@pytest.mark.parametrize("pins, fragment", [
    ({"packaging": "0.0.1"}, f"packaging {PACKAGING} is installed, the cell pins 0.0.1"),
    ({"packaging": "none"}, f"packaging {PACKAGING} is installed, the cell pins none"),
    ({"not-a-real-package-xyz": "1.0"}, "not-a-real-package-xyz is not installed"),
    ({"python": "2.7"}, f"python {PY} here, the cell pins 2.7"),
])
def test_a_pin_the_environment_does_not_honour_is_infra(pins, fragment) -> None:
    with pytest.raises(ResolveInfraError) as err:
        lock_from_environment(Cell(pins=pins), sys.executable)
    assert fragment in str(err.value)


def test_local_build_labels_satisfy_a_plain_pin() -> None:
    assert pin_mismatches(Cell(pins={"torch": "2.11.0"}), PY, {"torch": "2.11.0+cu130"}) == []
    assert pin_mismatches(Cell(pins={"torch": "2.11.0"}), PY, {"torch": "2.10.0+cu128"}) != []
