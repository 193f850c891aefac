"""The answer users come for, EXAONE 3.5 by route: "can I LoRA-train it through its remote code, at
my
hub revision, with this stack?" and "can I through the llamafied checkpoint?", with what each
verdict
rests on (the real hub model at a commit, or the fixture of a named hub revision).

A route's verdict comes from its load check and its LoRA check (pinmatrix/status.py
EXAONE35_ROUTES):
both passed -> works; either failed -> fails, with the signature of the first failure; infra ->
infra;
neither ran -> not run. The remote-code route is answered for the matrix's pinned revision
(`exaone3.5.remote-code`) and, from the load and surface checks alone, for every other known
revision
(`exaone3.5.remote-code.REV`, `exaone3.5.surface.REV`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from packaging.version import Version

from pinmatrix.status import EXAONE35_ROUTES, PREDATES_FIXTURES

REVISION_PREFIX = "exaone3.5.remote-code."
SURFACE = "exaone3.5.surface"


def _vkey(text: str) -> tuple[int, Any]:
    try:
        return (0, Version(text))
    except ValueError:  # InvalidVersion, or too many digits for int()
        return (1, text)


def _signature(check: Mapping[str, Any]) -> str | None:
    return (check.get("error") or {}).get("signature")


def _verdict(
    checks: Mapping[str, Mapping[str, Any]],
    names: Iterable[str],
    surface: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    present = [checks[n] for n in names if n in checks]
    out: dict[str, Any] = {"checks": {c["name"]: c["status"] for c in present}}
    if not present:
        out["verdict"] = "not run"
    else:
        failed = [c for c in present if c["status"] == "fail"]
        infra = [c for c in present if c["status"] == "infra"]
        if failed:
            out.update(verdict="fails", signature=_signature(failed[0]), check=failed[0]["name"])
        elif infra:
            out.update(verdict="infra", reason=infra[0].get("reason"), check=infra[0]["name"])
        elif all(c["status"] in ("pass", "flaky") for c in present):
            out["verdict"] = "works"
        elif any(c.get("reason") == PREDATES_FIXTURES for c in present):
            # a pass with no recorded basis (pinmatrix/status.py with_recorded_basis)
            out["verdict"] = PREDATES_FIXTURES
        else:
            out["verdict"] = "skipped"
    evidence = (present[0].get("evidence") or {}) if present else {}
    if isinstance(evidence.get("basis"), str):
        out["basis"] = evidence["basis"]
    if surface is not None:
        ev = surface.get("evidence") or {}
        listed = ev.get("facts_failed")
        failed_facts: list[Any] = listed if isinstance(listed, list) else []
        out["surface"] = {
            "status": surface.get("status"),
            "signatures": sorted({f.get("signature") for f in failed_facts if f.get("signature")}),
            "facts_checked": ev.get("facts_checked"),
        }
        if isinstance(ev.get("causes"), list):  # one root cause, the fact ids it breaks
            out["surface"]["causes"] = ev["causes"]
    return out


def cell_answers(
    cell_id: str, pins: Mapping[str, str], checks: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """One cell's EXAONE 3.5 answers."""
    remote = _verdict(checks, EXAONE35_ROUTES["remote-code"], checks.get(SURFACE))
    evidence = (checks.get("exaone3.5.remote-code") or {}).get("evidence") or {}
    remote["revision"] = evidence.get("fixture_revision") or evidence.get("revision")
    revisions = {}
    for name in sorted(n for n in checks if n.startswith(REVISION_PREFIX)):
        revision = name[len(REVISION_PREFIX) :]
        revisions[revision] = _verdict(checks, [name], checks.get(f"{SURFACE}.{revision}"))
    return {
        "cell": cell_id,
        "transformers": pins.get("transformers"),
        "unsloth": pins.get("unsloth", "none"),
        "python": pins.get("python"),
        "torch": pins.get("torch"),
        "remote_code": remote,
        "other_revisions": revisions,
        "llamafied": _verdict(checks, EXAONE35_ROUTES["llamafied"]),
    }


def exaone35_section(rows: Iterable[Any]) -> dict[str, Any]:
    """{"cells": [...], "revisions": [...]} for the rows of a run that ran any EXAONE 3.5 check."""
    cells = [
        cell_answers(r.cell_id, r.pins, r.checks)
        for r in rows
        if any(n.startswith("exaone3.5.") or n.startswith("lora-train.hf-peft") for n in r.checks)
    ]
    cells.sort(
        key=lambda c: (
            _vkey(c["python"] or ""),
            _vkey(c["torch"] or ""),
            _vkey(c["transformers"] or ""),
            _vkey(c["unsloth"] or ""),
        )
    )
    revisions = sorted({rev for c in cells for rev in c["other_revisions"]})
    return {"cells": cells, "revisions": revisions}


def _basis_words(cells: list[Mapping[str, Any]]) -> str:
    """What the remote-code verdicts rest on; results that record none are said to be not judged."""
    basis = sorted({c["remote_code"].get("basis") for c in cells if c["remote_code"].get("basis")})
    unbased = [c for c in cells if not c["remote_code"].get("basis")
               and c["remote_code"].get("verdict") not in (None, "not run")]
    if unbased:
        basis.append(f"nothing recorded in {len(unbased)} cell{'s' if len(unbased) != 1 else ''} "
                     "(results from before the revision-faithful fixtures: their remote-code "
                     f"passes are shown as {PREDATES_FIXTURES})")
    return "; ".join(basis) or "unknown"


def _cell_text(answer: Mapping[str, Any]) -> str:
    verdict = answer.get("verdict", "not run")
    if verdict == "fails":
        return f"FAILS `{answer.get('signature')}`"
    if verdict == "works":
        return "WORKS"
    if verdict == "infra":
        return "INFRA"
    return str(verdict)


def render_markdown(section: Mapping[str, Any]) -> list[str]:
    """The section's markdown lines (empty when no cell ran an EXAONE 3.5 check)."""
    cells = section.get("cells") or []
    if not cells:
        return []
    revisions = section.get("revisions") or []
    pinned = sorted({c["remote_code"].get("revision") or "?" for c in cells})
    basis = _basis_words(cells)
    lines = [
        "## EXAONE 3.5: through its remote code, and llamafied",
        "",
        "Can a user LoRA-train EXAONE 3.5 with this stack? Each route is judged by its load check "
        "and "
        "its LoRA check. The remote code is judged at the matrix's pinned revision"
        f" ({', '.join(pinned)}) and at every other known hub revision (load only).",
        f"Verdicts rest on: {basis}. A fixture-based verdict claims what "
        f"the "
        "fixture can show: the transformers API forms recorded for that revision "
        "(probes/fixtures/exaone35/revisions/).",
        "",
    ]
    header = ["transformers", "unsloth", f"remote code ({', '.join(pinned)})", "surface"]
    header += [f"remote code ({rev})" for rev in revisions] + ["llamafied", "cell"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for c in cells:
        surface = c["remote_code"].get("surface") or {}
        surface_text = (
            ", ".join(f"`{s}`" for s in surface.get("signatures", []))
            or surface.get("status")
            or "–"
        )
        row = [
            c["transformers"] or "?",
            c["unsloth"] or "none",
            _cell_text(c["remote_code"]),
            surface_text,
        ]
        row += [_cell_text(c["other_revisions"].get(rev, {})) for rev in revisions]
        row += [_cell_text(c["llamafied"]), f"`{c['cell']}`"]
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"- {line}" for line in route_advice(section)]
    lines += _surface_cause_lines(cells)
    lines.append("")
    return lines


def _surface_cause_lines(cells: list[Mapping[str, Any]]) -> list[str]:
    """Each root cause the surface check found, once, with the transformers releases it shows on
    and the ids of the facts it breaks (the ids a bisect can name)."""
    by_cause: dict[tuple[str, str], dict[str, Any]] = {}
    for c in cells:
        for cause in (c["remote_code"].get("surface") or {}).get("causes") or []:
            key = (str(cause.get("signature")), str(cause.get("cause")))
            entry = by_cause.setdefault(key, {"versions": set(), "facts": []})
            entry["versions"].add(c["transformers"] or "?")
            entry["facts"] += [f for f in cause.get("facts") or [] if f not in entry["facts"]]
    if not by_cause:
        return []
    lines = ["", "Surface facts that fail, by cause:"]
    for (signature, cause), entry in sorted(by_cause.items()):
        versions = ", ".join(sorted(entry["versions"], key=_vkey))
        facts = ", ".join(f"`{f}`" for f in entry["facts"])
        lines.append(f"- `{signature}` ({cause}; transformers {versions}): {facts}")
    return lines


def route_advice(section: Mapping[str, Any]) -> list[str]:
    """Per route, the newest transformers on which it works, and where the remote code fails but the
    llamafied route trains, that route as the way to go."""
    cells = section.get("cells") or []
    out = []
    for route, label in (("remote_code", "through its remote code"), ("llamafied", "llamafied")):
        working = [c for c in cells if c[route].get("verdict") == "works"]
        if working:
            best = max(
                working, key=lambda c: (_vkey(c["transformers"] or ""), _vkey(c["unsloth"] or ""))
            )
            out.append(
                f"EXAONE 3.5 {label}: newest working stack here has transformers "
                f"{best['transformers']} "
                f"(unsloth {best['unsloth']}; cell `{best['cell']}`)."
            )
        elif cells:
            out.append(f"EXAONE 3.5 {label}: no cell here works.")
    broken_remote = [
        c
        for c in cells
        if c["remote_code"].get("verdict") == "fails" and c["llamafied"].get("verdict") == "works"
    ]
    if broken_remote:
        versions = ", ".join(sorted({c["transformers"] for c in broken_remote}, key=_vkey))
        out.append(
            f"Where the remote code fails (transformers {versions}), the llamafied route trains: "
            f"convert "
            "the checkpoint to LlamaForCausalLM (same weights), or pin a transformers on which "
            "the remote "
            "code works."
        )
    return out


def pivot(section: Mapping[str, Any]) -> dict[str, Any]:
    """transformers x unsloth -> {route: verdict} (for the HTML page)."""
    grid: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for c in section.get("cells") or []:
        grid[c["transformers"]][c["unsloth"]] = {
            "remote code": _cell_text(c["remote_code"]),
            "llamafied": _cell_text(c["llamafied"]),
        }
    return grid


def render_html(section: Mapping[str, Any]) -> str:
    """The section as an HTML table with words, not only glyphs (empty when nothing ran)."""

    cells = section.get("cells") or []
    if not cells:
        return ""
    revisions = section.get("revisions") or []
    basis = _basis_words(cells)
    pinned = sorted({c["remote_code"].get("revision") or "?" for c in cells})
    head = ["transformers", "unsloth", f"remote code ({', '.join(pinned)})"]
    head += [f"remote code ({r})" for r in revisions] + ["llamafied"]

    def td(answer: Mapping[str, Any]) -> str:
        verdict = answer.get("verdict", "not run")
        css = {"works": "pass", "fails": "fail", "infra": "infra"}.get(verdict, "skip")
        if verdict == "fails":  # the signature as code, not markdown's backticks
            return (f"<td class='st-{css}'>FAILS <code>{escape(str(answer.get('signature')))}"
                    "</code></td>")
        return f"<td class='st-{css}'>{escape(_cell_text(answer))}</td>"

    rows = "".join(
        "<tr>"
        + f"<td>{escape(c['transformers'] or '?')}</td><td>{escape(c['unsloth'] or 'none')}</td>"
        + td(c["remote_code"])
        + "".join(td(c["other_revisions"].get(r, {})) for r in revisions)
        + td(c["llamafied"])
        + "</tr>"
        for c in cells
    )
    return (
        "<section id=exaone35><h2>EXAONE 3.5: through its remote code, and llamafied</h2>"
        f"<p>Verdicts rest on: {escape(basis)}.</p>"
        "<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )
