"""matrix.yaml loading, GitHub-Actions-style expansion, live axes from a recorded index, selection,
sources."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pinmatrix.errors import MatrixError, SelectionError
from pinmatrix.matrix.live import expand_live
from pinmatrix.matrix.load import load_matrix
from pinmatrix.matrix.select import select
from pinmatrix.sources import PackageSources, Release, redact

ROOT = Path(__file__).resolve().parents[2]
HEAD = """\
axes:
  python: ["3.11", "3.12"]
  base_image: ["pinmatrix/base:bookworm-py311"]
  torch: ["2.13.0", "2.14.0"]
"""


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def combos(cells, *keys):
    return [tuple(c.pins.get(k) for k in keys) for c in cells]


# --- the shipped matrices
# -----------------------------------------------------------------------------------------
def test_default_matrix_covers_the_issue_floor() -> None:
    matrix = load_matrix(ROOT / "matrix.yaml")
    cells = matrix.expand()
    tf = {c.pins["transformers"] for c in cells}
    unsloth = {c.pins["unsloth"] for c in cells}
    assert any(v.startswith("4.57.") for v in tf) and any(v.startswith("5.") for v in tf)
    assert len(unsloth - {"none"}) >= 2 and "none" in unsloth
    assert {m.name for m in matrix.models} == {"exaone3.5", "exaone4"}
    assert len({c.id for c in cells}) == len(cells)
    # every unsloth cell got the trl its release allows, from include rules
    assert {(c.pins["unsloth"], c.pins["trl"]) for c in cells} == {
        ("2026.10.9", "1.15.0"), ("2026.9.14", "0.24.0"), ("none", "none")}


def test_ci_matrix_is_two_cells_differing_in_one_pin() -> None:
    cells = load_matrix(ROOT / "tests/data/matrices/ci.yaml").expand()
    assert len(cells) == 2
    a, b = (dict(c.pins) for c in cells)
    assert [k for k in a if a[k] != b[k]] == ["transformers"]
    assert a["torch"] == "2.13.0+cpu" and a["python"] == "3.11"
    assert cells[0].settings["device"] == "cpu"
    assert [c.pins["transformers"] for c in cells] == ["4.57.6", "5.17.0"]


# --- GitHub Actions semantics
# -------------------------------------------------------------------------------------
def test_product_order_is_axis_order(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path, HEAD)).expand()
    assert combos(cells, "python", "torch") == [("3.11", "2.13.0"), ("3.11", "2.14.0"),
                                                ("3.12", "2.13.0"), ("3.12", "2.14.0")]


def test_exclude_removes_every_matching_combination(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path, HEAD + """\
exclude:
  - {python: "3.11", torch: "2.14.0"}
  - {torch: "2.13.0", python: "3.12"}
""")).expand()
    assert combos(cells, "python", "torch") == [("3.11", "2.13.0"), ("3.12", "2.14.0")]


def test_exclude_matches_versions_not_text(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path, HEAD + """\
exclude:
  - {torch: "2.14"}
""")).expand()
    assert {c.pins["torch"] for c in cells} == {"2.13.0"}


def test_include_follows_the_github_actions_example(tmp_path: Path) -> None:
    # The GitHub docs example (fruit x animal + color/shape) mapped onto python x torch + trl/peft.
    cells = load_matrix(
        write(
            tmp_path,
            HEAD
            + """\
include:
  - {trl: "1.15.0"}                              # color: green -> every combination
  - {trl: "1.14.0", torch: "2.13.0"}             # color: pink, animal: cat -> overwrites an added key
  - {python: "3.11", peft: "0.21.2"}             # fruit: apple, shape: circle
  - {python: "3.13", base_image: "pinmatrix/base:bookworm-py311", torch: "2.14.0"}   # banana: a new cell
  - {python: "3.13", base_image: "pinmatrix/base:bookworm-py311", torch: "2.13.0"}   # never merged into banana
""",  # noqa: E501 (page/script/data text, kept byte for byte)
        )
    ).expand()
    got = [dict(c.pins) for c in cells]
    base = {"base_image": "pinmatrix/base:bookworm-py311"}
    assert got == [
        {**base, "python": "3.11", "torch": "2.13.0", "trl": "1.14.0", "peft": "0.21.2"},
        {**base, "python": "3.11", "torch": "2.14.0", "trl": "1.15.0", "peft": "0.21.2"},
        {**base, "python": "3.12", "torch": "2.13.0", "trl": "1.14.0"},
        {**base, "python": "3.12", "torch": "2.14.0", "trl": "1.15.0"},
        {**base, "python": "3.13", "torch": "2.14.0"},
        {**base, "python": "3.13", "torch": "2.13.0"},
    ]


def test_include_never_overwrites_an_axis_value(tmp_path: Path) -> None:
    # {python 3.11, torch 2.15.0}: torch is an axis and 2.15.0 is none of its values -> a new cell,
    # not an edit
    path = write(tmp_path, HEAD + """\
include:
  - {python: "3.11", base_image: "pinmatrix/base:bookworm-py311", torch: "2.15.0"}
""")
    cells = load_matrix(path).expand()
    assert len(cells) == 5 and combos(cells[-1:], "python", "torch") == [("3.11", "2.15.0")]
    assert combos(cells[:4], "torch").count(("2.15.0",)) == 0


def test_exclude_then_include_can_add_back(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path, HEAD + """\
exclude:
  - {python: "3.12"}
include:
  - {python: "3.12", base_image: "pinmatrix/base:bookworm-py311", torch: "2.14.0", trl: none}
""")).expand()
    assert combos(cells, "python", "torch", "trl") == [("3.11", "2.13.0", None),
                                                       ("3.11", "2.14.0", None),
                                                       ("3.12", "2.14.0", "none")]


def test_none_means_not_installed(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path, HEAD + "  unsloth: [none, '2026.10.9']\n")).expand()
    baseline = [c for c in cells if c.pins["unsloth"] == "none"]
    assert baseline and all("unsloth" not in " ".join(c.requirements()) for c in baseline)
    assert all(c.none_packages() == ["unsloth"] for c in baseline)


def test_defaults_for_checks_and_settings(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, HEAD))
    cell = matrix.expand()[0]
    assert "lora-train" in cell.checks and cell.settings["throughput"]["batch"] == 4
    assert cell.settings["check_timeout_s"] == 600


def test_python_versions_are_text_not_floats(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path, HEAD.replace('["3.11", "3.12"]', "[3.10, 3.12]"))).expand()
    assert {c.pins["python"] for c in cells} == {"3.10", "3.12"}


def test_a_matrix_too_large_to_run_is_refused_before_expanding(tmp_path: Path) -> None:
    many = ", ".join(f'"1.0.{i}"' for i in range(80))
    path = write(tmp_path, HEAD + f"  transformers: [{many}]\n  peft: [{many}]\n")
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    assert err.value.line == 2 and "25600 combinations, more than 5000" in err.value.message


def test_excluding_everything_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + 'exclude:\n  - {torch: "2.13.0"}\n  - {torch: "2.14.0"}\n')
    with pytest.raises(MatrixError, match="expands to no cell"):
        load_matrix(path)


# --- live axes
# --------------------------------------------------------------------------------------------------
RELEASES = [Release(v, y) for v, y in [("4.56.2", False), ("4.57.0", True), ("4.57.6", False),
                                       ("5.0.0rc1", False),
                                        ("5.0.0", False), ("5.10.0", True), ("5.9.0", False),
                                       ("5.17.0", False),
                                        ("5.18.0", False)]]


def test_expand_live_excludes_prereleases_and_yanked_by_default() -> None:
    assert expand_live(RELEASES, {"spec": ">=4.57,<5.18"}) == ["4.57.6", "5.0.0", "5.9.0", "5.17.0"]
    assert expand_live(RELEASES, {"spec": ">=4.57,<5.18", "pre": True}) == [
        "4.57.6", "5.0.0rc1", "5.0.0", "5.9.0", "5.17.0"]
    assert expand_live(RELEASES, {"spec": ">=4.57,<5.18", "yanked": True}) == [
        "4.57.0", "4.57.6", "5.0.0", "5.9.0", "5.10.0", "5.17.0"]
    # 5.9 < 5.10 < 5.17 as versions
    assert expand_live(RELEASES, {"latest": 2}) == ["5.17.0", "5.18.0"]
    assert expand_live(RELEASES, {"spec": "<5.18", "latest": 2}) == ["5.9.0", "5.17.0"]


def test_live_axis_forms_and_snapshot_reproduce_offline(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + """\
  transformers: ">=4.57,<5.18"
  peft: {latest: 1}
  trl: [none, {spec: "<2", latest: 1}]
""")
    asked = []

    def fetch(package):
        asked.append(package)
        return {"transformers": RELEASES, "peft": [Release("0.21.2", False),
                                                   Release("0.21.1", False)],
                "trl": [Release("1.15.0", False), Release("2.0.0", False)]}[package]

    live = load_matrix(path, fetch=fetch)
    assert sorted(asked) == ["peft", "transformers", "trl"]
    assert live.axes["transformers"] == ("4.57.6", "5.0.0", "5.9.0", "5.17.0")
    assert live.axes["peft"] == ("0.21.2",) and live.axes["trl"] == ("none", "1.15.0")
    snapshot = json.loads(json.dumps(live.snapshot))           # it survives run.json

    def offline(package) -> None:
        raise AssertionError("a snapshot load must not touch the index")

    again = load_matrix(path, snapshot=snapshot, fetch=offline)
    assert [c.id for c in again.expand()] == [c.id for c in live.expand()]
    assert again.snapshot["live"] == snapshot["live"]


def test_snapshot_from_another_query_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + '  peft: {latest: 2}\n')
    snapshot = {"live": {"peft#0": {"query": {"spec": None, "latest": 1, "pre": False,
                                              "yanked": False},
                                     "versions": ["0.21.2"]}}}
    with pytest.raises(MatrixError) as err:
        load_matrix(path, snapshot=snapshot)
    assert err.value.line == 5 and "snapshot" in err.value.message


def test_live_axis_matching_no_release_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + '  peft: ">=99"\n')
    with pytest.raises(MatrixError) as err:
        load_matrix(path, fetch=lambda p: [Release("0.21.2", False)])
    assert err.value.line == 5 and "matches no release" in err.value.message


def test_unreachable_index_is_a_located_error(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + '  peft: {latest: 1}\n')
    sources = PackageSources(index_url="http://127.0.0.1:9/simple")
    with pytest.raises(MatrixError) as err:
        load_matrix(path, sources=sources)
    assert err.value.line == 5 and "cannot expand against the index" in err.value.message


# --- selection
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def cells(tmp_path: Path):
    return load_matrix(write(tmp_path,
                             HEAD + '  transformers: ["4.57.6", "5.17.0"]\n  unsloth: '
                                    '[none]\n')).expand()


def test_select_by_axis_value_and_abbreviation(cells) -> None:
    assert {c.pins["transformers"] for c in select(cells, ["transformers=5.17.0"])} == {"5.17.0"}
    assert len(select(cells, ["tf=5.17", "py=3.12"])) == 2
    assert len(select(cells, ["transformers=5.17.0", "transformers=4.57.6", "torch==2.13.0"])) == 4
    assert {c.pins["transformers"] for c in select(cells, ["transformers>=5"])} == {"5.17.0"}
    assert select(cells, []) == cells
    assert select(cells, [cells[3].id]) == [cells[3]]
    assert len(select(cells, ["unsloth=none"])) == 8


@pytest.mark.parametrize("argument,fragment", [
    ("transformer=5.17.0", "unknown axis 'transformer'"),
    ("transformers=9.9.9", "matches no cell; transformers values are 4.57.6, 5.17.0"),
    ("transformers", "expected AXIS=VALUE"),
    ("transformers>=x!", "not a version specifier"),
    ("python>=3.11", "can only be selected with '='"),
])
def test_bad_selectors_name_the_argument(cells, argument, fragment) -> None:
    with pytest.raises(SelectionError) as err:
        select(cells, [argument])
    assert argument in str(err.value) and fragment in str(err.value)


def test_selectors_that_exclude_each_other_are_an_error(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path,
                              HEAD + 'exclude:\n  - {python: "3.11", torch: "2.14.0"}\n')).expand()
    with pytest.raises(SelectionError, match="together match no cell"):
        select(cells, ["python=3.11", "torch=2.14.0"])


# --- package sources
# ----------------------------------------------------------------------------------------------
def test_sources_precedence_cli_then_pinmatrix_then_pip() -> None:
    env = {"PIP_INDEX_URL": "https://pip.example/simple", "PIP_FIND_LINKS": "/a /b",
           "PIP_CERT": "/pip.pem",
           "PINMATRIX_CA_BUNDLE": "/pm.pem", "SSL_CERT_FILE": "/ssl.pem"}
    s = PackageSources.from_env(environ=env)
    assert (s.index_url, s.find_links, s.ca_bundle) == ("https://pip.example/simple", ("/a", "/b"),
                                                        "/pm.pem")
    s = PackageSources.from_env(index_url="https://cli.example/simple", find_links=["/w"],
                                environ=env)
    assert (s.index_url, s.find_links) == ("https://cli.example/simple", ("/w",))
    assert PackageSources.from_env(environ={"SSL_CERT_FILE": "/ssl.pem"}).ca_bundle == "/ssl.pem"
    assert (
        PackageSources.from_env(environ={"PINMATRIX_TORCH_BACKEND": "none"}).torch_backend is None
    )


def test_credentials_never_reach_arguments_or_repr() -> None:
    secret = "https://alice:s3cr3t@pkgs.example/simple"
    s = PackageSources(index_url=secret, extra_index_urls=("https://pypi.org/simple",),
                       find_links=("/opt/wheels",),
                       ca_bundle="/ca.pem", torch_backend="auto")
    args = s.uv_args("2.11.0+cu130")
    assert "s3cr3t" not in " ".join(args) and "s3cr3t" not in repr(s) and "s3cr3t" not in str(s)
    assert args == ["--extra-index-url", "https://pypi.org/simple", "--find-links", "/opt/wheels",
                    "--torch-backend", "cu130"]
    assert s.uv_env() == {"UV_INDEX_URL": secret, "SSL_CERT_FILE": "/ca.pem"}
    assert redact(secret) == "https://***@pkgs.example/simple"
    assert s.identity() != PackageSources(index_url="https://bob:other@pkgs.example/simple").identity()
    plain = PackageSources(index_url="https://mirror.example/simple")
    assert plain.uv_args() == ["--index-url",
                               "https://mirror.example/simple"] and plain.uv_env() == {}
