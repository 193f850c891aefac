"""Is a prepared environment consistent? Every requirement of every distribution on the path (the
site
layers first, then the device's packages) is met by the first version of it on the path.

    PYTHONPATH=site1:site2 python3 matrices/h200_env_check.py LABEL  -> one JSON line

Prints the unmet requirements, split into those that touch a site layer's distributions (ours to
fix) and those among the device's own packages (the image's). Standard library plus `packaging`.
"""

import importlib.metadata as md
import json
import os
import sys

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

sites = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
first: dict[str, tuple[str, str, md.Distribution]] = {}  # name -> (version, where, dist)
shadowed: list[str] = []
for path in sys.path:
    for dist in md.distributions(path=[path]):
        name = canonicalize_name(dist.metadata["Name"] or "")
        if not name:
            continue
        if name in first:
            if first[name][0] != dist.version:
                shadowed.append(f"{name} {dist.version} ({path}) under {first[name][0]}")
            continue
        first[name] = (dist.version, path, dist)

unmet_site, unmet_device = [], []
for name, (version, where, dist) in sorted(first.items()):
    for text in dist.requires or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = first.get(canonicalize_name(req.name))
        problem = None
        if have is None:
            problem = f"{name} {version} needs {req}: not installed"
        else:
            try:
                ok = req.specifier.contains(Version(have[0]), prereleases=True)
            except InvalidVersion:
                ok = True
            if not ok:
                problem = f"{name} {version} needs {req}: {have[0]} is first on the path"
        if problem:
            touches_site = where in sites or (have is not None and have[1] in sites)
            (unmet_site if touches_site else unmet_device).append(problem)

print(
    json.dumps(
        {
            "label": sys.argv[1] if len(sys.argv) > 1 else "",
            "sites": sites,
            "distributions": len(first),
            "from_sites": sorted(f"{n}=={v}" for n, (v, w, _) in first.items() if w in sites),
            "unmet_involving_sites": unmet_site,
            "unmet_among_device_packages": unmet_device,
            "shadowed": shadowed,
            "consistent": not unmet_site,
        }
    )
)
