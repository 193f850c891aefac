"""`which` reads each stack format as the real tools write it: `uv lock`, `uv export` (requirements
and PEP 751 pylock.toml), `uv pip compile`, pip-tools' `pip-compile`, and `pip freeze` of a real
venv (uv against PyPI; a few seconds with uv's cache)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pinmatrix.which.stack import read_stack

pytestmark = pytest.mark.integration

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)

PYPROJECT = """[project]
name = "demo"
version = "0.1"
requires-python = ">=3.11"
dependencies = ["six==1.16.0", "packaging==24.2"]
"""


def uv(cwd: Path, *args: str) -> None:
    subprocess.run(["uv", "-q", *args], cwd=cwd, check=True, timeout=300)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("which-tools")
    (root / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    (root / "in.txt").write_text("six==1.16.0\npackaging<25,>=24.2\n", encoding="utf-8")
    uv(root, "lock")
    uv(root, "export", "--format", "requirements-txt", "-o", "exported.txt")
    uv(root, "export", "--format", "pylock.toml", "-o", "pylock.toml")
    uv(root, "pip", "compile", "in.txt", "-o", "compiled.txt")
    uv(root, "venv", "--seed", "venv")
    uv(root, "pip", "install", "--python", "venv/bin/python", "six==1.16.0", "packaging==24.2")
    freeze = subprocess.run([str(root / "venv" / "bin" / "python"), "-m", "pip", "freeze"],
                            capture_output=True, text=True, check=True, timeout=120).stdout
    (root / "freeze.txt").write_text(freeze, encoding="utf-8")
    uv(root, "pip", "install", "--python", "venv/bin/python", "pip-tools")
    subprocess.run([str(root / "venv" / "bin" / "pip-compile"), "-q", "--strip-extras", "in.txt",
                    "-o", "pip-compiled.txt"], cwd=root, check=True, timeout=300)
    return root


@pytest.mark.parametrize("name, fmt, complete", [
    ("uv.lock", "uv.lock", True),
    ("pylock.toml", "pylock.toml", True),
    ("exported.txt", "pinned", True),     # uv's header: a whole resolution
    ("compiled.txt", "pinned", True),
    ("pip-compiled.txt", "pinned", True),  # pip-compile's header: a whole resolution
    ("freeze.txt", "pinned", False),      # a freeze says nothing of itself: --complete says so
])
def test_each_format_as_the_tool_writes_it(made, name, fmt, complete) -> None:
    stack = read_stack(made / name)
    assert (stack.format, stack.complete) == (fmt, complete)
    assert stack.want("six").exact == "1.16.0"
    assert stack.want("packaging").exact == "24.2"
    assert stack.want("transformers") is None
    if fmt in ("uv.lock", "pylock.toml"):
        assert stack.python is not None and stack.python.contains("3.12")
