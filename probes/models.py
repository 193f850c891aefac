"""Which checkpoint a check loads for a model name: the pinned hub snapshot when the cache has it, else a fixture.

`resolve_model(ctx, "exaone3.5")` looks up the repo and pinned revision in the cell spec's `models`, and
returns the snapshot folder of the local hub cache when that exact revision is there (offline: the probe
never downloads). Otherwise it writes the tiny fixture once per run under `ctx.work_dir`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

__all__ = ["ModelHandle", "DEFAULT_MODELS", "hub_cache_dir", "find_snapshot", "resolve_model", "model_entry"]

Source = Literal["hub-cache", "fixture"]

# Used when the cell spec does not list a model the checks ask for (revision unknown: never matches a cache).
DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "exaone3.5": {"repo": "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", "revision": None, "kind": "remote-code"},
    "exaone4": {"repo": "LGAI-EXAONE/EXAONE-4.0-1.2B", "revision": None, "kind": "native"},
}

_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelHandle:
    name: str                 # the spec's model name, e.g. "exaone3.5"
    path: Path                # a local folder with config.json and weights
    source: Source            # "hub-cache": the real pinned model; "fixture": our tiny generated one
    repo: str | None          # the hub repo the spec pins (recorded even when the fixture stands in)
    revision: str | None      # the pinned revision (recorded even when the fixture stands in)
    kind: str = ""            # "remote-code" | "native"

    def evidence(self) -> dict[str, Any]:
        return {"model": self.name, "source": self.source, "repo": self.repo, "revision": self.revision,
                "path": str(self.path)}


def model_entry(ctx: Any, name: str) -> dict[str, Any]:
    """The spec's `models` entry called `name`, or the default for it; KeyError names the known models."""
    for entry in ctx.spec.get("models") or []:
        if entry.get("name") == name:
            return dict(entry)
    if name in DEFAULT_MODELS:
        return {"name": name, **DEFAULT_MODELS[name]}
    raise KeyError(f"model {name!r} is neither in the cell spec's models nor a known default ({sorted(DEFAULT_MODELS)})")


def hub_cache_dir() -> Path:
    """The hub cache folder, following huggingface_hub's precedence: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def find_snapshot(repo: str, revision: str | None, cache: Path | None = None) -> Path | None:
    """The cached snapshot folder of `repo` at `revision` (a commit sha, or a ref the cache recorded),
    provided it holds a config.json; None when the cache lacks it. Never touches the network."""
    if not repo or not revision:
        return None
    cache = cache or hub_cache_dir()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    commit = revision
    if not _SHA.match(revision):
        ref = repo_dir / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snapshot = repo_dir / "snapshots" / commit
    if not (snapshot / "config.json").is_file():
        return None
    if not any(snapshot.glob("*.safetensors")) and not any(snapshot.glob("*.bin")):
        return None
    return snapshot


def _fixture_writer(name: str) -> Callable[[Path], Path]:
    from probes.fixtures import checkpoints

    writers: dict[str, Callable[[Path], Path]] = {
        "exaone3.5": checkpoints.write_exaone35,
        "exaone4": checkpoints.write_exaone4,  # raises ImportError before transformers 4.54
    }
    if name not in writers:
        raise KeyError(f"no fixture generator for model {name!r}; known: {sorted(writers)}")
    return writers[name]


def resolve_model(ctx: Any, name: str) -> ModelHandle:
    """The checkpoint to load for `name`: the pinned hub snapshot if cached, else the run's tiny fixture.

    The result is kept in `ctx.cache`, so a fixture is generated once per run. Choosing the hub cache
    sets HF_HUB_OFFLINE=1 so that nothing (remote code, tokenizer) is fetched during the checks."""
    key = ("model", name)
    if key in ctx.cache:
        return ctx.cache[key]
    entry = model_entry(ctx, name)
    repo, revision, kind = entry.get("repo"), entry.get("revision"), entry.get("kind", "")
    snapshot = find_snapshot(repo, revision) if repo else None
    if snapshot is not None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        handle = ModelHandle(name, snapshot, "hub-cache", repo, revision, kind)
    else:
        folder = Path(ctx.work_dir) / "fixtures" / name
        path = _fixture_writer(name)(folder)
        handle = ModelHandle(name, Path(path), "fixture", repo, revision, kind)
    ctx.cache[key] = handle
    return handle
