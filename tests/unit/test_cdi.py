"""CDI specs (pinmatrix/containers/cdi.py): parsing with file:line errors, translation into engine
flags, the route chosen, and `python -m pinmatrix cdi-spec` on a fake device root."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pinmatrix.commands import cdi_spec
from pinmatrix.containers import cdi

REPO = Path(__file__).resolve().parents[2]

SPEC = """\
cdiVersion: 0.6.0
kind: nvidia.com/gpu
devices:
  - name: "0"
    containerEdits:
      deviceNodes:
        - path: /dev/nvidia0
          hostPath: /dev/null
  - name: "1"
    containerEdits:
      deviceNodes:
        - {path: /dev/nvidia1, hostPath: /dev/zero, permissions: rw, uid: 0}
containerEdits:
  env: [NVIDIA_DRIVER_CAPABILITIES=compute, LD_LIBRARY_PATH=/opt/a]
  deviceNodes:
    - path: /dev/nvidiactl
      hostPath: /dev/full
  mounts:
    - hostPath: /usr/lib/libcuda.so.1
      containerPath: /usr/lib/libcuda.so.1
      options: [ro, nosuid, nodev, bind, rprivate]
    - {hostPath: tmpfs, containerPath: /scratch, type: tmpfs}
  hooks:
    - hookName: createContainer
      path: /usr/bin/nvidia-cdi-hook
      args: [nvidia-cdi-hook, update-ldcache, --folder, /usr/lib/x86_64-linux-gnu]
    - hookName: createContainer
      path: /usr/bin/nvidia-cdi-hook
      args: [nvidia-cdi-hook, create-symlinks, --link, a::b]
  additionalGids: [44]
"""


def _spec(tmp_path: Path, text: str = SPEC, name: str = "nvidia.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_parse_yaml_and_json_alike(tmp_path: Path) -> None:
    spec = cdi.load_spec(_spec(tmp_path))

    as_json = _spec(tmp_path, json.dumps(yaml.safe_load(SPEC)), "nvidia.json")
    assert cdi.load_spec(as_json).devices == spec.devices
    assert spec.kind == "nvidia.com/gpu" and [d.name for d in spec.devices] == ["0", "1"]
    assert spec.devices[1].edits.device_nodes[0].ignored == ("uid",)
    assert spec.edits.additional_gids == (44,)


@pytest.mark.parametrize("text, line, words", [
    ("cdiVersion: 0.6.0\nkind: nvidia.com/gpu\n", 1, "missing 'devices'"),
    ("cdiVersion: 0.6.0\nkind: nvidia\ndevices: []\n", 2, "not vendor.com/class"),
    ("cdiVersion: 0.6.0\nkind: a.com/b\ndevices:\n  - name: x\n    containerEdits:\n"
     "      deviceNodes:\n        - hostPath: /dev/null\n", 7, "missing 'path'"),
    ("cdiVersion: 0.6.0\nkind: a.com/b\ndevices:\n  - name: x\n    containerEdits:\n"
     "      env: [NOEQUALS]\n", 6, "not NAME=VALUE"),
    ("cdiVersion: 0.6.0\nkind: a.com/b\ndevices:\n  - name: x\n  - name: x\n", 5, "given twice"),
    ("cdiVersion: 0.6.0\nkind: a.com/b\ndevices:\n  - name: x\n    containerEdits:\n"
     "      mounts:\n        - {hostPath: /a, containerPath: rel}\n", 7, "not an absolute path"),
    ("cdiVersion: 0.6.0\nkind: a.com/b\ndevices: [\n", 4, "not JSON or YAML"),
    ('{"cdiVersion": "0.6.0", "kind": "a.com/b",\n "devices": [{"name": "x", "bogus": 1}]}',
     2, "unknown field 'bogus'"),
])
def test_bad_specs_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = _spec(tmp_path, text)
    with pytest.raises(cdi.CdiError) as caught:
        cdi.load_spec(path)
    assert str(caught.value).startswith(f"{path}:{line}: "), str(caught.value)
    assert words in str(caught.value)


def test_translate_all_gives_exact_flags_and_lists_what_it_cannot(tmp_path: Path) -> None:
    spec = cdi.load_spec(_spec(tmp_path))
    done = cdi.translate(spec, cdi.pick_devices(spec, ["all"]))
    assert list(done.args) == [
        "--device", "/dev/full:/dev/nvidiactl:rwm",
        "--mount", "type=bind,source=/usr/lib/libcuda.so.1,target=/usr/lib/libcuda.so.1,"
                   "readonly,bind-propagation=rprivate",
        "--tmpfs", "/scratch",
        "--group-add", "44",
        "--device", "/dev/null:/dev/nvidia0:rwm",
        "--device", "/dev/zero:/dev/nvidia1:rw",
        "--env", "NVIDIA_DRIVER_CAPABILITIES=compute",
        "--env", "LD_LIBRARY_PATH=/opt/a:/usr/lib/x86_64-linux-gnu",
    ]
    notes = "\n".join(done.untranslated)
    assert "nodev, nosuid not expressible" in notes
    assert "update-ldcache: not run; its folders are put on LD_LIBRARY_PATH" in notes
    assert "create-symlinks --link a::b: not run" in notes
    assert "uid not settable with --device" in notes


def test_one_device_only_gets_its_own_nodes(tmp_path: Path) -> None:
    spec = cdi.load_spec(_spec(tmp_path))
    args = cdi.translate(spec, cdi.pick_devices(spec, ["1"])).args
    assert "/dev/zero:/dev/nvidia1:rw" in args and "/dev/null:/dev/nvidia0:rwm" not in args
    with pytest.raises(LookupError, match="no device '7'"):
        cdi.pick_devices(spec, ["7"])


def test_route_preference(tmp_path: Path) -> None:
    folder = tmp_path / "cdi"
    folder.mkdir()
    _spec(folder)
    dirs = [str(folder)]
    native = cdi.gpu_access(gpu=None, engine_cdi_dirs=dirs, nvidia_runtime=True, dirs=dirs)
    assert native.route == "cdi" and native.args == ("--device", "nvidia.com/gpu=all")
    one = cdi.gpu_access(gpu="0,1", engine_cdi_dirs=dirs, nvidia_runtime=False, dirs=dirs)
    assert one.args == ("--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1")
    runtime = cdi.gpu_access(gpu="1", engine_cdi_dirs=(), nvidia_runtime=True, dirs=dirs)
    assert runtime.route == "nvidia-runtime" and runtime.args == ("--gpus", '"device=1"')
    translated = cdi.gpu_access(gpu=None, engine_cdi_dirs=(), nvidia_runtime=False, dirs=dirs)
    assert translated.route == "cdi-translated" and translated.spec == str(folder / "nvidia.yaml")
    assert "no CDI spec folders" in translated.why
    elsewhere = cdi.gpu_access(gpu=None, engine_cdi_dirs=[str(tmp_path / "other")],
                               nvidia_runtime=False, dirs=dirs)
    assert elsewhere.route == "cdi-translated"
    none = cdi.gpu_access(gpu=None, engine_cdi_dirs=(), nvidia_runtime=False,
                          dirs=[str(tmp_path / "empty")])
    assert none.route == "none" and none.args == ()


def test_only_a_broken_spec_is_an_error(tmp_path: Path) -> None:
    _spec(tmp_path, "cdiVersion: 0.6.0\nkind: [\n")
    with pytest.raises(cdi.CdiError, match=r"nvidia.yaml:\d+: not JSON or YAML"):
        cdi.gpu_access(gpu=None, engine_cdi_dirs=(), nvidia_runtime=False, dirs=[str(tmp_path)])
    _spec(tmp_path, SPEC, "good.yaml")
    found = cdi.gpu_access(gpu=None, engine_cdi_dirs=(), nvidia_runtime=False,
                           dirs=[str(tmp_path)])
    assert found.route == "cdi-translated"


@pytest.fixture()
def fake_host(tmp_path: Path) -> tuple[Path, Path, Path]:
    dev, lib, bin_ = tmp_path / "dev", tmp_path / "lib64", tmp_path / "bin"
    for folder in (dev, lib, bin_):
        folder.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"):
        (dev / name).write_text("")
    (lib / "libcuda.so.580.1").write_text("")
    (lib / "libcuda.so.1").symlink_to("libcuda.so.580.1")
    (lib / "libnvidia-ml.so.1").write_text("")
    (lib / "libz.so.1").write_text("")
    (bin_ / "nvidia-smi").write_text("")
    return dev, lib, bin_


def test_cdi_spec_command_writes_a_spec_that_reads_back(tmp_path: Path,
                                                       fake_host: tuple[Path, Path, Path]) -> None:
    dev, lib, bin_ = fake_host
    out = tmp_path / "out" / "nvidia.yaml"
    code = cdi_spec.main(["-o", str(out), "--dev-root", str(dev), "--lib-dir", str(lib),
                          "--bin-dir", str(bin_)])
    assert code == 0
    spec = cdi.load_spec(out)
    assert [d.name for d in spec.devices] == ["0", "1", "all"]
    assert [n.path for n in spec.devices[2].edits.device_nodes] == ["/dev/nvidia0", "/dev/nvidia1"]
    assert [n.path for n in spec.edits.device_nodes] == ["/dev/nvidiactl", "/dev/nvidia-uvm"]
    mounted = [m.host_path for m in spec.edits.mounts]
    assert mounted == [str(lib / "libcuda.so.1"), str(lib / "libcuda.so.580.1"),
                       str(lib / "libnvidia-ml.so.1"), str(bin_ / "nvidia-smi")]
    assert spec.edits.env == (f"LD_LIBRARY_PATH={lib}",)


@pytest.mark.parametrize("case", ["no-gpu", "no-libcuda", "missing-lib-dir", "out-is-folder"])
def test_cdi_spec_bad_input_exits_2_in_one_line_and_writes_nothing(
        tmp_path: Path, fake_host: tuple[Path, Path, Path], case: str) -> None:
    dev, lib, bin_ = fake_host
    out = tmp_path / "spec.yaml"
    args = ["-o", str(out), "--dev-root", str(dev), "--lib-dir", str(lib), "--bin-dir", str(bin_)]
    if case == "no-gpu":
        (dev / "nvidia0").unlink()
        (dev / "nvidia1").unlink()
    elif case == "no-libcuda":
        for p in lib.glob("libcuda*"):
            p.unlink()
    elif case == "missing-lib-dir":
        args[5] = str(tmp_path / "nowhere")
    else:
        out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", "cdi-spec", *args],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert case == "out-is-folder" or not out.exists()
    assert not list(tmp_path.glob(".spec.yaml.*"))
