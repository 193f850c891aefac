"""`python -m pinmatrix matrix|resolve|report|list [options] [selectors...]`.

Exit codes: 0 the command did its job (cells may be broken: that is data), 2 bad input (a bad
matrix file, selector, option; or a host on which no selected cell could be judged), 1 a harness
error, 3 `matrix` finished with `infra` cells (pinmatrix/errors.py).
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from pinmatrix.errors import (EXIT_BAD_INPUT, EXIT_HARNESS, EXIT_INFRA, EXIT_OK, PinmatrixError,
                              UsageError)
from pinmatrix.run.options import (ALL_COMMANDS, OPTIONS, RUNNERS, check_options, options_for,
                                   run_options)
from pinmatrix.fsio import load_json

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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


COMMANDS = {
    "matrix": "resolve, build and probe every selected cell, then report",
    "resolve": "resolve the selected cells' locks only",
    "report": "merge a run folder into summary.{md,json}",
    "list": "list the selected cell ids (--json: {\"cells\": [...], \"snapshot\": {...}} for a CI "
            "job matrix)",
    "nightly": "run the matrix, diff with the previous run, append reports/history.jsonl; exit 1 "
               "only on new breakages",
    "merge": "build a run folder from per-cell artifact folders (ARTIFACT_DIR...), report, diff, "
             "history",
    "doctor": "can this host judge the selected cells? one line per capability, with its remedy; "
              "exit 2 when no cell could be judged (pinmatrix/run/doctor.py)",
    "run-cell": "run one cell of a prepared run folder (a Slurm array task; see "
                "pinmatrix/run/slurm.py)",
    "bisect": "PACKAGE GOOD..BAD: the first bad release, each step a real cell "
              "(pinmatrix/bisect/run.py)",
    "bundle": "OUT: pack what a host without network needs for the selected cells (wheels, or "
              "site layers against --host-packages), a manifest and the command "
              "(pinmatrix/bundle.py)",
}
# Commands that take no matrix, selectors or run options: each has its own small parser.
STANDALONE = {
    "remote-code-surface": "the transformers surface of remote-code files, read with ast "
                           "(PATH|REPO@REV; pinmatrix/cli/surface.py)",
    "cdi-spec": "write a CDI spec (nvidia.com/gpu) for this host's GPUs and driver files "
                "([-o FILE|-]; pinmatrix/cli/cdi_spec.py)",
    "base-image": "make a prepared base image from this host's Python and torch, no network "
                  "(--python PY --tag NAME:TAG; pinmatrix/cli/base_image.py)",
    "which": "does YOUR stack (FILE or --here) LoRA-train EXAONE, how fast, and the smallest "
             "change that makes it (pinmatrix/which/cli.py)",
}
USAGE = "usage: python -m pinmatrix {" + "|".join(COMMANDS) + "} [options] [selectors...]"


def command_parser(command: str) -> argparse.ArgumentParser:
    """One parser per command (no subparsers: argparse cannot mix those with interleaved
    positionals)."""
    parser = build_parser(command)
    if command == "merge":
        parser.usage = ("python -m pinmatrix merge ARTIFACT_DIR... [--previous DIR] [--history "
                        "FILE] "
                        "[--expected-cells FILE] [--reports DIR] [--label LABEL]")
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    if not argv or argv[0] in ("-h", "--help"):
        listed = {**COMMANDS, **STANDALONE}
        lines = [USAGE, "", *(f"  {name:8} {text}" for name, text in listed.items()),
                 "", "`python -m pinmatrix COMMAND --help` lists the options."]
        if not argv:
            raise UsageError("a command is required\n" + "\n".join(lines))
        print("\n".join(lines))
        raise SystemExit(0)
    command, rest = argv[0], list(argv[1:])
    if command == "remote-code-surface":
        from pinmatrix.cli.surface import main as surface_main

        raise SystemExit(surface_main(rest))
    if command == "cdi-spec":
        from pinmatrix.cli.cdi_spec import main as cdi_spec_main

        raise SystemExit(cdi_spec_main(rest))
    if command == "base-image":
        from pinmatrix.cli.base_image import main as base_image_main

        raise SystemExit(base_image_main(rest))
    if command == "which":
        from pinmatrix.which.cli import main as which_main

        raise SystemExit(which_main(rest))
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}: choose one of "
                         f"{', '.join([*COMMANDS, *STANDALONE])}")
    args = command_parser(command).parse_intermixed_args(rest)
    args.command = command
    if command == "bundle":
        if not args.selectors:
            raise UsageError("bundle: the output folder is required (python -m pinmatrix "
                             "bundle OUT [selectors...])")
        args.bundle_out, args.selectors = Path(args.selectors[0]), args.selectors[1:]
    if command == "matrix" and getattr(args, "bundle", None) is not None:
        from pinmatrix.bundle import apply_bundle

        apply_bundle(args)
    return args


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (a CI job's cancel, `kill`) takes Ctrl-C's path: running cells are stopped and
    # recorded, the summary is written after them (pinmatrix/interrupt.py)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    from pinmatrix.console import escaped_output

    with escaped_output():  # every console line is text, never terminal control
        return _main(argv)


def _main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        if args.runner not in RUNNERS:
            raise UsageError(f"--runner {args.runner!r}: choose one of {', '.join(RUNNERS)}")
        check_options(args)  # each option's own bounds and contradictions (run/options.py)
        if args.model_hub is not None and (args.model_cache is None or not args.model_hub.is_dir()):
            raise UsageError(f"--model-hub {args.model_hub}: needs --model-cache, and must be a "
                             "folder")
        if args.label is not None and not _LABEL.fullmatch(args.label):
            raise UsageError(f"--label {args.label!r}: use letters, digits, '.', '_' or '-' (it "
                             "names a folder)")
        for site in args.extra_site:
            if not site.is_dir():
                raise UsageError(f"--extra-site {site}: not a folder")
        return _dispatch(args)
    except PinmatrixError as exc:  # bad input exits 2, a harness failure 1 (pinmatrix/errors.py)
        print(f"{exc.prefix}: {_clip(str(exc))}", file=sys.stderr)
        return exc.exit_code
    # Ctrl-C: no new cell starts; finished ones are kept (pinmatrix/run/state.py)
    except KeyboardInterrupt as exc:
        from pinmatrix.interrupt import console_line

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
        if os.environ.get("PINMATRIX_TRACEBACK"):
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


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "report":
        return _report(args)
    if args.command == "merge":
        from pinmatrix.report.nightly import merge_command

        return merge_command(args)
    opts = run_options(args)
    if args.command == "bundle":
        from pinmatrix.bundle import build_bundle

        build_bundle(opts, args.bundle_out, host_packages=args.host_packages,
                     part_mib=args.part_mib)
        return EXIT_OK
    if args.command == "bisect":
        from pinmatrix.bisect.run import bisect_command

        return bisect_command(args, opts)
    if args.command == "run-cell":
        from pinmatrix.run.slurm import run_cell_task

        return run_cell_task(args, opts)
    if args.command == "nightly":
        from pinmatrix.report.nightly import nightly_command

        return nightly_command(args, opts)
    if args.command == "doctor":
        from pinmatrix.run.doctor import doctor_command

        return doctor_command(opts)
    if args.command == "matrix":
        if args.on == "slurm":
            from pinmatrix.run.slurm import run_on_slurm

            slurm_run = run_on_slurm(args, opts)
            # The local run's rule: a table with infra cells exits 3 however its cells ran.
            return EXIT_OK if slurm_run is None else _infra_exit(slurm_run)
        if opts.resume is None:  # the doctor's checks first: no all-infra table (issue 13)
            from pinmatrix.run.doctor import preflight
            from pinmatrix.run.pipeline import load_cells

            _, selected = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu,
                                     snapshot=opts.snapshot, sources=opts.sources)
            preflight(opts, selected)
    if args.command == "list":
        from pinmatrix.run.pipeline import load_cells

        matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu,
                                   snapshot=opts.snapshot,
                              sources=opts.sources)
        if getattr(args, "json", False):
            import json

            print(json.dumps({"cells": [cell.id for cell in cells],
                              "snapshot": getattr(matrix, "snapshot", None) or {}}))
            return EXIT_OK
        for cell in cells:
            print(cell.id)
        return EXIT_OK
    if args.command == "resolve":
        from pinmatrix.run.pipeline import resolve_only

        run_dir = resolve_only(opts)
        print(f"locks: {run_dir / 'locks'}")
        return EXIT_OK
    from pinmatrix.run.pipeline import run_matrix

    summary = run_matrix(opts)
    print(summary.verdict)
    print(f"report: {summary.run_dir / 'summary.md'}")
    if summary.stopped:  # infra, not a bug: what finished is kept, the rest is retried by --resume
        print(f"run stopped early: {summary.stopped}; finished cells are kept in "
              f"{summary.run_dir}; "
              f"resume with `python -m pinmatrix matrix --resume {summary.run_dir.name}`",
              file=sys.stderr)
        return EXIT_HARNESS
    if summary.harness_errors:
        print("harness errors (a bug in pinmatrix, not in the cells):", file=sys.stderr)
        for line in summary.harness_errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_HARNESS
    return _infra_exit(summary.run_dir)


def _infra_exit(run_dir: Any) -> int:
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
        data = load_json((run_dir / "summary.json"))
    except (OSError, ValueError):
        return []
    return [c["id"] for c in data.get("cells", []) if c.get("status") == "infra"]


def _report(args: argparse.Namespace) -> int:
    from pinmatrix.report.write import write_report

    from pinmatrix.run.folder import check_run_folder

    run_dir = args.run or (args.reports / "latest")
    if not run_dir.is_dir():
        raise UsageError(f"no run folder at {run_dir} (run `python -m pinmatrix matrix` first, or "
                         "pass --run DIR)")
    check_run_folder(run_dir, "--run" if args.run else "--reports")
    pins_for = tuple(getattr(args, "pins_for", None) or ())
    from pinmatrix.fsio import published_together
    from pinmatrix.interrupt import held
    from pinmatrix.report.pins import write_pins

    # one set: an interrupt waits for the whole report, or a second one keeps the old report
    with held(), published_together():
        json_path, md_path = write_report(run_dir.resolve(),
                                          previous=getattr(args, "previous", None),
                                          pins_for=pins_for)
        pins_message = write_pins(run_dir.resolve(), pins_for=pins_for).message

    summary = load_json(json_path)
    for item in summary.get("damaged", []):  # said on the console too, not only in summary.md
        print(f"warning: {item['path']}: {item['why']}", file=sys.stderr)
    print(summary["verdict"])
    print(f"report: {md_path}")
    print(pins_message)
    return EXIT_OK
