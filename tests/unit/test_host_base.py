"""The pure parts of `python -m pinmatrix base-image` (pinmatrix/containers/host_base.py), no
engine: ldd output parsing, the file set (symlinked folders on the way, relocation, generated
members), tar member order and modes, and the command's bad-input exits on the real interpreter."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pinmatrix.containers import host_base
from pinmatrix.containers.host_base import FileSet, Member, image_mode, parse_ldd, write_tar

REPO = Path(__file__).resolve().parents[2]

LDD_ONE = """\
\tlinux-vdso.so.1 (0x00007ffd5a1f2000)
\tlibpython3.11.so.1.0 => /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0 (0x00007f5c7bc00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5c7ba1e000)
\tlibcuda.so.1 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f5c7c2ee000)
"""

LDD_MANY = """\
/a/libx.so:
\tlinux-vdso.so.1 (0x00007ffd5a1f2000)
\tlibgomp.so.1 => /a/../b/libgomp.so.1 (0x00007f5c7bc00000)
/a/static:
\tstatically linked
/a/data.so:
\tnot a dynamic executable
/a/liby.so:
\tlibz.so.1 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f5c7c2ee000)
"""


def test_ldd_one_file_has_no_header() -> None:
    parsed = parse_ldd(LDD_ONE, ["/usr/bin/python3"])
    linked = parsed["/usr/bin/python3"]
    assert linked.found == ["/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0",
                            "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
    assert linked.missing == ["libcuda.so.1"]


def test_ldd_several_files_by_header() -> None:
    files = ["/a/libx.so", "/a/static", "/a/data.so", "/a/liby.so"]
    parsed = parse_ldd(LDD_MANY, files)
    assert parsed["/a/libx.so"].found == ["/a/../b/libgomp.so.1"]
    assert parsed["/a/static"].found == [] and parsed["/a/data.so"].found == []
    assert parsed["/a/liby.so"].found == ["/lib64/ld-linux-x86-64.so.2"]
    assert parsed["/a/liby.so"].missing == ["libz.so.1"]


def test_real_ldd_of_this_interpreter_names_libc_and_the_loader() -> None:
    exe = os.path.realpath(sys.executable)
    linked = host_base.ldd([exe, "/bin/sh"])
    for who in (exe, "/bin/sh"):
        names = [os.path.basename(p) for p in linked[who].found]
        assert "libc.so.6" in names, linked[who]
        assert any(n.startswith("ld-linux") for n in names), linked[who]


def test_driver_libraries_are_recognised() -> None:
    for name in ("libcuda.so.1", "libnvidia-ml.so.580.159.04", "libcudadebugger.so.1"):
        assert host_base.DRIVER_LIBRARY.match(name), name
    for name in ("libcudart.so.13", "libnvrtc.so.13", "libcublas.so.13"):
        assert not host_base.DRIVER_LIBRARY.match(name), name


def test_modes_are_readable_by_uid_1000_and_lose_setuid() -> None:
    assert image_mode("dir", 0o40700) == 0o755
    assert image_mode("dir", 0o41777) == 0o1777
    assert image_mode("file", 0o100600) == 0o644
    assert image_mode("file", 0o104700) == 0o755
    assert image_mode("file", 0o100640) == 0o644


@pytest.fixture()
def merged_usr(tmp_path: Path) -> Path:
    """A tiny host: lib -> usr/lib (a symlinked folder on the way), a versioned library with its
    soname link, a private folder (0700), and a venv-like site folder."""
    root = tmp_path / "host"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    real = root / "usr" / "lib" / "libfoo.so.1.2"
    real.write_bytes(b"\x7fELF" + b"\0" * 60)
    (root / "usr" / "lib" / "libfoo.so.1").symlink_to("libfoo.so.1.2")
    private = root / "private"
    private.mkdir(mode=0o700)
    (private / "tool").write_text("#!/bin/sh\n")
    os.chmod(private / "tool", 0o700)
    site = root / "venv" / "site-packages" / "pkg"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    return root


def test_symlinked_folders_on_the_way_stay_symlinks(merged_usr: Path) -> None:
    fs = FileSet()
    fs.add(str(merged_usr / "lib" / "libfoo.so.1"))
    members = fs.members
    lib = members[str(merged_usr / "lib")]
    assert lib.kind == "symlink" and lib.target == "usr/lib"
    link = members[str(merged_usr / "usr" / "lib" / "libfoo.so.1")]
    assert link.kind == "symlink" and link.target == "libfoo.so.1.2"
    real = members[str(merged_usr / "usr" / "lib" / "libfoo.so.1.2")]
    assert real.kind == "file" and real.size == 64
    assert str(merged_usr / "lib" / "libfoo.so.1") not in members  # never under a symlink


def test_relocation_moves_a_venv_site(merged_usr: Path) -> None:
    site = str(merged_usr / "venv" / "site-packages")
    fs = FileSet({site: "/opt/base/site-packages"})
    fs.add_tree(site)
    assert "/opt/base/site-packages/pkg/__init__.py" in fs.members
    assert fs.members["/opt/base/site-packages/pkg/__init__.py"].source == \
        f"{site}/pkg/__init__.py"
    assert not any(p.startswith(site) for p in fs.members)


def test_tree_leaves_out_named_top_folders(tmp_path: Path) -> None:
    (tmp_path / "lib" / "test").mkdir(parents=True)
    (tmp_path / "lib" / "site-packages" / "x").mkdir(parents=True)
    (tmp_path / "lib" / "os.py").write_text("")
    (tmp_path / "lib" / "test" / "t.py").write_text("")
    fs = FileSet()
    fs.add_tree(str(tmp_path / "lib"), leave_out=host_base.STDLIB_LEFT_OUT)
    paths = set(fs.members)
    assert str(tmp_path / "lib" / "os.py") in paths
    inside = {os.path.relpath(p, tmp_path / "lib") for p in paths}
    assert not any(p.split("/")[0] in ("test", "site-packages") for p in inside), inside


def test_tar_order_modes_and_generated_members(merged_usr: Path) -> None:
    fs = FileSet()
    fs.add(str(merged_usr / "private" / "tool"))
    fs.add(str(merged_usr / "lib" / "libfoo.so.1"))
    fs.put("/etc/passwd", "file", 0o644, host_base.PASSWD.encode())
    fs.put("/tmp", "dir", 0o1777)
    ordered = fs.ordered()
    paths = [m.path for m in ordered]
    for i, path in enumerate(paths):  # every folder before what it holds
        parent = os.path.dirname(path)
        if parent != "/":
            assert parent in paths[:i], (parent, path)
    buffer = io.BytesIO()
    write_tar(ordered, buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:") as tar:
        got = {m.name: m for m in tar.getmembers()}
        names = [m.name for m in tar.getmembers()]
        assert names == [p.lstrip("/") for p in paths]
        private = got[str(merged_usr / "private").lstrip("/")]
        assert private.isdir() and private.mode == 0o755          # 0700 on the host
        tool = got[str(merged_usr / "private" / "tool").lstrip("/")]
        assert tool.isfile() and tool.mode == 0o755 and tool.uid == 0
        assert got["tmp"].mode == 0o1777
        passwd = tar.extractfile("etc/passwd")
        assert passwd is not None and b"pinmatrix:x:1000:1000" in passwd.read()
        lib = got[str(merged_usr / "lib").lstrip("/")]
        assert lib.issym() and lib.linkname == "usr/lib"
        real = got[str(merged_usr / "usr" / "lib" / "libfoo.so.1.2").lstrip("/")]
        assert real.mtime == int(os.stat(merged_usr / "usr" / "lib" / "libfoo.so.1.2").st_mtime)


def test_a_file_that_changed_size_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("abc")
    member = Member(str(path), "file", 0o644, source=str(path), size=3)
    path.write_text("abcdef")
    with pytest.raises(host_base.HostBaseError, match="changed while"):
        write_tar([member], io.BytesIO())


def test_labels_name_python_torch_and_packages() -> None:
    plan = host_base.Plan(info={"version": "3.11.7", "executable": "/v/bin/python"},
                          fileset=FileSet(), packages={"torch": "2.13.0+cpu", "sympy": "1.14.0"},
                          interpreter="/usr/bin/python3.11", base_site="/s")
    labels = plan.labels()
    assert labels["org.pinmatrix.base.torch"] == "2.13.0+cpu"
    assert labels["org.pinmatrix.base.packages"] == "sympy==1.14.0,torch==2.13.0+cpu"
    changes = host_base.import_changes(plan)
    assert 'LABEL org.pinmatrix.base.torch="2.13.0+cpu"' in changes


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pinmatrix", "base-image", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_bad_input_exits_2_in_one_line(tmp_path: Path) -> None:
    cases = [
        (["--python", str(tmp_path / "nope"), "--dry-run"], "--python"),
        (["--python", "no-such-python-here", "--dry-run"], "not found"),
        (["--python", sys.executable, "--package", "no-such-dist-xyz", "--dry-run"],
         "--package no-such-dist-xyz: not installed"),
        (["--python", sys.executable, "--tag", "Bad Tag"], "--tag"),
        (["--python", sys.executable], "--tag NAME:TAG is required"),
    ]
    for args, words in cases:
        proc = _cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, proc.stderr)


def test_dry_run_plans_this_interpreter_without_an_engine() -> None:
    proc = _cli("--python", sys.executable, "--package", "pytest", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert plan["dry_run"] and plan["files"] > 100
    assert "pytest==" in plan["labels"]["org.pinmatrix.base.packages"]
    assert plan["tools"]["sh"] == "/bin/sh"
    assert "planned in" in proc.stderr
