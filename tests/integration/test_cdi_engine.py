"""CDI on the real engine: a spec naming harmless device nodes (/dev/null, /dev/zero under other
names), a mounted file and an environment variable, applied to a real container by the docker
runner's own argument builder; inside, the container must see all three.

The engine here (Debian's docker.io 20.10) applies no CDI itself, so the runner translates the spec
into flags. Where the engine reports CDI spec folders (Docker 25+ with the cdi feature, default
from 28.3), the native route (`--device KIND=all`) is tested too, with a custom kind.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pinmatrix.containers import cdi
from pinmatrix.containers.engine import Engine
from pinmatrix.runners.base import Prepared
from pinmatrix.runners.docker import DEFAULT_BASE_IMAGE, DockerRunner

pytestmark = pytest.mark.integration

CHECK = """
import json, os, stat
out = {}
for path in ("/dev/pinmatrix-gpu0", "/dev/pinmatrix-ctl"):
    st = os.stat(path)
    out[path] = {"char": stat.S_ISCHR(st.st_mode),
                 "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)]}
with open("/dev/pinmatrix-ctl", "rb") as handle:
    out["zero_reads"] = handle.read(4).hex()
with open("/opt/pinmatrix-driver/libfake.so.1") as handle:
    out["mounted"] = handle.read()
out["env"] = os.environ.get("PINMATRIX_CDI_TEST")
out["uid"] = os.getuid()
try:
    open("/opt/pinmatrix-driver/libfake.so.1", "a").close()
    out["mount_writable"] = True
except OSError:
    out["mount_writable"] = False
print(json.dumps(out))
"""


def _write_spec(folder: Path, driver_file: Path, kind: str = "nvidia.com/gpu") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "cdiVersion": "0.5.0",
        "kind": kind,
        "devices": [{"name": "0", "containerEdits": {"deviceNodes": [
            {"path": "/dev/pinmatrix-gpu0", "hostPath": "/dev/null"}]}},
            {"name": "all", "containerEdits": {"deviceNodes": [
                {"path": "/dev/pinmatrix-gpu0", "hostPath": "/dev/null"}]}}],
        "containerEdits": {
            "env": ["PINMATRIX_CDI_TEST=from-the-spec"],
            "deviceNodes": [{"path": "/dev/pinmatrix-ctl", "hostPath": "/dev/zero",
                             "permissions": "r"}],
            "mounts": [{"hostPath": str(driver_file),
                        "containerPath": "/opt/pinmatrix-driver/libfake.so.1",
                        "options": ["ro", "nosuid", "nodev", "bind"]}],
        },
    }
    path = folder / "pinmatrix-test.json"
    path.write_text(json.dumps(spec))
    return path


def _run_check(engine: Engine, create_args: list[str]) -> dict:
    image_at = create_args.index(DEFAULT_BASE_IMAGE)
    args = [*create_args[:image_at + 1], "python3", "-c", CHECK]
    name = args[args.index("--name") + 1]
    made = subprocess.run(engine.cmd(*args), capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    try:
        ran = subprocess.run(engine.cmd("start", "--attach", name), capture_output=True,
                             text=True, timeout=120)
    finally:
        subprocess.run(engine.cmd("rm", "--force", name), capture_output=True)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    return json.loads(ran.stdout.strip().splitlines()[-1])


def _assert_seen(seen: dict) -> None:
    assert seen["/dev/pinmatrix-gpu0"] == {"char": True, "rdev": [1, 3]}   # /dev/null's numbers
    assert seen["/dev/pinmatrix-ctl"] == {"char": True, "rdev": [1, 5]}    # /dev/zero's
    assert seen["zero_reads"] == "00000000"
    assert seen["mounted"] == "not a real driver\n"
    assert seen["env"] == "from-the-spec"
    assert seen["uid"] == 1000                    # the runner's lockdown still applies
    assert seen["mount_writable"] is False        # "ro" became a read-only mount


def test_translated_spec_reaches_a_real_container(engine: Engine, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    driver = tmp_path / "libfake.so.1"
    driver.write_text("not a real driver\n")
    driver.chmod(0o644)
    spec_dir = tmp_path / "cdi"
    spec_path = _write_spec(spec_dir, driver)
    monkeypatch.setenv(cdi.ENV_DIRS, str(spec_dir))
    plain = Engine(engine.client, engine.server_version, engine.buildkit, nvidia=False,
                   cdi_spec_dirs=())   # as the engine here: no NVIDIA runtime, no CDI of its own
    runner = DockerRunner(plain, None, tmp_path / "reports", context_root=tmp_path / "ctx",
                          compile_cache=False, pull="never")
    access = runner.gpu_access(None)
    assert access.route == "cdi-translated" and access.spec == str(spec_path)
    assert list(access.args) == [
        "--device", "/dev/zero:/dev/pinmatrix-ctl:r",
        "--mount", f"type=bind,source={driver},target=/opt/pinmatrix-driver/libfake.so.1,readonly",
        "--device", "/dev/null:/dev/pinmatrix-gpu0:rwm",
        "--env", "PINMATRIX_CDI_TEST=from-the-spec"]
    assert access.untranslated == (
        "spec: mount /opt/pinmatrix-driver/libfake.so.1: options nodev, nosuid not expressible "
        "with --mount",)
    spec_file = tmp_path / "cell.json"
    spec_file.write_text("{}")
    results = tmp_path / "results"
    results.mkdir()
    create = runner._create_args(DEFAULT_BASE_IMAGE, f"pinmatrix-cdi-test-{tmp_path.name[-8:]}",
                                 spec_file, results, None, None, access)
    for flag in ("--read-only", "--network", "--cap-drop"):
        assert flag in create
    _assert_seen(_run_check(engine, create))

    # the whole run() records the route and the exact arguments for the outcome (the base image
    # holds no probe, so the probe itself fails: that is beside the point here)
    prepared = Prepared("docker", "cdi-test", DEFAULT_BASE_IMAGE, details={})
    outcome = runner.run(prepared, spec_file, tmp_path / "out", None, 60)
    assert outcome.details["gpu_access"] == access.to_json()
    assert outcome.signature != "gpu-access-invalid"


def test_broken_spec_is_infra_with_file_and_line(engine: Engine, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi" / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n"
                                                  "devices:\n  - name: all\n    containerEdits:\n"
                                                  "      env: [NOVALUE]\n")
    monkeypatch.setenv(cdi.ENV_DIRS, str(tmp_path / "cdi"))
    plain = Engine(engine.client, engine.server_version, engine.buildkit, nvidia=False)
    runner = DockerRunner(plain, None, tmp_path, context_root=tmp_path / "ctx", pull="never")
    outcome = runner.run(Prepared("docker", "c", DEFAULT_BASE_IMAGE), tmp_path / "c.json",
                         tmp_path / "out", None, 60)
    assert outcome.signature == "gpu-access-invalid"
    assert f"{tmp_path / 'cdi' / 'nvidia.yaml'}:6: devices[0].containerEdits.env[0]" \
        in (outcome.infra_reason or "")


def test_native_cdi_when_the_engine_has_it(engine: Engine, tmp_path: Path) -> None:
    if not engine.cdi_spec_dirs:
        pytest.skip(f"the engine ({engine.server_version}) reports no CDI spec folders: native "
                    "CDI needs Docker 25+ with the cdi feature (default on from 28.3)")
    folder = Path(engine.cdi_spec_dirs[-1])
    driver = tmp_path / "libfake.so.1"
    driver.write_text("not a real driver\n")
    driver.chmod(0o644)
    spec_path = _write_spec(folder, driver, kind="pinmatrix.test/dev")
    try:
        access = cdi.gpu_access(gpu=None, engine_cdi_dirs=engine.cdi_spec_dirs,
                                nvidia_runtime=False, dirs=[str(folder)],
                                kind="pinmatrix.test/dev")
        assert access.route == "cdi" and access.args == ("--device", "pinmatrix.test/dev=all")
        runner = DockerRunner(engine, None, tmp_path, context_root=tmp_path / "ctx",
                              pull="never", cpu_only=True)
        create = runner._create_args(DEFAULT_BASE_IMAGE,
                                     f"pinmatrix-cdi-native-{tmp_path.name[-8:]}",
                                     tmp_path, tmp_path, "", None, access)
        _assert_seen(_run_check(engine, create))
    finally:
        spec_path.unlink()
