"""Writing reports: one file (`write_report`), or a folder of every format published under a new,
timestamped name (`publish_folder`) — a comparison or a sign-off never overwrites an earlier one.

Every file is written to a temporary name and renamed (harness.fileio). A folder is built whole in a
hidden temporary folder beside its destination; its final name is reserved with `mkdir` (which fails
if the name exists, whatever else is running) and the built folder is renamed onto that empty
reservation, so a reader never sees half a report and two runs in the same second get two names.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Mapping

from harness.errors import InputError
from harness.fileio import write_bytes_atomic, write_text_atomic

from .data import dumps, render_csv, render_json
from .html import render_html
from .markdown import render_markdown
from .model import SIGNOFF_FIELDS, SIGNOFF_SCHEMA, Report, candidate_evidence, candidate_name, control_name, subject_provenance
from .plots import render_plots
from .terminal import render_terminal

FORMATS = ("terminal", "md", "html", "json", "csv")


def render(report: Report, fmt: str, *, plots: Mapping[str, bytes] | None = None,
           beside: Mapping[str, str] | None = None) -> str:
    """The report in one format, as text. HTML draws the plots unless `plots` is given."""
    if fmt == "terminal":
        return render_terminal(report)
    if fmt == "md":
        return render_markdown(report, plots=beside)
    if fmt == "html":
        return render_html(report, plots if plots is not None else render_plots(report.verdicts), beside)
    if fmt == "json":
        return dumps(signoff_document(report)) if report.subject else render_json(report.verdicts)
    if fmt == "csv":
        return render_csv(report.verdicts)
    raise InputError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _write_plots(report: Report, path_of: Callable[[str], Path]) -> tuple[dict[str, bytes], dict[str, Path]]:
    """Draw the plots and write each as a PNG file at path_of(name)."""
    plots = render_plots(report.verdicts)
    paths = {name: path_of(name) for name in plots}
    for name, png in plots.items():
        write_bytes_atomic(paths[name], png)
    return plots, paths


def write_report(path: str | os.PathLike, report: Report, fmt: str) -> list[Path]:
    """Write one report file; HTML and Markdown get the plots as PNG files beside (`<stem>.<plot>.png`)."""
    dest = Path(path)
    plots, pngs = None, {}
    if fmt in ("html", "md"):
        plots, pngs = _write_plots(report, lambda name: dest.with_name(f"{dest.stem}.{name}.png"))
    write_text_atomic(dest, render(report, fmt, plots=plots, beside={k: p.name for k, p in pngs.items()}))
    return [dest, *pngs.values()]


def write_folder(folder: Path, report: Report, stem: str, formats=("html", "md", "json", "csv")) -> dict[str, Path]:
    """Every format into `folder` as `<stem>.<ext>`, with the plots as `<plot>.png`."""
    plots, out = _write_plots(report, lambda name: folder / f"{name}.png")
    beside = {k: p.name for k, p in out.items()}
    for fmt in formats:
        out[fmt] = folder / f"{stem}.{fmt}"
        write_text_atomic(out[fmt], render(report, fmt, plots=plots, beside=beside))
    return out


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def safe_name(name: str) -> str:
    """A gate name as a file-name part: [A-Za-z0-9_.-] only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:48] or "gate"


def publish_folder(parent: str | os.PathLike, prefix: str, build: Callable[[Path], object]) -> Path:
    """Run `build(tmp_folder)`, then move the folder to `parent/<prefix>-<UTC stamp>[-n]`: never an existing name."""
    parent = Path(parent)
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{parent}: --report-dir must be a folder, and this is a file")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{prefix}.{uuid.uuid4().hex}.part"
    tmp.mkdir()
    try:
        build(tmp)
        stamp = _stamp()
        for n in itertools.count(1):
            final = parent / (f"{prefix}-{stamp}" + ("" if n == 1 else f"-{n}"))
            try:
                final.mkdir()
            except FileExistsError:
                continue
            os.rename(tmp, final)  # onto our own empty reservation: replaces nothing else
            return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


def signoff_document(report: Report) -> dict:
    """The sign-off as JSON: `flipgate.signoff/1`, carrying every verdict so it can be re-rendered."""
    subject = report.subject_verdict
    assert subject is not None
    return {
        "schema": SIGNOFF_SCHEMA,
        "gate": subject["gate"],
        "passed": subject["passed"],
        "policy": subject["policy"],
        "comparison": [{"gate": v["gate"], "candidate": candidate_name(v), "evidence": candidate_evidence(v),
                        "control": control_name(v) or None,
                        "passed": v["passed"], **v["summary"]} for v in report.verdicts],
        "provenance": subject_provenance(report),
        "report": report.made,
        "signoff": {f.split(" (")[0]: None for f in SIGNOFF_FIELDS},
        "verdicts": report.verdicts,
    }


def _publish(report_dir, prefix: str, report: Report, stem: str, formats) -> tuple[Path, dict[str, Path]]:
    files: dict[str, Path] = {}
    folder = publish_folder(report_dir, prefix, lambda tmp: files.update(write_folder(tmp, report, stem, formats)))
    return folder, {k: folder / p.name for k, p in files.items()}


def write_comparison(report_dir: str | os.PathLike, report: Report) -> tuple[Path, dict[str, Path]]:
    """A comparison folder: comparison.{html,md,json,csv} and the plots, under a new timestamped name."""
    return _publish(report_dir, "compare", report, "comparison", ("html", "md", "json", "csv"))


def write_signoff(report_dir: str | os.PathLike, report: Report) -> tuple[Path, dict[str, Path]]:
    """A sign-off folder: signoff.{html,md,json} and the plots, under a new timestamped name."""
    if report.subject is None:
        raise ValueError("a sign-off report names its subject gate (build_report(..., subject=NAME))")
    return _publish(report_dir, f"signoff-{safe_name(report.subject)}", report, "signoff", ("html", "md", "json"))
