"""Each option is declared once (pinmatrix/run/options.py): the parser, RunOptions and the argv a
Slurm task gets all come from that table. A Slurm task must run its cell as the session would
have."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from pinmatrix.cli.main import COMMANDS, command_parser, parse
from pinmatrix.environ.interpreters import parse_venv_python, python_for
from pinmatrix.errors import UsageError
from pinmatrix.run.options import (
    ALL_COMMANDS,
    OPTIONS,
    TASK_OWN_FIELDS,
    RunOptions,
    forwarded_options,
    options_for,
    run_options,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_source_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Package sources fall back to PINMATRIX_* and PIP_* variables: keep the host's out of the
    comparison."""
    for name in ("PINMATRIX_INDEX_URL", "PIP_INDEX_URL", "PINMATRIX_EXTRA_INDEX_URLS",
                 "PIP_EXTRA_INDEX_URL",
                 "PINMATRIX_FIND_LINKS", "PIP_FIND_LINKS", "PINMATRIX_CA_BUNDLE", "PIP_CERT",
                 "SSL_CERT_FILE",
                 "PINMATRIX_TORCH_BACKEND"):
        monkeypatch.delenv(name, raising=False)


def non_default_argv(tmp_path: Path) -> list[str]:
    """Every forwarded option of `matrix`, each with a value that differs from its default."""
    argv: list[str] = []
    for option in options_for("matrix"):
        if not option.forward:
            continue
        if option.action == "store_true":
            argv.append(option.flag)
        elif option.flag == "--runner":
            argv += [option.flag, "venv"]
        elif option.choices:  # a value other than the default
            argv += [option.flag, option.choices[-1]]
        elif option.flag == "--venv-python":  # a bare PATH and one per Python version
            argv += [option.flag, "/opt/py/bin/python", option.flag, "3.12=/opt/py312/bin/python"]
        elif option.flag == "--rerun":  # bare (all cells) and with a selector
            argv += ["--rerun", "--rerun=transformers=5.17.0"]
        elif option.type is Path:
            for n in range(2 if option.action == "append" else 1):
                argv += [option.flag, str(tmp_path / f"{option.dest}{n}")]
        elif option.forward == "site":  # a folder for every cell, and one with a condition
            argv += [option.flag, str(tmp_path / "site0"),
                     option.flag, f"transformers=5.17.0,unsloth!=none:{tmp_path / 'site1'}"]
        elif option.type in (float, int):
            argv += [option.flag, "123"]
        else:
            for n in range(2 if option.action == "append" else 1):
                argv += [option.flag, f"https://example.invalid/{option.dest}/{n}"]
    return argv


def test_every_run_option_field_is_declared_or_the_tasks_own() -> None:
    declared = {o.field for o in OPTIONS if o.field}
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    assert fields - declared - TASK_OWN_FIELDS == set(), "RunOptions fields no option sets"
    not_forwarded = {
        o.flag for o in OPTIONS if o.field and o.field not in TASK_OWN_FIELDS and not o.forward
    }
    assert not_forwarded == set(), "run options a Slurm task would not get"


def test_forwarded_options_are_accepted_by_run_cell() -> None:
    run_cell = {o.flag for o in options_for("run-cell")}
    assert {o.flag for o in OPTIONS if o.forward} <= run_cell


def test_every_run_option_survives_slurm_forwarding(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"snapshot": {"live": {}}}))
    session = parse(["matrix", "--on", "slurm", *non_default_argv(tmp_path)])
    task = parse(["run-cell", "--run-dir", str(run_dir), "--index", "0",
                  *forwarded_options(session, run_dir)])
    before, after = run_options(session), run_options(task)
    defaults = RunOptions(matrix_path=Path("x"))
    for field in dataclasses.fields(RunOptions):
        if field.name in TASK_OWN_FIELDS:
            continue
        assert getattr(after, field.name) == getattr(before, field.name), field.name
        if field.name != "matrix_path":  # the test set every forwarded option away from its default
            assert getattr(before, field.name) != getattr(defaults, field.name), field.name
    assert after.sources == before.sources
    assert (
        before.sources.torch_backend
        and before.sources.ca_bundle
        and len(before.sources.find_links) == 2
    )
    assert after.snapshot == {"live": {}}  # the session's live axes, from run.json


def test_relative_paths_reach_a_task_absolute(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    session = parse(["matrix", "--model-cache", "models", "--venv-dir", "venvs"])
    argv = forwarded_options(session, tmp_path)
    assert argv[argv.index("--model-cache") + 1] == str(tmp_path / "models")
    assert argv[argv.index("--venv-dir") + 1] == str(tmp_path / "venvs")


def test_each_command_parser_builds_and_shares_the_common_options() -> None:
    for command in COMMANDS:
        flags = {a.option_strings[0] for a in command_parser(command)._actions if a.option_strings}
        assert {o.flag for o in OPTIONS if o.commands == ALL_COMMANDS} <= flags, command
    assert set(COMMANDS) == set(ALL_COMMANDS)


def test_ci_workflow_uses_only_declared_options() -> None:
    """The nightly workflow calls `python -m pinmatrix COMMAND --flag ...`: each flag must exist
    there."""
    workflow = (ROOT / ".github" / "workflows" / "nightly.yml").read_text(encoding="utf-8")
    text = workflow.replace("\\\n", " ")
    calls = re.findall(r"python -m pinmatrix (\w[\w-]*)([^\n]*)", text)
    assert calls
    for command, rest in calls:
        declared: set[Any] = {o.flag for o in options_for(command)} | {"--help"}
        used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest))
        assert used <= declared, (command, used - declared)


def test_venv_python_takes_one_interpreter_per_version() -> None:
    given = parse_venv_python(["3.12=/a/python3.12", "/b/python", "3.11=/c/python3.11"])
    assert given == {"3.12": "/a/python3.12", "": "/b/python", "3.11": "/c/python3.11"}
    assert [python_for(given, v) for v in ("3.12", "3.11", "3.13")] == [
        "/a/python3.12", "/c/python3.11", "/b/python"]
    assert python_for(parse_venv_python(["3.12=/a"]), "3.11") is None  # uv finds one
    for bad in (["3.12=/a", "3.12=/b"], ["x.y=/a"], ["3.12="]):
        with pytest.raises(UsageError):
            parse_venv_python(bad)
