"""`python -m pinmatrix matrix|resolve|report|list [options] [selectors...]`.

Exit codes: 0 the command did its job (cells may be broken: that is data), 2 bad input (a bad
matrix file, selector, option), 1 a harness error.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from pinmatrix.errors import EXIT_HARNESS, EXIT_OK, PinmatrixError, UsageError
from pinmatrix.run.options import DEFAULT_TIMEOUT_S, REPO_ROOT, RUNNERS, RunOptions
DEFAULT_MATRIX = REPO_ROOT / "matrix.yaml"
DEFAULT_REPORTS = REPO_ROOT / "reports"


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 too; keep the message one line
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The options every command shares."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("selectors", nargs="*", metavar="SELECTOR",
                        help="AXIS=VALUE (e.g. transformers=5.17.0; same axis: any, different axes: all) or a cell id")
    common.add_argument("--matrix", type=Path, default=DEFAULT_MATRIX, help="matrix file (default: matrix.yaml)")
    common.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="reports folder (default: reports/)")
    common.add_argument("--runner", default="auto", help="docker | venv | auto (docker when an engine is found)")
    common.add_argument("--cpu", action="store_true", help="run on CPU even where GPUs exist")
    common.add_argument("--timeout", type=float, default=None, metavar="S",
                        help=f"per-cell probe timeout in seconds (default: the matrix's cell_timeout_s, else "
                             f"{DEFAULT_TIMEOUT_S:.0f})")
    common.add_argument("--check-timeout", type=float, default=None, metavar="S",
                        help="per-check timeout in seconds, enforced by the probe (default: the matrix's "
                             "settings.check_timeout_s)")
    common.add_argument("--no-flaky-rerun", action="store_true",
                        help="do not rerun failed check groups once to tell flaky from failing (pinmatrix/run/flaky.py)")
    common.add_argument("--model-cache", type=Path, metavar="DIR",
                        help="prefetch the matrix's models into DIR (HF_HOME layout) before the run, with HF_TOKEN "
                             "from the environment; cells get it read-only")
    common.add_argument("--model-hub", type=Path, metavar="DIR",
                        help="with --model-cache: a local folder of models (ORG/NAME/<commit>/) instead of the hub")
    common.add_argument("--no-compile-cache", action="store_true",
                        help="give every probe run an empty compile cache (a cold run: what a user's first run "
                             "costs) instead of its stack's cache from earlier runs (pinmatrix/runners/compile_cache.py)")
    common.add_argument("--label", help="suffix of the run id")
    common.add_argument("--snapshot", type=Path, metavar="FILE",
                        help="expand live axes from a run's run.json (or a snapshot file), offline, not the index")
    src = common.add_argument_group("package sources (else PINMATRIX_*, then the host's pip settings)")
    src.add_argument("--index-url", metavar="URL")
    src.add_argument("--extra-index-url", action="append", default=[], metavar="URL")
    src.add_argument("--find-links", action="append", default=[], metavar="DIR")
    src.add_argument("--ca-bundle", type=Path, metavar="FILE")
    src.add_argument("--torch-backend", metavar="NAME",
                     help="uv's torch backend: auto (the pin's +cuXXX/+cpu variant), cpu, cu130, ...; "
                          "for hosts that reach the PyTorch index (else use --find-links)")
    venv = common.add_argument_group("venv runner")
    venv.add_argument("--venv-dir", type=Path, help="where cell venvs live (default ~/.cache/pinmatrix/venvs)")
    venv.add_argument("--system-site-packages", action="store_true", help="reuse the host's packages (a CUDA torch)")
    venv.add_argument("--offline", action="store_true", help="install only from --find-links, no index")
    venv.add_argument("--no-install", action="store_true", help="install nothing; test what is there (with --extra-site)")
    venv.add_argument("--extra-site", action="append", type=Path, default=[], metavar="DIR",
                      help="an unpacked site folder put on the venv's path")
    venv.add_argument("--venv-python", metavar="PATH",
                      help="the interpreter every cell venv is made from (with --system-site-packages: the one holding torch)")
    venv.add_argument("--keep-work", action="store_true", help="keep each cell's work folder")

    return common


COMMANDS = {
    "matrix": "resolve, build and probe every selected cell, then report",
    "resolve": "resolve the selected cells' locks only",
    "report": "merge a run folder into summary.{md,json}",
    "list": "list the selected cell ids (--json: {\"cells\": [...], \"snapshot\": {...}} for a CI job matrix)",
    "nightly": "run the matrix, diff with the previous run, append reports/history.jsonl; exit 1 only on new breakages",
    "merge": "build a run folder from per-cell artifact folders (ARTIFACT_DIR...), report, diff, history",
    "run-cell": "run one cell of a prepared run folder (a Slurm array task; see pinmatrix/run/slurm.py)",
}
USAGE = "usage: python -m pinmatrix {" + "|".join(COMMANDS) + "} [options] [selectors...]"


def command_parser(command: str) -> argparse.ArgumentParser:
    """One parser per command (no subparsers: argparse cannot mix those with interleaved positionals)."""
    parser = _Parser(prog=f"python -m pinmatrix {command}", description=COMMANDS[command],
                     parents=[build_parser()])
    if command == "report":
        parser.add_argument("--run", type=Path, help="run folder (default: reports/latest)")
    if command in ("report", "nightly", "merge"):  # pinmatrix/report/nightly.py, pinmatrix/report/diff.py
        from pinmatrix.report.nightly import add_nightly_options

        add_nightly_options(parser, command)
    if command == "list":
        parser.add_argument("--json", action="store_true", help="print JSON: the cell ids and the live-axis snapshot")
    if command == "matrix":
        from pinmatrix.cli.scale import add_scale_options

        add_scale_options(parser)
    if command == "run-cell":
        from pinmatrix.cli.scale import add_run_cell_options

        add_run_cell_options(parser)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    if not argv or argv[0] in ("-h", "--help"):
        lines = [USAGE, "", *(f"  {name:8} {text}" for name, text in COMMANDS.items()),
                 "", "`python -m pinmatrix COMMAND --help` lists the options."]
        if not argv:
            raise UsageError("a command is required\n" + "\n".join(lines))
        print("\n".join(lines))
        raise SystemExit(0)
    command, rest = argv[0], list(argv[1:])
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}: choose one of {', '.join(COMMANDS)}")
    args = command_parser(command).parse_intermixed_args(rest)
    args.command = command
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        if args.runner not in RUNNERS:
            raise UsageError(f"--runner {args.runner!r}: choose one of {', '.join(RUNNERS)}")
        for flag, value in (("--timeout", args.timeout), ("--check-timeout", args.check_timeout)):
            if value is not None and not (math.isfinite(value) and value > 0):  # nan, inf, 0, negatives
                raise UsageError(f"{flag} {value}: must be positive (a finite number of seconds)")
        if args.model_hub is not None and (args.model_cache is None or not args.model_hub.is_dir()):
            raise UsageError(f"--model-hub {args.model_hub}: needs --model-cache, and must be a folder")
        if args.label is not None and not _LABEL.fullmatch(args.label):
            raise UsageError(f"--label {args.label!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
        for site in args.extra_site:
            if not site.is_dir():
                raise UsageError(f"--extra-site {site}: not a folder")
        if args.ca_bundle is not None and not args.ca_bundle.is_file():
            raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
        return _dispatch(args)
    except PinmatrixError as exc:  # bad input exits 2, a harness failure 1 (pinmatrix/errors.py)
        print(f"{exc.prefix}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C: no new cell starts; finished ones are kept (pinmatrix/run/state.py)
        print("\ninterrupted: finished cells are kept; `python -m pinmatrix matrix --resume` runs the rest "
              "(a cell already running finishes first)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python -m pinmatrix list | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "report":
        return _report(args)
    if args.command == "merge":
        from pinmatrix.report.nightly import merge_command

        return merge_command(args)
    opts = _options(args)
    if args.command == "run-cell":
        from pinmatrix.cli.scale import run_cell_command

        return run_cell_command(args, opts)
    if args.command == "nightly":
        from pinmatrix.report.nightly import nightly_command

        return nightly_command(args, opts)
    if args.command == "matrix":
        from pinmatrix.cli.scale import apply_scale_options

        opts = apply_scale_options(args, opts)
        if getattr(args, "on", "local") == "slurm":
            from pinmatrix.run.slurm import run_on_slurm

            return run_on_slurm(args, opts)
    if args.command == "list":
        from pinmatrix.run.pipeline import load_cells

        matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu, snapshot=opts.snapshot,
                              sources=opts.sources)
        if getattr(args, "json", False):
            import json

            print(json.dumps({"cells": [cell.id for cell in cells], "snapshot": getattr(matrix, "snapshot", None) or {}}))
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
        print(f"run stopped early: {summary.stopped}; finished cells are kept in {summary.run_dir}; "
              f"resume with `python -m pinmatrix matrix --resume {summary.run_dir.name}`", file=sys.stderr)
        return EXIT_HARNESS
    if summary.harness_errors:
        print("harness errors (a bug in pinmatrix, not in the cells):", file=sys.stderr)
        for line in summary.harness_errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_HARNESS
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from pinmatrix.report.write import write_report

    run_dir = args.run or (args.reports / "latest")
    if not run_dir.is_dir():
        raise UsageError(f"no run folder at {run_dir} (run `python -m pinmatrix matrix` first, or pass --run DIR)")
    json_path, md_path = write_report(run_dir.resolve(), previous=getattr(args, "previous", None))
    import json

    print(json.loads(json_path.read_text())["verdict"])
    print(f"report: {md_path}")
    from pinmatrix.report.pins import write_pins

    print(write_pins(run_dir.resolve()).message)
    return EXIT_OK


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(matrix_path=args.matrix, selectors=tuple(args.selectors), runner=args.runner, cpu=args.cpu,
                      reports_dir=args.reports, timeout_s=args.timeout, sources=_sources(args), label=args.label,
                      venv_dir=args.venv_dir, system_site_packages=args.system_site_packages,
                      no_install=args.no_install, extra_sites=tuple(args.extra_site), offline=args.offline,
                      venv_python=args.venv_python,
                      keep_work=args.keep_work, check_timeout_s=args.check_timeout,
                      flaky_rerun=not args.no_flaky_rerun, model_cache=args.model_cache, model_hub=args.model_hub,
                      snapshot=_snapshot(args.snapshot), compile_cache=not args.no_compile_cache)


def _sources(args: argparse.Namespace) -> Any:
    """PackageSources: the command line first, then PINMATRIX_*, then the host's pip settings (§9)."""
    from pinmatrix.sources import PackageSources

    return PackageSources.from_env(index_url=args.index_url, extra_index_urls=args.extra_index_url or None,
                                   find_links=args.find_links or None,
                                   ca_bundle=str(args.ca_bundle) if args.ca_bundle else None,
                                   torch_backend=args.torch_backend)


def _snapshot(path: Path | None) -> dict[str, Any] | None:
    """--snapshot FILE: a run.json (its "snapshot") or a bare snapshot ({"live": ...})."""
    if path is None:
        return None
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--snapshot {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--snapshot {path}: not readable JSON: {exc}") from None
    snapshot = data.get("snapshot", data) if isinstance(data, dict) else None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("live", {}), dict):
        raise UsageError(f"--snapshot {path}: no snapshot in it (expected run.json or {{\"live\": ...}})")
    return snapshot
