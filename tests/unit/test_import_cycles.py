"""No import cycles among pinmatrix's modules: the package layout follows the flow, so imports point
one way (cli → run → runners/resolve/matrix → the shared records). An import inside a function
counts too: it hides a cycle from Python's import machinery, not from a reader.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "pinmatrix"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The pinmatrix modules `module` imports, anywhere in its body (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pinmatrix.run import pipeline` imports the submodule pinmatrix.run.pipeline
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            while target and target not in known:  # pinmatrix.x.attr → pinmatrix.x
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    known = set(names)
    # A package's own __init__ is not an edge target: importing pinmatrix.run.pipeline runs
    # pinmatrix/run/__init__.py, which imports nothing, so it cannot close a cycle.
    return {module: {t for t in imports_of(module, path, known) if t != "pinmatrix"}
            for module, path in names.items()}


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "pinmatrix.run.pipeline" in graph["pinmatrix.commands.matrix"]  # a lazy import
    assert len(graph) > 30


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles among pinmatrix modules:\n" + "\n".join(
        " ↔ ".join(c) for c in found
    )


# Where a cell runs, in layers: a runner stands on container engines and environment inspection,
# and neither of those knows a runner, a run, or the command line. (Package → the pinmatrix
# packages it may import besides its own and the shared top-level modules.)
LAYERS = {
    "pinmatrix.containers": set(),
    "pinmatrix.environ": {"pinmatrix.containers"},
    "pinmatrix.runners": {"pinmatrix.containers", "pinmatrix.environ"},
}


def test_runner_layers_point_one_way() -> None:
    packages = {m for m in module_names() if m.count(".") == 1 and module_names()[m].name ==
                "__init__.py"}
    wrong = []
    for module, targets in import_graph().items():
        layer = next((p for p in LAYERS if module == p or module.startswith(p + ".")), None)
        if layer is None:
            continue
        for target in targets:
            package = next((p for p in packages if target == p or target.startswith(p + ".")),
                           None)
            if package is not None and package != layer and package not in LAYERS[layer]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))
