"""summary.md: the merged table of a run, rendered from the summary dict
(pinmatrix/report/summary.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pinmatrix.report.claims import claims_markdown
from pinmatrix.report.diff import render_markdown as render_diff
from pinmatrix.report.exaone import render_markdown as render_exaone35
from pinmatrix.report.gpus import render_timeline
from pinmatrix.report.pins import pins_markdown
from pinmatrix.report.remote_code import render_markdown as render_remote_code
from pinmatrix.status import CELL_GLYPH, CELL_STATUSES, CHECK_GLYPH, status_of


def render_markdown(summary: dict[str, Any]) -> str:
    run = summary.get("run") or {}
    out = [f"# pinmatrix run {run.get('run_id', Path(summary.get('run_dir', '.')).name)}", "",
           f"**{summary['verdict']}**", ""]
    if run:
        facts = [f"matrix `{run.get('matrix')}`" if run.get("matrix") else None,
                 f"runner `{run.get('runner')}`" if run.get("runner") else None,
                 f"device `{run.get('device')}`" if run.get("device") else None,
                 f"selection `{' '.join(run.get('selection') or []) or 'all'}`"]
        out += [" · ".join(f for f in facts if f), ""]
    # the nightly's comparison with the previous run (pinmatrix/report/diff.py)
    if summary.get("diff"):

        out += [render_diff(summary["diff"], level=2), "(full diff: `diff.md`)", ""]
    elif summary.get("diff_error"):
        out += [f"Previous run not compared: {_md_inline(summary['diff_error'])}", ""]

    out += render_exaone35(summary.get("exaone35") or {})
    for table in summary["pivot"]:
        out += [f"## Which versions work together: transformers × unsloth (python "
                f"{table['python']}, torch {table['torch']})", "",
                "| transformers \\ unsloth | "
                + " | ".join(f"`{u}`" for u in table["unsloth"]) + " |",
                "|---|" + "---|" * len(table["unsloth"])]
        for tf in table["transformers"]:
            cells = []
            for u in table["unsloth"]:
                slot = table["grid"][tf][u]
                cells.append(" ".join(f"{CELL_GLYPH[status_of(s)]} {s}"
                                      + (f" ×{n}" if n > 1 else "")
                                      for s, n in sorted(slot.items(), key=lambda kv: (
                                          CELL_STATUSES.index(status_of(kv[0])), kv[0])))
                             or "—")
            out.append(f"| `{tf}` | " + " | ".join(cells) + " |")
        out.append("")
    # the answer first: after the pivot, the pins per purpose and the guide's claims
    if summary.get("pins"):  # pinmatrix/report/pins.py: the pick per purpose, and why not the rest

        out += pins_markdown(summary["pins"])

    out += claims_markdown(summary.get("claims") or [])
    columns = summary["checks"]
    out += ["## Cells", "",
            "Legend: ✅ pass · ❌ fail · ⏭ skip · ⚠ infra · 〰 flaky · `·` not run (each glyph "
            "is followed by its word)", ""]
    out.append("| cell | status | " + " | ".join(f"`{c}`" for c in columns) + " |")
    out.append("|---|---|" + "---|" * len(columns))
    for cell in summary["cells"]:
        statuses = [(cell["checks"].get(c) or {}).get("status") for c in columns]
        glyphs = [f"{CHECK_GLYPH[status]} {status}" if status in CHECK_GLYPH and status else "·"
                  for status in statuses]
        verdict = cell.get("verdict") or cell["status"]
        out.append(f"| `{cell['id']}` | {CELL_GLYPH[cell['status']]} {_md_inline(verdict)} | "
                   + " | ".join(glyphs) + " |")
    out.append("")
    out += _not_judged_markdown(summary["cells"])
    if summary["failures"]:
        out += ["## Failures by signature", ""]
        for group in summary["failures"]:
            tag = "" if group["known"] else " (unknown: not in the catalogue yet)"
            out.append(f"### `{group['signature']}`{tag} — {group['count']} "
                       f"check{'s' if group['count'] != 1 else ''}")
            out.append("")
            for label in ("cause", "affected", "fix", "link"):
                if group.get(label):
                    out.append(f"- **{label}**: {group[label]}")
            for item in group["checks"]:
                msg = f": {item['type']}: {item['message']}" if item.get("type") else ""
                out.append(f"- `{item['cell']}` `{item['check']}`{_md_inline(msg)}")
            out.append("")
    if summary["unresolvable"]:
        out += ["## Unresolvable", ""]
        for item in summary["unresolvable"]:
            out += [f"- `{item['cell']}`:", "", "  ```",
                    *("  " + ln for ln in (item["explanation"] or "").splitlines()),
                    "  ```", ""]
    if summary["speed"]:  # only where throughput ran (GPU cells)
        out += ["## Speed (LoRA training)", "",
                "tokens/s is the median timed step; spread: tokens/s at the slowest and the "
                "fastest timed step; first step: the untimed first step (a just-in-time compile "
                "lands there; FA4's kernel compile is also timed on its own, as JIT).", "",
                "| cell | stack | tokens/s | vs sdpa | peak GiB | batch×seq | MFU | spread (steps) "
                "| first step s | GPU |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for s in summary["speed"]:
            speedup = f"{s['speedup_vs_sdpa']:.2f}×" if s["speedup_vs_sdpa"] else "—"
            if s["speedup_vs_sdpa"] and s.get("baseline") not in (None, "sdpa"):
                speedup += f" (vs {s['baseline']})"
            peak = f"{s['peak_mem_gib']:.1f}" if s["peak_mem_gib"] is not None else "—"
            mfu = f"{100 * s['mfu']:.1f}%" if s.get("mfu") is not None else "—"
            low, high = s.get("tokens_per_s_min"), s.get("tokens_per_s_max")
            spread = f"{low:.0f}–{high:.0f}" if low is not None and high is not None else "—"
            if s.get("steps_timed"):
                spread += f" ({s['steps_timed']})"
            first = f"{s['first_step_s']:.2f}" if s.get("first_step_s") is not None else "—"
            if s.get("jit_compile_s") is not None:
                first += f" (JIT {s['jit_compile_s']:.1f})"
            out.append(f"| `{s['cell']}` | {s['stack']} | {s['tokens_per_s']:.0f} | {speedup} | "
                       f"{peak} | "
                       f"{s.get('batch_x_seq') or '—'} | {mfu} | {spread} | {first} | "
                       f"{s.get('gpu') or '—'} |")
        out.append("")
    if summary["infra"]:
        out += ["## Infra (the machine failed, not the stack)", ""]
        shared = [c for c in summary.get("causes") or [] if len(c["cells"]) > 1]
        told = {cell for c in shared for cell in c["cells"]}
        for cause in shared:  # one cause, said once, with its remedy and its cells
            sig = f" [`{cause['signature']}`]" if cause.get("signature") else ""
            out.append(f"- **{len(cause['cells'])} cells, one cause**{sig}: "
                       f"{_md_inline(cause['reason'])}")
            if cause.get("remedy"):
                out.append(f"  - remedy: {_md_inline(cause['remedy'])}")
            out.append("  - cells: " + ", ".join(f"`{c}`" for c in cause["cells"]))
        for item in summary["infra"]:
            if not item["check"] and item["cell"] in told:
                continue
            where = f"`{item['check']}`" if item["check"] else "cell"
            sig = f" [`{item['signature']}`]" if item.get("signature") else ""
            out.append(f"- `{item['cell']}` {where}: "
                       f"{_md_inline(item.get('reason') or 'infra')}{sig}")
        out.append("")
    if summary.get("timing"):
        out += ["## Probe time", "",
                "compat = the probe's wall time less the throughput checks: its start, its "
                "imports, every other "
                "check and, in a cell with unsloth, the start of the interpreter that measures the "
                "plain stacks.", "",
                "| cell | compile cache | probe s | compat s | throughput s | slowest compat "
                "checks |",
                "|---|---|---|---|---|---|"]
        for t in summary["timing"]:
            slow = ", ".join(f"`{c['check']}` {c['s']:.1f}" for c in t["slowest_compat_checks"])
            out.append(f"| `{t['cell']}` | {t.get('compile_cache') or '—'} | {t['probe_s']:.1f} | "
                       f"{t['compat_s']:.1f} | "
                       f"{t['throughput_s']:.1f} | {slow} |")
        out.append("")

    out += render_timeline(summary.get("gpu_timeline"))

    out += render_remote_code(summary.get("remote_code") or {})
    if summary["damaged"]:
        out += ["## Damaged files (not merged)", ""]
        for item in summary["damaged"]:
            out.append(f"- `{item['path']}`: {_md_inline(item['why'])}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _not_judged_markdown(cells: list[dict[str, Any]]) -> list[str]:
    """Per cell, what its host could not judge and why (summary.json `not_judged`): a verdict
    claims only what ran."""
    rows = [c for c in cells if c.get("not_judged")]
    if not rows:
        return []
    out = ["## Not judged on this host", "",
           "Installed, or asked to measure, but none of its checks ran here: never counted as "
           "working. Routes this host could exercise are listed per cell.", "",
           "| cell | host | not judged | why | checks that did not run | routes judged here |",
           "|---|---|---|---|---|---|"]
    for cell in rows:
        host = (cell.get("judged_on") or {}).get("host") or "?"
        routes = ", ".join((cell.get("judged_on") or {}).get("routes") or []) or "—"
        for item in cell["not_judged"]:
            names = ", ".join(f"`{n}`" for n in item["checks"]) or "none in the result"
            out.append(f"| `{cell['id']}` | {host} | {item['what']} not judged | "
                       f"{_md_inline(str(item['why']))} | {names} | {routes} |")
    return out + [""]


def _md_inline(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
