"""--pull against a real registry on 127.0.0.1: Debian's `docker-registry`, started here,
serving the locally built base image under a name the engine does not hold. A pull shows its
progress; a failed pull is infra with a signature that tells apart an unreachable registry, an image
it does not have, and one that wants a login.

Needs the engine and the base image (tests/integration/conftest.py) and /usr/bin/docker-registry
(.ci/run installs it); with PINMATRIX_REQUIRE_DOCKER=1 a missing piece fails instead of skipping.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinmatrix.containers.engine import Engine
from pinmatrix.errors import InfraError
from pinmatrix.runners.docker import DEFAULT_BASE_IMAGE, DockerRunner


def unavailable(reason: str) -> None:
    if os.environ.get("PINMATRIX_REQUIRE_DOCKER") == "1":
        pytest.fail(f"PINMATRIX_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)

# bcrypt of "pw": the registry only has to demand a login; nobody logs in
HTPASSWD = "pinmatrix:$2b$12$opjswKSuqBkWVr9wQa/C6e6bq6VVucb4gaasvGov3uwXIyQdxJ2la\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp: Path, name: str, auth: bool = False) -> tuple[str, subprocess.Popen[bytes]]:
    binary = shutil.which("docker-registry")
    if binary is None:
        unavailable("docker-registry not installed (apt-get install docker-registry)")
    assert binary is not None
    port = _free_port()
    folder = tmp / name
    folder.mkdir()
    config = [
        "version: 0.1",
        "storage:",
        f"  filesystem: {{rootdirectory: {folder / 'data'}}}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if auth:
        (folder / "htpasswd").write_text(HTPASSWD)
        config += ["auth:", f"  htpasswd: {{realm: pinmatrix-test, path: {folder / 'htpasswd'}}}"]
    (folder / "config.yml").write_text("\n".join(config) + "\n")
    log = open(folder / "registry.log", "wb")  # noqa: SIM115 - the registry writes it until the fixture stops it
    proc = subprocess.Popen([binary, "serve", str(folder / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            break
        except urllib.error.HTTPError:  # 401: up, and wants a login
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"docker-registry did not start: {(folder / 'registry.log').read_text()}")
    return f"127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
def registries(engine: Engine,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("registries")
    open_reg, open_proc = _start(tmp, "open")
    auth_reg, auth_proc = _start(tmp, "auth", auth=True)
    name = f"{open_reg}/pinmatrix-pulltest/base:{uuid.uuid4().hex[:12]}"
    made = [name]
    try:
        subprocess.run(engine.cmd("tag", DEFAULT_BASE_IMAGE, name), check=True, capture_output=True)
        subprocess.run(engine.cmd("push", name), check=True, capture_output=True, timeout=600)
        # the engine no longer holds the name: only the registry does
        subprocess.run(engine.cmd("rmi", name), check=True, capture_output=True)
        yield {"image": name, "open": open_reg, "auth": auth_reg}
    finally:
        for tag in made:
            subprocess.run(engine.cmd("rmi", tag), capture_output=True)
        for proc in (open_proc, auth_proc):
            proc.terminate()
            proc.wait(timeout=30)


def _runner(engine: Engine, tmp_path: Path, image: str, pull: str,
            lines: list[str]) -> DockerRunner:
    return DockerRunner(engine, None, tmp_path / "reports", base_image=image, pull=pull,
                        echo=lines.append)


def _present(engine: Engine, image: str) -> bool:
    return subprocess.run(engine.cmd("image", "inspect", image),
                          capture_output=True).returncode == 0


def test_missing_pulls_an_absent_image_and_shows_progress(engine, registries,
                                                          tmp_path: Path) -> None:
    image = registries["image"]
    assert not _present(engine, image)
    lines: list[str] = []
    runner = _runner(engine, tmp_path, image, "missing", lines)
    try:
        assert runner._base_image_id().startswith("sha256:")
        assert _present(engine, image)
        assert lines[0] == f"pull {image} (--pull missing)"
        assert any("Pull complete" in ln or "Already exists" in ln or "Digest: sha256:" in ln
                   for ln in lines), lines
        assert lines[-1].startswith(f"pull {image}: done in ")
        assert (tmp_path / "reports" / "logs").is_dir()
        # present now: `missing` pulls nothing more, `always` pulls again
        again: list[str] = []
        _runner(engine, tmp_path, image, "missing", again)._base_image_id()
        assert again == []
        _runner(engine, tmp_path, image, "always", again)._base_image_id()
        assert again and again[0] == f"pull {image} (--pull always)"
    finally:
        subprocess.run(engine.cmd("rmi", image), capture_output=True)


def test_never_pulls_nothing_and_says_so(engine, registries, tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(InfraError) as err:
        _runner(engine, tmp_path, registries["image"], "never", lines)._base_image_id()
    assert err.value.signature == "base-image-missing"
    assert "--pull never" in err.value.reason and lines == []
    assert not _present(engine, registries["image"])


@pytest.mark.parametrize("where, signature", [
    ("unreachable", "pull-registry-unreachable"),
    ("not-found", "pull-image-not-found"),
    ("auth", "pull-auth-required"),
])
def test_a_failed_pull_is_infra_with_a_signature_that_says_why(engine, registries, tmp_path: Path,
                                                                where, signature) -> None:
    image = {
        "unreachable": f"127.0.0.1:{_free_port()}/pinmatrix-pulltest/base:x",
        "not-found": f"{registries['open']}/pinmatrix-pulltest/no-such-image:x",
        "auth": f"{registries['auth']}/pinmatrix-pulltest/base:x",
    }[where]
    lines: list[str] = []
    runner = _runner(engine, tmp_path, image, "missing", lines)
    with pytest.raises(InfraError) as err:
        runner._base_image_id()
    assert err.value.signature == signature, err.value.log_tail
    assert err.value.reason.startswith(f"pull of base image {image} failed: ")
    # told once per runner: the next cell gets the same answer without another pull
    with pytest.raises(InfraError):
        runner.ensure_base_image()
    assert sum(1 for ln in lines if ln.startswith(f"pull {image} (")) == 1
