"""Numbers about the package's shape, read from its source with `ast` (nothing is imported or run).

    python tools/house_metrics.py [--json FILE]

- package cycles: strongly connected groups of pinmatrix's subpackages under their imports (a
  top-level module counts as its own package);
- long functions: functions and methods of pinmatrix/ over 80 lines;
- imports inside functions: the share of pinmatrix's imports of pinmatrix/probes that sit inside a
  function body rather than at module level;
- Namespace reads: `args.NAME` and `getattr(args, ...)` outside the option table, i.e. option values
  that do not reach a command as a typed field;
- runner-kind strings: comparisons of a runner kind with a literal runner name.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pinmatrix"
LONG = 80
RUNNER_NAMES = ("docker", "venv", "podman")
_KIND_COMPARE = re.compile(
    r"""(==|!=)\s*["'](%s)["']|["'](%s)["']\s*(==|!=)|in\s*\(\s*["'](%s)["']"""
    % (("|".join(RUNNER_NAMES),) * 3))


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST, here: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = here.split(".")[: -node.level] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        return [mod]
    return []


def measure() -> dict[str, object]:
    edges: dict[str, set[str]] = {}
    inside = top = 0
    long_functions: list[str] = []
    namespace_reads = 0
    kind_compares: list[str] = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        name = _module_name(path)
        package = _package_of(name)
        edges.setdefault(package, set())
        parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                parents[child] = parent
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > LONG:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                          f"({length} lines)")
            for target in _imported(node, name):
                if not target.startswith(("pinmatrix", "probes")):
                    continue
                up = parents.get(node)
                in_function = False
                while up is not None:
                    if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        in_function = True
                        break
                    up = parents.get(up)
                guarded = isinstance(parents.get(node), ast.If)  # `if TYPE_CHECKING:`
                if in_function:
                    inside += 1
                elif not guarded:
                    top += 1
                other = _package_of(target)
                if target.startswith("pinmatrix") and other != package:
                    edges[package].add(other)
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "args" and path.name != "options.py"):
                namespace_reads += 1
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "getattr" and node.args
                    and isinstance(node.args[0], ast.Name) and node.args[0].id == "args"):
                namespace_reads += 1
        for number, line in enumerate(text.splitlines(), 1):
            if _KIND_COMPARE.search(line) and not line.lstrip().startswith("#"):
                kind_compares.append(f"{path.relative_to(ROOT)}:{number}")
    return {
        "package_cycles": _cycles(edges),
        "functions_over_80_lines": long_functions,
        "imports_inside_functions": inside,
        "imports_at_module_level": top,
        "share_inside_functions": round(inside / max(inside + top, 1), 3),
        "namespace_reads_outside_option_table": namespace_reads,
        "runner_kind_string_compares": kind_compares,
    }


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one package."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    data = measure()
    print(f"package cycles: {len(data['package_cycles'])} {data['package_cycles']}")
    longs = data["functions_over_80_lines"]
    print(f"functions over {LONG} lines: {len(longs)}")  # type: ignore[arg-type]
    for item in longs:  # type: ignore[attr-defined]
        print(f"  {item}")
    print(f"imports inside functions: {data['imports_inside_functions']} of "
          f"{data['imports_inside_functions'] + data['imports_at_module_level']} "  # type: ignore[operator]
          f"({data['share_inside_functions']:.0%})")
    reads = data["namespace_reads_outside_option_table"]
    print(f"Namespace reads outside the option table: {reads}")
    compares = data["runner_kind_string_compares"]
    print(f"runner-kind string compares: {len(compares)} {compares}")  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
