"""`junit.xml`: one test case per cell × check, so any CI's test view shows the matrix.

classname = cell id, name = check name. fail → <failure> (signature + message, traceback as text);
skip → <skipped> with its reason; infra → <error> (the machine failed, not the stack); flaky → a
pass with the attempts in <system-out>. A cell with no checks gets one case named after its stage:
`resolve` (unresolvable: a failure with the resolver's explanation) or `run` (infra: an error).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pinmatrix.fsio import confined, first_line, write_text_atomic
from pinmatrix.results import load_result

# XML 1.0 forbids most control characters; a traceback can carry them (ANSI colours, NULs).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: Any) -> str:
    return _NOT_XML.sub("\ufffd", str(text if text is not None else ""))


def _full_checks(run_dir: Path, cell: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The result's own check objects (error message, traceback, duration), re-validated."""
    if not cell.get("result"):
        return {}
    found = confined(Path(run_dir), cell["result"])
    if found is None:  # a path that leads out of the run folder, or through a link
        return {}
    loaded = load_result(found)
    return {c["name"]: c for c in loaded.checks} if hasattr(loaded, "checks") else {}


def build_junit(summary: Mapping[str, Any], run_dir: Path) -> ET.Element:
    run = summary.get("run") or {}
    root = ET.Element("testsuites", name=f"pinmatrix {run.get('run_id', Path(str(run_dir)).name)}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for cell in summary.get("cells") or []:
        suite = ET.SubElement(root, "testsuite", name=cell["id"])
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="status", value=cell["status"])
        if cell.get("verdict") and cell["verdict"] != cell["status"]:
            ET.SubElement(props, "property", name="verdict", value=_clean(cell["verdict"]))
        for key, value in sorted((cell.get("pins") or {}).items()):
            ET.SubElement(props, "property", name=f"pin.{key}", value=_clean(value))
        for found in (summary.get("diff") or {}).get(
            "bisects"
        ) or []:  # pinmatrix/bisect/nightly.py
            if found["cell"] == cell["id"] and found.get("first_bad"):
                # a fact-level break names its fact: one property per fact bisected
                fact = f" fact {found['fact']}" if found.get("fact") else ""
                ET.SubElement(
                    props,
                    "property",
                    name=f"first_bad.{found['check']}" + (f".{found['fact']}" if fact else ""),
                    value=_clean(f"{found['package']} {found['first_bad']}{fact}"),
                )
        full = _full_checks(run_dir, cell)
        checks = cell.get("checks") or {}
        if not checks:
            name = "resolve" if cell["status"] == "unresolvable" else "run"
            case = ET.SubElement(suite, "testcase", classname=cell["id"], name=name, time="0")
            counts["tests"] += 1
            reason = _clean(cell.get("reason") or cell["status"])
            if cell["status"] == "unresolvable":
                node = ET.SubElement(
                    case, "failure", message=_first_line(reason), type="unresolvable"
                )
                counts["failures"] += 1
            else:
                node = ET.SubElement(
                    case,
                    "error",
                    message=_first_line(reason),
                    type=_clean(cell.get("signature") or "infra"),
                )
                counts["errors"] += 1
            node.text = reason
        for name in summary.get("checks") or []:
            if name not in checks:
                continue
            check, detail = checks[name], full.get(name, {})
            case = ET.SubElement(
                suite,
                "testcase",
                classname=cell["id"],
                name=name,
                time=f"{float(detail.get('duration_s') or 0):.3f}",
            )
            counts["tests"] += 1
            error = detail.get("error") or {}
            status = check["status"]
            if status == "fail":
                sig = check.get("signature") or error.get("signature") or "unclassified"
                message = (
                    f"{sig}: {error.get('type') or 'failure'}: {_first_line(error.get('message'))}"
                )
                node = ET.SubElement(case, "failure", message=_clean(message), type=_clean(sig))
                node.text = _clean(
                    "\n".join(filter(None, [error.get("message"), error.get("traceback_tail")]))
                )
                counts["failures"] += 1
            elif status == "skip":
                ET.SubElement(case, "skipped", message=_clean(check.get("reason") or "skipped"))
                counts["skipped"] += 1
            elif status == "infra":
                node = ET.SubElement(
                    case,
                    "error",
                    message=_clean(check.get("reason") or "infra"),
                    type=_clean(check.get("signature") or "infra"),
                )
                node.text = _clean(error.get("message") or check.get("reason") or "")
                counts["errors"] += 1
            elif status == "flaky":
                out = ET.SubElement(case, "system-out")
                out.text = _clean(
                    "flaky: "
                    + "; ".join(str(a.get("status")) for a in detail.get("attempts") or [])
                )
        for item in cell.get("not_judged") or []:
            # a verdict claims only what ran: what the host could not judge, as a skipped case
            case = ET.SubElement(suite, "testcase", classname=cell["id"],
                                 name=f"not-judged.{item['what']}", time="0")
            names = ", ".join(item["checks"]) or "none in the result"
            ET.SubElement(case, "skipped", message=_clean(
                f"{item['what']} not judged: {item['why']} (checks: {names})"))
            counts["tests"] += 1
            counts["skipped"] += 1
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    return root


def write_junit(summary: Mapping[str, Any], run_dir: Path) -> Path:
    root = build_junit(summary, run_dir)
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return write_text_atomic(
        Path(run_dir) / "junit.xml", '<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n"
    )


def _first_line(text: Any) -> str:
    return _clean(first_line(text, limit=300))
