"""Hostile matrix values: each is a MatrixError at the value's own line and column, never
another exception; plus a property test that puts arbitrary values at every place a value goes."""
from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinmatrix.errors import MatrixError
from pinmatrix.matrix.load import MAX_COMBINATIONS, load_matrix

HEAD = """axes:
  python: ["3.11"]
  base_image: ["pinmatrix/base:bookworm-py311"]
  torch: ["2.13.0+cpu"]
  transformers: ["4.57.6"]
"""
MODEL = "models:\n  m: {repo: %s, revision: %s, kind: native}\n"

BIG = "1" * 5001

# (name, matrix text after HEAD, line of the bad value, message fragment)
CASES = [
    ("settings-5001-digit-int", f"settings:\n  lora_steps: {BIG}\n", 7, "expected an integer"),
    ("settings-5001-digit-throughput", f"settings:\n  throughput: {{batch: {BIG}}}\n", 7,
     "expected an integer"),
    ("int-tag-on-text", 'settings:\n  lora_steps: !!int "twelve"\n', 7, "expected an integer"),
    ("float-tag-on-text", 'settings:\n  cell_timeout_s: !!float "soon"\n', 7, "expected a number"),
    ("timeout-inf", "settings:\n  cell_timeout_s: .inf\n", 7, "finite number"),
    ("timeout-nan", "settings:\n  check_timeout_s: .nan\n", 7, "finite number"),
    ("timeout-5001-digits", f"settings:\n  cell_timeout_s: {BIG}\n", 7, "finite number"),
    ("throughput-batch-1e9", "settings:\n  throughput: {batch: 1000000000}\n", 7,
     "from 1 to 1024"),
    ("throughput-batch-float", "settings:\n  throughput: {batch: 1e9}\n", 7, "expected an integer"),
    ("lora-steps-3", "settings:\n  lora_steps: 3\n", 7, "from 4 to"),
    ("live-latest-huge", "", 0, ""),  # replaced below: a live axis is on line 5
    ("version-5000-digits", None, 5, "characters, more than"),
    ("specifier-5000-digits", None, 5, "characters, more than"),
    ("repo-dotdot", MODEL % ("a..b/c", "0" * 40), 7, "not a hub id"),
    ("repo-dotdot-name", MODEL % ("org/a..b", "0" * 40), 7, "not a hub id"),
    ("repo-dashdash", MODEL % ("org/a--b", "0" * 40), 7, "not a hub id"),
    ("revision-climbs", MODEL % ("org/name", "main/../../etc"), 7, "not a git ref"),
    ("revision-dot-component", MODEL % ("org/name", "main/.hidden"), 7, "not a git ref"),
    ("revision-lock", MODEL % ("org/name", "main.lock"), 7, "not a git ref"),
    ("revision-reflog", MODEL % ("org/name", "'main@{1}'"), 7, "not a git ref"),
]


def _text(name: str, rest: str | None) -> str:
    if name == "version-5000-digits":
        return HEAD.replace('"4.57.6"', '"4.' + "9" * 5000 + '"')
    if name == "specifier-5000-digits":
        return HEAD.replace('["4.57.6"]', '{spec: ">=4.' + "9" * 5000 + '"}')
    return HEAD + (rest or "")


@pytest.mark.parametrize("name, rest, line, fragment",
                         [c for c in CASES if c[0] != "live-latest-huge"],
                         ids=[c[0] for c in CASES if c[0] != "live-latest-huge"])
def test_hostile_value_is_a_matrix_error_at_its_line(tmp_path: Path, name, rest, line,
                                                     fragment) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(_text(name, rest))
    with pytest.raises(MatrixError) as err:
        load_matrix(path, fetch=lambda package: [])
    assert (err.value.line, fragment in err.value.message) == (line, True), str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_live_latest_past_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(HEAD.replace('["4.57.6"]', "{latest: 100000000}"))
    with pytest.raises(MatrixError, match=r"m\.yaml:5:\d+: .*latest: expected an integer from 1"):
        load_matrix(path, fetch=lambda package: [])


def test_nul_byte_on_line_seven_is_reported_there(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + "settings:\n  devi\x00ce: cpu\n")
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    assert (err.value.line, err.value.column) == (7, 7), str(err.value)
    assert "U+0000" in err.value.message


def test_include_rules_past_the_cap(tmp_path: Path) -> None:
    # the axes are one combination; each include rule adds a new cell (the report had 20,000;
    # just past the cap is the same hole, cheaper to parse)
    rules = "".join(
        f'  - {{python: "3.11", base_image: "pinmatrix/base:bookworm-py311", '
        f'torch: "2.13.0+cpu", transformers: "4.{i}.0"}}\n' for i in range(MAX_COMBINATIONS + 100))
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + "include:\n" + rules)
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    assert f"more than {MAX_COMBINATIONS}" in err.value.message
    # rule j (0-based) is on line 7 + j; the one-cell product plus rules 0..4999 is 5,001 cells
    assert err.value.line == 7 + MAX_COMBINATIONS - 1


def test_allowed_bounds_still_load(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + "settings:\n  lora_steps: 10000\n  cell_timeout_s: 604800\n"
                    "  throughput: {batch: 1024, warmup: 0}\n"
                    + MODEL % ("org/name.v2", "release/v1.2"))
    matrix = load_matrix(path)
    assert matrix.settings["lora_steps"] == 10000
    assert matrix.settings["throughput"]["batch"] == 1024


# --- property: any scalar at any value place is accepted or a one-line MatrixError ---------------
PLACES = [
    "axes:\n  python: [{v}]\n  base_image: [img]\n  torch: [2.13.0]\n",
    "axes:\n  python: ['3.11']\n  base_image: [{v}]\n  torch: [2.13.0]\n",
    "axes:\n  python: ['3.11']\n  base_image: [img]\n  torch: [{v}]\n",
    "axes:\n  python: ['3.11']\n  base_image: [img]\n  torch: {{spec: {v}}}\n",
    "axes:\n  python: ['3.11']\n  base_image: [img]\n  torch: {{latest: {v}}}\n",
    HEAD + "exclude:\n  - {{transformers: {v}}}\n",
    HEAD + "include:\n  - {{transformers: 4.57.6, peft: {v}}}\n",
    HEAD + "models:\n  m: {{repo: {v}, revision: main, kind: native}}\n",
    HEAD + "models:\n  m: {{repo: o/n, revision: {v}, kind: native}}\n",
    HEAD + "checks: [{v}]\n",
    HEAD + "settings:\n  device: {v}\n",
    HEAD + "settings:\n  check_timeout_s: {v}\n",
    HEAD + "settings:\n  cell_timeout_s: {v}\n",
    HEAD + "settings:\n  lora_steps: {v}\n",
    HEAD + "settings:\n  throughput: {{batch: {v}}}\n",
    HEAD + "settings:\n  throughput: {{seq: {v}, warmup: {v}}}\n",
    HEAD + "settings:\n  throughput: {{stacks: [{v}]}}\n",
]
_TAGS = ["", "!!int ", "!!float ", "!!str ", "!!bool ", "!!null ", "!!binary ", "!!timestamp "]
_SPECIAL = [".inf", "-.inf", ".nan", "0x_", "0b2", "1_000", "1:30", "0o7", "~", "null", "yes",
            "1e9", "-0", "0", "4.57.6", "==4.57.6", ">=4,,<5", "a..b", "main/../../etc", "'a\tb'",
            "9" * 5001, "4." + "9" * 5000, ">=4." + "9" * 4400, "&a x", "*a", "[1, 2]", "{a: 1}"]
hostile_scalar = st.one_of(
    st.sampled_from(_SPECIAL),
    st.integers(min_value=-(10 ** 40), max_value=10 ** 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=string.printable + "\x00\x85\u2028\ufeff", max_size=40).map(repr),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(place=st.sampled_from(PLACES), tag=st.sampled_from(_TAGS), value=hostile_scalar)
def test_any_value_anywhere_loads_or_is_a_matrix_error(tmp_path: Path, place, tag, value) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(place.format(v=tag + value), encoding="utf-8")
    try:
        matrix = load_matrix(path, fetch=lambda package: [])
    except MatrixError as exc:
        text = str(exc)
        assert text.startswith(f"{path}:") and "\n" not in text and len(text) < 600, text
        assert exc.line >= 1 and exc.column >= 1
        return
    # accepted: every numeric setting is inside its bounds, every cell has a readable id
    timeouts = (matrix.settings["cell_timeout_s"], matrix.settings["check_timeout_s"])
    assert all(0 < t <= 7 * 24 * 3600 for t in timeouts)
    assert 4 <= matrix.settings["lora_steps"] <= 10_000
    assert 1 <= matrix.settings["throughput"]["batch"] <= 1024
    assert all(len(cell.id) < 2000 for cell in matrix.expand())


def test_a_tag_python_cannot_construct_is_rejected(tmp_path: Path) -> None:
    path = Path(tmp_path) / "m.yaml"
    path.write_text(HEAD + "settings:\n  lora_steps: !!python/object:os.system 12\n")
    with pytest.raises(MatrixError):
        load_matrix(path)
