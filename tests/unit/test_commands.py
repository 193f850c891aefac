"""Commands have a home (pinmatrix/commands/, one registry) and options are typed once: each
option is declared on the typed field it fills (pinmatrix/run/options.py), and the parser, the
environment fallback, the cross-option rules and each command's config are derived from those
fields. A command's `run` takes its typed config, never the argparse Namespace."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import typing
from pathlib import Path

import pytest

from pinmatrix.cli.main import COMMANDS as CLI_COMMANDS
from pinmatrix.cli.main import STANDALONE, command_parser, main, parse
from pinmatrix.commands import COMMANDS
from pinmatrix.commands.base import build_config, own_parser, takes_config
from pinmatrix.errors import UsageError
from pinmatrix.run.options import (
    CONCERNS,
    ENV_SETTINGS,
    OPTIONS,
    Option,
    RunOptions,
    SlurmOptions,
    check_options,
    concern_from,
    options_for,
    typed,
)
from pinmatrix.sources import SOURCE_ENV

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "matrices" / "ci.yaml"


def _concern_fields(config_type: type) -> dict[str, type]:
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type)
            if hints[f.name] in CONCERNS}


def test_one_registry_lists_every_command_the_cli_knows() -> None:
    assert set(COMMANDS) == set(CLI_COMMANDS) | set(STANDALONE)
    assert {"matrix", "report", "merge", "nightly", "bisect", "list", "doctor", "bundle",
            "remote-code-surface", "cdi-spec", "base-image", "resolve", "run-cell"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_runs_on_its_typed_config(name) -> None:
    command = COMMANDS[name]
    if command.standalone:  # its own small parser, from its config's fields
        assert command.main is not None
        assert list(inspect.signature(command.main).parameters) == ["argv"]
        flags = {a.option_strings[-1] for a in own_parser(command.config, "p", None)._actions
                 if a.option_strings} - {"--help"}
        assert flags == {o.flag for f in dataclasses.fields(command.config)
                         for o in f.metadata["options"] if o.flag.startswith("--")}
    assert dataclasses.is_dataclass(command.config)
    assert command.config.__dataclass_params__.frozen, name  # type: ignore[attr-defined]
    assert takes_config(command) is command.config, f"{name}: run() takes {command.config}"
    for concern in CONCERNS:
        assert concern.__dataclass_params__.frozen, concern  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(CLI_COMMANDS))
def test_each_parser_is_built_from_the_fields_of_its_commands_config(name) -> None:
    """Every flag the command's parser takes is an option declared on a field of a concern its
    config holds: nothing is parsed that the command could only read from the Namespace."""
    command = COMMANDS[name]
    assert command.config is not None
    held = {t.__name__ for t in _concern_fields(command.config).values()}
    if "RunOptions" in held:  # RunOptions.sources: PackageSources from the SourceOptions given
        held.add("SourceOptions")
    flags = {a.option_strings[0] for a in command_parser(name)._actions if a.option_strings}
    declared = {o.flag for o in options_for(name)}
    assert flags - {"-h"} == declared
    for option in options_for(name):
        assert option.concern in held, (name, option.flag, option.concern)
        concern = next(c for c in CONCERNS if c.__name__ == option.concern)
        field = {f.name: f for f in dataclasses.fields(concern)}[option.attr]
        assert any(o.flag == option.flag for o in field.metadata["options"]), option.flag


def test_the_option_table_is_derived_from_the_typed_fields() -> None:
    from_fields = [o.flag for c in CONCERNS for f in dataclasses.fields(c)
                   for o in f.metadata.get("options", ())]
    assert [o.flag for o in OPTIONS] == from_fields
    assert all(o.concern and o.attr for o in OPTIONS)
    # a RunOptions field keeps its name as `field` (Slurm forwarding and the round-trip test)
    assert {o.field for o in OPTIONS if o.concern == "RunOptions"} <= {
        f.name for f in dataclasses.fields(RunOptions)}


def test_a_new_typed_field_gets_its_option_parsed_and_typed() -> None:
    @dataclasses.dataclass(frozen=True)
    class Demo:
        jobs: int = typed(Option("--jobs", "", commands=("list",), type=int,
                                 to_field=lambda v: v * 2), default=3)

    assert concern_from(Demo, argparse.Namespace(command="list", jobs=5)) == Demo(jobs=10)
    assert concern_from(Demo, argparse.Namespace(command="report", jobs=5)) == Demo(jobs=3)


def test_build_config_fills_every_concern_and_the_slurm_argv(tmp_path: Path) -> None:
    args = parse(["matrix", "--matrix", str(CI), "--on", "slurm", "--partition", "gpu",
                  "--cpu", "--timeout", "60", "transformers=5.17.0"])
    config = build_config(COMMANDS["matrix"].config, args)
    assert config.run.cpu and config.run.timeout_s == 60.0
    assert config.run.selectors == ("transformers=5.17.0",)
    assert isinstance(config.slurm, SlurmOptions) and config.slurm.partition == "gpu"
    assert "--cpu" in config.slurm.task_argv and "--timeout" in config.slurm.task_argv
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.run.cpu = False  # type: ignore[misc]


def test_env_fallback_comes_from_the_field_declaration(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with_env = [o for o in OPTIONS if o.env]
    assert {o.flag for o in with_env} >= {"--index-url", "--find-links", "--torch-backend",
                                          "--venv-dir"}
    for option in with_env:
        for command in option.commands:
            action = next(a for a in command_parser(command)._actions
                          if option.flag in a.option_strings)
            assert f"${option.env[0]}" in (action.help or ""), (command, option.flag)
    monkeypatch.setenv("PINMATRIX_TORCH_BACKEND", "not-a-backend")
    with pytest.raises(UsageError, match=r"\$PINMATRIX_TORCH_BACKEND"):
        check_options(parse(["resolve", "--matrix", str(CI)]))


def test_requires_and_conflicts_are_declared_on_fields_and_enforced(tmp_path: Path) -> None:
    rules = {o.flag: (o.requires, o.conflicts) for o in OPTIONS if o.requires or o.conflicts}
    assert rules == {"--model-hub": (("--model-cache",), ()),
                     "--resume": ((), ("--run-dir", "--shard"))}
    hub = tmp_path / "hub"
    hub.mkdir()
    with pytest.raises(UsageError, match="--model-hub .*needs --model-cache"):
        check_options(parse(["matrix", "--matrix", str(CI), "--model-hub", str(hub)]))
    check_options(parse(["matrix", "--matrix", str(CI), "--model-hub", str(hub),
                         "--model-cache", str(tmp_path / "models")]))
    with pytest.raises(UsageError, match="--resume cannot be combined with --shard"):
        check_options(parse(["matrix", "--matrix", str(CI), "--resume", "--shard", "1/2"]))


def test_cross_option_rules_exit_2_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["matrix", "--matrix", str(CI), "--reports", str(tmp_path / "r"), "--resume",
                 "--run-dir", str(tmp_path / "run")])
    assert code == 2 and "--resume cannot be combined with --run-dir" in capsys.readouterr().err


COMMAND_SIDE = [ROOT / "pinmatrix" / "commands", ROOT / "pinmatrix" / "run" / "slurm.py",
                ROOT / "pinmatrix" / "bisect" / "run.py", ROOT / "pinmatrix" / "run" / "doctor.py"]


def _sources():
    for place in COMMAND_SIDE:
        yield from (sorted(place.glob("*.py")) if place.is_dir() else [place])


def test_no_command_reads_the_argparse_namespace() -> None:
    """Outside the parsing layer (cli/main.py, run/options.py, and commands/base.py, which turns
    the parsed arguments into a config), nothing takes an argparse.Namespace, reads `args.NAME`
    or calls getattr on `args`."""
    for path in _sources():
        if path.name == "base.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "Namespace":
                raise AssertionError(f"{path}:{node.lineno}: takes an argparse.Namespace")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "getattr" and node.args
                    and isinstance(node.args[0], ast.Name) and node.args[0].id == "args"):
                raise AssertionError(f"{path}:{node.lineno}: getattr(args, ...)")
            if isinstance(node, ast.arg) and node.arg == "args":
                raise AssertionError(f"{path}:{node.lineno}: a parameter named args")
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "args" and node.attr not in ("append", "extend")):
                raise AssertionError(f"{path}:{node.lineno}: args.{node.attr}")


def test_the_cli_dispatches_over_the_registry_without_a_chain() -> None:
    """cli/main.py compares no command name with a string literal: the registry decides."""
    tree = ast.parse((ROOT / "pinmatrix" / "cli" / "main.py").read_text(encoding="utf-8"))
    names = set(COMMANDS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if isinstance(side, ast.Constant) and side.value in names:
                    raise AssertionError(f"cli/main.py:{node.lineno}: compares {side.value!r}")


def test_every_pinmatrix_variable_read_is_declared() -> None:
    """Each PINMATRIX_* variable the package reads is declared once: an option's fallback
    (Option.env) or an environment-only setting (HostSettings), so --help lists it. Variables
    pinmatrix sets for its probes (the cell id, the GPU lock) are not settings."""

    declared = {v.name for v in ENV_SETTINGS} | {n for o in OPTIONS for n in o.env}
    declared |= {n for names in SOURCE_ENV.values() for n in names}
    set_for_probes = {"PINMATRIX_CELL_ID", "PINMATRIX_GPU_LOCK", "PINMATRIX_COMPILE_CACHE"}
    read = set()
    for path in (ROOT / "pinmatrix").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        read |= set(re.findall(r"\b(PINMATRIX_[A-Z][A-Z_]*[A-Z])\b", text))
    assert read - set_for_probes - declared == set()


def test_top_level_help_lists_the_environment_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--help"])
    out = capsys.readouterr().out
    for var in ENV_SETTINGS:
        assert var.name in out
