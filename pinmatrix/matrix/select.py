"""Pick cells by command-line selectors: `axis=value`, a version specifier, or a cell id."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from packaging.specifiers import SpecifierSet

from pinmatrix.cell import ID_ABBREV, NONE, Cell, version_or_none
from pinmatrix.errors import SelectionError

# Axes that are not pip packages: compared as text, never as versions.
PYTHON, BASE_IMAGE = "python", "base_image"
# The longest axis value, in matrix.yaml (pinmatrix/matrix/load.py) and in a selector alike.
MAX_VALUE_CHARS = 200


def select(cells: Sequence[Cell], selectors: Sequence[str]) -> list[Cell]:
    """Keep the cells that match the command-line selectors.

    A selector is `axis=value` (also `axis==value`, or a specifier `axis>=5`), or a full cell id.
    Selectors on the same axis are alternatives (OR); different axes must all match (AND); ids add
    their cells.
    """
    if not selectors:
        return list(cells)
    axes = sorted({k for c in cells for k in c.pins})
    aliases = {abbrev: axis for axis, abbrev in ID_ABBREV.items()}
    by_axis: dict[str, list[tuple[str, Callable[[str], bool]]]] = {}
    ids: list[str] = []
    for argument in selectors:
        match = re.match(r"^\s*([A-Za-z][A-Za-z0-9_.-]*)\s*(==|=|>=|<=|!=|~=|>|<)\s*(\S.*?)\s*$",
                         argument)
        if not match:
            if any(c.id == argument for c in cells):
                ids.append(argument)
                continue
            raise SelectionError(argument,
                                 "expected AXIS=VALUE (for example transformers=5.17.0) or a cell "
                                 "id")
        key, op, value = match.groups()
        if len(value) > MAX_VALUE_CHARS:  # the matrix's own bound: a 5,000-digit version would
            # reach int() only when the first cell is compared, as a harness error
            raise SelectionError(argument[:60] + "…", f"the value has {len(value)} characters, "
                                                      f"more than {MAX_VALUE_CHARS}")
        default = key.replace("_", "-") if key != BASE_IMAGE else key
        axis = key if key in axes else aliases.get(key, default)
        if axis not in axes:
            raise SelectionError(argument, f"unknown axis {key!r}; the axes are {', '.join(axes)}")
        by_axis.setdefault(axis, []).append((argument, _value_test(argument, axis, op, value)))
    # Every selector must be able to match something, else it is almost surely a typo.
    for axis, tests in by_axis.items():
        for argument, test in tests:
            if not any(axis in c.pins and test(c.pins[axis]) for c in cells):
                values = sorted({c.pins[axis] for c in cells if axis in c.pins})
                raise SelectionError(argument,
                                     f"matches no cell; {axis} values are {', '.join(values)}")
    chosen = []
    for cell in cells:
        if cell.id in ids or (by_axis and all(
                axis in cell.pins and any(test(cell.pins[axis]) for _, test in tests)
                for axis, tests in by_axis.items())):
            chosen.append(cell)
    if not chosen:
        raise SelectionError(" ".join(selectors), "the selectors together match no cell")
    return chosen


def _value_test(argument: str, axis: str, op: str, value: str) -> Callable[[str], bool]:
    if op in ("=", "=="):
        return lambda pin: same_value(axis, pin, value)
    if axis in (PYTHON, BASE_IMAGE) or value == NONE:
        raise SelectionError(argument, f"{axis} can only be selected with '=', not {op!r}")
    try:
        spec = SpecifierSet(op + value)
    except ValueError:  # InvalidSpecifier, or too many digits for int()
        raise SelectionError(argument, f"{op + value!r} is not a version specifier") from None
    return lambda pin: (
        pin != NONE and version_or_none(pin) is not None and spec.contains(pin, prereleases=True)
    )


def same_value(axis: str, a: str, b: str) -> bool:
    """Axis values are equal as versions for packages (5.17 == 5.17.0), as text otherwise."""
    if a == b:
        return True
    if axis in (PYTHON, BASE_IMAGE) or NONE in (a, b):
        return False
    va, vb = version_or_none(a), version_or_none(b)
    return va is not None and va == vb
