"""Model prefetch: the one place a hub token is used, on the host, before any cell runs.

Probe containers have no network (`--network none`) and see no host environment, so a model must be
in a cache before the run: this step downloads each matrix model at its pinned revision into a hub
cache (huggingface_hub's layout: `hub/models--ORG--NAME/{snapshots/<commit>/, refs/<ref>}`), and the
runners mount that cache read-only into every cell (the Docker runner at /hf, `HF_HOME=/hf`), where
the probe's `find_snapshot` picks the exact revision (probes/models.py).

Two hubs:
- a local folder standing in for a hub (`--model-hub DIR`): `DIR/ORG/NAME/<commit>/...` holds the
  files of a commit, and `DIR/ORG/NAME/refs/<ref>` the commit a branch or tag points at. Offline,
  testable, and what a site with a mirrored model store uses;
- the Hugging Face hub through `huggingface_hub.snapshot_download`, where that package is installed
  and a hub is reachable. The token comes from `HF_TOKEN` in the environment and is handed to the
  download call only: it is never written to the cache, a log, a result, a build argument or a
  container's environment.

Files already present at the same commit are not fetched again. Nothing here runs remote code.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pinmatrix.cell import ModelSpec
from pinmatrix.errors import FetchError
from pinmatrix.fsio import write_text_atomic

COMMIT = re.compile(r"^[0-9a-f]{40}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
TOKEN_ENV = "HF_TOKEN"



@dataclass(frozen=True)
class Fetched:
    name: str
    repo: str
    # as pinned in matrix.yaml (a commit, or a ref: see remote_code.unpinned_warnings)
    revision: str
    commit: str          # the commit the revision resolved to
    snapshot: Path       # HF_HOME/hub/models--ORG--NAME/snapshots/<commit>
    hub: str             # "folder:<path>" or "huggingface"
    reused: bool         # already in the cache: nothing was downloaded


def repo_folder(hf_home: Path, repo: str) -> Path:
    return Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))


def fetch_models(models: Iterable[ModelSpec], hf_home: Path, *, hub: str | Path | None = None,
                 env: Mapping[str, str] | None = None) -> list[Fetched]:
    """Prefetch every model (ModelSpec, or a mapping with name/repo/revision) into `hf_home`.

    `hub`: a local folder standing in for a hub, or None for the Hugging Face hub (needs
    huggingface_hub).
    """
    env = os.environ if env is None else env
    out = []
    for model in models:
        get = model.get if isinstance(model, Mapping) else lambda k, m=model: getattr(m, k)
        name, repo, revision = str(get("name")), str(get("repo")), str(get("revision"))
        if not REPO_ID.fullmatch(repo):
            raise FetchError(f"model {name}: repo {repo!r} is not ORG/NAME")
        if not REF.fullmatch(revision) or ".." in revision:
            raise FetchError(f"model {name}: revision {revision!r} is not a commit or ref")
        if hub is not None:
            out.append(_from_folder(name, repo, revision, Path(hub), Path(hf_home)))
        else:
            out.append(_from_huggingface(name, repo, revision, Path(hf_home),
                                         env.get(TOKEN_ENV) or None))
    return out


def _from_folder(name: str, repo: str, revision: str, hub: Path, hf_home: Path) -> Fetched:
    source_repo = hub / repo
    commit = revision
    if not COMMIT.fullmatch(revision):
        ref = source_repo / "refs" / revision
        if not ref.is_file():
            raise FetchError(f"model {name}: {repo}@{revision} not found in the hub folder {hub} "
                             f"(no refs/{revision})")
        commit = ref.read_text().strip()
        if not COMMIT.fullmatch(commit):
            raise FetchError(f"model {name}: {ref} does not hold a 40-hex commit")
    source = source_repo / commit
    if not (source / "config.json").is_file():
        raise FetchError(f"model {name}: {repo}@{revision} not found in the hub folder {hub} "
                         f"(no {commit}/config.json)")
    target_repo = repo_folder(hf_home, repo)
    snapshot = target_repo / "snapshots" / commit
    reused = snapshot.is_dir() and _same_tree(source, snapshot)
    if not reused:
        partial = snapshot.with_name(f".{commit}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial, symlinks=False)
        shutil.rmtree(snapshot, ignore_errors=True)
        partial.rename(snapshot)  # a half-copied snapshot is never visible under its commit
    if commit != revision:
        _write_ref(target_repo, revision, commit)
    return Fetched(name, repo, revision, commit, snapshot, f"folder:{hub}", reused)


def _from_huggingface(name: str, repo: str, revision: str, hf_home: Path,
                      token: str | None) -> Fetched:
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415 - optional on the host
    except ImportError:
        raise FetchError(f"model {name}: huggingface_hub is not installed on this host; install "
                         "it, or pass "
                         f"--model-hub DIR (a local folder of models)") from None
    try:
        # The token goes to this call and nowhere else; huggingface_hub sends it as an HTTP header.
        path = snapshot_download(repo, revision=revision, cache_dir=str(hf_home / "hub"),
                                 token=token or False)
    except Exception as exc:  # network, auth, missing revision: one line, with the token scrubbed
        message = str(exc).replace(token, "***") if token else str(exc)
        raise FetchError(f"model {name}: {repo}@{revision}: {type(exc).__name__}: "
                         f"{message.splitlines()[0][:300]}") from None
    snapshot = Path(path)
    return Fetched(name, repo, revision, snapshot.name, snapshot, "huggingface", False)


def _write_ref(target_repo: Path, ref: str, commit: str) -> None:
    write_text_atomic(target_repo / "refs" / ref, commit)


def _same_tree(a: Path, b: Path) -> bool:
    files_a = {p.relative_to(a): p.stat().st_size for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b): p.stat().st_size for p in b.rglob("*") if p.is_file()}
    return files_a == files_b
