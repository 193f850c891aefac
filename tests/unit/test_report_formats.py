"""summary.html, junit.xml and damaged inputs, built from real probe results
(tests/unit/report_runs.py)."""
from __future__ import annotations

import base64
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from real_results import BASE_PINS, cache_root
from report_runs import CELL_ID, add_cell, probe_result, standard_run

from pinmatrix.outcome import Outcome
from pinmatrix.report.html import render_html, throughput_chart
from pinmatrix.report.summary import merge
from pinmatrix.report.write import write_report

XF_ID = "py3.11-torch2.13.0+cpu-tf5.17.0-xformers0.0.35"


@pytest.fixture(scope="module")
def cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cache_root(request, tmp_path_factory)


@pytest.fixture
def run(tmp_path: Path, cache) -> Path:
    run = standard_run(tmp_path, cache)
    write_report(run)
    return run


def test_every_format_is_written(run) -> None:
    for name in ("summary.md", "summary.json", "summary.html", "junit.xml"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name


# --- html ----------------------------------------------------------------------------------------

def test_html_is_self_contained(run) -> None:
    page = (run / "summary.html").read_text()
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=['\"]?(https?:)?//",
                         page), "loads from the network"
    assert "<link" not in page and "@import" not in page
    assert page.count("<script>") == 1  # inline only


def test_html_has_one_row_and_one_detail_per_cell(run) -> None:
    page = (run / "summary.html").read_text()
    summary = json.loads((run / "summary.json").read_text())
    ids = re.findall(r"<tr class=cell data-id='([^']+)'", page)
    assert ids == [c["id"] for c in summary["cells"]] and len(ids) == 5
    assert len(re.findall(r"<tr class=detail data-for='", page)) == 5
    assert summary["verdict"] in page


def _detail(page: str, cell_id: str) -> str:
    """The detail row of one cell: up to the next cell row (detail rows hold tables of their
    own)."""
    after = page.split(f"<tr class=detail data-for='{cell_id}' hidden>", 1)[1]
    return re.split(r"<tr class=cell |</tbody></table>\n<h2>Throughput", after, maxsplit=1)[0]


def test_html_detail_has_checks_error_signature_fix_and_environment(run) -> None:
    page = (run / "summary.html").read_text()
    detail = _detail(page, XF_ID)
    assert "data-check='imports'" in detail and "data-check='kernel.xformers'" in detail
    assert "xformers-extensions-not-loaded" in detail
    assert "xFormers can&#x27;t load C++/CUDA extensions" in detail          # the error, escaped
    assert "<b>fix</b>: Install the xformers release built for this exact torch" in detail
    assert "<summary>traceback</summary>" in detail
    result = json.loads((run / "cells" / f"{XF_ID}.json").read_text())
    env = result["environment"]
    assert f"<td>{env['torch']}</td>" in detail and f"<td>{env['python']}</td>" in detail
    assert "<td>xformers</td><td>0.0.35</td>" in detail  # the package table of the full environment
    assert "requirements are unsatisfiable" in _detail(page,
                                                       "py3.11-torch2.13.0+cpu-tf4.57.6-unsloth2026.1.1")


def test_chart_embeds_a_png_of_the_measured_throughput(run) -> None:
    pytest.importorskip("matplotlib")
    summary = json.loads((run / "summary.json").read_text())
    assert {s["stack"] for s in summary["speed"]} == {"sdpa", "eager"}  # measured on this CPU
    page = (run / "summary.html").read_text()
    (uri,) = re.findall(r"<img id=chart src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert base64.b64decode(uri)[:8] == b"\x89PNG\r\n\x1a\n"
    tps = summary["speed"][0]["tokens_per_s"]
    assert f"{tps:.0f} tokens/s" in page  # the alt text carries the numbers


def test_without_matplotlib_the_page_says_so_and_md_json_still_merge(
    run, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    uri, why = throughput_chart([{"cell": "c", "stack": "sdpa", "tokens_per_s": 1.0}])
    assert uri is None and "matplotlib is not installed" in why
    for name in ("summary.md", "summary.json", "summary.html"):
        (run / name).unlink()
    write_report(run)
    page = (run / "summary.html").read_text()
    assert "<p id=chart-unavailable" in page and "<img id=chart" not in page
    assert (run / "summary.md").is_file() and (run / "summary.json").is_file()


def test_html_escapes_hostile_text(run) -> None:
    summary = merge(run)
    summary["cells"][0]["reason"] = "<script>alert(1)</script>"
    page = render_html(summary, run)
    assert (
        "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    )


# --- junit ---------------------------------------------------------------------------------------

def _cases(run: Path) -> dict[tuple[str, str], ET.Element]:
    root = ET.parse(run / "junit.xml").getroot()
    return {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}


def test_junit_one_case_per_cell_and_check(run) -> None:
    summary = json.loads((run / "summary.json").read_text())
    cases = _cases(run)
    expected = {(c["id"], name) for c in summary["cells"] for name in c["checks"]}
    # one skipped case per thing the host did not judge (summary.json not_judged)
    expected |= {(c["id"], f"not-judged.{item['what']}") for c in summary["cells"]
                 for item in c.get("not_judged") or []}
    assert expected <= set(cases)
    # + `resolve` of the unresolvable cell, `run` of the infra one
    assert len(cases) == len(expected) + 2
    root = ET.parse(run / "junit.xml").getroot()
    assert int(root.get("tests")) == len(cases)


def test_junit_statuses(run) -> None:
    cases = _cases(run)
    fail = cases[(XF_ID, "imports")].find("failure")
    assert fail is not None and fail.get("type") == "xformers-extensions-not-loaded"
    assert fail.get("message").startswith("xformers-extensions-not-loaded: ImportError:")
    assert "Traceback" in fail.text
    passed = cases[(CELL_ID, "imports")]
    assert list(passed) == []  # a pass has no child
    skipped = cases[(CELL_ID, "kernel.xformers")].find("skipped")
    assert skipped is not None and skipped.get("message")
    resolve = cases[("py3.11-torch2.13.0+cpu-tf4.57.6-unsloth2026.1.1", "resolve")].find("failure")
    assert resolve is not None and "unsatisfiable" in resolve.text
    infra = cases[("py3.11-torch2.13.0+cpu-tf5.17.0-unsloth2026.1.1", "run")].find("error")
    assert infra is not None and infra.get("type") == "venv-install-failed"


def test_junit_check_infra_is_an_error_not_a_failure(tmp_path: Path, cache) -> None:
    """An infra check (the probe says: the machine failed) becomes <error>, never <failure>."""
    from report_runs import new_run

    run = new_run(tmp_path, "20261127T180000Z")
    pins = dict(BASE_PINS)
    result = json.loads(probe_result(cache, CELL_ID, "good", pins).read_text())
    for check in result["checks"]:
        if check["name"] == "kernel.flash-attn":  # as the probe writes a CUDA OOM
            check.update(status="infra", reason="CUDA out of memory at batch 4 × 2048")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    add_cell(run, CELL_ID, pins, path)
    write_report(run)
    case = _cases(run)[(CELL_ID, "kernel.flash-attn")]
    assert (
        case.find("failure") is None
        and case.find("error").get("message") == "CUDA out of memory at batch 4 × 2048"
    )


# --- damaged input never crashes any format ------------------------------------------------------

def test_damaged_and_wrong_schema_files_are_listed_in_every_format(run, cache) -> None:
    good = json.loads((run / "cells" / f"{CELL_ID}.json").read_text())
    variants = {
        "schema2": {**good, "schema": 2},
        "truncated": None,
        "notobject": [1, 2, 3],
        "badcheck": {**good, "checks": [{"name": "imports", "status": "exploded"}]},
    }
    for name, data in variants.items():
        cid = f"py3.11-torch2.13.0+cpu-tf5.17.0-{name}"
        text = (
            json.dumps(good)[:200]
            if data is None
            else json.dumps(
                {**data, "cell": {**good["cell"], "id": cid}} if isinstance(data, dict) else data
            )
        )
        (run / "cells" / f"{cid}.json").write_text(text)
        Outcome(cell=cid, hash=good["cell"]["hash"], pins=BASE_PINS, runner="venv", stage="done",
                result=f"cells/{cid}.json").write(run)
    (run / "outcomes" / "garbage.json").write_text("{not json")
    (run / "outcomes" / "listcell.json").write_text(json.dumps({"cell": ["x"], "pins": {},
                                                                "runner": "venv"}))
    (run / "outcomes" / "nullpins.json").write_text(json.dumps({"cell": "y", "pins": None,
                                                                "runner": "venv"}))
    (run / "cells" / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    write_report(run)
    summary = json.loads((run / "summary.json").read_text())
    why = {d["path"]: d["why"] for d in summary["damaged"]}
    assert why["cells/py3.11-torch2.13.0+cpu-tf5.17.0-schema2.json"].startswith("schema version 2")
    assert why["cells/py3.11-torch2.13.0+cpu-tf5.17.0-truncated.json"].startswith("not JSON")
    assert why["cells/py3.11-torch2.13.0+cpu-tf5.17.0-notobject.json"].startswith("not a pinmatrix "
                                                                                  "result")
    assert why["cells/py3.11-torch2.13.0+cpu-tf5.17.0-badcheck.json"].startswith("schema violation")
    assert "outcomes/garbage.json" in why and "cells/binary.json" in why
    assert "'cell' is not a non-empty string" in why["outcomes/listcell.json"]
    assert "'pins' is not an object of strings" in why["outcomes/nullpins.json"]
    rows = {c["id"]: c["status"] for c in summary["cells"]}
    assert all(rows[f"py3.11-torch2.13.0+cpu-tf5.17.0-{n}"] == "infra" for n in variants)
    page = (run / "summary.html").read_text()
    assert "<section id=damaged>" in page and "schema version 2" in page
    assert "## Damaged files (not merged)" in (run / "summary.md").read_text()
    cases = _cases(run)
    assert cases[("py3.11-torch2.13.0+cpu-tf5.17.0-schema2", "run")].find("error") is not None
