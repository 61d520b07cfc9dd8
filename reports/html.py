"""Standalone HTML: one file, no network. CSS and a small script inline, plots as base64 PNG.

Safety, in two layers:
  1. every value from a verdict is made visible (`visible()`/`token()`) and then `html.escape`d, so
     token text is always text — never markup;
  2. a Content-Security-Policy allows only this module's own script (by its sha256), inline styles
     and `data:` images, so even a missed escape could not run a script or fetch anything.

The page shows at a glance what passed (banner, comparison table), and lets a reader drill in: the
position matrix links every flip to its row in the flip table, and the flip tables filter by class.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Mapping

from .escape import html_text as h
from .escape import visible
from .model import (CLASSES, COMPARISON_COLUMNS, COMPARISON_HEADERS, FLIP_KINDS, SIGNOFF_FIELDS, Report, case_spans,
                    comparison_row, flip_cells, flip_headers, flip_row, flips, fmt, made_line, margin_space_note, notes,
                    one_line, policy_items, position_anchor, position_grid, provenance_items, reasons,
                    subject_provenance, summary_extras)
from .plots import CLASS_COLOURS, PLOTS

_CSS = """
:root { --pass: #1e7b34; --fail: #b42318; --muted: #667085; --line: #d0d5dd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 0;
       color: #101828; background: #fcfcfd; }
main { max-width: 1600px; margin: 0 auto; padding: 0 24px 48px; }
h1 { font-size: 22px; margin: 20px 0 8px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.banner { padding: 18px 24px; color: white; font-size: 20px; font-weight: 600; }
.banner.pass { background: var(--pass); } .banner.fail { background: var(--fail); }
.banner.neutral { background: #344054; }
.banner small { display: block; font-size: 14px; font-weight: 400; opacity: .92; }
ul.verdicts { list-style: none; padding: 0; margin: 8px 0; }
ul.verdicts li { margin: 3px 0; }
.badge { display: inline-block; min-width: 46px; text-align: center; border-radius: 4px; padding: 0 6px;
         color: white; font-weight: 600; font-size: 12px; }
.badge.pass { background: var(--pass); } .badge.fail { background: var(--fail); }
.note { color: var(--muted); }
.reasons { color: var(--fail); }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; vertical-align: top; }
th { background: #f2f4f7; text-align: left; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; }
.tok { font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; white-space: pre-wrap;
       overflow-wrap: anywhere; background: #f2f4f7; border-radius: 3px; padding: 0 2px; }
td.tokcell { min-width: 7em; max-width: 14em; }
.ctx { font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; white-space: pre-wrap;
       overflow-wrap: anywhere; color: #475467; min-width: 12em; max-width: 22em; }
td.cls { white-space: nowrap; }
tr.cls-defect td.cls, tr.cls-invalid td.cls { color: var(--fail); font-weight: 600; }
#provenance-table td:last-child { font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; font-size: 12px;
                                  overflow-wrap: anywhere; }
tr:target { outline: 3px solid #f79009; }
table.matrix td { min-width: 20px; height: 22px; padding: 0; border: 1px solid white; }
table.matrix td a { display: block; width: 100%; height: 100%; }
table.matrix th { font-weight: 500; white-space: nowrap; }
table.matrix th.case { font-size: 11px; text-align: center; border-left: 2px solid #344054; }
table.matrix td.first { border-left: 2px solid #344054; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px;
            border: 1px solid #98a2b3; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); }
.filters label { margin-right: 12px; }
.swatch { display: inline-block; width: 10px; height: 10px; border: 1px solid #98a2b3; }
pre.recipe { background: #f2f4f7; padding: 8px 12px; border-radius: 4px; overflow-x: auto; }
table.signoff td { width: 28em; height: 34px; }
table.signoff th { width: 16em; }
""" + "".join(f"\n.cls-bg-{c} {{ background: {col}; }}" for c, col in CLASS_COLOURS.items()) + "\n"

# The only script the page may run (the CSP names its hash). It filters the flip tables by class and
# records that it ran and which images decoded, so a browser test can tell a page that rendered from
# a page whose scripts never ran.
_SCRIPT = """
(function () {
  var boxes = document.querySelectorAll('input[data-filter-class]');
  function apply(table) {
    var shown = {};
    table.closest('section').querySelectorAll('input[data-filter-class]').forEach(function (b) {
      shown[b.getAttribute('data-filter-class')] = b.checked;
    });
    table.querySelectorAll('tbody tr').forEach(function (tr) {
      tr.hidden = shown[tr.getAttribute('data-class')] === false;
    });
  }
  boxes.forEach(function (b) {
    b.addEventListener('change', function () {
      b.closest('section').querySelectorAll('table.flips').forEach(apply);
    });
  });
  function mark(img) {
    img.setAttribute('data-decoded', img.naturalWidth + 'x' + img.naturalHeight);
  }
  document.querySelectorAll('figure img').forEach(function (img) {
    if (img.complete) { mark(img); } else { img.addEventListener('load', function () { mark(img); }); }
  });
  document.documentElement.setAttribute('data-report-ready', '1');
})();
"""


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    return (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def _table(headers, rows, *, cls: str = "", id_: str = "") -> str:
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{h(c)}</td>" for c in row) + "</tr>" for row in rows)
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{id_}"' if id_ else "")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(v: Mapping) -> str:
    ok = v["passed"] is True
    return f'<span class="badge {"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span>'


def _gate_anchor(gate: str) -> str:
    return "gate-" + hashlib.sha256(gate.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _banner(report: Report) -> str:
    single = report.subject_verdict or (report.verdicts[0] if len(report.verdicts) == 1 else None)
    if single is not None:
        ok = single["passed"] is True
        head = f"Gate {visible(single['gate'])}: {'PASS' if ok else 'FAIL'}"
        sub = one_line(single) + "".join(f" · {r}" for r in reasons(single))
        state = "pass" if ok else "fail"
    else:
        # A comparison is not itself a pass or a fail (int4 is expected to fail): say which passed.
        passing = [visible(v["gate"]) for v in report.verdicts if v["passed"] is True]
        failing = [visible(v["gate"]) for v in report.verdicts if v["passed"] is not True]
        ok, state = not failing, "neutral"
        head = f"{len(passing)} of {len(report.verdicts)} gates pass"
        sub = "; ".join(([f"pass: {', '.join(passing)}"] if passing else [])
                        + ([f"fail: {', '.join(failing)}"] if failing else []))
    return (f'<header class="banner {state}" id="banner" data-passed="{str(ok).lower()}">'
            f"{h(head)}<small>{h(sub)}</small></header>")


def _verdict_list(report: Report) -> str:
    items = "".join(f'<li>{_badge(v)} <a href="#{_gate_anchor(v["gate"])}">{h(one_line(v))}</a></li>'
                    for v in report.verdicts)
    return f'<ul class="verdicts">{items}</ul>'


def _comparison(report: Report) -> str:
    head = "".join(f"<th>{h(COMPARISON_HEADERS[c])}</th>" for c in COMPARISON_COLUMNS)
    rows = []
    for v in report.verdicts:
        r = comparison_row(v)
        cells = []
        for c in COMPARISON_COLUMNS:
            if c == "verdict":
                cells.append(f"<td>{_badge(v)}</td>")
            elif c == "gate":
                cells.append(f'<td><a href="#{_gate_anchor(v["gate"])}">{h(r[c])}</a></td>')
            elif c in ("candidate", "control"):
                cells.append(f"<td>{h(r[c])}</td>")
            else:
                cells.append(f'<td class="num">{h(r[c])}</td>')
        rows.append(f'<tr data-gate-passed="{str(v["passed"] is True).lower()}">{"".join(cells)}</tr>')
    return (f'<section id="comparison"><h2>Comparison</h2><div class="scroll"><table id="comparison-table">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>')


def _legend() -> str:
    return '<p class="legend">' + "".join(
        f'<span><i class="cls-bg-{c}"></i>{h(c)}</span>' for c in CLASSES) + "</p>"


def _matrix(report: Report, beside: Mapping[str, str]) -> str:
    keys, grid = position_grid(report.verdicts)
    listed = {v["gate"]: {(str(p["case"]), int(p["row"])) for p in flips(v, report.all_positions)}
              for v in report.flip_verdicts}
    spans = case_spans(keys)
    firsts = {lo for _case, lo, _hi in spans}
    case_head = "".join(f'<th class="case" colspan="{hi - lo + 1}">{h(visible(case))}</th>' for case, lo, hi in spans)
    rows = []
    for v, cells in zip(report.verdicts, grid):
        tds = []
        for i, ((case, row), p) in enumerate(zip(keys, cells)):
            first = ' first' if i in firsts else ''
            if p is None:
                tds.append(f'<td class="missing{first}" title="not scored"></td>')
                continue
            cls = p["class"]
            tip = (f"{visible(v['gate'])} · {visible(case)} row {row} · {cls} · margin {fmt(p['margin'], 3)} · "
                   f"cosine {fmt(p['cosine'], 6)}")
            inner = ""
            if (case, row) in listed.get(v["gate"], ()):
                inner = f'<a href="#{position_anchor(v["gate"], case, row)}" aria-label="{h(tip)}"></a>'
            tds.append(f'<td class="cls-bg-{cls}{first}" data-class="{cls}" title="{h(tip)}">{inner}</td>')
        rows.append(f'<tr><th>{h(visible(v["gate"]))}</th>{"".join(tds)}</tr>')
    png = (f" (also <code>{h(beside['position-matrix'])}</code> beside this file)"
           if "position-matrix" in beside else "")
    return (f'<section id="matrix"><h2>Position matrix</h2><p class="note">Gates × scored positions, coloured '
            f'by class; a column of one colour is a position every gate resolves the same way. Click a flip to '
            f'see its row{png}.</p>{_legend()}<div class="scroll"><table class="matrix" id="position-matrix"><thead>'
            f'<tr><th></th>{case_head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>')


def _plots(plots: Mapping[str, bytes], beside: Mapping[str, str]) -> str:
    figs = []
    for name, png in plots.items():
        if name == "position-matrix":  # drawn above as a table whose cells link to the flips
            continue
        title = PLOTS[name][0]
        data = base64.b64encode(png).decode("ascii")
        also = f" (also <code>{h(beside[name])}</code> beside this file)" if name in beside else ""
        figs.append(f'<figure id="figure-{name}"><img id="plot-{name}" alt="{h(title)}" '
                    f'src="data:image/png;base64,{data}"><figcaption>{h(title)}{also}</figcaption></figure>')
    return f'<section id="plots"><h2>Plots</h2>{"".join(figs)}</section>'


def _flip_section(report: Report) -> str:
    parts = ['<section id="flips"><h2>Positions</h2>']
    present = sorted({p["class"] for v in report.flip_verdicts for p in flips(v, report.all_positions)},
                     key=CLASSES.index)
    if present:
        parts.append('<p class="filters">Show: ' + "".join(
            f'<label><input type="checkbox" checked data-filter-class="{c}"> {h(c)}</label>' for c in present)
            + "</p>")
    for v in report.flip_verdicts:
        shown = flips(v, report.all_positions)
        matches = sum(p["class"] == "match" for p in v["positions"])
        parts.append(f'<h3 id="{_gate_anchor(v["gate"])}">{_badge(v)} {h(visible(v["gate"]))}</h3>')
        parts.append('<p class="note">Policy: ' + h(", ".join(f"{k} = {x}" for k, x in policy_items(v)))
                     + "</p>")
        if reasons(v):
            parts.append('<p class="reasons"><strong>Fails because:</strong> ' + h("; ".join(reasons(v))) + "</p>")
        if notes(v):
            parts.append('<p class="note">Notes: ' + h("; ".join(notes(v))) + "</p>")
        extras = summary_extras(v)
        if extras:
            parts.append('<p class="note">Statistics: ' + h(", ".join(f"{k} = {x}" for k, x in extras)) + "</p>")
        if report.all_positions:
            parts.append(f"<p>All {len(shown)} scored positions (matches: {matches}).</p>")
        else:
            parts.append(f"<p>Non-match positions: {len(shown)}. Matches: {matches} of {len(v['positions'])} "
                         f"(not listed; <code>--all-positions</code> lists them).</p>")
        if not shown:
            continue
        head = "".join(f"<th>{h(x)}</th>" for x in flip_headers(v))
        rows = []
        for p in shown:
            r = flip_row(v, p)
            tds = []
            for kind, c in zip(FLIP_KINDS, flip_cells(r)):
                if kind == "context":
                    tds.append(f'<td class="ctx">{h(c)}</td>')
                elif kind == "token" and c != "—":
                    tds.append(f'<td class="tokcell"><span class="tok">{h(c)}</span></td>')
                elif kind == "class":
                    tds.append(f'<td class="cls"><i class="swatch cls-bg-{r.cls}"></i> {h(c)}</td>')
                elif kind == "num":
                    tds.append(f'<td class="num">{h(c)}</td>')
                else:
                    tds.append(f"<td>{h(c)}</td>")
            rows.append(f'<tr id="{r.anchor}" class="cls-{r.cls}" data-class="{r.cls}">{"".join(tds)}</tr>')
        parts.append(f'<div class="scroll"><table class="flips" data-gate="{h(visible(v["gate"]))}"><thead><tr>{head}'
                     f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    parts.append("</section>")
    return "".join(parts)


def _policy(v: Mapping) -> str:
    return ('<section id="policy"><h2>Policy in force</h2>'
            + _table(("key", "value"), policy_items(v), id_="policy-table")
            + "</section>")


def _provenance(report: Report) -> str:
    rows, blocks = provenance_items(subject_provenance(report))
    out = ['<section id="provenance"><h2>Provenance</h2>', _table(("key", "value"), rows, id_="provenance-table")]
    for key, lines in blocks:
        out.append(f"<h3>{h(key)}</h3><pre class=\"recipe\">{h(chr(10).join(lines))}</pre>")
    if report.made:
        out.append(f'<p class="note">{h(made_line(report.made))}</p>')
    out.append("</section>")
    return "".join(out)


def _signoff() -> str:
    rows = "".join(f"<tr><th>{h(f)}</th><td></td></tr>" for f in SIGNOFF_FIELDS)
    return (f'<section id="signoff"><h2>Sign-off</h2><p class="note">To be filled in by the person who decides.'
            f'</p><table class="signoff" id="signoff-table"><tbody>{rows}</tbody></table></section>')


def render_html(report: Report, plots: Mapping[str, bytes] | None = None,
                beside: Mapping[str, str] | None = None) -> str:
    """The whole page. `plots` (name -> PNG bytes, see plots.render_plots) are embedded inline;
    `beside` names the PNG file written next to the page for each, if any."""
    subject = report.subject_verdict
    body = [_banner(report), "<main>", f"<h1>{h(visible(report.title))}</h1>", _verdict_list(report),
            f'<p class="note">{h(margin_space_note(report.verdicts))}; a position is confident when margin ≥ '
            f"min_margin. exact = argmax matches; rule = matches plus tie-flips (the margin rule).</p>"]
    if subject is not None:
        body.append(_policy(subject))
    body.append(_comparison(report))
    body.append(_matrix(report, beside or {}))
    if plots:
        body.append(_plots(plots, beside or {}))
    body.append(_flip_section(report))
    if report.localisations:
        from .localise import section_html
        body.extend(section_html(d) for d in report.localisations)
    if subject is not None:
        body.append(_provenance(report))
        body.append(_signoff())
    elif report.made:
        body.append(f'<p class="note">{h(made_line(report.made))}</p>')
    body.append("</main>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{h(_csp())}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{h(visible(report.title))}</title><style>{_CSS}</style></head>\n<body>"
            + "\n".join(body) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
