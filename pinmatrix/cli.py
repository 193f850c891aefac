"""`python -m pinmatrix matrix|resolve|report|list [options] [selectors...]`.

Exit codes: 0 the command did its job (cells may be broken: that is data), 2 bad input (a bad
matrix file, selector, option), 1 a harness error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from pinmatrix.pipeline import DEFAULT_TIMEOUT_S, REPO_ROOT, RUNNERS, HarnessError, RunOptions

EXIT_OK, EXIT_HARNESS, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_MATRIX = REPO_ROOT / "matrix.yaml"
DEFAULT_REPORTS = REPO_ROOT / "reports"


class UsageError(Exception):
    pass


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
    common.add_argument("--label", help="suffix of the run id")
    src = common.add_argument_group("package sources (else PINMATRIX_*, then the host's pip settings)")
    src.add_argument("--index-url", metavar="URL")
    src.add_argument("--extra-index-url", action="append", default=[], metavar="URL")
    src.add_argument("--find-links", action="append", default=[], metavar="DIR")
    src.add_argument("--ca-bundle", type=Path, metavar="FILE")
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
    "list": "list the selected cell ids",
}
USAGE = "usage: python -m pinmatrix {" + "|".join(COMMANDS) + "} [options] [selectors...]"


def command_parser(command: str) -> argparse.ArgumentParser:
    """One parser per command (no subparsers: argparse cannot mix those with interleaved positionals)."""
    parser = _Parser(prog=f"python -m pinmatrix {command}", description=COMMANDS[command],
                     parents=[build_parser()])
    if command == "report":
        parser.add_argument("--run", type=Path, help="run folder (default: reports/latest)")
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
    from pinmatrix.errors import MatrixError, SelectionError

    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        if args.runner not in RUNNERS:
            raise UsageError(f"--runner {args.runner!r}: choose one of {', '.join(RUNNERS)}")
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError(f"--timeout {args.timeout}: must be positive")
        for site in args.extra_site:
            if not site.is_dir():
                raise UsageError(f"--extra-site {site}: not a folder")
        if args.ca_bundle is not None and not args.ca_bundle.is_file():
            raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
        return _dispatch(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MatrixError, SelectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HarnessError as exc:
        print(f"harness error: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    except BrokenPipeError:  # `python -m pinmatrix list | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "report":
        return _report(args)
    opts = _options(args)
    if args.command == "list":
        from pinmatrix.pipeline import load_cells

        _, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu)
        for cell in cells:
            print(cell.id)
        return EXIT_OK
    if args.command == "resolve":
        from pinmatrix.pipeline import resolve_only

        run_dir = resolve_only(opts)
        print(f"locks: {run_dir / 'locks'}")
        return EXIT_OK
    from pinmatrix.pipeline import run_matrix

    summary = run_matrix(opts)
    print(summary.verdict)
    print(f"report: {summary.run_dir / 'summary.md'}")
    if summary.harness_errors:
        print("harness errors (a bug in pinmatrix, not in the cells):", file=sys.stderr)
        for line in summary.harness_errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_HARNESS
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from pinmatrix.report import write_report

    run_dir = args.run or (args.reports / "latest")
    if not run_dir.is_dir():
        raise UsageError(f"no run folder at {run_dir} (run `python -m pinmatrix matrix` first, or pass --run DIR)")
    json_path, md_path = write_report(run_dir.resolve())
    import json

    print(json.loads(json_path.read_text())["verdict"])
    print(f"report: {md_path}")
    return EXIT_OK


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(matrix_path=args.matrix, selectors=tuple(args.selectors), runner=args.runner, cpu=args.cpu,
                      reports_dir=args.reports, timeout_s=args.timeout, sources=_sources(args), label=args.label,
                      venv_dir=args.venv_dir, system_site_packages=args.system_site_packages,
                      no_install=args.no_install, extra_sites=tuple(args.extra_site), offline=args.offline,
                      venv_python=args.venv_python,
                      keep_work=args.keep_work)


def _sources(args: argparse.Namespace) -> Any:
    """PackageSources: the command line first, then PINMATRIX_*, then the host's pip settings (§9)."""
    from pinmatrix.sources import PackageSources

    return PackageSources.from_env(index_url=args.index_url, extra_index_urls=args.extra_index_url or None,
                                   find_links=args.find_links or None,
                                   ca_bundle=str(args.ca_bundle) if args.ca_bundle else None)
