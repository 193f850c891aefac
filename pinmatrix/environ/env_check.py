"""Is a prepared environment consistent? Like `pip check`: every requirement of every distribution
on an interpreter's path is met by the first version of it on that path.

The interpreter under test only lists what it holds (`DUMP`, stdlib only, so a venv without
`packaging` can be checked); the requirements are judged here with `packaging`, against the marker
environment of that interpreter, not the harness's.

    python -m pinmatrix.environ.env_check [--python PY] [--site DIR]... [LABEL]  -> one JSON line

(lab/gpu-lease/h200_env_check.py, the device-side script this grew from, now calls this.)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

SIGNATURE = "environment-inconsistent"

# Run by the interpreter under test: its marker environment and, per distribution in path order,
# (name, version, the sys.path entry that holds it, its Requires-Dist lines).
DUMP = r"""
import importlib.metadata as md, json, os, platform, sys
impl = sys.implementation
iv = impl.version
impl_version = "%d.%d.%d" % (iv.major, iv.minor, iv.micro)
if iv.releaselevel != "final":
    impl_version += iv.releaselevel[0] + str(iv.serial)
env = {"implementation_name": impl.name, "implementation_version": impl_version,
       "os_name": os.name, "platform_machine": platform.machine(),
       "platform_release": platform.release(), "platform_system": platform.system(),
       "platform_version": platform.version(),
       "python_full_version": platform.python_version(),
       "platform_python_implementation": platform.python_implementation(),
       "python_version": ".".join(platform.python_version_tuple()[:2]),
       "sys_platform": sys.platform}
dists = []
for path in sys.path:
    for d in md.distributions(path=[path]):
        name = d.metadata["Name"]
        if name:
            dists.append([name, d.version, path, list(d.requires or [])])
json.dump({"env": env, "dists": dists}, sys.stdout)
"""


@dataclass
class EnvReport:
    """What the check found: `conflicts` in words ("transformers 4.57.6 requires
    tokenizers<=0.23.0; found 0.23.2"), split into those touching a site layer and the rest."""

    distributions: int = 0
    conflicts: list[str] = field(default_factory=list)
    involving_sites: list[str] = field(default_factory=list)
    shadowed: list[str] = field(default_factory=list)
    from_sites: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.conflicts


def dump(python: str, sites: Sequence[Path | str] = ()) -> dict[str, Any]:
    """Run DUMP with `python`, `sites` first on its path (as PYTHONPATH, like the venv runner's
    extra sites)."""
    env = dict(os.environ)
    if sites:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(p) for p in sites] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([python, "-c", DUMP], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _spec_words(req: Requirement) -> str:
    return f"{canonicalize_name(req.name)}{req.specifier}" if str(req.specifier) else req.name


def evaluate(data: dict[str, Any], sites: Sequence[Path | str] = (),
             roots: Sequence[str] | None = None) -> EnvReport:
    """Judge a DUMP: each requirement against the first distribution of that name on the path.
    `roots`: judge only these distributions and everything they require, transitively (a cell's
    pinned packages: a GPU image's unrelated tools do not make the stack inconsistent); None:
    every distribution, like `pip check`."""
    site_set = {str(s) for s in sites}
    marker_env = dict(data.get("env") or {})
    first: dict[str, tuple[str, str, list[str]]] = {}
    report = EnvReport()
    for name, version, path, requires in data.get("dists", []):
        key = str(canonicalize_name(name))
        if key in first:
            if first[key][0] != version:
                report.shadowed.append(f"{key} {version} ({path}) under {first[key][0]}")
            continue
        first[key] = (version, path, requires)
    report.distributions = len(first)
    report.from_sites = sorted(f"{n}=={v}" for n, (v, w, _) in first.items() if w in site_set)
    needs = {k: _applicable(requires, marker_env) for k, (_, _, requires) in first.items()}
    judged = set(first) if roots is None else _closure(roots, needs)
    for key, (version, where, _) in sorted(first.items()):
        if key not in judged:
            continue
        for req in needs[key]:
            have = first.get(canonicalize_name(req.name))
            if have is None:
                problem = f"{key} {version} requires {_spec_words(req)}; not installed"
            else:
                try:
                    ok = req.specifier.contains(Version(have[0]), prereleases=True)
                except InvalidVersion:
                    ok = True
                if ok:
                    continue
                problem = f"{key} {version} requires {_spec_words(req)}; found {have[0]}"
            report.conflicts.append(problem)
            if where in site_set or (have is not None and have[1] in site_set):
                report.involving_sites.append(problem)
    return report


def _applicable(requires: list[str], marker_env: dict[str, str]) -> list[Requirement]:
    out = []
    for text in requires:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None:
            try:
                if not req.marker.evaluate({**marker_env, "extra": ""}):
                    continue
            except (UndefinedComparison, UndefinedEnvironmentName):
                continue
        out.append(req)
    return out


def _closure(roots: Sequence[str], needs: dict[str, list[Requirement]]) -> set[str]:
    todo = [canonicalize_name(r) for r in roots]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in needs:
            continue
        seen.add(name)
        todo += [canonicalize_name(req.name) for req in needs[name]]
    return seen


def check(python: str, sites: Sequence[Path | str] = (),
          roots: Sequence[str] | None = None) -> EnvReport:
    """Is the environment `python` sees (with `sites` first) consistent? See `evaluate`."""
    return evaluate(dump(python, sites), sites, roots)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pinmatrix.environ.env_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("label", nargs="?", default="")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--site", action="append", default=[],
                        help="a folder put first on the path (default: $PYTHONPATH's folders)")
    args = parser.parse_args(argv)
    sites = args.site or [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    report = check(args.python, sites)
    involving = set(report.involving_sites)
    print(json.dumps({
        "label": args.label, "sites": sites, "distributions": report.distributions,
        "from_sites": report.from_sites,
        "unmet_involving_sites": report.involving_sites,
        "unmet_among_device_packages": [c for c in report.conflicts if c not in involving],
        "shadowed": report.shadowed, "consistent": not report.involving_sites}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
