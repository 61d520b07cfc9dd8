"""Terminal: rich tables. Everything from a verdict is a `rich.text.Text` built from visible text, so
neither rich markup (`[bold]`) nor an escape sequence in a token can style or steer the terminal.
"""

from __future__ import annotations

import io
from typing import TextIO

from .escape import visible
from .model import (COMPARISON_COLUMNS, COMPARISON_HEADERS, Report, comparison_row, flip_row, flips, made_line,
                    margin_space, margin_space_note, notes, one_line, policy_items, provenance_items, reasons,
                    subject_provenance, summary_extras)

_CLASS_STYLE = {"match": "green", "tie-flip": "yellow", "oracle-artifact": "cyan", "defect": "bold red",
                "invalid": "bold magenta"}


def _console(file: TextIO | None, width: int | None, colour: bool | None):
    import sys

    from rich.console import Console

    target = file or sys.stdout
    if width is None and not (hasattr(target, "isatty") and target.isatty()):
        width = 160  # piped or logged (CI): rich's 80-column default folds the tables a word a line

    if file is None:  # the text is escaped here (visible()); the CLI's terminal escaping would break the styling
        from harness.cli import unescaped

        file = unescaped(sys.stdout)
    return Console(file=file, width=width, force_terminal=colour, no_color=colour is False, markup=False,
                   highlight=False, emoji=False, soft_wrap=False)


def print_report(report: Report, file: TextIO | None = None, *, width: int | None = None,
                 colour: bool | None = None) -> None:
    from rich.table import Table
    from rich.text import Text

    con = _console(file, width, colour)
    subject = report.subject_verdict
    if subject is not None:
        ok = subject["passed"] is True
        con.print(Text(f" {'PASS' if ok else 'FAIL'} ", style="bold white on green" if ok else "bold white on red"),
                  Text(f" sign-off of gate {visible(subject['gate'])}"))
    con.print(Text(visible(report.title), style="bold"))
    for v in ([subject] if subject is not None else report.verdicts):
        con.print(Text(one_line(v), style="green" if v["passed"] is True else "red"))
        for r in reasons(v):
            con.print(Text(f"  fails because: {r}", style="red"))
        for r in notes(v):
            con.print(Text(f"  note: {r}", style="dim"))
    con.print(Text(margin_space_note(report.verdicts) + "; confident when margin ≥ min_margin", style="dim"))
    if subject is not None:
        con.print(Text("policy: " + ", ".join(f"{k} = {x}" for k, x in policy_items(subject))))

    if len(report.verdicts) > 1 or subject is not None:
        table = Table(title="Comparison", title_justify="left")
        for c in COMPARISON_COLUMNS:
            table.add_column(COMPARISON_HEADERS[c], justify="left" if c in ("gate", "candidate", "control") else "right")
        for v in report.verdicts:
            r = comparison_row(v)
            cells = [Text(r[c]) for c in COMPARISON_COLUMNS]
            cells[-1].stylize("bold green" if v["passed"] is True else "bold red")
            table.add_row(*cells)
        con.print(table)

    for v in report.flip_verdicts:
        shown = flips(v, report.all_positions)
        matches = sum(p["class"] == "match" for p in v["positions"])
        head = f"{visible(v['gate'])}: " + (f"all {len(shown)} positions (matches: {matches})" if report.all_positions
                                             else f"non-match positions: {len(shown)}; matches: {matches}, not listed "
                                                  f"(--all-positions lists them)")
        extras = summary_extras(v)
        if extras:
            head += "; " + ", ".join(f"{k} = {x}" for k, x in extras)
        con.print(Text(head, style="bold"))
        if not shown:
            continue
        table = Table(show_lines=False)
        for name in ("case", "row/pos", "context", "reference", "oracle top-1 (p)", "oracle top-2 (p)",
                     f"margin ({margin_space(v)})", "candidate top-1 (p)", "control top-1 (p)", "class", "cosine",
                     "KL", "rank"):
            table.add_column(name, overflow="fold")
        for p in shown:
            r = flip_row(v, p)
            table.add_row(
                Text(r.case), Text(f"{r.row}/{r.position}"), Text(r.context, style="dim"), Text(r.target),
                Text(f"{r.oracle_top1} ({r.oracle_top1_prob})"), Text(f"{r.oracle_top2} ({r.oracle_top2_prob})"),
                Text(r.margin), Text(f"{r.candidate_top1} ({r.candidate_top1_prob})"),
                Text(f"{r.control_top1} ({r.control_top1_prob})" if r.control_top1 != "—" else "—"),
                Text(r.cls_text or r.cls, style=_CLASS_STYLE.get(r.cls, "")), Text(r.cosine), Text(r.kl), Text(r.oracle_rank))
        con.print(table)

    if subject is not None:
        con.print(Text("provenance", style="bold"))
        rows, blocks = provenance_items(subject_provenance(report))
        for key, val in rows:
            con.print(Text(f"  {key}: {val}"))
        for key, lines in blocks:
            con.print(Text(f"  {key}:"))
            for line in lines:
                con.print(Text(f"    {line}", style="dim"))
        if report.made:
            con.print(Text(made_line(report.made), style="dim"))


def render_terminal(report: Report, width: int = 200) -> str:
    """The terminal report as plain text (no colour), e.g. for `--out F`."""
    buf = io.StringIO()
    print_report(report, buf, width=width, colour=False)
    return buf.getvalue()
