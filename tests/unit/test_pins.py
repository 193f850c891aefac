"""Pins by purpose (pinmatrix/report/pins.py) over real probe results.

The CPU results are written by the real probe (tests/unit/real_results.py): the EXAONE 3.5 routes on
tiny fixtures, with an xformers that imports but whose operators do not run (kernel.xformers fails:
an optional check), one whose import fails (imports fails: the core check), and none. The GPU cases
read the committed H100 and H200 reports (real results of those machines). Locks are what the probe
stack has installed (`uv pip freeze`), plus the fake xformers where the cell has it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from real_results import PROBE_PYTHON, cache_root, real_results, real_route_results

from pinmatrix.errors import UsageError
from pinmatrix.outcome import Outcome
from pinmatrix.report.pins import (
    Cell,
    choose,
    collect_cells,
    judge,
    lock_entries,
    parse_pins_for,
    plan,
    purposes_for,
    torch_index_hint,
    write_pins,
)
from pinmatrix.report.summary import merge
from pinmatrix.run.options import REPO_ROOT
from pinmatrix.status import cell_status, is_claim

UV = shutil.which("uv")
NOW = datetime(2026, 11, 29, 18, 0, 0, tzinfo=timezone.utc)
OPS = "py3.11-torch2.13.0+cpu-routes-xformers-ops"
GOOD = "py3.11-torch2.13.0+cpu-routes"
IMPORT_BROKEN = "py3.11-torch2.13.0+cpu-routes-xformers-import"

needs_uv = pytest.mark.skipif(UV is None, reason="uv is not installed")


def _freeze(python: Path) -> str:
    proc = subprocess.run([UV, "pip", "freeze", "--python", str(python)], capture_output=True,
                          text=True, check=True)
    return proc.stdout


def _add_cell(run_dir: Path, result: Path, lock_text: str | None) -> str:
    data = json.loads(result.read_text())
    cell_id = data["cell"]["id"]
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result, run_dir / "cells" / f"{cell_id}.json")
    Outcome(cell=cell_id, hash=data["cell"]["hash"], pins=data["cell"]["pins"], runner="venv",
            stage="done", result=f"cells/{cell_id}.json").write(run_dir)
    if lock_text is not None:
        (run_dir / "locks" / cell_id).mkdir(parents=True, exist_ok=True)
        (run_dir / "locks" / cell_id / "requirements.lock").write_text(lock_text)
    return cell_id


@pytest.fixture(scope="module")
def routes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return real_route_results(cache_root(request, tmp_path_factory))


@pytest.fixture(scope="module")
def frozen():
    if UV is None:
        pytest.skip("uv is not installed")
    return _freeze(PROBE_PYTHON)


def _run(tmp_path: Path, results: dict[str, Path], stacks: list[str], frozen: str) -> Path:
    run = tmp_path / "20261129T180000Z"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "cells": []}))
    for stack in stacks:
        pins = json.loads(results[stack].read_text())["cell"]["pins"]
        extra = f"xformers=={pins['xformers']}\n" if pins.get("xformers", "none") != "none" else ""
        _add_cell(run, results[stack], frozen + extra)
    return run


def _header(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def _statuses(result: Path) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads(result.read_text())["checks"]}


def test_partial_only_on_optional_checks_is_recommended_with_its_caveats(tmp_path: Path, routes,
                                                                         frozen) -> None:
    seen = _statuses(routes["routes-xformers-ops"])
    assert seen["imports"] == "pass" and seen["kernel.xformers"] == "fail"
    run = _run(tmp_path, routes, ["routes-xformers-ops", "routes-xformers-import"], frozen)
    rows = {r["id"]: r for r in merge(run)["cells"]}
    assert rows[OPS]["status"] == "partial"
    assert rows[OPS]["checks"]["kernel.xformers"]["role"] == "optional"

    report = write_pins(run, now=NOW)
    picks = {p.purpose.key: p for p in report.picks}
    trained = [key for key, route in (("exaone3.5-remote-code", "lora-train.hf-peft"),
                                      ("exaone3.5-llamafied", "lora-train.hf-peft-llamafied"))
               if seen.get(route) == "pass"]
    assert trained, "the probe stack trains neither EXAONE 3.5 route"
    for key in trained:
        assert picks[key].cell is not None and picks[key].cell.cell_id == OPS
        header = _header((run / "pins" / f"{key}.constraints.txt").read_text())
        assert f"# cell: {OPS} (cell status: partial)" in header
        caveat = next(line for line in header if "kernel.xformers fail" in line)
        # signature and fix from the catalogue (probes/signatures.json)
        assert "[xformers-extensions-not-loaded]" in caveat
        assert "Fix: Install the xformers release built for this exact torch" in caveat
        # the guide's claim is listed apart, not as a caveat of the stack
        claims = header[header.index(next(h for h in header if h.startswith("# guide claims"))):]
        assert any("attention.xformers fail [transformers-attn-implementation-unsupported]" in h
                   for h in claims)
        assert not any("attention.xformers fail" in h for h in header[:header.index(claims[0])])
    readme = (run / "pins" / "README.md").read_text()
    assert "kernel.xformers fail [xformers-extensions-not-loaded]" in readme


def test_a_core_failure_is_never_recommended(tmp_path: Path, routes, frozen) -> None:
    seen = _statuses(routes["routes-xformers-import"])
    assert seen["imports"] == "fail"
    # its routes trained all the same: only the core check keeps it out
    assert any(seen.get(n) == "pass"
               for n in ("lora-train.hf-peft", "lora-train.hf-peft-llamafied"))
    run = _run(tmp_path, routes, ["routes", "routes-xformers-import"], frozen)
    summary = merge(run)
    assert {r["id"]: r["status"] for r in summary["cells"]}[IMPORT_BROKEN] == "broken"
    picks = plan(run, summary, ["route=any,backend=hf-peft", "route=remote-code,goal=newest"])
    assert picks
    for pick in picks:
        assert pick.cell is None or pick.cell.cell_id != IMPORT_BROKEN
        why = dict(pick.passed_over)[IMPORT_BROKEN]
        assert why.startswith("core check failed: imports fail [xformers-extensions-not-loaded]")


def test_claim_checks_change_no_status(routes) -> None:
    checks = json.loads(routes["routes-xformers-ops"].read_text())["checks"]
    claim = next(c for c in checks if c["name"] == "attention.xformers")
    assert claim["status"] == "fail" and is_claim("attention.xformers")
    without = [c for c in checks if c is not claim]
    passing = [dict(c, status="pass") if c is claim else c for c in checks]
    assert cell_status(checks) == cell_status(without) == cell_status(passing) == "partial"
    # and without the optional failure the cell works, the failing claim notwithstanding
    optional_ok = [dict(c, status="skip") if c["name"] == "kernel.xformers" else c for c in checks]
    assert cell_status(optional_ok) == "works"


def test_pins_for_picks_what_fits(tmp_path: Path, routes, frozen) -> None:
    seen = _statuses(routes["routes"])
    run = _run(tmp_path, routes, ["routes", "routes-xformers-import"], frozen)
    report = write_pins(run, now=NOW, pins_for=["route=any,backend=hf-peft",
                                                "backend=unsloth,route=llamafied"])
    picks = {p.purpose.key: p for p in report.picks}
    any_hf = picks["for-route-any-backend-hf-peft-goal-newest"]
    assert "pass" in (seen.get("lora-train.hf-peft"), seen.get("lora-train.hf-peft-llamafied"))
    assert any_hf.cell is not None and any_hf.cell.cell_id == GOOD
    assert (run / "pins" / f"{any_hf.purpose.key}.constraints.txt").is_file()
    # no unsloth in these cells: nothing fits, and each cell says why
    unsloth = next(p for p in report.picks if p.purpose.route == "llamafied"
                   and p.purpose.backend == "unsloth")
    assert unsloth.cell is None
    assert dict(unsloth.passed_over)[GOOD].startswith(
        "not tested for this purpose: EXAONE 3.5 llamafied via unsloth: unsloth.llamafied did not "
        "run")
    # fastest: nothing was timed on the CPU, so no file, and the qualifying cell says so
    fastest = picks["fastest-lora"]
    assert fastest.cell is None and not (run / "pins" / "fastest-lora.constraints.txt").exists()
    assert "not timed" in dict(fastest.passed_over)[GOOD]


def test_pins_for_is_checked_when_parsed() -> None:
    purpose = parse_pins_for("route=llamafied,backend=unsloth")
    assert (purpose.route, purpose.backend, purpose.goal) == ("llamafied", "unsloth", "newest")
    assert parse_pins_for("goal=fastest").route is None
    for bad in ("route=sideways", "colour=blue", "route", "route=exaone4,backend=unsloth",
                "route=exaone4,goal=fastest"):
        with pytest.raises(UsageError):
            parse_pins_for(bad)


def test_report_command_takes_pins_for(tmp_path: Path, routes, frozen) -> None:
    run = _run(tmp_path, routes, ["routes"], frozen)
    cmd = [sys.executable, "-m", "pinmatrix", "report", "--run", str(run)]
    ok = subprocess.run([*cmd, "--pins-for", "route=any,backend=hf-peft"], cwd=REPO_ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "for-route-any-backend-hf-peft-goal-newest.constraints.txt" in ok.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert any(p["purpose"] == "for-route-any-backend-hf-peft-goal-newest"
               for p in summary["pins"])
    assert "## Pins by purpose" in (run / "summary.md").read_text()
    bad = subprocess.run([*cmd, "--pins-for", "route=sideways"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "route='sideways'" in bad.stderr



def test_merge_and_nightly_take_pins_for(tmp_path: Path, routes, frozen) -> None:
    """The nightly merge job writes the --pins-for purposes too: as files, and in the summary's
    plan (the nightly's report used to be rewritten without them)."""
    artifact = tmp_path / "artifacts" / "cell-routes"
    artifact.mkdir(parents=True)
    _run(artifact, routes, ["routes"], frozen)
    reports = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", "merge", str(tmp_path / "artifacts"),
                           "--reports", str(reports), "--pins-for", "route=any,backend=hf-peft"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = (reports / "latest").resolve()
    purpose = "for-route-any-backend-hf-peft-goal-newest"
    assert (run / "pins" / f"{purpose}.constraints.txt").is_file(), proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert any(p["purpose"] == purpose for p in summary["pins"])
    nightly = subprocess.run([sys.executable, "-m", "pinmatrix", "nightly", "--help"],
                             cwd=REPO_ROOT, capture_output=True, text=True)
    assert "--pins-for" in nightly.stdout

# --- the committed GPU reports (real results of the H100 and the H200)

def _committed(name: str) -> tuple[Path, dict]:
    run = REPO_ROOT / "reports" / name / "merged"
    return run, merge(run)


def test_h200_fastest_is_the_unsloth_cell_and_the_rest_say_how_much_slower() -> None:
    run, summary = _committed("h200")
    picks = {p.purpose.key: p for p in plan(run, summary)}
    fastest = picks["fastest-lora"]
    assert fastest.cell is not None and "unsloth2026" in fastest.cell.cell_id
    assert fastest.cell.status == "partial"   # xformers' kernels do not load: optional
    assert fastest.verdict is not None and fastest.verdict.speed is not None
    assert fastest.verdict.speed[0] == "throughput.unsloth"
    whys = dict(fastest.passed_over)
    assert all(w.startswith(("slower than the pick:", "unresolvable:")) for w in whys.values())
    assert any("% slower" in w for w in whys.values())


def test_h200_routes_pick_the_newest_transformers_each_route_trains_on() -> None:
    run, summary = _committed("h200")
    picks = {p.purpose.key: p for p in plan(run, summary)}
    remote, llama = picks["exaone3.5-remote-code"], picks["exaone3.5-llamafied"]
    assert remote.cell is not None and remote.cell.version("transformers") == "4.57.6"
    # three 4.57.6 cells, the same caveats: through HF+PEFT the one without unsloth installs least
    assert "-unsloth-none-" in remote.cell.cell_id
    assert sum("a bigger install" in w for w in dict(remote.passed_over).values()) == 2
    assert llama.cell is not None and llama.cell.version("transformers") == "5.17.0"
    # the remote code of every known revision fails on 5.x: core for that purpose
    whys = dict(remote.passed_over)
    tf5 = [w for cid, w in whys.items() if "-tf5." in cid and not w.startswith("unresolvable")]
    assert tf5 and all("exaone3.5.remote-code fail [transformers-tied-weights-keys-list]" in w
                       for w in tf5)
    # on the llamafied pick the failing remote-code route is a caveat, not a reason to pass it over
    assert llama.verdict is not None
    assert any(c.kind == "other route" for c in llama.verdict.caveats)
    assert any(w.startswith("older than the pick: transformers 4.57.6 < 5.17.0")
               for w in dict(llama.passed_over).values())


def test_unsloth_purposes_only_when_a_cell_pins_unsloth() -> None:
    cells = [Cell("a", "works", None, {"unsloth": "none"}, {}, None, [], {}, None, {})]
    assert not any(p.key.startswith("unsloth-") for p in purposes_for(cells))
    cells.append(Cell("b", "works", None, {"unsloth": "2026.10.9"}, {}, None, [], {}, None, {}))
    assert any(p.key.startswith("unsloth-") for p in purposes_for(cells))


def test_newest_orders_by_packaging_versions() -> None:
    def cell(cid: str, tf: str, unsloth: str = "none") -> Cell:
        checks = {n: {"status": "pass"} for n in ("imports", "exaone3.5.llamafied",
                                                  "lora-train.hf-peft-llamafied")}
        locked = {"transformers": tf, "torch": "2.11.0", "unsloth": unsloth}
        return Cell(cid, "works", None, {}, checks, locked,
                    [f"{k}=={v}" for k, v in locked.items()], {}, None, {})

    cells = [cell("a", "4.57.6"), cell("b", "4.9.0"), cell("c", "4.57.6", "2026.10.9")]
    cells[2].checks["unsloth.llamafied"] = {"status": "fail", "signature": "some-unsloth-bug"}
    pick = choose(cells, parse_pins_for("route=llamafied"))   # any backend: unsloth counts
    assert pick.cell is not None and pick.cell.cell_id == "c"   # same transformers: unsloth decides
    whys = dict(pick.passed_over)
    assert whys["b"] == "older than the pick: transformers 4.9.0 < 4.57.6"  # PEP 440, not text
    assert whys["a"] == "older than the pick: unsloth none < 2026.10.9"
    # through HF+PEFT unsloth trains nothing: the same versions otherwise, so fewer caveats win
    hf = choose(cells, parse_pins_for("route=llamafied,backend=hf-peft"))
    assert hf.cell is not None and hf.cell.cell_id == "a"
    assert dict(hf.passed_over)["c"] == ("same versions as the pick (transformers 4.57.6, torch "
                                         "2.11.0), more caveats: 1 failing checks against 0")
    assert judge(cells[0], parse_pins_for("route=remote-code,backend=hf-peft")).why_not == (
        "not tested for this purpose: EXAONE 3.5 through its remote code via HF+PEFT: "
        "exaone3.5.remote-code did not run, lora-train.hf-peft did not run")


def _wheel(folder: Path, name: str, version: str) -> None:
    """A small real wheel (metadata only) so pip and uv can resolve offline against find-links."""
    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl",
                         "w") as whl:
        whl.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        whl.writestr(f"{dist}/METADATA",
                     f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: pinmatrix-test\n"
                                      "Root-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")


@needs_uv
def test_uv_and_pip_read_the_file_as_constraints(tmp_path: Path, routes, frozen) -> None:
    run = _run(tmp_path, routes, ["routes"], frozen)
    report = write_pins(run, now=NOW)
    assert report.written, report.message
    constraints = run / "pins" / report.written[0].file_name
    peft = next(line for line in constraints.read_text().splitlines()
                if line.lower().startswith("peft=="))
    version = peft.split("==", 1)[1]
    links = tmp_path / "links"
    links.mkdir()
    for v in (version, "99.0.0"):  # the newest is not the pinned one: only -c picks it
        _wheel(links, "peft", v)
    req = tmp_path / "req.in"
    req.write_text("peft\n")
    base = [UV, "pip", "compile", str(req), "--no-index", "--find-links", str(links), "--no-deps",
            "--no-header", "--python-version", "3.11", "--quiet"]
    free = subprocess.run(base, capture_output=True, text=True)
    assert free.returncode == 0 and "peft==99.0.0" in free.stdout, free.stderr
    pinned = subprocess.run([*base, "-c", str(constraints)], capture_output=True, text=True)
    assert pinned.returncode == 0, pinned.stderr
    assert f"peft=={version}" in pinned.stdout


def test_nothing_qualifies_writes_no_pins_and_says_why(
    tmp_path: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    results = real_results(cache_root(request, tmp_path_factory))
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "broken-run"}))
    for stack in ("xformers-broken", "trl-broken"):
        _add_cell(run, results[stack], "torch==2.13.0+cpu\n")
    (run / "pins").mkdir()  # a stale pins folder from an earlier report must not survive
    report = write_pins(run, now=NOW)
    assert report.pins_dir is None and not report.written
    assert not (run / "pins").exists()
    assert "no cell qualifies for any purpose in run broken-run" in report.message
    assert "2 broken" in report.message  # both import checks fail (a core check)


def test_a_qualifying_cell_without_a_lock_is_passed_over_with_a_note(tmp_path: Path,
                                                                     routes) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "nolock"}))
    _add_cell(run, routes["routes"], None)
    cells = collect_cells(run, merge(run))
    verdict = judge(cells[0], parse_pins_for("route=any"))
    assert verdict.why_not is not None and "no lock" in verdict.why_not


def test_lock_entries_strip_hashes_and_keep_markers() -> None:
    # uv's --generate-hashes layout: the pin, its hashes and `# via` notes on indented lines
    lock = ("filelock==3.20.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via torch\n"
            "torch==2.13.0+cpu \\\n    --hash=sha256:cc\n    # via -r requirements.in\n"
            "colorama==0.4.6 ; sys_platform == 'win32'\n--find-links /opt/wheels\n")
    assert lock_entries(lock) == ["filelock==3.20.0", "torch==2.13.0+cpu",
                                  "colorama==0.4.6 ; sys_platform == 'win32'"]


def test_torch_index_hint() -> None:
    assert torch_index_hint("2.8.0+cu128") == "https://download.pytorch.org/whl/cu128"
    assert torch_index_hint("2.11.0") is None


def test_a_remote_code_verdict_without_a_basis_never_recommends_the_remote_code_route() -> None:
    """Results from before the revision-faithful fixtures (the committed H100 runs) passed the
    remote code on transformers 5.17 through a stand-in that bridged transformers' API changes;
    the hub code fails there. Such a verdict records no basis: it cannot pick the remote code."""

    checks = {name: {"status": "pass"} for name in
              ("imports", "exaone3.5.remote-code", "lora-train.hf-peft", "exaone3.5.llamafied",
               "lora-train.hf-peft-llamafied")}
    old = Cell("tf5.17", "works", None, {"transformers": "5.17.0"}, checks,
               {"torch": "2.11.0"}, ["torch==2.11.0"], {}, None, {})
    remote = parse_pins_for("route=remote-code")
    verdict = judge(old, remote)
    assert verdict.why_not and "predates the revision-faithful" in verdict.why_not
    new = Cell("tf4.57.6", "works", None, {"transformers": "4.57.6"}, checks,
               {"torch": "2.11.0"}, ["torch==2.11.0"], {}, None, {},
               remote_code_basis="fixture of hub revision current")
    assert judge(new, remote).why_not is None
    assert judge(old, parse_pins_for("route=llamafied")).why_not is None
