"""The `matrix` command's scale options (issue 6), kept apart from pinmatrix/cli/main.py.

    --rerun [SELECTOR]   run again even where a cached result exists (bare: every cell; repeatable)
    --resume [RUN]       continue an interrupted run (default: the latest unfinished one)
    --gpus 0,1           the GPUs to use (default: every GPU `nvidia-smi -L` lists)
    --build-jobs N       image/venv builds at once (default 2)
    --cpu-jobs N         cells at once where no GPU is used (default 1)
    --shard i/n          run shard i of n (1-based); combine with --run-dir to share one run folder
    --run-dir DIR        write into this run folder (created when absent), e.g. a shared filesystem
    --on local|slurm     where the cells run (slurm: pinmatrix/run/slurm.py)
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pinmatrix.errors import ResumeError, SchedulerError
from pinmatrix.run.scheduler import parse_gpu_list
from pinmatrix.run.shard import parse_shard


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scale: cache, resume, GPUs, shards, Slurm")
    g.add_argument("--rerun", action="append", nargs="?", const="", metavar="SELECTOR",
                   help="run again despite a cached result; bare: all cells, else the cells the selector matches")
    g.add_argument("--resume", nargs="?", const="", metavar="RUN",
                   help="continue an interrupted run (default: the latest unfinished), keeping its finished cells")
    g.add_argument("--gpus", metavar="LIST", help="GPU indices to use, e.g. 0,1 (default: all that nvidia-smi lists)")
    g.add_argument("--build-jobs", type=int, default=2, metavar="N", help="builds at once (default 2)")
    g.add_argument("--cpu-jobs", type=int, default=1, metavar="N", help="cells at once without GPUs (default 1)")
    g.add_argument("--shard", metavar="I/N", help="run shard I of N (1-based) of the selected cells")
    g.add_argument("--run-dir", type=Path, metavar="DIR", help="write into this run folder (shared by shards)")
    g.add_argument("--no-live", action="store_true", help="plain log lines even on a terminal")
    g.add_argument("--on", choices=("local", "slurm"), default="local", help="where cells run (default local)")
    s = parser.add_argument_group("slurm (with --on slurm)")
    s.add_argument("--partition", metavar="NAME", help="sbatch --partition")
    s.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="one more sbatch option, e.g. --sbatch-arg=--time=02:00:00 (repeatable)")
    s.add_argument("--slurm-deadline", type=float, default=None, metavar="S",
                   help="give up waiting after S seconds; unfinished tasks become infra (default: 2 × cell timeout + 1h)")
    s.add_argument("--slurm-poll", type=float, default=10.0, metavar="S", help="sacct polling interval (default 10)")


def apply_scale_options(args: argparse.Namespace, opts):
    if args.build_jobs < 1:
        raise SchedulerError(f"--build-jobs {args.build_jobs}: must be at least 1")
    if args.cpu_jobs < 1:
        raise SchedulerError(f"--cpu-jobs {args.cpu_jobs}: must be at least 1")
    if args.resume is not None and (args.run_dir is not None or args.shard):
        raise ResumeError("--resume continues one run; it cannot be combined with --run-dir or --shard")
    return dataclasses.replace(
        opts,
        rerun=None if args.rerun is None else [("" if v in ("all", None) else v) for v in args.rerun],
        resume=args.resume,
        run_dir=args.run_dir,
        gpus=parse_gpu_list(args.gpus) if args.gpus else None,
        build_jobs=args.build_jobs,
        cpu_jobs=args.cpu_jobs,
        shard=parse_shard(args.shard) if args.shard else None,
        live_progress=False if args.no_live else None,
    )


def add_run_cell_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, required=True, metavar="DIR", help="the run folder (shared)")
    parser.add_argument("--index", type=int, metavar="N", help="the cell's line in DIR/slurm/cells.txt "
                                                               "(default: $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--rerun", action="append", nargs="?", const="", metavar="SELECTOR",
                        help="run again despite a cached result")


def run_cell_command(args: argparse.Namespace, opts) -> int:
    from pinmatrix.run.slurm import run_cell_task

    opts = dataclasses.replace(opts, rerun=None if args.rerun is None else
                               [("" if v in ("all", None) else v) for v in args.rerun])
    return run_cell_task(args, opts)
