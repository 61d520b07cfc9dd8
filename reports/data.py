"""The machine-readable renderers: JSON (the verdict schema itself) and CSV (pandas, one row per
gate × position). Token text stays raw in the JSON — data, not a page — and round-trips exactly.

CSV is opened in spreadsheets, which run a cell starting with `=`, `+`, `-` or `@` (or a tab or
carriage return before one) as a formula: a text cell starting so is written with a leading `'`
(OWASP's advice; spreadsheets show the text as it was). Numbers are numbers, never touched: a
negative cosine stays `-0.5`.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Mapping

from .model import candidate_name, control_name, margin_space, num

# Per-position CSV columns: who, then the schema's fields, then the optional extras and texts.
CSV_COLUMNS = ("gate", "candidate", "control", "passed", "margin_space", "case", "row", "position",
               "class", "target_token", "oracle_top1", "oracle_top2", "margin", "candidate_top1",
               "control_top1", "cosine", "kl", "oracle_rank_in_candidate", "top5_overlap",
               "oracle_top1_prob", "oracle_top2_prob", "candidate_top1_prob", "control_top1_prob",
               "context_text", "target_text", "oracle_top1_text", "oracle_top2_text",
               "candidate_top1_text", "control_top1_text")


_FLOAT_COLUMNS = ("margin", "cosine", "kl", "oracle_top1_prob", "oracle_top2_prob", "candidate_top1_prob",
                  "control_top1_prob")


def render_json(verdicts: list[Mapping]) -> str:
    """One verdict: its JSON object; several: a JSON array of them. Stable key order, trailing newline.

    A lone surrogate (a token that was not valid UTF-8) is written as its JSON escape `\\udcXX`,
    which reads back as the same string.
    """
    obj: Any = verdicts[0] if len(verdicts) == 1 else list(verdicts)
    return dumps(obj)


_SPECIAL = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_ready(obj: Any) -> Any:
    """A copy with NaN/Inf as the strings "NaN", "Infinity", "-Infinity", as the gate engine writes
    them: plain JSON has no such numbers, and a string cannot be mistaken for a bound that holds."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return _SPECIAL[repr(obj)]
    if isinstance(obj, Mapping):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    text = json.dumps(json_ready(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def positions_frame(verdicts: list[Mapping]):
    import pandas as pd

    rows = []
    for v in verdicts:
        head = {"gate": v["gate"], "candidate": candidate_name(v), "control": control_name(v),
                "passed": v["passed"], "margin_space": margin_space(v)}
        for p in v["positions"]:
            row = {**head, **{k: p.get(k) for k in CSV_COLUMNS if k not in head}}
            for k in _FLOAT_COLUMNS:  # "NaN" (a verdict file's NaN) and nan alike become a float NaN
                row[k] = num(row[k])
            rows.append(row)
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    # Ids stay integers where present (pandas would make a column with a None in it float).
    for col in ("row", "position", "target_token", "oracle_top1", "oracle_top2", "candidate_top1",
                "control_top1", "oracle_rank_in_candidate"):
        frame[col] = frame[col].astype("Int64")
    return frame


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def render_csv(verdicts: list[Mapping]) -> str:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    frame = positions_frame(verdicts)
    for col in frame.columns:
        # text columns only: numeric ones hold numbers, not formulas
        if not (is_numeric_dtype(frame[col]) or is_bool_dtype(frame[col])):
            frame[col] = frame[col].map(csv_cell)
    buf = io.StringIO()
    # CRLF (RFC 4180): then a cell holding a carriage return is quoted too, not split into two rows
    frame.to_csv(buf, index=False, lineterminator="\r\n")
    return buf.getvalue().encode("utf-8", "backslashreplace").decode("utf-8")
