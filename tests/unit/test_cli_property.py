"""Property: any command line built from the real option table (pinmatrix/run/options.py
OPTIONS) with hostile values exits 0, 1 or 2, never with a traceback, within a memory bound.

Each example runs `python -m pinmatrix` in its own process under RLIMIT_AS, with
PINMATRIX_TRACEBACK=1 so that an exception the CLI did not mean to catch still shows as a traceback
(and fails the test) instead of its one-line fallback. Matrix files are never loadable for the
commands that build (matrix, resolve, nightly, run-cell), so no example resolves or builds: the
property is about what the command line and the files it names can do before that.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinmatrix.run.options import ALL_COMMANDS, OPTIONS, Option, options_for

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"
MEMORY_LIMIT = 2 * 1024 ** 3  # address space; the --shard bug reached 23.8 GB

BUILDING = ("matrix", "resolve", "nightly", "run-cell")


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files and folders hostile values point at (all under one temp folder)."""
    base = tmp_path_factory.mktemp("hostile-cli")
    (base / "afile").write_text("not a folder\n")
    (base / "a,b=c").mkdir()
    (base / "empty").mkdir()
    garbage = base / "garbage-run"
    (garbage / "outcomes").mkdir(parents=True)
    (garbage / "run.json").write_text("{not json")
    (garbage / "outcomes" / "x.json").write_bytes(b"\xff\xfe\x00")
    (base / "link-to-etc").symlink_to("/etc")
    bad = base / "bad.yaml"
    bad.write_text(CI.read_text().replace("lora_steps: 12", "lora_steps: " + "9" * 5001))
    (base / "nul.yaml").write_bytes(CI.read_bytes().replace(b"settings:", b"sett\x00ings:"))
    return {"base": base, "bad": bad}


def _path_values(places: dict[str, Path]) -> st.SearchStrategy[str]:
    base = places["base"]
    return st.sampled_from([
        str(base / "afile"), str(base / "afile" / "under"), str(base / "a,b=c"),
        str(base / "empty"), str(base / "missing"), str(base / "garbage-run"),
        str(base / "link-to-etc" / "x"), str(base / "reports"), "/nonexistent/x", "/dev/null",
        "", "-", "~", str(base / ("x" * 300)), "file:///nonexistent", "http://127.0.0.1:9/x",
    ])


NUMBERS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "0", "-1", "1e308", "1e-320", "9" * 5000, "0x10",
                     "1_000", " 3", "1/2", "2/1", "1/99999999999999999999999", "0/0",
                     "1/" + "9" * 5000, "0,1", "0,0", "zero,;rm", "99999999999"]),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
# what a shell can pass: no NUL bytes in argv
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=30)
SELECTORS = st.one_of(
    st.sampled_from(["transformers=5.17.0", "transformers>=4", "torch=" + "9" * 5000,
                     "transformers>=" + "1." * 3000, "nosuch=1", "=", "a==b==c", "python<3",
                     "$(touch /tmp/pinmatrix-pwned)", "--", "-x"]),
    TEXT,
)


def _value(option: Option, places: dict[str, Path]) -> st.SearchStrategy[list[str]]:
    if option.action == "store_true":
        return st.just([option.flag])
    if option.nargs == "?":
        bare = st.just([option.flag])
        return st.one_of(bare, st.one_of(SELECTORS, _path_values(places)).map(
            lambda v: [f"{option.flag}={v}"]))
    if option.choices:
        value = st.one_of(st.sampled_from(option.choices), TEXT)
    elif option.type in (int, float) or option.flag in ("--shard", "--gpus"):
        value = NUMBERS
    elif option.type is Path or option.metavar in ("DIR", "FILE") or option.flag == "--find-links":
        value = _path_values(places)
    else:
        value = st.one_of(TEXT, _path_values(places), NUMBERS)
    return value.map(lambda v: [f"{option.flag}={v}"])


@st.composite
def argv(draw: st.DrawFn, places: dict[str, Path]) -> list[str]:
    command = draw(st.one_of(st.sampled_from(ALL_COMMANDS), st.sampled_from(["frob", "-h", ""])))
    known = options_for(command) if command in ALL_COMMANDS else []
    # mostly the command's own options, sometimes any option (argparse must refuse it)
    pool = [o for o in known if o.flag != "--matrix"] or list(OPTIONS)
    chosen = draw(st.lists(st.one_of(st.sampled_from(pool), st.sampled_from(OPTIONS)),
                           max_size=6))
    parts: list[str] = []
    for option in chosen:
        if option.flag == "--matrix":
            continue
        parts += draw(_value(option, places))
    parts += draw(st.lists(SELECTORS, max_size=2))
    # the matrix is never loadable for a building command, so nothing resolves or builds
    matrices = [places["bad"], places["base"] / "nul.yaml", places["base"] / "missing.yaml",
                places["base"]]
    if command not in BUILDING:
        matrices.append(CI)
    parts.append(f"--matrix={draw(st.sampled_from(matrices))}")  # one element: parts are shuffled
    # the run's folders stay in the temp folder unless a drawn --reports overrides it
    return [command, "--reports", str(places["base"] / "reports"), *draw(st.permutations(parts))]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_command_line_exits_0_1_or_2_without_a_traceback(places, data) -> None:
    args = data.draw(argv(places))
    env = {**os.environ, "PINMATRIX_TRACEBACK": "1", "PINMATRIX_DOCKER": "/nonexistent/docker",
           "HOME": str(places["base"] / "home"), "PYTHONPATH": str(ROOT)}
    for name in ("PINMATRIX_FIND_LINKS", "PIP_FIND_LINKS", "SLURM_ARRAY_TASK_ID"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", *args], capture_output=True,
                          text=True, errors="replace", cwd=places["base"], env=env, timeout=120,
                          preexec_fn=_limit_memory)
    shown = f"argv={args!r}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert proc.returncode in (0, 1, 2), shown
    assert "Traceback" not in proc.stderr, shown
    if proc.returncode == 2:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and len(lines[0]) < 2000, shown
    assert not Path("/tmp/pinmatrix-pwned").exists()
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib * 1024 < MEMORY_LIMIT, shown
