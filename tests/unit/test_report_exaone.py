"""The EXAONE 3.5 section of the report: one answer per route, what it rests on, and the route
advice."""

from __future__ import annotations

from pinmatrix.report.exaone import exaone35_section, render_html, render_markdown
from pinmatrix.report.summary import CellRow
from pinmatrix.status import cell_status

BASIS = {"basis": "fixture of hub revision current", "fixture_revision": "current"}


def check(name, status, signature=None, **evidence):
    out = {"name": name, "status": status, "duration_s": 0.1, "evidence": dict(evidence)}
    if signature:
        out["error"] = {
            "type": "AttributeError",
            "message": "x",
            "signature": signature,
            "known": True,
        }
    return out


def row(tf, remote_ok, llamafied_ok=True):
    sig = None if remote_ok else "transformers-tied-weights-keys-list"
    status = "pass" if remote_ok else "fail"
    checks = [
        check("imports", "pass"),
        check(
            "exaone3.5.surface",
            status,
            sig,
            facts_checked=42,
            facts_failed=[] if remote_ok else [{"signature": sig}, {"signature": "transformers-x"}],
        ),
        check("exaone3.5.remote-code", status, sig, **BASIS),
        check("exaone3.5.surface.original", status, sig),
        check(
            "exaone3.5.remote-code.original", status, sig, basis="fixture of hub revision original"
        ),
        check(
            "exaone3.5.llamafied",
            "pass" if llamafied_ok else "fail",
            None if llamafied_ok else "fp-0123456789ab",
            **BASIS,
        ),
        check("lora-train.hf-peft", status, sig),
        check("lora-train.hf-peft-llamafied", "pass"),
    ]
    cid = f"py3.11-torch2.13.0-tf{tf}"
    return CellRow(
        cid,
        {"python": "3.11", "torch": "2.13.0", "transformers": tf, "unsloth": "none"},
        cell_status(checks),
        checks={c["name"]: c for c in checks},
    )


def test_section_answers_each_route_and_revision_with_its_basis() -> None:
    rows = [row("5.17.0", False), row("4.57.6", True)]
    section = exaone35_section(rows)
    assert [c["transformers"] for c in section["cells"]] == [
        "4.57.6",
        "5.17.0",
    ]  # version order, not text
    old, new = section["cells"]
    assert old["remote_code"] == {
        "checks": {"exaone3.5.remote-code": "pass", "lora-train.hf-peft": "pass"},
        "verdict": "works",
        "basis": "fixture of hub revision current",
        "surface": {"status": "pass", "signatures": [], "facts_checked": 42},
        "revision": "current",
    }
    assert new["remote_code"]["verdict"] == "fails"
    assert new["remote_code"]["signature"] == "transformers-tied-weights-keys-list"
    assert new["remote_code"]["surface"]["signatures"] == [
        "transformers-tied-weights-keys-list",
        "transformers-x",
    ]
    assert new["other_revisions"]["original"]["verdict"] == "fails"
    assert new["llamafied"]["verdict"] == "works"
    assert section["revisions"] == ["original"]
    assert [r.status for r in rows] == ["partial", "works"]


def test_markdown_puts_words_and_advice_not_only_glyphs() -> None:
    md = "\n".join(render_markdown(exaone35_section([row("4.57.6", True), row("5.17.0", False)])))
    assert "Verdicts rest on: fixture of hub revision current" in md
    assert "| 5.17.0 | none | FAILS `transformers-tied-weights-keys-list` |" in md
    assert "| 4.57.6 | none | WORKS | pass | WORKS | WORKS |" in md
    assert (
        "EXAONE 3.5 through its remote code: newest working stack here has transformers 4.57.6"
        in md
    )
    assert "EXAONE 3.5 llamafied: newest working stack here has transformers 5.17.0" in md
    assert "Where the remote code fails (transformers 5.17.0), the llamafied route trains" in md


def test_no_working_route_is_said_and_nothing_ran_renders_nothing() -> None:
    md = "\n".join(render_markdown(exaone35_section([row("5.17.0", False, llamafied_ok=False)])))
    assert "EXAONE 3.5 through its remote code: no cell here works." in md
    assert "EXAONE 3.5 llamafied: no cell here works." in md
    assert render_markdown(exaone35_section([])) == [] and render_html(exaone35_section([])) == ""


def test_html_has_the_basis_and_one_column_per_revision() -> None:
    html = render_html(exaone35_section([row("5.17.0", False)]))
    assert "fixture of hub revision current" in html and "<th>remote code (original)</th>" in html
    assert "FAILS <code>transformers-tied-weights-keys-list</code>" in html and "`" not in html


def test_markdown_names_each_surface_cause_once_with_the_fact_ids_it_breaks() -> None:
    """Facts that fail for one root cause are one line: the signature, the cause in words, the
    releases it shows on, and the readable fact ids a bisect can be given."""
    legacy = {
        "signature": "transformers-dynamiccache-from-legacy-cache-removed",
        "known": True,
        "cause": "DynamicCache.from_legacy_cache is gone",
        "facts": ["call:transformers.cache_utils.DynamicCache.from_legacy_cache(1 positional)"],
    }
    rows = [row("5.9.0", False), row("5.17.0", False)]
    for r in rows:
        r.checks["exaone3.5.surface"]["evidence"]["causes"] = [legacy]
    md = "\n".join(render_markdown(exaone35_section(rows)))
    line = (
        "- `transformers-dynamiccache-from-legacy-cache-removed` (DynamicCache.from_legacy_cache "
        "is gone; transformers 5.9.0, 5.17.0): "
        "`call:transformers.cache_utils.DynamicCache.from_legacy_cache(1 positional)`"
    )
    assert md.count(line) == 1
