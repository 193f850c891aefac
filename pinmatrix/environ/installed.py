"""The lock of a prepared host: for machines with no index at all (a lent GPU node, an air-gapped
box).

With `--no-install` nothing is resolved or installed: the cell runs on what the interpreter (plus
any `--extra-site` folders) already holds. The "lock" is then read off that environment, and every
axis pin of the cell is checked against it first, so a table row never claims a version that did not
run. A mismatch is the machine's fault (it was prepared for another cell), so it is infra, not
unresolvable.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pinmatrix.cell import NONE, Cell, Lock, normalize_name, split_extras
from pinmatrix.environ import env_check
from pinmatrix.environ.interpreters import python_for
from pinmatrix.environ.site_rules import sites_for
from pinmatrix.errors import ResolveInfraError

# Run inside the target interpreter: every distribution it sees, as {name: version}.
_LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json, sys\n"
    "seen = {}\n"
    "for d in m.distributions():\n"
    "    name = d.metadata['Name']\n"
    "    if name and name not in seen: seen[name] = d.version\n"
    "json.dump({'python': '%d.%d' % sys.version_info[:2], 'dists': seen}, sys.stdout)\n"
)
NOT_PACKAGES = ("python", "base_image")


def installed_distributions(python: str,
                            extra_sites: Sequence[Path] = ()) -> tuple[str, dict[str, str]]:
    """(python "X.Y", {normalised name: version}) as `python` sees them with `extra_sites` first on
    its path."""
    env = dict(os.environ)
    if extra_sites:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(p) for p in extra_sites] + [env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
    try:
        out = subprocess.run([python, "-c", _LIST_DISTRIBUTIONS], capture_output=True, text=True,
                             env=env,
                             timeout=120, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ResolveInfraError(f"cannot list the packages of {python}: {exc}") from exc
    data = json.loads(out.stdout)
    return data["python"], {normalize_name(k): v for k, v in data["dists"].items()}


def pin_mismatches(cell: Cell, python_version: str, dists: dict[str, str]) -> list[str]:
    """Every axis pin the environment does not honour, in words."""
    problems = []
    wanted_python = str(cell.pins.get("python", ""))
    if wanted_python and wanted_python != python_version:
        problems.append(f"python {python_version} here, the cell pins {wanted_python}")
    for axis, value in sorted(cell.pins.items()):
        if axis in NOT_PACKAGES:
            continue
        have = dists.get(normalize_name(axis))
        if value == NONE:
            if have is not None:
                problems.append(f"{axis} {have} is installed, the cell pins none")
            continue
        if have is None:
            problems.append(f"{axis} is not installed, the cell pins {value}")
        elif not _satisfies(have, value):
            problems.append(f"{axis} {have} is installed, the cell pins {value}")
    return problems


def _satisfies(installed: str, pin: str) -> bool:
    pin = split_extras(pin)[0]   # extras are not a version: "4.0.0b36[cu13]" pins 4.0.0b36
    spec = pin if pin[:1] in "<>=!~" else f"=={pin}"
    try:
        # "==2.11.0" admits "2.11.0+cu130" (PEP 440 local labels), which is how CUDA builds report
        # themselves.
        return Version(installed) in SpecifierSet(spec)
    except ValueError:  # InvalidVersion/InvalidSpecifier, or too many digits
        return installed == pin


def environment_conflicts(cell: Cell, python: str, extra_sites: Sequence[Path] = ()) -> list[str]:
    """Every unmet requirement among the cell's pinned packages and what they require, transitively
    (pinmatrix/environ/env_check.py), as `python` sees them with `extra_sites` first."""
    roots = [axis for axis, value in cell.pins.items()
             if axis not in NOT_PACKAGES and value != NONE]
    try:
        return env_check.check(python, extra_sites, roots=roots).conflicts
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ResolveInfraError(f"cannot check the requirements of {python}: {exc}") from exc


def lock_from_environment(cell: Cell, python: str | None = None,
                          extra_sites: Sequence[Path] = ()) -> Lock:
    """The cell's Lock read off the prepared interpreter, or ResolveInfraError naming every pin it
    misses."""
    python = python or sys.executable
    version, dists = installed_distributions(python, extra_sites)
    problems = pin_mismatches(cell, version, dists)
    if problems:
        raise ResolveInfraError("the prepared environment is not this cell (--no-install): "
                                + "; ".join(problems))
    inconsistent = environment_conflicts(cell, python, extra_sites)
    if inconsistent:
        raise ResolveInfraError(f"{env_check.SIGNATURE}: " + "; ".join(inconsistent)
                                + " (the prepared environment does not meet its own requirements:"
                                " fix the environment; the stack was not judged)",
                                env_check.SIGNATURE)
    lines = [f"# read off {python} (--no-install): nothing was resolved or installed"]
    lines += [f"{name}=={dists[name]}" for name in sorted(dists)]
    text = "\n".join(lines) + "\n"
    torch_line = f"torch=={dists['torch']}\n" if "torch" in dists else ""
    return Lock(cell_id=cell.id, python=version, torch_lock=torch_line, full_lock=text)


def environment_resolver(python: Mapping[str, str] | str | None,
                         extra_sites: Sequence[Path]) -> Callable[[Cell, object, Path], Lock]:
    """A resolve_fn for the pipeline: same signature as pinmatrix.resolve.uv.resolve. `python`:
    --venv-python (one interpreter, or one per Python version)."""
    def resolve_installed(cell: Cell, sources: object, out_dir: Path) -> Lock:
        chosen = python_for(python, str(cell.pins.get("python") or ""))
        lock = lock_from_environment(cell, chosen, sites_for(cell, extra_sites))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "torch.lock").write_text(lock.torch_lock, encoding="utf-8")
        (out_dir / "requirements.lock").write_text(lock.full_lock, encoding="utf-8")
        return lock
    return resolve_installed
