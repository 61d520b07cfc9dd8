"""The report model: verdicts (DESIGN.md, `flipgate.verdict/1`) read as plain dicts, and the views
every renderer shares — the comparison rows, the flip rows, the position grid.

Renderers only ever see verdict dicts, never the gate engine's objects or the models: anything with
`to_dict()` is turned into its dict first, and `load_verdict_file` reads the JSON a gate wrote. Every
string a view returns has been through `visible()` once: renderers only escape it for their medium.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from gates.verdict import (  # the one reading of the schema
    CLASSES, SCHEMA, SUMMARY_KEYS, check_verdict, parse_json)
from harness.errors import InputError
from harness.fileio import note_input

from .escape import context, token, visible


def as_verdict_dict(verdict: Any, source: str = "verdict") -> dict:
    """A verdict dict from a dict or an object with `to_dict()`, checked against the schema."""
    d = verdict.to_dict() if hasattr(verdict, "to_dict") else verdict
    if not isinstance(d, Mapping):
        raise InputError(f"{source}: not a verdict (a JSON object with schema {SCHEMA!r})")
    check_verdict(d, source)
    return dict(d)


SIGNOFF_SCHEMA = "flipgate.signoff/1"


def load_verdict_file(path: str | os.PathLike) -> list[dict]:
    """The verdicts in a JSON file: one verdict, an array of them (a comparison's JSON), or a sign-off."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such verdict file")
    note_input(p)  # this run must not overwrite it (harness.fileio)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a verdict (not UTF-8 text)") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    d = parse_json(text, str(p))  # nesting and size checked before the parser (harness.safejson)
    if isinstance(d, Mapping) and d.get("schema") == SIGNOFF_SCHEMA:
        d = d.get("verdicts")
        if not isinstance(d, list):
            raise InputError(f"{p}: sign-off has no 'verdicts' list")
    if isinstance(d, list):
        if not d:
            raise InputError(f"{p}: an empty list holds no verdicts")
        return [as_verdict_dict(x, f"{p}: verdict {i}") for i, x in enumerate(d)]
    return [as_verdict_dict(d, str(p))]


def load_verdicts(paths: Iterable[str | os.PathLike]) -> list[dict]:
    verdicts = [v for p in paths for v in load_verdict_file(p)]
    check_distinct(verdicts)
    return verdicts


def as_verdicts(verdicts: Iterable[Any]) -> list[dict]:
    out = [as_verdict_dict(v, f"verdict {i}") for i, v in enumerate(verdicts)]
    check_distinct(out)
    return out


def check_distinct(verdicts: list[dict]) -> None:
    seen = set()
    for v in verdicts:
        if v["gate"] in seen:
            raise InputError(f"gate {v['gate']!r} given twice: a comparison has one verdict per gate")
        seen.add(v["gate"])


# ---- numbers -------------------------------------------------------------------------------------

def num(x: Any) -> float | None:
    """A float from a JSON value; None when absent. NaN stays NaN (it must show, not vanish)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def fmt(x: Any, digits: int = 4) -> str:
    v = num(x)
    if v is None:
        return "n/a"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


def margin_space(v: Mapping) -> str:
    return str(v["policy"].get("margin_space") or v["summary"].get("margin_space") or "prob")


def candidate_name(v: Mapping) -> str:
    return str(v["policy"].get("candidate") or v["gate"])


def control_name(v: Mapping) -> str:
    return str(v["policy"].get("control") or "")


def max_kl(v: Mapping) -> float | None:
    if "max_kl" in v["summary"]:
        return num(v["summary"]["max_kl"])
    kls = [num(p["kl"]) for p in v["positions"]]
    kls = [k for k in kls if k is not None]
    if not kls:
        return None
    return float("nan") if any(math.isnan(k) for k in kls) else max(kls)


# ---- views ---------------------------------------------------------------------------------------

COMPARISON_COLUMNS = ("gate", "candidate", "control", "exact", "rule", "defects", "oracle_artifacts",
                      "tie_flips", "invalid", "min_cosine", "mean_cosine", "mean_kl", "max_kl", "verdict", "evidence")
COMPARISON_HEADERS = {"gate": "gate", "candidate": "candidate", "evidence": "evidence", "control": "control", "exact": "exact k/n",
                      "rule": "rule k/n", "defects": "defects", "oracle_artifacts": "oracle-artifacts",
                      "tie_flips": "tie-flips", "invalid": "invalid", "min_cosine": "min cosine",
                      "mean_cosine": "mean cosine", "mean_kl": "mean KL", "max_kl": "max KL",
                      "verdict": "verdict"}


def comparison_row(v: Mapping) -> dict:
    """One row of the comparison table, formatted (visible strings), in COMPARISON_COLUMNS order."""
    s = v["summary"]
    n = s["positions"]
    return {
        "gate": visible(v["gate"]), "candidate": visible(candidate_name(v)),
        "evidence": evidence_label(v),
        "control": visible(control_name(v)) or "—",
        "exact": f"{s['exact']}/{n}", "rule": f"{s['rule']}/{n}",
        "defects": str(s["defects"]), "oracle_artifacts": str(s["oracle_artifacts"]),
        "tie_flips": str(s["tie_flips"]), "invalid": str(s["invalid"]),
        "min_cosine": fmt(s["min_cosine"], 6), "mean_cosine": fmt(s["mean_cosine"], 6),
        "mean_kl": fmt(s["mean_kl"], 6), "max_kl": fmt(max_kl(v), 6),
        "verdict": verdict_word(v),
    }


def candidate_evidence(v: Mapping) -> str:
    """What the candidate's rows are (harness.evidence kind), from the verdict's trace record."""
    from harness.evidence import evidence_of

    info = (v.get("provenance") or {}).get("candidate")
    return evidence_of(info) if isinstance(info, Mapping) else "unknown"


def evidence_label(v: Mapping) -> str:
    """`device`, `Linux reference runtime`, `emulation` or `unknown`: every report shows it."""
    from harness.evidence import label

    return label(candidate_evidence(v))


def verdict_word(v: Mapping) -> str:
    return "PASS" if v["passed"] is True else "FAIL"


def one_line(v: Mapping) -> str:
    """`int8hu: PASS — exact 14/16, rule 15/16, defects 0, ...`: the banner line of a verdict (visible text)."""
    r = comparison_row(v)
    return (f"{r['gate']}: {r['verdict']} — exact {r['exact']}, rule {r['rule']}, defects {r['defects']}, "
            f"oracle-artifacts {r['oracle_artifacts']}, tie-flips {r['tie_flips']}, invalid {r['invalid']}; "
            f"cosine min {r['min_cosine']} mean {r['mean_cosine']}; KL mean {r['mean_kl']} max {r['max_kl']}"
            + bound_clause(v) + f"; evidence: {r['evidence']}")


def bound_clause(v: Mapping) -> str:
    """'; 0 defects in 169 confident positions: the confident defect rate is below 1.76 % at 95 % …'
    for a verdict that states its bound (`defect_rate_upper_95`); empty for one that does not."""
    s = v["summary"]
    upper = s.get("defect_rate_upper_95")
    if not isinstance(upper, (int, float)) or isinstance(upper, bool):
        return ""
    from gates.metrics import defect_bound_sentence

    judged = s.get("confident_judged", s["confident"])
    return "; " + visible(defect_bound_sentence(int(s["defects"]), int(judged), float(upper)))


def policy_items(v: Mapping) -> list[tuple[str, str]]:
    return [(visible(k), _plain(val)) for k, val in v["policy"].items()]


_SAID_ELSEWHERE = ("reasons", "notes")


def summary_extras(v: Mapping) -> list[tuple[str, str]]:
    """Summary statistics beyond the schema's fixed keys (e.g. the Wilson interval), formatted."""
    return [(visible(k), _plain(val)) for k, val in v["summary"].items()
            if k not in SUMMARY_KEYS and k not in _SAID_ELSEWHERE]


def reasons(v: Mapping) -> list[str]:
    """Why the gate failed, as the engine said it (summary 'reasons'; empty if it passed or said none)."""
    return [visible(r) for r in (v["summary"].get("reasons") or [])]


def notes(v: Mapping) -> list[str]:
    """What the engine noted about how it judged (e.g. a control the policy names was not given)."""
    return [visible(r) for r in (v["summary"].get("notes") or [])]


def _plain(val: Any) -> str:
    """A policy or statistic value as short visible text (floats to 6 significant digits)."""
    if val is None:
        return "none"
    if isinstance(val, bool):
        return "true" if val else "false"
    if isinstance(val, float):
        return f"{val:.6g}" if math.isfinite(val) else fmt(val)
    if isinstance(val, (list, tuple)):
        return "[" + ", ".join(_plain(x) for x in val) + "]"
    if isinstance(val, Mapping):
        return "{" + ", ".join(f"{visible(k)}: {_plain(x)}" for k, x in val.items()) + "}"
    return visible(val)


def flips(v: Mapping, all_positions: bool = False) -> list[Mapping]:
    return [p for p in v["positions"] if all_positions or p["class"] != "match"]


@dataclass(frozen=True)
class FlipRow:
    """A per-position row as displayed: raw text fields are made visible (not yet medium-escaped)."""

    case: str
    row: int
    position: int
    context: str
    target: str
    oracle_top1: str
    oracle_top1_prob: str
    oracle_top2: str
    oracle_top2_prob: str
    margin: str
    candidate_top1: str
    candidate_top1_prob: str
    control_top1: str
    control_top1_prob: str
    cls: str
    cosine: str
    kl: str
    oracle_rank: str
    anchor: str
    cls_text: str = ""  # the class as shown, e.g. "oracle-artifact (confirmed by fp32)"; cls stays the key


def flip_headers(v: Mapping) -> tuple[str, ...]:
    """Column titles of the flip table; the margin column names its space (prob or logit)."""
    return ("case", "row/pos", "context (last 40 chars)", "reference", "oracle top-1", "p", "oracle top-2",
            "p", f"margin ({margin_space(v)})", "candidate top-1", "p", "control top-1", "p", "class", "cosine",
            "KL", "oracle top-1 rank in candidate")


# What each flip column holds, so a renderer can style it: text, context, token, num, class.
FLIP_KINDS = ("text", "num", "context", "token", "token", "num", "token", "num", "num", "token", "num", "token",
              "num", "class", "num", "num", "num")


def flip_cells(r: "FlipRow") -> tuple[str, ...]:
    """The cells of one flip row, in flip_headers order (visible text, not yet medium-escaped)."""
    return (r.case, f"{r.row}/{r.position}", r.context, r.target, r.oracle_top1, r.oracle_top1_prob,
            r.oracle_top2, r.oracle_top2_prob, r.margin, r.candidate_top1, r.candidate_top1_prob,
            r.control_top1, r.control_top1_prob, r.cls_text or r.cls, r.cosine, r.kl, r.oracle_rank)


def _tok(p: Mapping, key: str) -> str:

    tid = p.get(key)
    if tid is None:
        return "—"
    text = p.get(f"{key}_text") if key != "target_token" else p.get("target_text")
    return f"{token(text)} #{tid}" if text is not None else f"#{tid}"


def flip_row(v: Mapping, p: Mapping) -> FlipRow:

    return FlipRow(
        case=visible(p["case"]), row=int(p["row"]), position=int(p["position"]),
        context=context(p.get("context_text")) if p.get("context_text") is not None else "",
        target=_tok(p, "target_token"),
        oracle_top1=_tok(p, "oracle_top1"), oracle_top1_prob=fmt(p.get("oracle_top1_prob"), 3),
        oracle_top2=_tok(p, "oracle_top2"), oracle_top2_prob=fmt(p.get("oracle_top2_prob"), 3),
        margin=fmt(p["margin"], 3),
        candidate_top1=_tok(p, "candidate_top1"), candidate_top1_prob=fmt(p.get("candidate_top1_prob"), 3),
        control_top1=_tok(p, "control_top1"),
        control_top1_prob=fmt(p.get("control_top1_prob"), 3) if p.get("control_top1") is not None else "—",
        cls=str(p["class"]), cosine=fmt(p["cosine"], 6), kl=fmt(p["kl"], 6),
        oracle_rank="n/a" if p.get("oracle_rank_in_candidate") is None else str(p["oracle_rank_in_candidate"]),
        anchor=position_anchor(v["gate"], str(p["case"]), int(p["row"])),
        cls_text=str(p.get("class_text") or p["class"]),
    )


def position_anchor(gate: str, case: str, row: int) -> str:
    """An HTML id for one position of one gate: only [A-Za-z0-9_-], unique, from untrusted names."""
    import hashlib

    h = hashlib.sha256(f"{gate}\0{case}\0{row}".encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"pos-{h}"


def position_keys(verdicts: list[Mapping]) -> list[tuple[str, int]]:
    """(case, row) of every scored position, in the first verdict's order, then any others'."""
    keys: list[tuple[str, int]] = []
    seen = set()
    for v in verdicts:
        for p in v["positions"]:
            k = (str(p["case"]), int(p["row"]))
            if k not in seen:
                seen.add(k)
                keys.append(k)
    return keys


def case_spans(keys: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(case, first column, last column) runs of one case along the position axis."""
    spans: list[tuple[str, int, int]] = []
    for i, (case, _row) in enumerate(keys):
        if spans and spans[-1][0] == case and spans[-1][2] == i - 1:
            spans[-1] = (case, spans[-1][1], i)
        else:
            spans.append((case, i, i))
    return spans


def position_grid(verdicts: list[Mapping]) -> tuple[list[tuple[str, int]], list[list[Mapping | None]]]:
    """Positions (columns) and, per verdict (rows), the position record there or None."""
    keys = position_keys(verdicts)
    grid = []
    for v in verdicts:
        by_key = {(str(p["case"]), int(p["row"])): p for p in v["positions"]}
        grid.append([by_key.get(k) for k in keys])
    return keys, grid


def margin_space_note(verdicts: list[Mapping]) -> str:
    spaces = sorted({margin_space(v) for v in verdicts})
    what = {"prob": "softmax-probability gap p(top1) − p(top2)", "logit": "logit gap o(top1) − o(top2)"}
    return "; ".join(f"margin = {what.get(s, s)} ({s})" for s in spaces)


# ---- the report as a whole -----------------------------------------------------------------------

@dataclass
class Report:
    """What every renderer draws: verdicts plus, for a sign-off, the gate signed off and provenance.

    `subject` names the gate being signed off (its verdict is the banner); `made` says which
    flipgate, where and when drew the report (None: left out, e.g. for reproducible output).
    """

    verdicts: list[dict]
    title: str = "flipgate report"
    all_positions: bool = False
    subject: str | None = None
    made: dict | None = None
    localisations: list = field(default_factory=list)  # flipgate.localise/1 records (reports/localise.py)

    @property
    def subject_verdict(self) -> dict | None:
        return next((v for v in self.verdicts if v["gate"] == self.subject), None)

    @property
    def flip_verdicts(self) -> list[dict]:
        """The verdicts whose positions are listed: the subject's alone in a sign-off, else all."""
        s = self.subject_verdict
        return [s] if s is not None else self.verdicts


def build_report(verdicts: Iterable[Any], **kw) -> Report:
    report = Report(as_verdicts(verdicts), **kw)
    if report.subject is not None and report.subject_verdict is None:
        have = ", ".join(v["gate"] for v in report.verdicts)
        raise InputError(f"gate {report.subject!r} is not among the verdicts given ({have})")
    return report


def made_info() -> dict:
    """flipgate, library versions, machine and date of the report (no heavy imports)."""
    import datetime as dt
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from harness import __version__

    versions = {"flipgate": __version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "coreai-opt"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "not installed"
    return {"versions": versions,
            "machine": f"{platform.node()} {platform.system()} {platform.release()} {platform.machine()}",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


# What a sign-off must show; a missing one is listed as "not recorded" rather than left out.
# trace_sha256 holds the hashes of what each runner produced (for a device bundle, its logit dump).
PROVENANCE_EXPECTED = ("model", "model_sha256", "trace_sha256", "tokenizer_sha256", "cases", "cases_sha256",
                       "recipes", "versions", "machine", "date")


def provenance_items(prov: Mapping | None) -> tuple[list[tuple[str, str]], list[tuple[str, list[str]]]]:
    """Provenance as (rows, blocks), all visible text: rows are (key, value) with the expected keys
    first (a missing one 'not recorded') and nested objects flattened to dotted keys; blocks are
    (key, lines) for multi-line text such as a recipe."""
    prov = dict(prov or {})
    rows: list[tuple[str, str]] = []
    blocks: list[tuple[str, list[str]]] = []

    def add(key: str, val: Any) -> None:
        if isinstance(val, Mapping):
            if not val:
                rows.append((visible(key), "none recorded"))
            for k, x in val.items():
                add(f"{key}.{k}", x)
        elif isinstance(val, str) and "\n" in val:
            blocks.append((visible(key), [visible(line) for line in val.splitlines()]))
        elif isinstance(val, str):
            rows.append((visible(key), visible(val) or "not recorded"))
        else:
            rows.append((visible(key), _plain(val)))

    for key in PROVENANCE_EXPECTED:
        if key in prov:
            add(key, prov.pop(key))
        else:
            rows.append((key, "not recorded"))
    for key in sorted(prov):
        add(key, prov[key])
    return rows, blocks


def subject_provenance(report: Report) -> dict:
    v = report.subject_verdict or (report.verdicts[0] if report.verdicts else None)
    return dict(v.get("provenance") or {}) if v is not None else {}


SIGNOFF_FIELDS = ("name", "date", "decision (ship / do not ship)", "signature", "notes")


def made_line(made: Mapping, escape=lambda s: s) -> str:
    """'Report made with flipgate 0.1.0, torch 2.13.0, ... on HOST, DATE.' with each value escaped."""
    versions = ", ".join(f"{escape(visible(k))} {escape(visible(x))}" for k, x in made.get("versions", {}).items())
    return (f"Report made with {versions} on {escape(visible(made.get('machine', '?')))}, "
            f"{escape(visible(made.get('date', '?')))}.")
