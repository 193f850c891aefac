"""Bad matrix files: each error names file:line:column and what was expected; plus generated
matrices."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinmatrix.errors import MatrixError
from pinmatrix.matrix.load import load_matrix

BAD = Path(__file__).resolve().parents[1] / "data" / "matrices" / "bad"
BAD_FILES = sorted(BAD.glob("*.yaml"))


def expectation(path: Path) -> tuple[int, str]:
    """Each bad file starts with `# expect LINE: message fragment`."""
    match = re.match(r"# expect (\d+): (.+)", path.read_text().splitlines()[0])
    assert match, f"{path.name} lacks its '# expect LINE: message' header"
    return int(match.group(1)), match.group(2).strip()


def test_at_least_twenty_malformed_files() -> None:
    assert len(BAD_FILES) >= 20


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_malformed_matrix_names_file_line_and_expectation(path) -> None:
    line, fragment = expectation(path)
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    error = err.value
    assert (error.line, fragment) == (line, fragment) and fragment in error.message, str(error)
    text = str(error)
    assert text.startswith(f"{path}:{line}:{error.column}: ") and "\n" not in text
    assert error.column >= 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match=r"nope\.yaml:1:1: file not found"):
        load_matrix(tmp_path / "nope.yaml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"axes:\n  python: ['3.11\xe9']\n")
    with pytest.raises(MatrixError, match="cannot read the file"):
        load_matrix(path)


# --- property: generated matrices
# ---------------------------------------------------------------------------------
AXIS_VALUES = {
    "python": ["3.10", "3.11", "3.12"],
    "torch": ["2.12.0", "2.13.0+cpu", "2.14.1"],
    "transformers": ["4.57.6", "5.5.0", "5.17.0", "none"],
    "unsloth": ["2026.9.14", "2026.10.9", "none"],
}
IMAGE = "pinmatrix/base:bookworm-py311"


@st.composite
def matrices(draw):
    names = ["python", "torch"] + draw(st.lists(st.sampled_from(["transformers", "unsloth"]),
                                                unique=True))
    axes = {n: draw(st.lists(st.sampled_from(AXIS_VALUES[n]), min_size=1, max_size=3,
                             unique=True)) for n in names}
    axes["base_image"] = [IMAGE]
    excludes = []
    for _ in range(draw(st.integers(0, 3))):
        keys = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
        excludes.append({k: draw(st.sampled_from(axes[k])) for k in keys})
    includes = []
    for _ in range(draw(st.integers(0, 2))):
        rule = {"trl": draw(st.sampled_from(["1.15.0", "0.24.0", "none"]))}
        if draw(st.booleans()):
            key = draw(st.sampled_from(names))
            rule[key] = draw(st.sampled_from(axes[key]))
        includes.append(rule)
    for _ in range(draw(st.integers(0, 2))):
        # a complete cell, maybe outside the axes' values: GitHub adds it as a new combination
        rule = {n: draw(st.sampled_from(AXIS_VALUES[n])) for n in names}
        rule["base_image"] = IMAGE
        includes.insert(draw(st.integers(0, len(includes))), rule)
    return axes, excludes, includes


def reference(axes, excludes, includes):
    """GitHub Actions semantics written out plainly; None where the loader must refuse the
    matrix."""
    names = list(axes)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]
    for rule in excludes:
        kept = [c for c in combos if not all(c[k] == v for k, v in rule.items())]
        if len(kept) == len(combos):
            return None                       # an exclude matching nothing is an error
        combos = kept
    originals = len(combos)
    for rule in includes:
        hits = [c for c in combos[:originals] if all(c[k] == v for k,
                                                     v in rule.items() if k in axes)]
        if not hits:
            if any(k not in rule for k in axes):
                return None                   # would be a new cell lacking axes
            if rule in combos:
                return None                   # the same cell twice
            combos.append(dict(rule))
            continue
        for c in hits:
            c.update({k: v for k, v in rule.items() if k not in axes})
    return combos or None


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(matrices())
def test_generated_matrices_expand_like_github_actions(tmp_path_factory: pytest.TempPathFactory,
                                                       generated) -> None:
    axes, excludes, includes = generated
    doc = {"axes": axes}
    if excludes:
        doc["exclude"] = excludes
    if includes:
        doc["include"] = includes
    path = tmp_path_factory.mktemp("gen") / "matrix.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    expected = reference(axes, excludes, includes)
    if expected is None:
        with pytest.raises(MatrixError) as err:
            load_matrix(path)
        assert 1 <= err.value.line <= len(path.read_text().splitlines()) + 1
        return
    cells = load_matrix(path).expand()
    assert [dict(c.pins) for c in cells] == expected
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9.+_-]+", i) for i in ids)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_loader(tmp_path_factory: pytest.TempPathFactory,
                                                 text) -> None:
    path = tmp_path_factory.mktemp("junk") / "matrix.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_matrix(path)
    except MatrixError as error:
        assert str(error).startswith(str(path)) and "\n" not in str(error)
