"""`python -m pinmatrix remote-code-surface PATH|REPO@REV [--package PKG] [--facts FILE] [-o OUT]`

Writes the transformers surface of remote-code files as JSON (probes/remote_code_surface.py): what a
`trust_remote_code=True` model imports from transformers, the keywords it passes, the
class-attribute
forms, buffers, config fields and module names. The files are parsed with `ast` and never run.

- PATH: one `*.py` file, or a folder (every `modeling_*.py` and `configuration_*.py` in it).
- REPO@REV: the snapshot of that hub repo at that revision in the local hub cache (HF_HOME);
nothing is
  downloaded.
- `--package`: resolve relative imports as if the file sat in that package (a native port inside
  transformers, e.g. `transformers.models.exaone`).
- `--facts FILE`: also compare with a facts file (probes/fixtures/exaone35/revisions/*.json) and
list
  every difference; the exit code is still 0 (a difference is a finding, not an error).

Exit codes: 0 written, 2 bad input (no such file or snapshot, a file that does not parse:
FILE:LINE:COL).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinmatrix.commands.base import parse_own
from pinmatrix.errors import BadInput
from pinmatrix.fsio import Refused, read_bytes_bounded, write_text_atomic
from pinmatrix.run.options import Option, typed
from probes.models import find_snapshot, hub_cache_dir
from probes.remote_code_surface import SURFACE_SCHEMA, compare, extract_file

EXIT_OK, EXIT_BAD_INPUT = 0, 2


class SurfaceInputError(BadInput):
    """Bad input; the message names the file (and line) at fault."""


def _files(target: str) -> tuple[list[Path], dict[str, Any]]:
    path = Path(target)
    if path.is_file():
        return [path], {"path": str(path)}
    if path.is_dir():
        files = sorted([*path.glob("modeling_*.py"), *path.glob("configuration_*.py")])
        if not files:
            raise SurfaceInputError(
                f"{path}: no modeling_*.py or configuration_*.py in this folder"
            )
        return files, {"path": str(path)}
    if "@" in target and not path.exists():

        repo, _, revision = target.rpartition("@")
        if not repo or not revision or repo.count("/") != 1:
            raise SurfaceInputError(f"{target!r}: expected ORG/NAME@REVISION")
        snapshot = find_snapshot(repo, revision)
        if snapshot is None:
            raise SurfaceInputError(
                f"{target}: not in the hub cache at {hub_cache_dir()} (nothing is downloaded)"
            )
        files, _ = _files(str(snapshot))
        return files, {"repo": repo, "revision": revision, "snapshot": str(snapshot)}
    raise SurfaceInputError(f"{target}: no such file or folder")


MAX_SOURCE_BYTES = 16 * 1024 * 1024  # the largest remote-code file seen is 200 KB


def surface_document(target: str, package: str | None = None) -> dict[str, Any]:
    files, origin = _files(target)
    out: dict[str, Any] = {
        "schema": SURFACE_SCHEMA,
        "source": origin,
        "package": package,
        "files": {},
    }
    for file in files:
        try:
            # bounded before parsing: a regular file of at most MAX_SOURCE_BYTES (pinmatrix/fsio.py)
            read_bytes_bounded(Path(file).resolve(), MAX_SOURCE_BYTES)
            extracted = extract_file(file, package=package)
        except Refused as exc:
            raise SurfaceInputError(f"{file}: {exc}") from None
        except (RecursionError, MemoryError):  # ast.parse and the visitor recurse per level
            raise SurfaceInputError(f"{file}: nested too deeply to read (an expression or "
                                    "statement thousands of levels deep)") from None
        except SyntaxError as exc:
            raise SurfaceInputError(
                f"{exc.filename or file}:{exc.lineno}:{(exc.offset or 0)}: {exc.msg}"
            ) from None
        except UnicodeDecodeError as exc:
            raise SurfaceInputError(
                f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        out["files"][extracted["file"]] = {
            "sha256": extracted["sha256"],
            "surface": extracted["surface"],
        }
    return out


HELP = ("the transformers surface of remote-code files, read with ast "
        "(PATH|REPO@REV; pinmatrix/commands/remote_code_surface.py)")


_ME = ("remote-code-surface",)


@dataclass(frozen=True)
class SurfaceConfig:
    target: str = typed(Option("target", "", commands=_ME, metavar="PATH|REPO@REV"))
    package: str | None = typed(Option(
        "--package", "resolve relative imports inside this package", commands=_ME), default=None)
    facts: Path | None = typed(Option("--facts", "a facts file to compare with", commands=_ME,
                                      type=Path), default=None)
    output: Path | None = typed(Option(
        "--output", "write the JSON here (default: stdout)", aliases=("-o",), commands=_ME,
        type=Path), default=None)


def main(argv: Sequence[str]) -> int:
    config = parse_own("remote-code-surface", SurfaceConfig, argv,
                       __doc__.split("\n\n")[1] if __doc__ else None)
    return config if isinstance(config, int) else run(config)


def run(config: SurfaceConfig) -> int:
    try:
        document = surface_document(config.target, config.package)
        if config.facts is not None:
            try:
                facts = json.loads(config.facts.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                where = (
                    f":{exc.lineno}:{exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
                )
                raise SurfaceInputError(f"{config.facts}{where}: {exc}") from None
            document["differences_from_facts"] = {
                name: compare(entry["surface"], document["files"][name]["surface"])
                for name, entry in (facts.get("files") or {}).items()
                if name in document["files"]
            }
    except SurfaceInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    text = json.dumps(document, indent=1) + "\n"
    if config.output is None:
        sys.stdout.write(text)
    else:

        write_text_atomic(config.output, text)
        print(f"wrote {config.output} ({len(document['files'])} file(s))", file=sys.stderr)
    for name, lines in (document.get("differences_from_facts") or {}).items():
        for line in lines:
            print(f"{name}: {line}", file=sys.stderr)
    return EXIT_OK
