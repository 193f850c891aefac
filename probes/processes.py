"""Two interpreters for a cell with unsloth: unsloth's own, and a plain one that never imports it.

`import unsloth` patches transformers, peft and trl for the rest of the process, and a model loaded
through it has its classes recompiled. So in a cell that pins unsloth, the plain-transformers groups
(kernels, both EXAONE loads, the attention backends, HF+PEFT LoRA, generate, and the HF+PEFT speed
baseline) run in a child interpreter that never imports unsloth: they measure what a user of plain
transformers gets with this stack installed, and unsloth's speedup is taken against an unpatched
baseline. The probe's own process imports unsloth first, as unsloth requires, and runs the imports and
unsloth groups.

The child's compat groups run while unsloth imports and loads (tiny models; on the H100 `import
unsloth` alone takes about 30 s), so the compat stage costs the longer of the two, not their sum.
Speed measurements never overlap anything: the child's throughput checks start once both compat
halves are done, in a second child, and unsloth's own throughput check runs after that child exited.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from probes import gpu_share, registry

ROLE_MAIN = "main"
ROLE_PLAIN = "plain"
# Groups that never touch unsloth; "imports" and "unsloth" stay with the process that imported it (the
# unsloth routes of train and adapter are listed by the unsloth group: probes/checks/unsloth_train.py).
PLAIN_GROUPS = tuple(g.name for g in registry.GROUPS if g.plain)  # probes/registry.py
# The speed checks that load through unsloth, run in the main interpreter after the plain ones.
UNSLOTH_THROUGHPUT = ("throughput.unsloth", "throughput.unsloth-qlora")
# Never imported by the plain interpreter (unsloth_zoo patches on import too).
UNSLOTH_PACKAGES = ("unsloth", "unsloth_zoo")


def splits(pins: Mapping[str, Any], role: str) -> bool:
    """True when this probe is the main one of a cell that pins unsloth."""
    return role == ROLE_MAIN and str(pins.get("unsloth", "none")) != "none"


@dataclass
class PlainChild:
    """One `python -m probes --role plain` started by the main probe, and what it was asked to run."""
    groups: list[str]
    folder: Path
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    @property
    def result_path(self) -> Path:
        return self.folder / "result.json"

    def stop(self) -> None:
        """End the child (the main probe is leaving early); harmless when it already exited."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def collect(self, names: Mapping[str, Iterable[str]]) -> dict[str, list[dict[str, Any]]]:
        """Wait for the child; its check records by group, or for each check it owed an `infra`
        record saying the plain interpreter ended without a result (its output is in the run log)."""
        code = self.process.wait()
        seconds = round(time.monotonic() - self.started, 4)
        try:
            document = json.loads(self.result_path.read_text(encoding="utf-8"))
            checks = document["checks"]
        except (OSError, ValueError, KeyError, TypeError):
            how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
            reason = (f"the plain-transformers interpreter (no unsloth) {how} without a result; "
                      f"its output is in this cell's run log")
            return {group: [{"name": name, "status": "infra", "duration_s": seconds, "reason": reason,
                             "evidence": {"process": ROLE_PLAIN, "exit": code}}
                            for name in names.get(group, ())]
                    for group in self.groups}
        owner = {name: group for group, listed in names.items() for name in listed}
        out: dict[str, list[dict[str, Any]]] = {group: [] for group in self.groups}
        for check in checks:
            name = str(check.get("name"))
            # a group that failed as a whole reports one check named after the group
            group = owner.get(name) or next((g for g in self.groups if name.startswith(g)), self.groups[0])
            out.setdefault(group, []).append(check)
        return out


def start_plain(spec: Mapping[str, Any], work_dir: Path, groups: list[str],
                check_names: Iterable[str] | None = None) -> PlainChild:
    """Start the plain interpreter on `groups` (only `check_names` of them, when given).

    It gets its own work folder, so the two interpreters never write one fixture at the same time,
    and its own remote-code module cache (HF_MODULES_CACHE) for the same reason."""
    folder = Path(work_dir) / f"plain-{'-'.join(groups)}"
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "cell.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    cmd = [sys.executable, "-m", "probes", "--cell", str(spec_path), "--out", str(folder / "result.json"),
           "--work", str(folder / "work"), "--role", ROLE_PLAIN, "--only", ",".join(groups)]
    if check_names is not None:
        cmd += ["--checks", ",".join(check_names)]
    env = dict(os.environ, HF_MODULES_CACHE=str(folder / "hf-modules"))
    env.pop(gpu_share.ENV, None)   # the main probe holds the GPU lock for its whole cell
    # stdout and stderr are the main probe's: the child's lines reach the run log, tagged [probe:plain].
    return PlainChild(list(groups), folder, subprocess.Popen(cmd, env=env))
