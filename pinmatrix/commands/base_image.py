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

import json
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pinmatrix.commands.base import parse_own
from pinmatrix.containers import engine as engines
from pinmatrix.containers import host_base
from pinmatrix.containers.host_base import HostBaseError, HostBaseInputError
from pinmatrix.run.options import Option, typed

EXIT_OK, EXIT_HARNESS, EXIT_BAD_INPUT = 0, 1, 2
# docker's reference grammar, simplified: lower-case name components, an optional tag
_TAG = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                  r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _say(line: str) -> None:
    print(f"base-image: {line}", file=sys.stderr, flush=True)


HELP = ("make a prepared base image from this host's Python and torch, no network "
        "(--python PY --tag NAME:TAG; pinmatrix/commands/base_image.py)")


_ME = ("base-image",)


@dataclass(frozen=True)
class BaseImageConfig:
    python: str = typed(Option(
        "--python", "the interpreter whose packages the image holds (a venv's python is allowed: "
        "its site-packages move to the base interpreter's)", commands=_ME, required=True))
    tag: str | None = typed(Option(
        "--tag", "NAME:TAG of the image to make (required unless --dry-run)", commands=_ME),
        default=None)
    package: tuple[str, ...] = typed(Option(
        "--package", "a distribution to include with all it requires (repeatable; default: "
        "torch)", commands=_ME, action="append", to_field=tuple), default=())
    engine: str | None = typed(Option(
        "--engine", "the docker (or podman) client to use (default: the one the docker runner "
        "finds)", commands=_ME), default=None)
    dry_run: bool = typed(Option("--dry-run", "plan only: what would go in, no engine needed",
                                 commands=_ME, action="store_true"), default=False)


def main(argv: Sequence[str]) -> int:
    config = parse_own("base-image", BaseImageConfig, argv,
                       "make a prepared base image from this host's Python and torch, with no "
                       "network")
    return config if isinstance(config, int) else run(config)


def run(config: BaseImageConfig) -> int:
    packages = list(config.package) or ["torch"]
    try:
        if not config.dry_run and (config.tag is None or not _TAG.fullmatch(config.tag)):
            raise host_base.HostBaseInputError(
                f"--tag {config.tag!r}: give NAME:TAG (lower-case name, e.g. "
                "pinmatrix/host-base:py312-torch2.11)" if config.tag else
                "--tag NAME:TAG is required (or --dry-run)")
        engine = None if config.dry_run else _engine(config.engine)
        start = time.monotonic()
        plan = host_base.plan_image(config.python, packages, _say)
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
        if config.dry_run:
            print(json.dumps({"dry_run": True, "files": len(files), "bytes": plan.total_bytes,
                              "labels": plan.labels(), "tools": plan.tools,
                              "ldd_missing": sorted(plan.ldd_missing),
                              "driver_left_out": plan.driver_left_out}))
            return EXIT_OK
        assert config.tag is not None  # checked above unless --dry-run
        made = host_base.make_image(engine, plan, config.tag, packages, _say)
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
    if client is not None:

        path = shutil.which(client)
        attempt = engines.probe_client(path or client)
        if attempt.engine is None:
            raise HostBaseInputError(f"--engine {client}: {attempt.problem}")
        return attempt.engine
    found = engines.find_engine()
    if found is None:
        raise HostBaseError(engines.engine_message())
    return found
