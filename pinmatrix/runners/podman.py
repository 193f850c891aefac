"""The podman runner: the docker runner's image per cell and locked-down container, on Podman.

HPC sites run containers with rootless Podman (no daemon, no root, the user's own image store).
Podman's command line is Docker's for everything the docker runner calls, and `podman build`
(buildah) reads the Dockerfile's `RUN --mount` cache, bind and secret flags itself, so this runner
is the docker runner on a Podman `Engine` (pinmatrix/containers/engine.py finds it; its `Dialect`
holds where the two command lines differ). GPUs reach the container through CDI: Podman reads the
specs in /etc/cdi and /var/run/cdi from 4.1 on, so `--device nvidia.com/gpu=all` (or `=0,1`) is the
route (pinmatrix/containers/cdi.py); `nvidia-ctk cdi generate` or `python -m pinmatrix cdi-spec`
writes the spec. A rootless container's uid 1000 is one of the user's subordinate ids: the results
folder is made writable for it (mode 0777) instead of being chowned.

`--init` needs Podman's init binary (`catatonit`, its own Debian package); without it every cell
ends `infra` with Podman's own words ("container-init binary not found").

Rootless, as tried on this machine (podman 4.3.1, vfs storage): the base image's `/` must not be
0700 (docker/base/build-base.sh now imports it 0755; Docker's overlay driver ignores that mode,
rootless vfs does not, and uid 1000 then cannot exec anything); builds that need the index need
slirp4netns (a readable /dev/net/tun); and buildah 1.28 keeps `RUN --mount=type=cache` folders in
one `$TMPDIR/buildah-cache` for every user (containers/buildah#4404), so after a rootful build a
rootless one fails on it ("Failed to initialize cache at /root/.cache/uv: Permission denied")
unless TMPDIR points to a folder of the user's own.
"""
from __future__ import annotations

from pathlib import Path

from pinmatrix.containers import engine as engines
from pinmatrix.containers.engine import Engine
from pinmatrix.runners import docker
from pinmatrix.runners.base import EngineNeed, RunnerKind, RunnerSettings


class PodmanRunner(docker.DockerRunner):
    """Runner protocol (docs/CONTRACTS.md §6) on Podman, rootless or not."""

    name = "podman"


def create(settings: RunnerSettings, run_dir: Path, engine: Engine | None,
           base_image: str | None) -> PodmanRunner:
    runner = docker.create(settings, run_dir, engine, base_image, runner=PodmanRunner)
    assert isinstance(runner, PodmanRunner)
    return runner


ENGINE = EngineNeed(
    label="Podman", capability="Podman client",
    remedy="install Podman and its init (Debian: `apt-get install podman catatonit`; rootless "
           "needs the user's subordinate ids in /etc/subuid and /etc/subgid); or use `--runner "
           "venv`",
    find=lambda: engines.find_podman(), message=lambda: engines.podman_message())
KIND = RunnerKind(name="podman", summary="the docker runner's images and containers on Podman "
                                         "(rootless as on HPC sites; GPUs through CDI)",
                  isolates=True, builds_images=True, tests_installed=False, create=create,
                  engine=ENGINE)
