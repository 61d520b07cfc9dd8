"""The flip-localisation section of a report (`flipgate localise`, record `flipgate.localise/1`).

Renderers see only the record's plain dict (`Localisation.to_dict()`, or the JSON it was written
as): a layers × kinds grid with the culprit cells coloured, the defects with their culprits, the
suggested recipe with its size beside the candidate's and the safe recipe's, and per defect the
evidence — every trial: what was restored, the class the position then got and the candidate's
lead for the oracle's top-1 (its own top-1 minus runner-up margin; negative: it prefers another
token). Token text goes through `visible()`/`token()` and is escaped for the medium, as everywhere.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from harness.errors import InputError

from .escape import html_text as h
from .escape import md_text, token, visible
from .fences import fence_for

SCHEMA = "flipgate.localise/1"
KINDS = (("attention", "attention"), ("gdn", "GatedDeltaNet"), ("mlp", "MLP"), ("head", "head"))
_LABELS = dict(KINDS)
CULPRIT_COLOUR = "#d92d20"   # the culprit cells of the grid (the gate's defect colour family)
RESTORABLE_COLOUR = "#eaecf0"

_CSS = f"""
table.locgrid td {{ min-width: 90px; height: 22px; text-align: center; font-size: 12px; }}
table.locgrid td.culprit {{ background: {CULPRIT_COLOUR}; color: white; font-weight: 600; }}
table.locgrid td.restorable {{ background: {RESTORABLE_COLOUR}; color: #475467; }}
table.locgrid td.fixed {{ background: white; color: #98a2b3; }}
tr.loc-localised td.status {{ color: #1e7b34; font-weight: 600; }}
tr.loc-partial td.status, tr.loc-not-repaired td.status, tr.loc-untried td.status {{ color: #b42318; font-weight: 600; }}
tr.repaired td.cls {{ color: #1e7b34; font-weight: 600; }}
"""


def check_record(d: Any, source: str = "localisation") -> dict:
    """The record as a dict, checked enough to render; InputError names what is missing."""
    if not isinstance(d, Mapping):
        raise InputError(f"{source}: not a localisation record (a JSON object with schema {SCHEMA!r})")
    if d.get("schema") != SCHEMA:
        raise InputError(f"{source}: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("gate", "candidate", "safe", "layers", "kinds", "positions", "sizes", "restorable"):
        if key not in d:
            raise InputError(f"{source}: localisation record has no {key!r} key")
    return dict(d)


def load_record(path) -> dict:
    from pathlib import Path

    p = Path(path)
    try:
        return check_record(json.loads(p.read_text(encoding="utf-8")), str(p))
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{p}: not a localisation record (not JSON)") from None


def render_json(d: Mapping) -> str:
    """The record as JSON (NaN/Inf as strings, as verdicts write them)."""
    return json.dumps(_plain(check_record(d)), indent=2, ensure_ascii=True) + "\n"


def _plain(x):
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ---- the views every renderer shares ---------------------------------------------------------------

def kind_label(kind: str) -> str:
    return _LABELS.get(kind, kind)


def size_text(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "n/a"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def position_key(p: Mapping) -> str:
    return f"{visible(p['case'])}:{p['row']}"


def grid(d: Mapping) -> tuple[list[str], list[tuple[str, list[tuple[str, list[str]]]]]]:
    """(kind columns, rows): each row is (layer label, cells), each cell (state, defect keys) with
    state `culprit`, `restorable` or `fixed` (the candidate and the safe recipe agree there). The
    head, which has no layer, gets a last row of its own."""
    kinds = list(d["kinds"])
    restorable = {k: set(v) for k, v in d["restorable"].items()}
    present = {k: set(v) for k, v in d.get("present", {}).items()}
    blame: dict[tuple[str, int], list[str]] = {}
    for p in d["positions"]:
        for g in p.get("culprits", []):
            for layer in (g["layers"] or [-1]):
                blame.setdefault((g["kind"], layer), []).append(position_key(p))
    rows = []
    layered = [k for k in kinds if restorable.get(k)]
    for layer in range(int(d["layers"])):
        cells = []
        for k in kinds:
            if k not in layered:
                cells.append(("none", []))
            elif (k, layer) in blame:
                cells.append(("culprit", blame[(k, layer)]))
            elif layer in restorable[k]:
                cells.append(("restorable", []))
            else:
                cells.append(("fixed" if layer in present.get(k, (layer,)) else "none", []))
        rows.append((str(layer), cells))
    unlayered = [k for k in kinds if k not in layered]
    if unlayered:
        cells = []
        for k in kinds:
            if k in layered:
                cells.append(("none", []))
            else:
                cells.append(("culprit", blame[(k, -1)]) if (k, -1) in blame else ("restorable", []))
        rows.append(("—", cells))
    return kinds, rows


def culprits_text(p: Mapping) -> str:
    return "; ".join(g["label"] for g in p.get("culprits", [])) or "—"


def summary_line(d: Mapping) -> str:
    n = len(d["positions"])
    if not n:
        return d.get("message") or f"{d['gate']}: no defects, nothing to localise"
    done = sum(p["status"] == "localised" for p in d["positions"])
    s = f"{d['gate']}: {done} of {n} defect(s) localised (candidate {d['candidate']}, safe recipe {d['safe']})"
    sug = d.get("suggested")
    if sug:
        s += f"; suggested recipe {sug['name']} restores {'; '.join(g['label'] for g in sug['groups'])}"
        ver = d.get("verification")
        if ver is not None:
            s += f" — its gate {'PASSES' if ver.get('passed') else 'FAILS'}"
    return s


def evidence_text(d: Mapping) -> str:
    """What the trials' rows are: localisation decodes restorations in torch, so emulation unless the
    record says otherwise (harness.evidence)."""
    from harness.evidence import describe

    return f"Evidence: {describe(str(d.get('evidence') or 'emulation'))}."


def sizes_items(d: Mapping) -> list[tuple[str, str]]:
    sizes = d.get("sizes", {})
    out = [(f"candidate {d['candidate']}", size_text(sizes.get("candidate")))]
    if d.get("suggested"):
        out.append((f"suggested {d['suggested']['name']}", size_text(sizes.get("suggested"))))
    out.append((f"safe {d['safe']}", size_text(sizes.get("safe"))))
    return out


def stats_text(d: Mapping) -> str:
    st = d.get("stats") or {}
    if not st:
        return ""
    parts = [f"{st.get('trials', 0)} restorations tried in {st.get('case_runs', 0)} case runs "
             f"({st.get('reused', 0)} answers reused)"]
    if st.get("seconds"):
        parts.append(f"{st['seconds']:.1f} s decoding")
    if st.get("layer_steps_without_prefix"):
        parts.append(f"{st['layer_steps']} of {st['layer_steps_without_prefix']} layer-steps computed "
                     "(the rest replayed from earlier trials)")
    return "; ".join(parts)


def lead_text(x: Any) -> str:
    if x is None or isinstance(x, str):
        return "n/a"
    return f"{x:+.4f}"


def _tok(p: Mapping, key: str, id_key: str) -> str:
    text = p.get(key)
    ident = p.get(id_key)
    if ident is None:
        return "—"
    return f"{ident} {token(text)}" if text is not None else str(ident)


DEFECT_HEADERS = ("case", "row", "position", "target", "oracle top-1", "candidate top-1", "margin", "found by",
                  "status", "culprits", "trials")


def defect_row(p: Mapping) -> list[str]:
    return [visible(p["case"]), str(p["row"]), str(p["position"]), _tok(p, "target_text", "target_token"),
            _tok(p, "oracle_top1_text", "oracle_top1"), _tok(p, "candidate_top1_text", "candidate_top1"),
            f"{p['margin']:.4f}" if isinstance(p.get("margin"), (int, float)) else "n/a",
            visible(p.get("found_by", "the gate")), p["status"], visible(culprits_text(p)), str(len(p["trials"]))]


TRIAL_HEADERS = ("restored", "class", "candidate top-1", "lead")


def trial_row(t: Mapping) -> list[str]:
    top = t.get("candidate_top1")
    return [visible(t["restored"]), t["class"], "—" if top is None else str(top), lead_text(t.get("lead"))]


# ---- Markdown ------------------------------------------------------------------------------------------

def _md_table(headers, rows, escaped: bool = False) -> list[str]:
    """A table; cells are escaped here unless `escaped` (already Markdown-safe)."""
    esc = (lambda c: c) if escaped else md_text
    out = ["| " + " | ".join(md_text(x) for x in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(esc(c) if c else " " for c in row) + " |" for row in rows]
    return out


def markdown_lines(d: Mapping, level: int = 2) -> list[str]:
    """The localisation section as Markdown lines (a `#`*level heading and its sub-sections)."""
    d = check_record(d)
    hh = "#" * level
    out = [f"{hh} Flip localisation: {md_text(visible(d['gate']))}", "", md_text(visible(summary_line(d))) + ".", "",
           md_text(evidence_text(d)), ""]
    for note in d.get("notes", []):
        out += [md_text(visible(note)), ""]
    if not d["positions"]:
        return out
    out += [f"Candidate {md_text(visible(d['candidate']))} against safe recipe {md_text(visible(d['safe']))}: a "
            "restoration gives listed modules the safe recipe's weights. A defect is repaired when the gate no longer "
            "counts it (match, tie-flip or oracle-artifact). Lead: the candidate's probability (or logit) for the "
            "oracle's top-1 minus its best other token.", ""]
    out += _md_table(("recipe", "weight bytes"), sizes_items(d)) + [""]
    sug = d.get("suggested")
    if sug:
        ver = d.get("verification")
        out.append(f"Suggested recipe **{md_text(visible(sug['name']))}**: restores "
                   f"{md_text(visible('; '.join(g['label'] for g in sug['groups'])))} to {md_text(visible(d['safe']))}; "
                   f"repairs every defect in trials: {'yes' if sug.get('repairs_all_defects') else 'no'}"
                   + (f"; gate: {md_text(visible(ver['one_line']))}" if ver else "; not verified over the whole case set")
                   + ".")
        out.append("")
    out += [f"{hh}# Culprits by layer and kind", "",
            "Each cell names the defects whose culprits include it; `·` restorable, not a culprit; `=` the candidate "
            "and the safe recipe agree there (nothing to restore).", ""]
    kinds, rows = grid(d)
    sym = {"restorable": "·", "fixed": "\\=", "none": " "}
    out += _md_table(["layer"] + [kind_label(k) for k in kinds],
                     [[md_text(label)] + [("**" + md_text(", ".join(keys)) + "**") if state == "culprit" else sym[state]
                                          for state, keys in cells] for label, cells in rows], escaped=True)
    out.append("")
    out += [f"{hh}# Defects", ""] + _md_table(DEFECT_HEADERS, [defect_row(p) for p in d["positions"]]) + [""]
    out += [f"{hh}# Evidence", ""]
    for p in d["positions"]:
        out += [f"{hh}## {md_text(position_key(p))} (position {p['position']}): {md_text(p['status'])}, culprits "
                f"{md_text(visible(culprits_text(p)))}", ""]
        for note in p.get("notes", []):
            out += [md_text(visible(note)), ""]
        out += _md_table(TRIAL_HEADERS, [trial_row(t) for t in p["trials"]]) + [""]
    if d.get("untried"):
        out += ["Not tried (budget): " + md_text(visible("; ".join(d["untried"]))) + ".", ""]
    st = stats_text(d)
    if st:
        out += [md_text(st) + ".", ""]
    if sug and sug.get("recipe"):
        fence = fence_for(sug["recipe"].splitlines())
        out += [f"{hh}# Suggested recipe file", "", fence + "toml"] + [visible(x) for x in sug["recipe"].splitlines()]
        out += [fence, ""]
    return out


def render_markdown(d: Mapping, title: str | None = None) -> str:
    """A Markdown document of the localisation alone."""
    lines = [f"# {md_text(visible(title or 'flipgate localise'))}", ""] + markdown_lines(d, level=2)
    return "\n".join(lines).rstrip("\n") + "\n"


# ---- HTML -------------------------------------------------------------------------------------------------

def _table(headers, rows, cls: str = "", row_attrs=None, col_cls: Mapping[str, str] | None = None) -> str:
    """A table; `col_cls` gives a column (by header) a class, `row_attrs` each row its attributes."""
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    tds = [f' class="{col_cls[x]}"' if col_cls and x in col_cls else "" for x in headers]
    body = []
    for i, row in enumerate(rows):
        attrs = row_attrs[i] if row_attrs else ""
        body.append(f"<tr{attrs}>" + "".join(f"<td{a}>{h(c)}</td>" for a, c in zip(tds, row)) + "</tr>")
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def grid_html(d: Mapping) -> str:
    kinds, rows = grid(d)
    head = "<th>layer</th>" + "".join(f"<th>{h(kind_label(k))}</th>" for k in kinds)
    body = []
    for label, cells in rows:
        tds = []
        for k, (state, keys) in zip(kinds, cells):
            where = f"{kind_label(k)} layer {label}" if label != "—" else kind_label(k)
            if state == "culprit":
                tip = f"{where}: culprit of {', '.join(keys)}"
                tds.append(f'<td class="culprit" data-kind="{h(k)}" data-layer="{h(label)}" title="{h(tip)}">'
                           f"{h(', '.join(keys))}</td>")
            elif state == "restorable":
                tds.append(f'<td class="restorable" data-kind="{h(k)}" data-layer="{h(label)}" '
                           f'title="{h(where)}: restorable, not a culprit">·</td>')
            elif state == "fixed":
                tds.append(f'<td class="fixed" title="{h(where)}: the candidate and the safe recipe agree">=</td>')
            else:
                tds.append("<td></td>")
        body.append(f"<tr><th>{h(label)}</th>{''.join(tds)}</tr>")
    return (f'<table class="locgrid" id="localise-grid"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def section_html(d: Mapping) -> str:
    """The localisation as one `<section>` (its own small stylesheet; no script) for a report page."""
    d = check_record(d)
    parts = [f"<style>{_CSS}</style>", f'<section id="localise"><h2>Flip localisation: {h(visible(d["gate"]))}</h2>',
             f'<p id="localise-summary">{h(visible(summary_line(d)))}.</p>',
             f'<p class="note" id="localise-evidence">{h(evidence_text(d))}</p>']
    for note in d.get("notes", []):
        parts.append(f'<p class="note">{h(visible(note))}</p>')
    if not d["positions"]:
        parts.append("</section>")
        return "".join(parts)
    parts.append(f'<p class="note">Candidate {h(visible(d["candidate"]))} against safe recipe '
                 f'{h(visible(d["safe"]))}: a restoration gives the listed modules the safe recipe\'s weights. A defect '
                 "is repaired when the gate no longer counts it (match, tie-flip or oracle-artifact). Lead: the "
                 "candidate's probability (or logit) for the oracle's top-1 minus its best other token.</p>")
    parts.append(_table(("recipe", "weight bytes"), sizes_items(d), cls="sizes"))
    sug = d.get("suggested")
    if sug:
        ver = d.get("verification")
        verdict = (f'<span class="badge {"pass" if ver.get("passed") else "fail"}">'
                   f'{"PASS" if ver.get("passed") else "FAIL"}</span> {h(visible(ver["one_line"]))}') if ver else \
            "not verified over the whole case set"
        parts.append(f'<p id="localise-suggested">Suggested recipe <strong>{h(visible(sug["name"]))}</strong>: restores '
                     f"{h(visible('; '.join(g['label'] for g in sug['groups'])))} to {h(visible(d['safe']))}; repairs "
                     f"every defect in trials: {'yes' if sug.get('repairs_all_defects') else 'no'}. Gate: {verdict}</p>")
    parts.append("<h3>Culprits by layer and kind</h3><p class=\"note\">Red: a culprit (the defects it causes are "
                 "named); grey: restorable, not a culprit; “=”: the candidate and the safe recipe agree there.</p>")
    parts.append(f'<div class="scroll">{grid_html(d)}</div>')
    parts.append("<h3>Defects</h3>")
    parts.append('<div class="scroll">' + _table(DEFECT_HEADERS, [defect_row(p) for p in d["positions"]],
                                                 cls="locdefects", col_cls={"status": "status"},
                                                 row_attrs=[f' class="loc-{h(p["status"])}"' for p in d["positions"]])
                 + "</div>")
    parts.append("<h3>Evidence</h3>")
    for p in d["positions"]:
        parts.append(f"<h4>{h(position_key(p))} (position {p['position']}): {h(p['status'])}, culprits "
                     f"{h(visible(culprits_text(p)))}</h4>")
        for note in p.get("notes", []):
            parts.append(f'<p class="note">{h(visible(note))}</p>')
        rows = [trial_row(t) for t in p["trials"]]
        attrs = [' class="repaired"' if t.get("repaired") else "" for t in p["trials"]]
        parts.append('<div class="scroll">' + _table(TRIAL_HEADERS, rows, cls="loctrials", row_attrs=attrs,
                                                     col_cls={"class": "cls"}) + "</div>")
    if d.get("untried"):
        parts.append(f'<p class="reasons"><strong>Not tried (budget):</strong> {h(visible("; ".join(d["untried"])))}</p>')
    st = stats_text(d)
    if st:
        parts.append(f'<p class="note">{h(st)}.</p>')
    if sug and sug.get("recipe"):
        parts.append(f'<h3>Suggested recipe file</h3><pre class="recipe">{h(visible(sug["recipe"]))}</pre>')
    parts.append("</section>")
    return "".join(parts)


def render_html(d: Mapping, title: str | None = None) -> str:
    """A standalone page of the localisation alone (no script, no network)."""
    title = title or "flipgate localise"
    csp = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{h(csp)}"><title>{h(visible(title))}</title>'
            "<style>body { font: 14px/1.45 sans-serif; margin: 24px; } table { border-collapse: collapse; }"
            " th, td { border: 1px solid #d0d5dd; padding: 3px 7px; } .note { color: #667085; }"
            " .badge { color: white; padding: 0 6px; border-radius: 4px; } .badge.pass { background: #1e7b34; }"
            " .badge.fail { background: #b42318; }</style></head>\n<body>"
            f"<h1>{h(visible(title))}</h1>{section_html(d)}</body></html>\n")
