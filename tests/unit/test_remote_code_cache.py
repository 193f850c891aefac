"""Each probe imports remote code from its own copy (probes/__main__.py sets HF_MODULES_CACHE).

With transformers' default, one cache shared by every process on the host, three probes run side by
side imported a half-written modeling file: "OSError: could not get source code" in 3 of 18
remote-code checks here, and a failed CI run. The routes stacks of tests/unit/real_results.py are
such a side-by-side run, so their results must show every remote-code module read from that
stack's own work folder, and equal to the checkpoint's file.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_results import ROUTE_STACKS, cache_root, real_route_results


@pytest.fixture(scope="module")
def routes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return real_route_results(cache_root(request, tmp_path_factory))


@pytest.mark.parametrize("stack", sorted(ROUTE_STACKS))
def test_remote_code_is_imported_from_the_probes_own_copy(routes, stack) -> None:
    result = routes[stack]
    work = (result.parent / f"{stack}.work").resolve()
    checks = [c for c in json.loads(result.read_text())["checks"]
              if c["name"].startswith("exaone3.5.remote-code") and c["status"] == "pass"]
    assert checks, f"no remote-code check passed for {stack}"
    for check in checks:
        files = check["evidence"]["remote_code"]
        assert set(files) == {"modeling_exaone.py", "configuration_exaone.py"}
        for name, entry in files.items():
            copy = Path(entry["path"]).resolve()
            assert copy.is_relative_to(work / "w" / "hf-modules"), (name, entry)
            assert entry["matches_checkpoint"], (check["name"], name)
