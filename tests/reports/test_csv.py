"""The CSV renderer writes with the csv module what pandas wrote before, byte for byte (no pandas import),
formula-like text cells neutralised as before (reports.data.csv_cell)."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reports import build_report, render
from reports.data import CSV_COLUMNS, positions_frame


def pandas_csv(verdicts) -> str:
    """The renderer as it was: pandas' DataFrame and to_csv, text columns through csv_cell, CRLF."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    from reports.data import csv_cell

    frame = positions_frame(verdicts)
    for col in frame.columns:
        if not (is_numeric_dtype(frame[col]) or is_bool_dtype(frame[col])):
            frame[col] = frame[col].map(csv_cell)
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\r\n")
    return buf.getvalue().encode("utf-8", "backslashreplace").decode("utf-8")


def test_seed_and_hostile_verdicts_match_pandas(seed, evil):
    verdicts = build_report(seed + [evil]).verdicts
    text = render(build_report(seed + [evil]), "csv")
    assert text == pandas_csv(verdicts)
    assert text.count("\n") > len(seed) * 16  # rows were written (and a newline in token text is quoted)


_floats = st.one_of(st.none(), st.just("NaN"), st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(-3, 3))
_ints = st.one_of(st.none(), st.integers(-1, 300_000))
_texts = st.one_of(st.none(), st.text(max_size=6), st.sampled_from(['a,b', '"q"', "x\ny", "\r", " ", "\udc80"]))
_mixed = st.one_of(st.none(), st.booleans(), st.integers(-2, 9), st.floats(-2, 2), st.text(max_size=3))
_position = st.fixed_dictionaries({
    "case": st.text(min_size=1, max_size=4), "row": st.integers(0, 20), "position": st.integers(0, 40),
    "class": st.sampled_from(["match", "tie-flip", "oracle-artifact", "defect", "invalid"]),
    "target_token": _ints, "oracle_top1": _ints, "oracle_top2": _ints, "margin": _floats,
    "candidate_top1": _ints, "control_top1": _ints, "cosine": _floats, "kl": _floats,
    "oracle_rank_in_candidate": _ints, "top5_overlap": st.one_of(st.none(), st.integers(0, 5)),
    "oracle_top1_prob": _floats, "candidate_top1_prob": _floats, "target_text": _texts, "context_text": _texts,
    "candidate_top1_text": _mixed,
})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_position, max_size=6), min_size=1, max_size=3), st.booleans())
def test_any_positions_match_pandas(gates, with_control):
    verdicts = [{"gate": f"g{i}", "passed": i % 2 == 0, "policy": {"candidate": "c", "margin_space": "prob",
                                                                   "control": "fp16" if with_control else None},
                 "positions": positions} for i, positions in enumerate(gates)]
    from reports.data import render_csv

    assert render_csv(verdicts) == pandas_csv(verdicts)


def test_csv_reads_back_with_the_columns_in_order(seed):
    import pandas as pd

    frame = pd.read_csv(io.StringIO(render(build_report(seed), "csv")), keep_default_na=False, na_values=[""])
    assert tuple(frame.columns) == CSV_COLUMNS
    assert math.isnan(frame["oracle_top2_prob"].iloc[0]) or frame["oracle_top2_prob"].iloc[0] >= 0


@pytest.mark.parametrize("fmt", ["csv", "json", "md"])
def test_rendering_imports_no_pandas(verdict_files, fmt):
    """`flipgate report` renders without pandas, torch or transformers in the process."""
    code = ("import sys, json\nfrom harness.cli import main\n"
            f"rc = main(['report', *{[str(p) for p in verdict_files.values()]!r}, '--format', {fmt!r}])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'torch', 'transformers'))\n"
            "print(json.dumps([rc, heavy]), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    import json

    rc, heavy = json.loads(done.stderr.strip().splitlines()[-1])
    assert rc == 0 and heavy == [], (rc, heavy, done.stderr[-2000:])
