"""The docs tell the code's story: every module is in DESIGN's map, every command and exit code in
CONTRACTS, every file the README or the docs point to exists, and no exception escapes the tree
whose exit code `main()` uses."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from pinmatrix import errors

REPO = Path(__file__).resolve().parents[2]
DESIGN = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
CONTRACTS = (REPO / "docs" / "CONTRACTS.md").read_text(encoding="utf-8")
README = (REPO / "README.md").read_text(encoding="utf-8")


def _map_rows() -> dict[str, set[str]]:
    """DESIGN's module map: package folder ("" for the top level) -> the backticked names in its
    row."""
    rows: dict[str, set[str]] = {}
    for line in DESIGN.splitlines():
        match = re.match(r"^\|\s*(top level[^|]*|`([a-z_/]+)/`)\s*\|(.*)\|\s*$", line)
        if match:
            package = match.group(2) or ""
            rows[package] = {name for item in _items(match.group(3))
                             for name in re.findall(r"^\s*`([A-Za-z_]\w*)`", item)}
    return rows


def _items(cell: str) -> list[str]:
    """A map cell's comma-separated items, ignoring commas inside parentheses: "`cell` (Cell, Lock),
    `errors` (...)" -> ["`cell` (Cell, Lock)", " `errors` (...)"]."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(cell):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(cell[start:i])
            start = i + 1
    return [*items, cell[start:]]


def _modules() -> list[tuple[str, str]]:
    """(folder relative to pinmatrix/, module name) for every module but __init__/__main__."""
    out = []
    for path in sorted((REPO / "pinmatrix").rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py") or "__pycache__" in path.parts:
            continue
        folder = path.parent.relative_to(REPO / "pinmatrix").as_posix()
        out.append(("" if folder == "." else folder, path.stem))
    return out


def test_every_module_is_in_designs_map() -> None:
    rows = _map_rows()
    assert rows, "DESIGN.md has no module map table"
    missing = [f"pinmatrix/{folder + '/' if folder else ''}{name}.py"
               for folder, name in _modules() if name not in rows.get(folder, set())]
    assert not missing, f"modules missing from DESIGN.md's map: {missing}"


def test_designs_map_names_no_module_that_does_not_exist() -> None:
    present = {(folder, name) for folder, name in _modules()}
    packages = {folder for folder, _ in present} | {""}
    stale = [f"{folder}/{name}" for folder, names in _map_rows().items() if folder in packages
             for name in names if (folder, name) not in present
             and not (REPO / "pinmatrix" / folder / name).is_dir()]
    assert not stale, f"DESIGN.md's map names modules that do not exist: {stale}"


def _commands() -> list[str]:
    from pinmatrix.cli import main as cli_main

    text = cli_main.usage() if hasattr(cli_main, "usage") else ""
    if not text:
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
            cli_main.main(["--help"])
        text = buffer.getvalue()
    return re.findall(r"^  ([a-z][a-z-]+)\s", text, flags=re.MULTILINE)


def test_every_command_is_in_contracts() -> None:
    commands = _commands()
    assert "matrix" in commands and "bisect" in commands
    missing = [c for c in commands if f"`{c}`" not in CONTRACTS and f"`{c} " not in CONTRACTS]
    assert not missing, f"commands missing from CONTRACTS.md: {missing}"


def test_every_exit_code_is_in_contracts() -> None:
    codes = sorted({value for name, value in vars(errors).items()
                    if name.startswith("EXIT_") and isinstance(value, int)})
    section = CONTRACTS[CONTRACTS.index("Exit codes"):]
    missing = [code for code in codes if f"`{code}`" not in section]
    assert not missing, f"exit codes missing from CONTRACTS.md's exit codes: {missing}"


def test_every_exception_class_derives_from_the_one_base() -> None:
    """main() maps PinmatrixError to its exit code once; an exception class of ours outside that
    tree would reach the user as a traceback or a generic harness error. A private one (`_Name`)
    that never leaves its module is control flow, not an error."""
    outside = []
    for path in sorted((REPO / "pinmatrix").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and value.__module__ == name and not value.__name__.startswith("_")
                    # a signal is not an error: it must stay a KeyboardInterrupt
                    and not issubclass(value, KeyboardInterrupt)
                    and not issubclass(value, errors.PinmatrixError)):
                outside.append(f"{name}.{value.__name__}")
    assert not outside, f"exceptions outside errors.PinmatrixError: {outside}"


def test_exception_names_are_not_shadowed() -> None:
    names = {name for name, value in vars(errors).items() if isinstance(value, type)
             and issubclass(value, BaseException)}
    shadowing = []
    for path in sorted((REPO / "pinmatrix").rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name in names:
                shadowing.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not shadowing, f"classes that shadow one of errors.py's: {shadowing}"


@pytest.mark.parametrize("doc", ["README.md", "docs/DESIGN.md", "docs/CONTRACTS.md"])
def test_every_repository_path_the_docs_name_exists(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:pinmatrix|probes|tests|tools|docs|docker|lab|\.ci)/[\w./-]+)`",
                           text))
    named |= {m for m in re.findall(r"\]\(([\w./-]+)\)", text) if not m.startswith("http")}
    missing = sorted(p for p in named if "*" not in p and "<" not in p
                     and not (REPO / p.rstrip("/")).exists()
                     and not (REPO / Path(doc).parent / p).exists())
    assert not missing, f"{doc} names paths that are not in the repository: {missing}"


def test_no_issue_numbers_in_code_or_docs() -> None:
    """History lives in git: a tracker number in a comment tells a reader nothing the code does.
    (Upstream reports are cited as OWNER/REPO#N.)"""
    pattern = re.compile(r"\bissues? #?\d+\b", re.IGNORECASE)
    found = []
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO)
        if (not path.is_file() or rel.parts[0] in ("reports", "lab", ".git", ".nox", ".gpu")
                or path.suffix not in (".py", ".md", ".yaml", ".toml", ".sh", ".json")
                or "__pycache__" in rel.parts or ".cache" in rel.parts):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace")
                                      .splitlines(), 1):
            if pattern.search(line):
                found.append(f"{rel}:{number}")
    assert not found, f"{len(found)} issue references: {found[:20]}"
