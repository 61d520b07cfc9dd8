"""Markdown: for a pull request, a model card or a sign-off. GitHub-flavoured tables; every value
from a verdict goes through `visible()` and `md_text()`, so token text cannot end a cell, start
emphasis, open a link or slip raw HTML into the page.
"""

from __future__ import annotations

from typing import Mapping

from .escape import md_text, visible
from .fences import fence_for
from .localise import markdown_lines as localise_markdown_lines
from .model import (COMPARISON_COLUMNS, COMPARISON_HEADERS, SIGNOFF_FIELDS, Report, comparison_row, flip_cells, made_line,
                    flip_headers, flip_row, flips, margin_space_note, notes, one_line, policy_items,
                    provenance_items, reasons, subject_provenance, summary_extras)


def _table(headers, rows) -> list[str]:
    out = ["| " + " | ".join(md_text(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(md_text(c) if c else " " for c in row) + " |" for row in rows]
    return out


def _banner(v: Mapping) -> str:
    mark = "✅" if v["passed"] is True else "❌"
    return f"{mark} **{md_text(one_line(v))}**"


def comparison_lines(report: Report) -> list[str]:
    headers = [COMPARISON_HEADERS[c] for c in COMPARISON_COLUMNS]
    rows = [[comparison_row(v)[c] for c in COMPARISON_COLUMNS] for v in report.verdicts]
    return ["## Comparison", ""] + _table(headers, rows) + [""]


def flip_lines(report: Report) -> list[str]:
    out = []
    for v in report.flip_verdicts:
        shown = flips(v, report.all_positions)
        matches = sum(p["class"] == "match" for p in v["positions"])
        out += [f"## Positions: {md_text(visible(v['gate']))}", ""]
        out.append("Policy: " + ", ".join(f"{md_text(k)} = {md_text(x)}" for k, x in policy_items(v)) + ".")
        if reasons(v):
            out += ["", "**Fails because:** " + "; ".join(md_text(r) for r in reasons(v)) + "."]
        if notes(v):
            out += ["", "Notes: " + "; ".join(md_text(r) for r in notes(v)) + "."]
        extras = summary_extras(v)
        if extras:
            out += ["", "Statistics: " + ", ".join(f"{md_text(k)} = {md_text(x)}" for k, x in extras) + "."]
        out.append("")
        if report.all_positions:
            out.append(f"All {len(shown)} scored positions (matches: {matches}).")
        else:
            out.append(f"Non-match positions: {len(shown)}. Matches: {matches} of {len(v['positions'])} "
                       f"(not listed; `--all-positions` lists them).")
        out.append("")
        if shown:
            out += _table(flip_headers(v), [flip_cells(flip_row(v, p)) for p in shown]) + [""]
    return out


def _plot_lines(plots: Mapping[str, str] | None) -> list[str]:
    if not plots:
        return []
    from .plots import PLOTS

    out = ["## Plots", ""]
    for name, path in plots.items():
        out.append(f"![{md_text(PLOTS[name][0])}]({path})")
    return out + [""]


def provenance_lines(report: Report, prov: Mapping) -> list[str]:
    out = ["## Provenance", ""]
    rows, blocks = provenance_items(prov)
    out += _table(("key", "value"), rows) + [""]
    for key, lines in blocks:
        # A fence longer than any backtick run inside the text: recipe text cannot close it.
        fence = fence_for(lines)
        out += [f"{md_text(key)}:", "", fence + "text", *lines, fence, ""]
    if report.made:
        out += [made_line(report.made, md_text), ""]
    return out


def signoff_lines() -> list[str]:
    return ["## Sign-off", "", "To be filled in by the person who decides.", ""] + _table(
        ("field", "entry"), [(f, "") for f in SIGNOFF_FIELDS]) + [""]


def render_markdown(report: Report, plots: Mapping[str, str] | None = None) -> str:
    """The report as Markdown; `plots` maps plot name -> image path to link (PNG files beside it)."""
    out = [f"# {md_text(visible(report.title))}", ""]
    subject = report.subject_verdict
    if subject is not None:
        word = "PASS" if subject["passed"] is True else "FAIL"
        out += [f"**Verdict for gate {md_text(visible(subject['gate']))}: {word}**", ""]
    for v in ([subject] if subject is not None else report.verdicts):
        out += [_banner(v), ""]
    out += [md_text(margin_space_note(report.verdicts)) + "; a position is confident when margin ≥ min_margin. "
            "exact = argmax matches; rule = matches plus tie-flips (the margin rule).", ""]
    if subject is not None:
        out += ["## Policy in force", ""] + _table(("key", "value"), policy_items(subject))
        out.append("")
    out += comparison_lines(report)
    out += _plot_lines(plots)
    out += flip_lines(report)
    for d in report.localisations:
        out += localise_markdown_lines(d)
    if subject is not None:
        out += provenance_lines(report, subject_provenance(report))
        out += signoff_lines()
    return "\n".join(out).rstrip("\n") + "\n"
