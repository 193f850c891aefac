"""What a prepared base image already holds (the NGC pattern: nvcr.io/nvidia/pytorch ships a CUDA
torch): its Python and every installed distribution, read by running the image's own `python3`
once, with no network, and kept per image id for the process.

Used by the resolver for a cell whose torch axis says `base` (pinmatrix/cell.py BASE): the cell
takes the base's torch, checks it against the pin, and installs only the rest.
"""
from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pinmatrix.cell import normalize_name
from pinmatrix.containers import engine as engines
from pinmatrix.errors import ResolveInfraError

INVENTORY_TIMEOUT_S = 300.0
# Runs inside the base image with its own python3: stdlib only.
SCRIPT = r"""
import json, sys
from importlib import metadata
out = {"python": "%d.%d" % sys.version_info[:2], "version": sys.version.split()[0],
       "executable": sys.executable, "packages": {}}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if not name:
        continue
    out["packages"][name] = {"version": dist.version, "location": str(dist.locate_file("")),
                             "requires": list(dist.requires or []),
                             "requires_python": dist.metadata["Requires-Python"]}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Inventory:
    image: str
    image_id: str
    python: str                       # "3.11"
    executable: str                   # the base's interpreter, e.g. /usr/bin/python3
    packages: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # normalised name ->

    def version(self, name: str) -> str | None:
        info = self.packages.get(normalize_name(name))
        return str(info["version"]) if info else None


_CACHE: dict[str, Inventory] = {}
_GUARD = threading.Lock()


def read_inventory(image: str, engine: Any = None) -> Inventory:
    """The image's inventory; raises ResolveInfraError (`base-image-missing`, `base-inventory`)
    when there is no engine, no such image, or the image cannot run python3."""
    if engine is None:

        engine = engines.find_engine()
        if engine is None:
            raise ResolveInfraError(f"a `base` pin needs the base image's packages, and no Docker "
                                    f"engine can read them: {engines.engine_message()}",
                                    signature="base-inventory")
    inspected = subprocess.run(engine.cmd("image", "inspect", "--format", "{{.Id}}", image),
                               capture_output=True, text=True, timeout=120)
    if inspected.returncode != 0:
        raise ResolveInfraError(f"base image {image} is not in the engine (pull or build it "
                                "first; a `base` pin reads its packages before anything is built)",
                                signature="base-image-missing")
    image_id = inspected.stdout.strip()
    with _GUARD:
        if image_id in _CACHE:
            return _CACHE[image_id]
    proc = subprocess.run(engine.cmd("run", "--rm", "--network", "none", "--entrypoint", "python3",
                                     image, "-c", SCRIPT),
                          capture_output=True, text=True, timeout=INVENTORY_TIMEOUT_S)
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (ValueError, IndexError):
        data = None
    if not isinstance(data, dict):
        raise ResolveInfraError(f"could not list the packages of base image {image} with its "
                                f"python3 (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-300:]}",
                                signature="base-inventory")
    packages = {normalize_name(name): info for name, info in data["packages"].items()}
    inventory = Inventory(image, image_id, data["python"], data["executable"], packages)
    with _GUARD:
        _CACHE[image_id] = inventory
    return inventory
