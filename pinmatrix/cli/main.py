"""`python -m pinmatrix COMMAND [options] [selectors...]`: parse, build the command's typed config,
and run it (the commands: pinmatrix/commands/).

Exit codes: 0 the command did its job (cells may be broken: that is data), 2 bad input (a bad
matrix file, selector, option; or a host on which no selected cell could be judged), 1 a harness
error, 3 `matrix` finished with `infra` cells (pinmatrix/errors.py).
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from pinmatrix.commands import COMMANDS as REGISTRY
from pinmatrix.commands.base import build_config
from pinmatrix.console import escaped_output
from pinmatrix.errors import EXIT_BAD_INPUT, EXIT_HARNESS, EXIT_OK, PinmatrixError, UsageError
from pinmatrix.interrupt import console_line
from pinmatrix.run.options import (
    ALL_COMMANDS,
    ENV_SETTINGS,
    OPTIONS,
    HostSettings,
    check_options,
    options_for,
)


class _Parser(argparse.ArgumentParser):
    # argparse's own exit code is 2 too; keep the message one line
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command, from the option table (pinmatrix/run/options.py); without a
    command, only the options every command shares."""
    parser = argparse.ArgumentParser(add_help=False) if command is None else _Parser(
        prog=f"python -m pinmatrix {command}", description=COMMANDS[command])
    parser.add_argument("selectors", nargs="*", metavar="SELECTOR",
                        help="AXIS=VALUE (e.g. transformers=5.17.0; same axis: any, different "
                             "axes: all) or a cell id")
    groups: dict[str | None, Any] = {None: parser}
    for option in OPTIONS if command is None else options_for(command):
        if command is None and option.commands != ALL_COMMANDS:
            continue
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        groups[option.group].add_argument(option.flag, **option.argparse_kwargs())
    return parser


# The commands (pinmatrix/commands/): those parsed from the option table, and the standalone ones
# with parsers of their own
COMMANDS = {name: c.help for name, c in REGISTRY.items() if not c.standalone}
STANDALONE = {name: c.help for name, c in REGISTRY.items() if c.standalone}
USAGE = "usage: python -m pinmatrix {" + "|".join(COMMANDS) + "} [options] [selectors...]"


def command_parser(command: str) -> argparse.ArgumentParser:
    """One parser per command (no subparsers: argparse cannot mix those with interleaved
    positionals)."""
    parser = build_parser(command)
    if REGISTRY[command].usage:
        parser.usage = REGISTRY[command].usage
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    if not argv or argv[0] in ("-h", "--help"):
        listed = {**COMMANDS, **STANDALONE}
        lines = [USAGE, "", *(f"  {name:8} {text}" for name, text in listed.items()),
                 "", "`python -m pinmatrix COMMAND --help` lists the options.", "",
                 "environment (no option stands in for these):",
                 *(f"  {var.name}: {var.help}" for var in ENV_SETTINGS)]
        if not argv:
            raise UsageError("a command is required\n" + "\n".join(lines))
        print("\n".join(lines))
        raise SystemExit(0)
    command, rest = argv[0], list(argv[1:])
    standalone = REGISTRY[command].main if command in REGISTRY else None
    if standalone is not None:
        raise SystemExit(standalone(rest))
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}: choose one of "
                         f"{', '.join([*COMMANDS, *STANDALONE])}")
    args = command_parser(command).parse_intermixed_args(rest)
    args.command = command
    prepare = REGISTRY[command].prepare
    if prepare is not None:  # the command's own positionals, or options it derives
        prepare(args)
    return args


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (a CI job's cancel, `kill`) takes Ctrl-C's path: running cells are stopped and
    # recorded, the summary is written after them (pinmatrix/interrupt.py)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    with escaped_output():  # every console line is text, never terminal control
        return _main(argv)


def _main(argv: Sequence[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
        # Python leaves SIGINT ignored when the process started with it ignored, as a shell's
        # background job (`pinmatrix ... &`, a CI step run that way) does: `kill -INT` then did
        # nothing, and every child (uv, the probe) inherited the ignore. Ctrl-C's path always.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        # each option's own bounds and the rules between options, all declared on the typed
        # fields (run/options.py)
        check_options(args)
        command = REGISTRY[args.command]
        return command.run(build_config(command.config, args))
    except PinmatrixError as exc:  # bad input exits 2, a harness failure 1 (pinmatrix/errors.py)
        print(f"{exc.prefix}: {_clip(str(exc))}", file=sys.stderr)
        return exc.exit_code
    # Ctrl-C: no new cell starts; finished ones are kept (pinmatrix/run/state.py)
    except KeyboardInterrupt as exc:
        print(f"\n{console_line(exc)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python -m pinmatrix list | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        # A path the user named that cannot be used (read-only, a file where a folder goes) is bad
        # input; anything else the machine did (disk full, I/O) is the harness's failure.
        where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        line = _clip(f"{where}: {exc.strerror or exc}" if where else str(exc))
        if exc.errno in _PATH_ERRNOS:
            print(f"error: {line}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"harness error: {line}", file=sys.stderr)
        return EXIT_HARNESS
    except Exception as exc:  # a bug in pinmatrix: one line, not a traceback, unless asked for one
        if HostSettings.read().traceback:
            raise
        print(f"harness error (a bug in pinmatrix): {type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:300]} (PINMATRIX_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return EXIT_HARNESS


def _clip(message: str, limit: int = 600) -> str:
    """A message that quotes a 5,000-character argument stays one readable line."""
    if len(message) <= limit:
        return message
    return f"{message[:limit - 100]}... ({len(message)} characters) ...{message[-60:]}"


_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
                errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}
