"""`summary.html`: one self-contained page (no CDN, no network): sortable, filterable, expandable.

- The table has one row per cell; a click on the cell id opens its detail row: every check with its
  status, error, signature, the catalogue's cause and fix, and the full environment of the result.
- Filters: a text box (cell id, pins, signatures) and a status list. The page also reads them from
  the URL (`?q=tf5.17&status=broken&sort=status&dir=desc&open=CELL`), so a link can share a view and
  a headless browser can drive it.
- The throughput chart is drawn with matplotlib and embedded as a base64 PNG. matplotlib is imported
  only here, lazily: without it the page says the chart is unavailable and md/json/junit still
  merge.
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pinmatrix.fsio import confined, write_text_atomic
from pinmatrix.report.exaone import render_html as render_exaone35_html
from pinmatrix.results import describe_signature, load_result
from pinmatrix.status import status_of

STATUS_ORDER = ("works", "partial", "broken", "unresolvable", "infra")
PIN_COLUMNS = ("python", "torch", "transformers", "unsloth", "peft", "trl", "xformers",
               "flash-attn", "flash-attn-4", "liger-kernel", "bitsandbytes")


# A value from a result is shown cut at this length: a 500 MB string in a result must not become a
# 500 MB page (the full value stays in the result file).
MAX_SHOWN_CHARS = 20_000


def e(value: Any) -> str:
    text = "" if value is None else str(value)
    if len(text) > MAX_SHOWN_CHARS:
        text = f"{text[:MAX_SHOWN_CHARS]}… ({len(text)} characters, cut)"
    return html.escape(text, quote=True)


# --- the chart -----------------------------------------------------------------------------------

def throughput_chart(speed: list[Mapping[str, Any]]) -> tuple[str | None, str]:
    """(data URI of a PNG, alt text), or (None, why there is no chart)."""
    if not speed:
        return None, "No throughput results in this run (throughput runs on GPU cells)."
    try:
        import matplotlib  # noqa: PLC0415 - optional (the `report` extra) and ~300 ms: only for the chart

        matplotlib.use("Agg")  # no display; must precede pyplot
        import matplotlib.pyplot as plt  # noqa: PLC0415 - after matplotlib.use("Agg"), as it must be
    except ImportError:
        return (
            None,
            "Throughput chart unavailable: matplotlib is not installed (pip install matplotlib).",
        )
    labels = [f"{s['cell']}\n{s['stack']}" for s in speed]
    values = [float(s["tokens_per_s"]) for s in speed]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(speed) + 1.4), dpi=96)
    try:
        bars = ax.barh(range(len(values)), values, color="#3b7dd8")
        ax.set_yticks(range(len(values)), labels=labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("tokens/s (LoRA training, higher is better)")
        ax.set_title("Training throughput per cell and attention stack")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=2)
        ax.margins(x=0.12)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    alt = "; ".join(f"{s['cell']} {s['stack']}: {float(s['tokens_per_s']):.0f} "
                    "tokens/s" for s in speed)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), alt


# --- details -------------------------------------------------------------------------------------

def _result_data(run_dir: Path, cell: Mapping[str, Any]) -> dict[str, Any] | None:
    if not cell.get("result"):
        return None
    found = confined(Path(run_dir), cell["result"])
    if found is None:  # a path that leads out of the run folder, or through a link
        return None
    loaded = load_result(found)
    return loaded.data if hasattr(loaded, "data") else None


def _environment_html(env: Mapping[str, Any] | None) -> str:
    if not env:
        return "<p class=muted>No environment: the cell produced no valid result.</p>"
    rows = [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in env.items()
            if k != "packages" and not isinstance(v, (dict, list))]
    packages = env.get("packages") or {}
    pkg_rows = []
    for name, info in sorted(packages.items()):
        if isinstance(info, dict):
            detail = ", ".join(f"{k}={v}" for k, v in info.items() if k != "installed")
            pkg_rows.append(f"<tr><td>{e(name)}</td><td>{e(info.get('installed'))}</td><td>{e(detail)}</td></tr>")
        else:
            pkg_rows.append(f"<tr><td>{e(name)}</td><td>{e(info)}</td><td></td></tr>")
    out = f"<table class=kv>{''.join(rows)}</table>"
    if pkg_rows:
        out += (
            "<table class=pkgs><thead><tr><th>package</th><th>installed</th>"
            "<th>details</th></tr></thead>"
            f"<tbody>{''.join(pkg_rows)}</tbody></table>"
        )
    return out


def _mark(status: str | None) -> str:
    """A status's mark, drawn by CSS (a coloured dot), never an emoji: a browser without an emoji
    font draws those as empty boxes. The status word always stands beside it."""
    return f"<span class='mark m-{e(status or 'none')}' aria-hidden=true></span>"


def _check_html(check: Mapping[str, Any]) -> str:
    status = check.get("status")
    error = check.get("error") or {}
    parts = [f"<li class='check st-{e(status)}' data-check='{e(check.get('name'))}'>"
             f"<b>{_mark(status)} {e(check.get('name'))}</b> <span "
             f"class=tag>{e(status)}</span>"]
    if check.get("duration_s") is not None:
        parts.append(f" <span class=muted>{float(check['duration_s']):.2f}s</span>")
    if check.get("reason"):
        parts.append(f"<div class=reason>{e(check['reason'])}</div>")
    if error:
        sig = error.get("signature")
        parts.append(f"<div class=error><code>{e(error.get('type'))}: "
                     f"{e(error.get('message'))}</code>")
        if sig:
            parts.append(f"<div class=sig>signature <code>{e(sig)}</code>"
                         f"{'' if error.get('known') else ' (not in the catalogue yet)'}</div>")
            entry = describe_signature(sig) or {}
            for label in ("cause", "affected", "fix"):
                if entry.get(label):
                    parts.append(f"<div class={label}><b>{label}</b>: {e(entry[label])}</div>")
            if entry.get("link"):
                parts.append(f"<div class=link><b>link</b>: <a href='{e(entry['link'])}' "
                             "rel=noreferrer>"
                             f"{e(entry['link'])}</a></div>")
        if error.get("traceback_tail"):
            parts.append(f"<details><summary>traceback</summary><pre>{e(error['traceback_tail'])}</pre></details>")
        parts.append("</div>")
    evidence = check.get("evidence")
    if evidence:
        parts.append(
            "<details><summary>evidence</summary>"
            f"<pre>{e(json.dumps(evidence, indent=1))}</pre></details>"
        )
    parts.append("</li>")
    return "".join(parts)


def _detail_html(cell: Mapping[str, Any], data: Mapping[str, Any] | None) -> str:
    short_hash = e((cell.get("hash") or "")[:16])
    parts = [
        f"<h3>{e(cell['id'])}</h3><p>status <b>{e(cell.get('verdict') or cell['status'])}</b>"
        f"{' · hash <code>' + short_hash + '</code>' if cell.get('hash') else ''}"
        f"{' · runner ' + e(cell.get('runner')) if cell.get('runner') else ''}</p>"
    ]
    if cell.get("reason"):
        parts.append(f"<pre class=reason>{e(cell['reason'])}</pre>")
    if cell.get("not_judged"):  # a verdict claims only what ran (summary.json not_judged)
        host = (cell.get("judged_on") or {}).get("host") or "this host"
        parts.append(f"<h4>Not judged on {e(host)}</h4><ul>" + "".join(
            f"<li>{e(item['what'])} not judged: {e(item['why'])}"
            + (f" ({e(', '.join(item['checks']))})" if item["checks"] else "") + "</li>"
            for item in cell["not_judged"]) + "</ul>")
    if cell.get("signature"):
        parts.append(f"<p>signature <code>{e(cell['signature'])}</code></p>")
    pins = cell.get("pins") or {}
    parts.append("<h4>Pins</h4><p>" + " ".join(f"<code>{e(k)}=={e(v)}</code>" for k,
                                               v in pins.items()) + "</p>")
    if data:
        parts.append("<h4>Checks</h4><ul "
                     "class=checks>" + "".join(_check_html(c) for c in data["checks"]) + "</ul>")
    parts.append("<h4>Environment</h4>" + _environment_html((data or {}).get("environment")))
    return "".join(parts)


# --- the page ------------------------------------------------------------------------------------

def render_html(summary: Mapping[str, Any], run_dir: Path) -> str:
    run = summary.get("run") or {}
    run_id = run.get("run_id") or Path(str(run_dir)).name
    columns = list(summary.get("checks") or [])
    cells = list(summary.get("cells") or [])
    pin_cols = [p for p in PIN_COLUMNS if any(p in (c.get("pins") or {}) for c in cells)]
    head = ("<tr><th data-key=id>cell</th><th data-key=status>status</th>"
            + "".join(f"<th data-key='pin:{e(p)}'>{e(p)}</th>" for p in pin_cols)
            + "".join(f"<th data-key='check:{e(c)}' class=chk "
                      f"title='{e(c)}'>{e(c)}</th>" for c in columns) + "</tr>")
    body = []
    for cell in cells:
        data = _result_data(run_dir, cell)
        checks = cell.get("checks") or {}
        sigs = sorted({c.get("signature") for c in checks.values() if c.get("signature")}
                      | ({cell["signature"]} if cell.get("signature") else set()))
        search = " ".join([cell["id"], cell["status"], *(f"{k}={v}" for k,
                                                         v in (cell.get("pins") or {}).items()),
                           *sigs]).lower()
        tds = ["<td class=id><button type=button class=toggle "
               f"aria-expanded=false>{e(cell['id'])}</button></td>",
               f"<td class='status st-{e(cell['status'])}' "
               f"data-sort='{STATUS_ORDER.index(cell['status'])}'>"
               f"{_mark(cell['status'])} {e(cell.get('verdict') or cell['status'])}</td>"]
        tds += [f"<td>{e((cell.get('pins') or {}).get(p, ''))}</td>" for p in pin_cols]
        for name in columns:
            check = checks.get(name)
            if check is None:
                tds.append("<td class=chk data-sort=''>·</td>")
            else:
                title = (
                    check["status"]
                    + (f": {check['signature']}" if check.get("signature") else "")
                    + (f": {check['reason']}" if check.get("reason") else "")
                )
                tds.append(f"<td class='chk st-{e(check['status'])}' "
                           f"data-sort='{e(check['status'])}' "
                           f"title='{e(title)}'>{_mark(check['status'])}"
                           f"<span class=word> {e(check['status'])}</span></td>")
        body.append(f"<tr class=cell data-id='{e(cell['id'])}' data-status='{e(cell['status'])}' "
                    f"data-search='{e(search)}'>{''.join(tds)}</tr>")
        body.append(f"<tr class=detail data-for='{e(cell['id'])}' hidden><td "
                    f"colspan={2 + len(pin_cols) + len(columns)}>"
                    f"{_detail_html(cell, data)}</td></tr>")
    chart_uri, chart_alt = throughput_chart(list(summary.get("speed") or []))
    chart = (f"<img id=chart src='{chart_uri}' alt='{e(chart_alt)}'>" if chart_uri
             else f"<p id=chart-unavailable class=muted>{e(chart_alt)}</p>")
    speed_rows = "".join(_speed_row(s) for s in summary.get("speed") or [])
    extras: list[str] = []
    later: list[str] = []  # after the cells and the speed: infra, unresolvable, damaged files
    diff = summary.get("diff")
    if diff:
        extras.append(f"<section id=diff><h2>Changes since {e(diff.get('previous_run'))}</h2>"
                      f"<p><b>{e(diff.get('headline'))}</b></p><ul>"
                      + "".join(f"<li class=breakage>new breakage: <code>{e(b['cell'])}</code> "
                                f"{e(b.get('check') or '(cell)')} [{e(b.get('signature'))}]</li>"
                                for b in diff.get("new_breakages") or [])
                      + "".join(f"<li class=fix>fixed: <code>{e(f['cell'])}</code> "
                                f"{e(f.get('check') or '(cell)')}</li>"
                                for f in diff.get("fixes") or [])
                      + "</ul></section>")
    for key, title in (("unresolvable", "Unresolvable"), ("infra",
                                                          "Infra (the machine failed, not the "
                                                          "stack)"),
                       ("damaged", "Damaged files (not merged)")):
        items = summary.get(key) or []
        if not items:
            continue
        causes = ""
        if key == "infra":  # one cause, said once, with its remedy and its cells
            shared = [c for c in summary.get("causes") or [] if len(c["cells"]) > 1]
            told = {cell for c in shared for cell in c["cells"]}
            items = [i for i in items if i.get("check") or i.get("cell") not in told]
            causes = "".join(
                f"<li class=cause><b>{len(c['cells'])} cells, one cause</b>"
                f"{(' [' + e(c['signature']) + ']') if c.get('signature') else ''}: "
                f"<span>{e(c['reason'])}</span>"
                + (f"<br>remedy: {e(c['remedy'])}" if c.get("remedy") else "")
                + "<br>cells: " + ", ".join(f"<code>{e(x)}</code>" for x in c["cells"])
                + "</li>" for c in shared)
        lis = causes + "".join(
            f"<li><code>{e(i.get('cell') or i.get('path'))}</code>"
            f"{(' ' + e(i['check'])) if i.get('check') else ''}: "
            f"<span>{e(i.get('explanation') or i.get('reason') or i.get('why') or '')}</span></li>"
            for i in items
        )
        later.append(f"<section id={key}><h2>{e(title)}</h2><ul>{lis}</ul></section>")
    status_options = "".join(f"<option value={s}>{s}</option>" for s in STATUS_ORDER)
    return PAGE.format(
        title=e(f"pinmatrix run {run_id}"),
        verdict=e(summary.get("verdict", "")),
        head=head,
        body="".join(body),
        status_options=status_options,
        chart=chart,
        speed_rows=speed_rows or "<tr><td colspan=6>none</td></tr>",
        extras="".join(extras),
        answer=_pivot_html(summary.get("pivot") or []) + _recommended_html(
            summary.get("pins")),
        later="".join(later),
        total=len(cells),
        style=STYLE,
        script=SCRIPT,
        exaone35=render_exaone35_html(summary.get("exaone35") or {}),
        facts=e(
            " · ".join(
                f
                for f in (
                    f"runner {run.get('runner')}" if run.get("runner") else "",
                    f"matrix {run.get('matrix')}" if run.get("matrix") else "",
                    f"started {run.get('started')}" if run.get("started") else "",
                )
                if f
            )
        ),
    )


def _rank(verdict: str) -> int:
    status = status_of(verdict)
    return STATUS_ORDER.index(status) if status in STATUS_ORDER else 99


def _pivot_html(tables: list[Mapping[str, Any]]) -> str:
    """transformers × unsloth, each status as its glyph and its word."""
    out = []
    for table in tables:
        head = "".join(f"<th>{e(u)}</th>" for u in table["unsloth"])
        rows = []
        for tf in table["transformers"]:
            tds = []
            for u in table["unsloth"]:
                slot = table["grid"][tf][u]
                words = " ".join(f"{_mark(status_of(st))}<span class=word> {e(st)}"
                                 + (f" ×{n}" if n > 1 else "") + "</span>"
                                 for st, n in sorted(slot.items(), key=lambda kv: (_rank(kv[0]),
                                                                                    kv[0])))
                # a slot's keys are verdicts (`works (CPU: unsloth not judged)`): mark by status
                css = next(iter(sorted((status_of(st) for st in slot), key=_rank)), "none")
                tds.append(f"<td class='status st-{e(css)}'>{words or '—'}</td>")
            rows.append(f"<tr><th>{e(tf)}</th>{''.join(tds)}</tr>")
        out.append(f"<section class=pivot><h2>Which versions work together: transformers × "
                   f"unsloth (python {e(table['python'])}, torch {e(table['torch'])})</h2>"
                   f"<table><thead><tr><th>transformers \\ unsloth</th>{head}</tr></thead>"
                   f"<tbody>{''.join(rows)}</tbody></table></section>")
    return "".join(out)


def _recommended_html(pins: Sequence[Mapping[str, Any]] | None) -> str:
    """The pins per purpose (summary.json `pins`, pinmatrix/report/pins.py), after the pivot."""
    if not pins:
        return ""
    rows = "".join(
        f"<tr><td>{e(p.get('title'))}</td>"
        + (f"<td><code>{e(p['file'])}</code></td><td><code>{e(p.get('cell'))}</code> "
           f"({e(p.get('verdict') or p.get('status'))})</td>" if p.get("file")
           else "<td colspan=2>none</td>")
        + f"<td>{e(p.get('why'))}</td>"
        + f"<td>{e('; '.join(p.get('caveats') or []) or 'none')}</td></tr>"
        for p in pins)
    return ("<section id=recommended><h2>Recommended pins</h2><table><thead><tr><th>purpose</th>"
            "<th>constraints file</th><th>cell</th><th>why</th><th>caveats</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


def _speed_row(s: Mapping[str, Any]) -> str:
    speedup = f"{s['speedup_vs_sdpa']:.2f}×" if s.get("speedup_vs_sdpa") else ""
    if speedup and s.get("baseline") not in (None, "sdpa"):
        speedup += f" (vs {s['baseline']})"
    peak = "" if s.get("peak_mem_gib") is None else f"{s['peak_mem_gib']}"
    return (
        f"<tr><td>{e(s['cell'])}</td><td>{e(s['stack'])}</td><td>{float(s['tokens_per_s']):.0f}</td>"
        f"<td>{e(speedup)}</td><td>{e(peak)}</td><td>{e(s.get('gpu') or '')}</td></tr>"
    )


def write_html(summary: Mapping[str, Any], run_dir: Path) -> Path:
    return write_text_atomic(Path(run_dir) / "summary.html", render_html(summary, run_dir))


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 6px;vertical-align:top}
#cells th{background:#f3f3f3;cursor:pointer;position:sticky;top:0}
#cells th.chk{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;font-size:12px}
#cells th[aria-sort=ascending]::after{content:" ▲"}#cells th[aria-sort=descending]::after{content:" ▼"}
td.chk{text-align:center}button.toggle{font:inherit;border:0;background:none;color:#1a55a8;cursor:pointer;padding:0;text-align:left}
tr.detail>td{background:#fafafa}.muted{color:#777}.tag{font-size:11px;border:1px solid #ccc;border-radius:3px;padding:0 3px}
.st-fail .tag,.st-broken{color:#b00}.error{margin:2px 0 6px 1em}pre{white-space:pre-wrap;max-height:20em;overflow:auto;background:#f6f6f6;padding:4px}
td.st-pass,td.st-works{background:#e5f4e5}td.st-fail,td.st-broken{background:#fbe1e1}td.st-infra{background:#fff2c8}
td.st-partial{background:#fff8dc}td.st-unresolvable{background:#eee}td.st-skip{color:#999}
#controls{margin:8px 0}#controls input{width:24em}ul.checks{list-style:none;padding-left:0}
.mark{display:inline-block;width:.7em;height:.7em;border-radius:50%;background:#bbb;vertical-align:baseline}
.m-works,.m-pass{background:#2e8b3a}.m-partial{background:#e0a800}.m-broken,.m-fail{background:#c62828}
.m-unresolvable,.m-skip,.m-none{background:#9e9e9e}.m-infra{background:#ef6c00}.m-flaky{background:#7b1fa2}
"""  # noqa: E501 (page/script/data text, kept byte for byte)

SCRIPT = r"""
(function () {
  "use strict";
  var table = document.getElementById("cells");
  var tbody = table.tBodies[0];
  var q = document.getElementById("q"), st = document.getElementById("status");
  var shown = document.getElementById("shown");
  function pairs() {
    var out = [], rows = tbody.querySelectorAll("tr.cell");
    for (var i = 0; i < rows.length; i++) out.push([rows[i], rows[i].nextElementSibling]);
    return out;
  }
  function applyFilter() {
    var text = q.value.trim().toLowerCase(), want = st.value, n = 0;
    pairs().forEach(function (p) {
      var ok = (!want || p[0].dataset.status === want) &&
               (!text || text.split(/\s+/).every(function (t) { return p[0].dataset.search.indexOf(t) >= 0; }));
      p[0].hidden = !ok;
      if (!ok) p[1].hidden = true; else p[1].hidden = p[0].querySelector(".toggle").getAttribute("aria-expanded") !== "true";
      if (ok) n++;
    });
    shown.textContent = n + " of " + pairs().length + " cells shown";
    document.body.dataset.shown = String(n);
  }
  function sortBy(th, dir) {
    var heads = table.tHead.rows[0].cells, idx = Array.prototype.indexOf.call(heads, th);
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    var rows = pairs();
    rows.sort(function (a, b) {
      var x = a[0].cells[idx], y = b[0].cells[idx];
      var u = x.dataset.sort !== undefined ? x.dataset.sort : x.textContent.trim();
      var v = y.dataset.sort !== undefined ? y.dataset.sort : y.textContent.trim();
      return dir * u.localeCompare(v, undefined, {numeric: true});
    });
    rows.forEach(function (p) { tbody.appendChild(p[0]); tbody.appendChild(p[1]); });
  }
  function toggle(row, open) {
    var b = row.querySelector(".toggle");
    b.setAttribute("aria-expanded", open ? "true" : "false");
    row.nextElementSibling.hidden = !open || row.hidden;
  }
  table.tHead.addEventListener("click", function (ev) {
    var th = ev.target.closest("th");
    if (!th) return;
    sortBy(th, th.getAttribute("aria-sort") === "ascending" ? -1 : 1);
  });
  tbody.addEventListener("click", function (ev) {
    var b = ev.target.closest(".toggle");
    if (b) toggle(b.closest("tr"), b.getAttribute("aria-expanded") !== "true");
  });
  q.addEventListener("input", applyFilter);
  st.addEventListener("change", applyFilter);
  // A view can be shared as a link: ?q=...&status=...&sort=KEY&dir=asc|desc&open=CELL (or after #).
  var params = new URLSearchParams(location.search || location.hash.replace(/^#/, "?"));
  if (params.get("q")) q.value = params.get("q");
  if (params.get("status")) st.value = params.get("status");
  if (params.get("sort")) {
    var th = table.tHead.querySelector("th[data-key='" + params.get("sort").replace(/'/g, "") + "']");
    if (th) sortBy(th, params.get("dir") === "desc" ? -1 : 1);
  }
  params.getAll("open").forEach(function (id) {
    pairs().forEach(function (p) { if (p[0].dataset.id === id) toggle(p[0], true); });
  });
  applyFilter();
  document.body.dataset.js = "ready";
})();
"""  # noqa: E501 (page/script/data text, kept byte for byte)

PAGE = """<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width,initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>
<h1>{title}</h1>
<p id=verdict><b>{verdict}</b></p>
<p class=muted>{facts}</p>
{extras}
{exaone35}
{answer}
<h2>Cells</h2>
<div id=controls><label>filter <input id=q type=search placeholder="cell id, pin (transformers=5.17.0), signature"></label>
<label>status <select id=status><option value="">any</option>{status_options}</select></label>
<span id=shown>{total} cells</span> · click a cell id for its checks, errors and environment; click a header to sort.</div>
<table id=cells><thead>{head}</thead><tbody>{body}</tbody></table>
<h2>Throughput</h2>
{chart}
<table id=speed><thead><tr><th>cell</th><th>stack</th><th>tokens/s</th><th>vs sdpa</th><th>peak GiB</th><th>GPU</th></tr></thead>
<tbody>{speed_rows}</tbody></table>
{later}
<script>{script}</script>
</body></html>
"""  # noqa: E501 (page/script/data text, kept byte for byte)
