"""`python -m pinmatrix base-image --python PYTHON --tag NAME:TAG [--package NAME ...]
[--engine CLIENT] [--dry-run]`

Makes a prepared base image (the `torch: base` axis value, docs/CONTRACTS.md §7) from the host
itself: its interpreter, the distributions named by `--package` (default: torch) and everything
they require, the shared libraries all of it links, and the tools docker/Dockerfile's RUN steps
call, streamed to `docker import` with no network (pinmatrix/containers/host_base.py says what goes
in and why). The image is imported untagged, run once as uid 1000 with `--network none` to check
that its python3 sees every distribution at the host's version and imports the requested ones, and
only then tagged: a failure at any step leaves no tag behind (and removes the untagged image).
`--dry-run` stops after the plan (files, bytes, libraries), with no engine needed.

Progress goes to stderr; the last stdout line is one JSON object: image, id, import_s, size, labels.

Exit codes: 0 made; 2 bad input (the python does not run, a package is not installed, an engine
client that does not work, a bad tag), one line; 1 the engine or the image failed.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Sequence

EXIT_OK, EXIT_HARNESS, EXIT_BAD_INPUT = 0, 1, 2
# docker's reference grammar, simplified: lower-case name components, an optional tag
_TAG = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                  r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _say(line: str) -> None:
    print(f"base-image: {line}", file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> int:
    from pinmatrix.containers import host_base

    parser = argparse.ArgumentParser(prog="python -m pinmatrix base-image",
                                     description="make a prepared base image from this host's "
                                                 "Python and torch, with no network")
    parser.add_argument("--python", required=True,
                        help="the interpreter whose packages the image holds (a venv's python "
                             "is allowed: its site-packages move to the base interpreter's)")
    parser.add_argument("--tag", help="NAME:TAG of the image to make (required unless "
                                      "--dry-run)")
    parser.add_argument("--package", action="append", default=[],
                        help="a distribution to include with all it requires (repeatable; "
                             "default: torch)")
    parser.add_argument("--engine", default=None,
                        help="the docker (or podman) client to use (default: the one the docker "
                             "runner finds)")
    parser.add_argument("--dry-run", action="store_true",
                        help="plan only: what would go in, no engine needed")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_BAD_INPUT
    packages = args.package or ["torch"]
    try:
        if not args.dry_run and (args.tag is None or not _TAG.fullmatch(args.tag)):
            raise host_base.HostBaseInputError(
                f"--tag {args.tag!r}: give NAME:TAG (lower-case name, e.g. "
                "pinmatrix/host-base:py312-torch2.11)" if args.tag else
                "--tag NAME:TAG is required (or --dry-run)")
        engine = None if args.dry_run else _engine(args.engine)
        start = time.monotonic()
        plan = host_base.plan_image(args.python, packages, _say)
        files = plan.fileset.files()
        _say(f"planned in {time.monotonic() - start:.0f} s: {len(plan.fileset.members)} "
             f"members, {len(files)} files, {host_base.mib(plan.total_bytes)}; "
             f"{len(plan.packages)} distributions "
             f"({', '.join(f'{n} {v}' for n, v in sorted(plan.packages.items())[:8])}"
             f"{', ...' if len(plan.packages) > 8 else ''}); tools "
             f"{' '.join(sorted(plan.tools))}"
             + (f"; driver libraries left out: {len(plan.driver_left_out)}"
                if plan.driver_left_out else ""))
        missing_tools = [t for t in host_base.DOCKERFILE_TOOLS if t not in plan.tools]
        if missing_tools:
            _say(f"warning: not on this host, so not in the image: {' '.join(missing_tools)}; "
                 "the Dockerfile steps that call them will fail: install them on this host "
                 "(the package that provides each) and run base-image again")
        if args.dry_run:
            print(json.dumps({"dry_run": True, "files": len(files), "bytes": plan.total_bytes,
                              "labels": plan.labels(), "tools": plan.tools,
                              "ldd_missing": sorted(plan.ldd_missing),
                              "driver_left_out": plan.driver_left_out}))
            return EXIT_OK
        made = host_base.make_image(engine, plan, args.tag, packages, _say)
        _say(f"tagged {made['image']} ({host_base.mib(made['size'])}) in "
             f"{time.monotonic() - start:.0f} s in all")
        print(json.dumps(made))
        return EXIT_OK
    except host_base.HostBaseInputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except host_base.HostBaseError as exc:
        print(f"harness error: {' '.join(str(exc).split())[:800]}", file=sys.stderr)
        return EXIT_HARNESS
    except OSError as exc:  # a host file that vanished or cannot be read, the engine gone
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"harness error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_HARNESS


def _engine(client: str | None) -> object:
    from pinmatrix.containers import engine as engines
    from pinmatrix.containers.host_base import HostBaseError, HostBaseInputError

    if client is not None:
        import shutil

        path = shutil.which(client)
        attempt = engines.probe_client(path or client)
        if attempt.engine is None:
            raise HostBaseInputError(f"--engine {client}: {attempt.problem}")
        return attempt.engine
    found = engines.find_engine()
    if found is None:
        raise HostBaseError(engines.engine_message())
    return found
