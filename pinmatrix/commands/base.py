"""What a command is (`Command`), and how its typed config is built from the parsed command line.

A command's config is a frozen dataclass whose fields are the concerns it reads (RunOptions,
SlurmOptions, ... in pinmatrix/run/options.py, each option declared on the field it fills) and,
where the command takes them, its positionals (`selectors`, or a field the parser fills, such as
`bundle`'s `out`). `run(config) -> int` never sees the argparse Namespace.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinmatrix.bundle import apply_bundle
from pinmatrix.errors import EXIT_BAD_INPUT, EXIT_INFRA, EXIT_OK, UsageError
from pinmatrix.fsio import load_json
from pinmatrix.run.options import (
    CONCERNS,
    RunOptions,
    SlurmOptions,
    concern_from,
    forwarded_argv,
    run_options,
)


@dataclass(frozen=True)
class Command:
    """One `python -m pinmatrix NAME`: `run` takes the frozen dataclass `config`. A standalone
    command (no matrix, selectors or run options) parses its own argv with `main`, from the
    options declared on its config's fields (own_parser)."""

    name: str
    help: str
    run: Callable[[Any], int]
    config: type
    usage: str | None = None  # replaces argparse's generated usage line
    main: Callable[[Sequence[str]], int] | None = None
    # run on the parsed arguments before the checks: the command's own positionals, or options
    # it derives from one (parse-time, like the parser itself)
    prepare: Callable[[argparse.Namespace], None] | None = None

    @property
    def standalone(self) -> bool:
        return self.main is not None


def build_config(config_type: type, args: argparse.Namespace) -> Any:
    """The command's typed config: each concern field built from the options declared on its
    fields, every other field from the parsed value of the same name (positionals)."""
    hints = typing.get_type_hints(config_type)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(config_type):
        kind = hints[item.name]
        if kind is RunOptions:
            values[item.name] = run_options(args)
        elif kind is SlurmOptions:  # the session's forwarded options travel with it
            values[item.name] = concern_from(SlurmOptions, args,
                                             task_argv=tuple(forwarded_argv(args)))
        elif kind in CONCERNS:
            values[item.name] = concern_from(kind, args)
        elif item.name in vars(args):
            value = vars(args)[item.name]
            values[item.name] = tuple(value) if isinstance(value, list) else value
    return config_type(**values)


def own_parser(config_type: type, prog: str, description: str | None) -> argparse.ArgumentParser:
    """A standalone command's parser, from the options declared on its config's fields."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for item in dataclasses.fields(config_type):
        for option in item.metadata.get("options", ()):
            parser.add_argument(*option.aliases, option.flag, **option.argparse_kwargs())
    return parser


def parse_own(name: str, config_type: type, argv: Sequence[str],
              description: str | None) -> Any:
    """The standalone command's typed config, or its exit code when argparse stopped (--help: 0,
    bad input: 2, argparse's usage line printed)."""
    parser = own_parser(config_type, f"python -m pinmatrix {name}", description)
    try:
        parsed = parser.parse_args(list(argv))
    except SystemExit as exc:
        return EXIT_OK if not exc.code else EXIT_BAD_INPUT
    parsed.command = name
    return concern_from(config_type, parsed)


def out_first(parsed: argparse.Namespace) -> None:
    """`bundle OUT [selectors...]`: the first positional is the output folder."""
    if not parsed.selectors:
        raise UsageError("bundle: the output folder is required (python -m pinmatrix "
                         "bundle OUT [selectors...])")
    parsed.bundle_out, parsed.selectors = Path(parsed.selectors[0]), parsed.selectors[1:]


def from_bundle(parsed: argparse.Namespace) -> None:
    """`matrix --bundle DIR`: the options that run the bundle's cells offline (bundle.py)."""
    if parsed.bundle is not None:

        apply_bundle(parsed)


def takes_config(command: Command) -> type | None:
    """The type `command.run`'s one parameter is annotated with."""
    hints = typing.get_type_hints(command.run)
    params = [name for name in hints if name != "return"]
    return hints[params[0]] if len(params) == 1 else None


def infra_exit(run_dir: Any) -> int:
    """EXIT_INFRA when any cell of the finished run is `infra`, said on stderr; else EXIT_OK."""

    infra = infra_cells(run_dir)
    if infra:
        print(f"{len(infra)} cell{'s' if len(infra) != 1 else ''} could not be judged (infra): "
              f"exit {EXIT_INFRA}; see the report's infra section", file=sys.stderr)
        return EXIT_INFRA
    return EXIT_OK


def infra_cells(run_dir: Any) -> list[str]:
    """The cells of a finished run whose status is `infra` (summary.json)."""
    try:
        data = load_json(run_dir / "summary.json")
    except (OSError, ValueError):
        return []
    return [c["id"] for c in data.get("cells", []) if c.get("status") == "infra"]
