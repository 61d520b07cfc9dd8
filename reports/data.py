"""The machine-readable renderers: JSON (the verdict schema itself) and CSV (one row per
gate × position; `positions_frame` gives the same rows as a pandas DataFrame). Token text stays
raw in the JSON — data, not a page — and round-trips exactly.

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


_INT_COLUMNS = ("row", "position", "target_token", "oracle_top1", "oracle_top2", "candidate_top1",
                "control_top1", "oracle_rank_in_candidate")


def position_rows(verdicts: list[Mapping]) -> list[dict]:
    """One dict a gate × position, keyed by CSV_COLUMNS; float columns as floats (NaN for "NaN"), else None."""
    rows = []
    for v in verdicts:
        head = {"gate": v["gate"], "candidate": candidate_name(v), "control": control_name(v),
                "passed": v["passed"], "margin_space": margin_space(v)}
        for p in v["positions"]:
            row = {**head, **{k: p.get(k) for k in CSV_COLUMNS if k not in head}}
            for k in _FLOAT_COLUMNS:  # "NaN" (a verdict file's NaN) and nan alike become a float NaN
                row[k] = num(row[k])
            rows.append(row)
    return rows


def positions_frame(verdicts: list[Mapping]):
    """The rows as a pandas DataFrame (ids as nullable Int64), for users who analyse in pandas."""
    import pandas as pd

    frame = pd.DataFrame(position_rows(verdicts), columns=list(CSV_COLUMNS))
    # Ids stay integers where present (pandas would make a column with a None in it float).
    for col in _INT_COLUMNS:
        frame[col] = frame[col].astype("Int64")
    return frame


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _column_cells(col: str, values: list) -> list[str]:
    """A column's cells as text, as pandas' DataFrame and to_csv wrote them (na_rep ""), without
    importing pandas (0.8 s of a warm `compare`); text cells neutralised (`csv_cell`), numbers not."""
    if col in _INT_COLUMNS:
        return ["" if _missing(x) else str(int(x)) for x in values]
    present = [x for x in values if not _missing(x)]
    kinds = {bool if isinstance(x, bool) else int if isinstance(x, int) else float if isinstance(x, float)
             else object for x in present}
    numeric = bool(present) and kinds <= {int, float} and (float in kinds or len(present) < len(values))
    if col in _FLOAT_COLUMNS or numeric:  # pandas' float64: shortest repr, NaN empty
        return ["" if _missing(x) else repr(float(x)) for x in values]
    return ["" if _missing(x) else str(csv_cell(x)) for x in values]


def render_csv(verdicts: list[Mapping]) -> str:
    """One row per gate × position, the columns CSV_COLUMNS (the csv module's minimal quoting, as pandas)."""
    import csv

    rows = position_rows(verdicts)
    columns = [_column_cells(c, [r[c] for r in rows]) for c in CSV_COLUMNS]
    buf = io.StringIO()
    # CRLF (RFC 4180): then a cell holding a carriage return is quoted too, not split into two rows
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(zip(*columns))
    return buf.getvalue().encode("utf-8", "backslashreplace").decode("utf-8")
