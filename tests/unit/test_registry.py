"""The check registry (probes/registry.py): the one list of groups and checks, stdlib only."""
from __future__ import annotations

import ast
import json
import re
import sys

from pinmatrix.matrix.load import CHECK_GROUPS
from pinmatrix.run.flaky import group_of
from pinmatrix.run.options import REPO_ROOT
from pinmatrix.status import CORE_CHECKS, EXAONE35_ROUTES
from probes import registry
from probes.checks import GROUPS as CHECK_MODULES


def test_the_registry_imports_only_the_stdlib() -> None:
    tree = ast.parse((REPO_ROOT / "probes" / "registry.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_every_group_has_its_module_and_the_host_reads_the_same_list() -> None:
    for group in registry.GROUPS:
        assert (REPO_ROOT / "probes" / "checks" / f"{group.module}.py").is_file(), group
    assert CHECK_GROUPS == registry.GROUP_NAMES == tuple(CHECK_MODULES)
    assert {c.group for c in registry.CHECKS} <= set(registry.GROUP_NAMES)
    assert {c.role for c in registry.CHECKS} <= set(registry.ROLES)


def test_every_committed_check_record_is_in_the_registry() -> None:
    """Every check name of every committed result (H100, H200) resolves, to the group that emitted
    it where the record says so."""
    seen = 0
    for path in (REPO_ROOT / "reports").glob("*/*/cells/*.json"):
        for check in json.loads(path.read_text()).get("checks") or []:
            entry = registry.lookup(check["name"])
            assert entry is not None, (path.name, check["name"])
            if check.get("group"):
                assert check["group"] == entry.group, (path.name, check["name"])
            assert group_of(check["name"]) == entry.group
            seen += 1
    assert seen > 100


def test_every_name_in_the_contracts_table_is_in_the_registry() -> None:
    text = (REPO_ROOT / "docs" / "CONTRACTS.md").read_text()
    table = text[text.index("| group | check names emitted"):]
    table = table[:table.index("\n\n")]
    for row in table.splitlines()[2:]:
        group = row.split("|")[1].strip()
        for name in re.findall(r"`([a-z0-9][a-z0-9._-]*)`", row.split("|")[2]):
            entry = registry.lookup(name)
            assert entry is not None, name
            # the unsloth routes of train and adapter come from the unsloth group
            assert entry.group in (group, "unsloth"), (name, entry.group, group)


def test_status_reads_core_and_routes_from_the_registry() -> None:
    assert CORE_CHECKS == ("imports",)
    assert EXAONE35_ROUTES == {
        "remote-code": ("exaone3.5.remote-code", "lora-train.hf-peft"),
        "llamafied": ("exaone3.5.llamafied", "lora-train.hf-peft-llamafied"),
    }
    assert registry.role_of("attention.xformers") == registry.CLAIM
    assert registry.lookup("exaone3.5.remote-code.original").role == registry.OPTIONAL
    assert registry.role_of("no.such-check") == registry.OPTIONAL
    # a whole group that failed to list its checks is named after the group
    assert group_of("kernels") == "kernels" and registry.role_of("imports") == registry.CORE
