"""Renderers of verdicts: terminal, Markdown, HTML, JSON, CSV — from verdicts, never from models.

    from reports import build_report, render, write_comparison, write_signoff, load_verdicts
    report = build_report(verdicts)                    # Verdict objects or `flipgate.verdict/1` dicts
    print(render(report, "md"))                        # terminal | md | html | json | csv
    folder, files = write_comparison("flipgate-reports", report)
    folder, files = write_signoff("release", build_report(verdicts, subject="int8hu", made=made_info()))
    card = reports.card.render_card(reports.card.CardInputs(verdicts, "int8hu", ...))   # the release card

Nothing here imports torch, transformers or pandas (tests/reports/test_csv.py checks it); matplotlib is
imported only when a plot is drawn.
"""

from .model import Report, as_verdicts, build_report, load_verdict_file, load_verdicts, made_info
from .output import FORMATS, render, signoff_document, write_comparison, write_report, write_signoff

__all__ = ["FORMATS", "Report", "as_verdicts", "build_report", "load_verdict_file", "load_verdicts", "made_info",
           "render", "signoff_document", "write_comparison", "write_report", "write_signoff"]
