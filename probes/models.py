"""Which checkpoint a check loads for a model name: the pinned hub snapshot when the cache has it, else a fixture.

`resolve_model(ctx, "exaone3.5")` looks up the repo and pinned revision in the cell spec's `models`, and
returns the snapshot folder of the local hub cache when that exact revision is there (offline: the probe
never downloads). Otherwise it writes the tiny fixture once per run under `ctx.work_dir`. For EXAONE 3.5
the fixture is the clean-room stand-in for one known hub revision of its remote code: the one whose facts
file names the pinned revision (a commit, or a ref such as `main`), else the newest known one. Every
handle says what a verdict on it rests on (`basis`).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["ModelHandle", "DEFAULT_MODELS", "hub_cache_dir", "find_snapshot", "resolve_model", "model_entry",
           "pinned_fixture_revision", "llamafied_folder"]

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
    fixture_revision: str | None = None  # the known hub revision an EXAONE 3.5 fixture stands in for

    @property
    def basis(self) -> str:
        """What a verdict on this model rests on, in words the report shows beside it."""
        if self.source == "hub-cache":
            return f"hub model {self.repo} at {self.revision}"
        if self.fixture_revision:
            return f"fixture of hub revision {self.fixture_revision}"
        return "fixture (tiny, random weights)"

    def evidence(self) -> dict[str, Any]:
        out = {"model": self.name, "source": self.source, "repo": self.repo, "revision": self.revision,
               "path": str(self.path), "basis": self.basis}
        if self.fixture_revision:
            out["fixture_revision"] = self.fixture_revision
        return out


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


def pinned_fixture_revision(ctx: Any, name: str) -> str | None:
    """The known hub revision whose fixture stands in for the matrix's pinned revision of `name`;
    None for models whose fixture has no revisions (EXAONE 4 is native in transformers)."""
    if name != "exaone3.5":
        return None
    from probes.fixtures.checkpoints import fixture_revision_for

    return fixture_revision_for(model_entry(ctx, name).get("revision"))


def _write_fixture(name: str, folder: Path, revision: str | None) -> Path:
    from probes.fixtures import checkpoints

    if name == "exaone3.5":
        # Named like the hub repo, dot included (checkpoints.EXAONE35_FOLDER_NAME says why).
        return checkpoints.write_exaone35(folder / checkpoints.EXAONE35_FOLDER_NAME, revision=revision)
    if name == "exaone4":
        return checkpoints.write_exaone4(folder)  # raises ImportError before transformers 4.54
    raise KeyError(f"no fixture generator for model {name!r}; known: exaone3.5, exaone4")


def resolve_model(ctx: Any, name: str, *, fixture_revision: str | None = None) -> ModelHandle:
    """The checkpoint to load for `name`: the pinned hub snapshot if cached, else the run's tiny fixture.

    `fixture_revision` asks for the fixture of one known EXAONE 3.5 hub revision whatever the cache
    holds (the per-revision checks); by default the pinned revision's stand-in is used.
    The result is kept in `ctx.cache`, so a fixture is generated once per run. Choosing the hub cache
    sets HF_HUB_OFFLINE=1 so that nothing (remote code, tokenizer) is fetched during the checks."""
    key = ("model", name, fixture_revision)
    if key in ctx.cache:
        return ctx.cache[key]
    entry = model_entry(ctx, name)
    repo, revision, kind = entry.get("repo"), entry.get("revision"), entry.get("kind", "")
    snapshot = find_snapshot(repo, revision) if repo and fixture_revision is None else None
    if snapshot is not None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        handle = ModelHandle(name, snapshot, "hub-cache", repo, revision, kind)
    else:
        stand_in = fixture_revision or pinned_fixture_revision(ctx, name)
        folder = Path(ctx.work_dir) / "fixtures" / (f"{name}-{stand_in}" if stand_in else name)
        path = _write_fixture(name, folder, stand_in)
        handle = ModelHandle(name, Path(path), "fixture", repo, revision, kind, stand_in)
    ctx.cache[key] = handle
    return handle


def llamafied_folder(ctx: Any, handle: ModelHandle | Path) -> Path:
    """The llamafied copy (LlamaForCausalLM layout, same weights) of an EXAONE 3.5 checkpoint, written once
    per run under work_dir. Renaming tensors runs no remote code, so this route exists on every
    transformers release where the remote code fails."""
    from probes.fixtures.checkpoints import llamafy_exaone35

    source = Path(handle.path if isinstance(handle, ModelHandle) else handle)
    key = ("llamafied", str(source))
    if key not in ctx.cache:
        digest = hashlib.sha256(str(source).encode()).hexdigest()[:8]
        ctx.cache[key] = llamafy_exaone35(source, Path(ctx.work_dir) / "llamafied" / f"{source.name}-{digest}")
    return ctx.cache[key]
