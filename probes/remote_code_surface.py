"""The transformers surface a remote-code file depends on, read with `ast` only (the file is never run).

`trust_remote_code=True` executes a model repo's own `modeling_*.py` / `configuration_*.py` against
whatever transformers is installed. Such a file breaks when transformers removes a name it imports,
renames a keyword it passes, or changes how it reads a class attribute. This module lists exactly those
dependencies, so that

- a facts file can record them for each known hub revision (`probes/fixtures/exaone35/revisions/`),
- our clean-room fixture can be checked to use the same forms (tests/unit/test_fixture_surface.py),
- `exaone3.5.surface` can check each of them against the installed transformers before any load, and
- a real hub file found in the cache can be compared with the facts file recorded for its revision.

It works for any `trust_remote_code` model, not only EXAONE. Stdlib only: the probe runs it inside the
cell, and the host runs it from `python -m pinmatrix remote-code-surface`.

The surface of one file:

    imports           [{module, name, scope}]   scope: module (runs at import), conditional (inside
                                                if/try at module level) or function (runs when called)
    calls             {callable: {keywords, positional, star_args, star_kwargs}}: every call of a
                      transformers callable, keywords merged over all call sites; `super().__init__`
                      in a class with a transformers base is recorded as `<base>.__init__`
    subscripts        [name]: transformers objects indexed with [] (registries such as ROPE_INIT_FUNCTIONS)
    classes           {class: {bases, attributes: {name: {form, value}}}}: class-level assignments; form is
                      the literal's type (list, dict, tuple, str, int, float, bool, None) or "expr"
    buffers           [{class, method, name, persistent}]: register_buffer calls
    init_weights      {class: {isinstance: [...], buffers: [...]}}: the types an `_init_weights` override
                      handles and which registered buffer names it touches
    config            {class: {model_type, fields, attribute_map}} for classes based on transformers'
                      PretrainedConfig / PreTrainedConfig
    modules           {class: {attribute: constructor}}: `self.x = SomeModule(...)` in `__init__`
"""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

__all__ = ["SURFACE_SCHEMA", "extract", "extract_file", "compare", "CONFIG_BASES", "PACKAGE_ROOT"]

SURFACE_SCHEMA = 1
PACKAGE_ROOT = "transformers"
CONFIG_BASES = frozenset({
    "transformers.configuration_utils.PretrainedConfig",
    "transformers.configuration_utils.PreTrainedConfig",
    "transformers.PretrainedConfig",
    "transformers.PreTrainedConfig",
})
_LITERAL_FORMS = {list: "list", dict: "dict", tuple: "tuple", str: "str", int: "int", float: "float",
                  bool: "bool", type(None): "None", set: "set"}


def _resolve_relative(module: str | None, level: int, package: str | None) -> str | None:
    """`from ..x import y` inside `package` -> the absolute module; None when it cannot be resolved."""
    if level == 0:
        return module
    if not package:
        return None
    parts = package.split(".")
    if level - 1 > len(parts) - 1:
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


class _Extractor(ast.NodeVisitor):
    def __init__(self, package: str | None) -> None:
        self.package = package
        self.bindings: dict[str, str] = {}      # local name -> dotted name (any package)
        self.imports: dict[tuple[str, str], str] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.subscripts: set[str] = set()
        self.classes: dict[str, dict[str, Any]] = {}
        self.buffers: list[dict[str, Any]] = []
        self.init_weights: dict[str, dict[str, Any]] = {}
        self.config: dict[str, dict[str, Any]] = {}
        self.modules: dict[str, dict[str, str]] = {}
        self._scope: list[str] = []             # "module" / "conditional" / "function" / "class"
        self._class: list[str] = []
        self._method: list[str] = []

    # -- names ------------------------------------------------------------------------------------
    def dotted(self, node: ast.AST) -> str | None:
        """The dotted name an expression refers to through the file's imports (`nn.Linear` ->
        `torch.nn.Linear`), the local name for a local one, None for anything else."""
        if isinstance(node, ast.Name):
            return self.bindings.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            head = self.dotted(node.value)
            return f"{head}.{node.attr}" if head else None
        return None

    def _is_transformers(self, dotted: str | None) -> bool:
        return bool(dotted) and (dotted == PACKAGE_ROOT or dotted.startswith(PACKAGE_ROOT + "."))

    def _where(self) -> str:
        if "function" in self._scope:
            return "function"
        if "conditional" in self._scope:
            return "conditional"
        return "module"

    # -- imports ----------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.bindings[alias.asname] = alias.name
            else:
                head = alias.name.split(".")[0]
                self.bindings[head] = head
            if self._is_transformers(alias.name):
                self._record_import(alias.name, "")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = _resolve_relative(node.module, node.level, self.package)
        if module is None or (node.level and self.package and module.startswith(self.package + ".")):
            if node.level:  # a sibling file of the repo (`from .configuration_x import XConfig`)
                for alias in node.names:
                    self.bindings[alias.asname or alias.name] = alias.asname or alias.name
            return
        for alias in node.names:
            if alias.name == "*":
                continue
            self.bindings[alias.asname or alias.name] = f"{module}.{alias.name}"
            if self._is_transformers(module):
                self._record_import(module, alias.name)

    def _record_import(self, module: str, name: str) -> None:
        where = self._where()
        key = (module, name)
        rank = {"module": 0, "conditional": 1, "function": 2}
        if key not in self.imports or rank[where] < rank[self.imports[key]]:
            self.imports[key] = where

    # -- scopes -----------------------------------------------------------------------------------
    def _visit_scoped(self, node: ast.AST, kind: str) -> None:
        self._scope.append(kind)
        self.generic_visit(node)
        self._scope.pop()

    def visit_If(self, node: ast.If) -> None:
        self._visit_scoped(node, "conditional")

    def visit_Try(self, node: ast.Try) -> None:
        self._visit_scoped(node, "conditional")

    visit_TryStar = visit_Try

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        self._method.append(node.name)
        self._scope.append("function")
        if self._class and node.name == "_init_weights":
            self._record_init_weights(node)
        if self._class and node.name == "__init__":
            self._record_init(node)
        for stmt in node.body:
            self.visit(stmt)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(default)
        self._scope.pop()
        self._method.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if self._class:  # nested classes are not part of the surface transformers reads
            return
        bases = [self.dotted(b) or ast.unparse(b) for b in node.bases]
        attributes: dict[str, dict[str, Any]] = {}
        for stmt in node.body:
            target, value = None, None
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                target, value = stmt.targets[0].id, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                target, value = stmt.target.id, stmt.value
            if target is not None and value is not None:
                attributes[target] = _literal_form(value)
        self.classes[node.name] = {"bases": bases, "attributes": attributes}
        if any(b in CONFIG_BASES for b in bases):
            entry = self.config.setdefault(node.name, {"model_type": None, "fields": [], "attribute_map": None})
            if "model_type" in attributes:
                entry["model_type"] = attributes["model_type"].get("value")
            if "attribute_map" in attributes:
                entry["attribute_map"] = attributes["attribute_map"].get("value")
        self._class.append(node.name)
        self._scope.append("class")
        for deco in node.decorator_list:
            self.visit(deco)
        for stmt in node.body:
            self.visit(stmt)
        self._scope.pop()
        self._class.pop()

    # -- calls ------------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func)
        if name is None and self._class and _is_super_init(node):
            # super() goes to the first base: only a transformers class there is transformers' surface
            bases = self.classes[self._class[-1]]["bases"]
            if bases and self._is_transformers(bases[0]):
                name = f"{bases[0]}.__init__"
        if self._is_transformers(name):
            entry = self.calls.setdefault(name, {"keywords": set(), "positional": 0,
                                                 "star_args": False, "star_kwargs": False})
            positional = [a for a in node.args if not isinstance(a, ast.Starred)]
            entry["positional"] = max(entry["positional"], len(positional))
            entry["star_args"] |= len(positional) != len(node.args)
            for kw in node.keywords:
                if kw.arg is None:
                    entry["star_kwargs"] = True
                else:
                    entry["keywords"].add(kw.arg)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "register_buffer" and self._class:
            self._record_buffer(node)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        name = self.dotted(node.value)
        if self._is_transformers(name) and isinstance(node.ctx, ast.Load):
            self.subscripts.add(name)
        self.generic_visit(node)

    def _record_buffer(self, node: ast.Call) -> None:
        if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
            return
        persistent: Any = True
        for kw in node.keywords:
            if kw.arg == "persistent":
                persistent = kw.value.value if isinstance(kw.value, ast.Constant) else "expr"
        if len(node.args) >= 3 and isinstance(node.args[2], ast.Constant):
            persistent = node.args[2].value
        record = {"class": self._class[-1], "method": self._method[-1] if self._method else None,
                  "name": node.args[0].value, "persistent": persistent}
        if record not in self.buffers:
            self.buffers.append(record)

    def _record_init_weights(self, node: ast.FunctionDef) -> None:
        handled: set[str] = set()
        touched: set[str] = set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "isinstance" \
                    and len(sub.args) == 2:
                kinds = sub.args[1].elts if isinstance(sub.args[1], ast.Tuple) else [sub.args[1]]
                handled.update(self.dotted(k) or ast.unparse(k) for k in kinds)
            if isinstance(sub, ast.Attribute):
                touched.add(sub.attr)
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                touched.add(sub.value)
        self.init_weights[self._class[-1]] = {"isinstance": sorted(handled), "_touched": touched}

    def _record_init(self, node: ast.FunctionDef) -> None:
        cls = self._class[-1]
        modules = self.modules.setdefault(cls, {})
        fields: set[str] = set()
        params = [a.arg for a in node.args.args[1:] + node.args.kwonlyargs]
        for sub in ast.walk(node):
            if not isinstance(sub, ast.Assign):
                continue
            for target in sub.targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                    fields.add(target.attr)
                    if isinstance(sub.value, ast.Call):
                        ctor = self.dotted(sub.value.func)
                        if ctor and ctor.split(".")[-1][:1].isupper():
                            modules[target.attr] = ctor
        if not modules:
            self.modules.pop(cls, None)
        if cls in self.config:
            self.config[cls]["fields"] = sorted(fields | set(params))

    # -- result -----------------------------------------------------------------------------------
    def surface(self) -> dict[str, Any]:
        buffer_names = {b["name"] for b in self.buffers}
        init_weights = {
            cls: {"isinstance": entry["isinstance"], "buffers": sorted(entry["_touched"] & buffer_names)}
            for cls, entry in self.init_weights.items()
        }
        return {
            "imports": [{"module": m, "name": n, "scope": s} for (m, n), s in sorted(self.imports.items())],
            "calls": {name: {"keywords": sorted(e["keywords"]), "positional": e["positional"],
                             "star_args": e["star_args"], "star_kwargs": e["star_kwargs"]}
                      for name, e in sorted(self.calls.items())},
            "subscripts": sorted(self.subscripts),
            "classes": {k: self.classes[k] for k in sorted(self.classes)},
            "buffers": sorted(self.buffers, key=lambda b: (b["class"], b["name"], str(b["method"]))),
            "init_weights": dict(sorted(init_weights.items())),
            "config": dict(sorted(self.config.items())),
            "modules": {k: dict(sorted(v.items())) for k, v in sorted(self.modules.items())},
        }


def _is_super_init(node: ast.Call) -> bool:
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "__init__" and isinstance(func.value, ast.Call)
            and isinstance(func.value.func, ast.Name) and func.value.func.id == "super")


def _literal_form(node: ast.AST) -> dict[str, Any]:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return {"form": "expr", "value": ast.unparse(node)}
    form = _LITERAL_FORMS.get(type(value))
    if form is None:
        return {"form": "expr", "value": ast.unparse(node)}
    if isinstance(value, (set, tuple)):
        value = sorted(value, key=repr) if isinstance(value, set) else list(value)
    return {"form": form, "value": value}


def extract(source: str, *, filename: str = "<remote code>", package: str | None = None) -> dict[str, Any]:
    """The surface of one Python source. `package` resolves relative imports (a native port inside
    transformers, e.g. `transformers.models.exaone`); hub files import transformers absolutely.
    SyntaxError propagates with the file's name and line."""
    tree = ast.parse(source, filename=filename)
    extractor = _Extractor(package)
    extractor.visit(tree)
    return extractor.surface()


def extract_file(path: str | Path, *, package: str | None = None) -> dict[str, Any]:
    """{"file", "sha256", "surface"} for one file on disk."""
    path = Path(path)
    data = path.read_bytes()
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(),
            "surface": extract(data.decode("utf-8"), filename=str(path), package=package)}


def _flatten(surface: dict[str, Any]) -> dict[str, str]:
    """One comparable line per fact, keyed by what the fact is about."""
    out: dict[str, str] = {}
    for imp in surface.get("imports", []):
        out[f"import {imp['module']}:{imp['name']}"] = imp["scope"]
    for name, call in surface.get("calls", {}).items():
        out[f"call {name}"] = json.dumps(call, sort_keys=True)
    for name in surface.get("subscripts", []):
        out[f"subscript {name}"] = "used"
    for cls, entry in surface.get("classes", {}).items():
        out[f"class {cls} bases"] = json.dumps(entry.get("bases"))
        for attr, form in entry.get("attributes", {}).items():
            out[f"class {cls}.{attr}"] = json.dumps(form, sort_keys=True)
    for buf in surface.get("buffers", []):
        out[f"buffer {buf['class']}.{buf['name']} in {buf['method']}"] = f"persistent={buf['persistent']}"
    for cls, entry in surface.get("init_weights", {}).items():
        out[f"init_weights {cls}"] = json.dumps(entry, sort_keys=True)
    for cls, entry in surface.get("config", {}).items():
        out[f"config {cls}"] = json.dumps(entry, sort_keys=True)
    for cls, mods in surface.get("modules", {}).items():
        for attr, ctor in mods.items():
            out[f"module {cls}.{attr}"] = ctor
    return out


def compare(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Each fact that differs between two surfaces, one line each ("- " only expected, "+ " only
    actual, "~ " changed); empty when they are the same."""
    a, b = _flatten(expected), _flatten(actual)
    lines: list[str] = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            lines.append(f"- {key}: {a[key]}")
        elif key not in a:
            lines.append(f"+ {key}: {b[key]}")
        elif a[key] != b[key]:
            lines.append(f"~ {key}: {a[key]} -> {b[key]}")
    return lines


def iter_facts(surface: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(fact, value) pairs, for listing a surface in a report or a closing note."""
    return sorted(_flatten(surface).items())
