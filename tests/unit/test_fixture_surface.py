"""The revision-faithful EXAONE 3.5 fixtures (`probes/fixtures/exaone35/<revision>/`) cannot drift
from
their facts files (`revisions/<revision>.json`), and they carry no bridge over transformers
versions.

- For each known revision and each remote-code file, the surface `remote_code_surface` extracts
from the
  fixture (ast only, no `package=`, as for a hub file) equals the facts file's surface.
- No fixture file reads a version (`transformers.__version__`, importlib.metadata, packaging),
probes
  signatures (`inspect.signature`), wraps a transformers import, name or call in try/except, or asks
  hasattr/getattr about a transformers object: each of those is a way to survive a transformers
  change
  that the hub code does not survive.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from probes.remote_code_surface import compare, extract_file

FIXTURES = Path(__file__).resolve().parents[2] / "probes" / "fixtures" / "exaone35"
REVISIONS = ("original", "current")
FILES = ("configuration_exaone.py", "modeling_exaone.py")
FORBIDDEN_MODULES = (
    "inspect",
    "importlib.metadata",
    "importlib_metadata",
    "pkg_resources",
    "packaging",
)


def _facts(revision: str) -> dict:
    return json.loads((FIXTURES / "revisions" / f"{revision}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("revision", REVISIONS)
@pytest.mark.parametrize("name", FILES)
def test_fixture_surface_equals_facts_file(revision: str, name: str) -> None:
    expected = _facts(revision)["files"][name]["surface"]
    actual = extract_file(FIXTURES / revision / name)["surface"]
    differences = compare(expected, actual)
    assert differences == [], (
        f"{revision}/{name} differs from revisions/{revision}.json:\n" + "\n".join(differences)
    )


@pytest.mark.parametrize("revision", REVISIONS)
def test_fixture_is_laid_out_like_hub_remote_code(revision: str) -> None:
    """An empty package marker, and the two files a checkpoint's auto_map names. The modeling file
    reaches
    its configuration by a sibling import and transformers absolutely, as a hub file does."""
    folder = FIXTURES / revision
    assert (folder / "__init__.py").read_text() == ""
    tree = ast.parse((folder / "modeling_exaone.py").read_text(encoding="utf-8"))
    relative = [
        (n.module, n.level, [a.name for a in n.names])
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.level
    ]
    assert relative == [("configuration_exaone", 1, ["ExaoneConfig"])]
    config_tree = ast.parse((folder / "configuration_exaone.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(config_tree) if isinstance(n, ast.ImportFrom) and n.level]


# -- no bridges
# ---------------------------------------------------------------------------------------------


def _transformers_names(tree: ast.AST) -> set[str]:
    """Local names bound to transformers (imported from it, or the module itself)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "transformers":
                    names.add(alias.asname or "transformers")
        elif (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module or "").split(".")[0] == "transformers"
        ):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _mentions(node: ast.AST, names: set[str]) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in names:
            return True
        if isinstance(sub, (ast.Import, ast.ImportFrom)):
            modules = (
                [a.name for a in sub.names] if isinstance(sub, ast.Import) else [sub.module or ""]
            )
            if any(m.split(".")[0] == "transformers" for m in modules):
                return True
    return False


def bridges(source: str) -> list[str]:
    """Every construct in `source` that adapts to the installed transformers instead of using one
    API form."""
    tree = ast.parse(source)
    names = _transformers_names(tree)
    found: list[str] = []
    if "__version__" in source:
        found.append("mentions __version__")
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for module in modules:
                if any(module == f or module.startswith(f + ".") for f in FORBIDDEN_MODULES):
                    found.append(f"{where}: imports {module}")
        elif isinstance(node, (ast.Attribute, ast.Name)):
            if (node.attr if isinstance(node, ast.Attribute) else node.id) == "signature":
                found.append(f"{where}: uses a signature")
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            parts = node.body + node.orelse + node.finalbody + [h for h in node.handlers]
            if any(_mentions(part, names) for part in parts):
                found.append(f"{where}: try/except around transformers")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr")
        ) and node.args and _mentions(node.args[0], names):
            found.append(f"{where}: {node.func.id}() on a transformers object")
    return found


@pytest.mark.parametrize("revision", REVISIONS)
@pytest.mark.parametrize("name", FILES)
def test_fixture_has_no_version_bridges(revision: str, name: str) -> None:
    source = (FIXTURES / revision / name).read_text(encoding="utf-8")
    assert "inspect.signature" not in source and "transformers.__version__" not in source
    assert bridges(source) == []


@pytest.mark.parametrize(
    "snippet, what",
    [
        (
            "import transformers\nMAJOR = int(transformers.__version__.split('.')[0])\n",
            "__version__",
        ),
        (
            "import inspect\nfrom transformers.masking_utils import create_causal_mask\n"
            "P = inspect.signature(create_causal_mask).parameters\n",
            "signature",
        ),
        (
            "try:\n    from transformers.configuration_utils import PreTrainedConfig as Base\n"
            "except ImportError:\n    from transformers.configuration_utils import "
            "PretrainedConfig as Base\n",
            "try/except",
        ),
        (
            "from transformers.cache_utils import DynamicCache\ndef new():\n    try:\n        "
            "return DynamicCache(config=None)\n"
            "    except TypeError:\n        return DynamicCache()\n",
            "try/except",
        ),
        (
            "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS\n"
            "X = hasattr(ALL_ATTENTION_FUNCTIONS, 'get_interface')\n",
            "hasattr",
        ),
        (
            "from importlib.metadata import version\nV = version('transformers')\n",
            "importlib.metadata",
        ),
    ],
)
def test_bridge_detector_flags_each_kind(snippet: str, what: str) -> None:
    found = bridges(snippet)
    assert any(what in f for f in found), found


def test_bridge_detector_allows_a_non_transformers_try() -> None:
    """The hub file tolerates a flash-attn that will not import; that is not a transformers
    bridge."""
    snippet = (
        "import importlib\nfrom transformers.utils import is_flash_attn_2_available\nfn = None\n"
        "if is_flash_attn_2_available():\n    try:\n"
        "        fn = importlib.import_module('flash_attn.ops.triton.layer_norm').rms_norm_fn\n"
        "    except ImportError:\n        pass\n"
    )
    assert bridges(snippet) == []
