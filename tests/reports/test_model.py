"""The report model: loading and checking verdicts, the comparison rows, CSV and terminal output."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest

from harness.errors import InputError
from reports import build_report, load_verdicts, render
from reports.model import comparison_row, flip_row, position_grid


def test_comparison_rows_tell_the_seed_story(seed):
    rows = {v["gate"]: comparison_row(v) for v in seed}
    assert rows["int8hu"]["exact"] == "14/16" and rows["int8hu"]["rule"] == "15/16"
    assert rows["int8hu"]["oracle_artifacts"] == "1" and rows["int8hu"]["tie_flips"] == "1"
    assert rows["int8hu"]["verdict"] == "PASS"
    assert rows["fp16"]["verdict"] == "FAIL" and rows["fp16"]["defects"] == "1" and rows["fp16"]["control"] == "—"
    assert rows["int4lin"]["defects"] == "1" and rows["int4lin"]["min_cosine"] == "0.988000"
    # NaN stays NaN in every statistic: it never reads as a number within bounds.
    assert rows["mixed-edge"]["min_cosine"] == "NaN" and rows["mixed-edge"]["max_kl"] == "NaN"


def test_position_grid_lines_up_the_same_position(seed):
    keys, grid = position_grid(seed)
    assert len(keys) == 16 and len(grid) == len(seed)
    col = keys.index(("capital", 5))
    classes = {v["gate"]: row[col]["class"] for v, row in zip(seed, grid)}
    assert classes == {"fp16": "defect", "int8hu": "oracle-artifact", "int4lin": "oracle-artifact",
                       "mixed": "match", "mixed-edge": "match"}
    # fp16 and int8 flip to the very same token there.
    assert grid[0][col]["candidate_top1"] == grid[1][col]["candidate_top1"] == 207


def test_flip_row_fields(seed):
    v = seed[1]
    p = next(p for p in v["positions"] if p["class"] == "tie-flip")
    r = flip_row(v, p)
    assert (r.case, r.row, r.position) == ("story", 2, 27)
    assert r.target == "␣in #305" and r.oracle_top2 == "␣on #306" and r.candidate_top1 == "␣on #306"
    assert r.margin == "0.040" and r.oracle_top1_prob == "0.400" and r.oracle_top2_prob == "0.360"
    assert r.control_top1 == "␣in #305" and r.oracle_rank == "2"
    assert r.context.startswith("…") and r.context.endswith("robot who lived") and len(r.context) == 41


def test_load_rejects_bad_files_naming_them(tmp_path, seed):
    cases = {
        "schema.json": ({**seed[0], "schema": "flipgate.verdict/0"}, "schema 'flipgate.verdict/0' is not"),
        "passed.json": ({**seed[0], "passed": "true"}, "'passed' must be true or false"),
        "nopositions.json": ({k: v for k, v in seed[0].items() if k != "positions"}, "lacks key 'positions'"),
        "summary.json": ({**seed[0], "summary": {"positions": 16}}, "summary lacks key 'exact'"),
        "cls.json": ({**seed[0], "positions": [{**seed[0]["positions"][0], "class": "fine"}]},
                     "positions[0] class 'fine'"),
    }
    for name, (obj, msg) in cases.items():
        p = tmp_path / name
        p.write_text(json.dumps(obj))
        with pytest.raises(InputError) as e:
            load_verdicts([p])
        assert str(p) in str(e.value) and msg in str(e.value), str(e.value)
    bad = tmp_path / "broken.json"
    bad.write_text('{"schema": ')
    with pytest.raises(InputError, match="broken.json: not a verdict .malformed JSON"):
        load_verdicts([bad])
    with pytest.raises(InputError, match="missing.json: no such verdict file"):
        load_verdicts([tmp_path / "missing.json"])


def test_load_reads_arrays_and_signoffs_and_refuses_duplicates(tmp_path, seed, fixed_made):
    arr = tmp_path / "comparison.json"
    arr.write_text(render(build_report(seed), "json"))
    assert [v["gate"] for v in load_verdicts([arr])] == [v["gate"] for v in seed]
    so = tmp_path / "signoff.json"
    so.write_text(render(build_report(seed, subject="int8hu", made=fixed_made), "json"))
    assert len(load_verdicts([so])) == len(seed)
    one = tmp_path / "fp16.json"
    one.write_text(json.dumps(seed[0]))
    with pytest.raises(InputError, match="gate 'fp16' given twice"):
        load_verdicts([arr, one])


def test_objects_with_to_dict_are_accepted(seed):
    class FakeVerdict:  # the gate engine's Verdict exposes to_dict(); nothing else is used
        def __init__(self, d):
            self._d = d

        def to_dict(self):
            return self._d

    report = build_report([FakeVerdict(v) for v in seed[:2]])
    assert [v["gate"] for v in report.verdicts] == ["fp16", "int8hu"]


def test_subject_must_be_among_the_verdicts(seed):
    with pytest.raises(InputError, match="gate 'int9' is not among the verdicts given"):
        build_report(seed, subject="int9")


def test_csv_has_one_row_per_gate_and_position_and_round_trips_text(seed, evil):
    text = render(build_report(seed + [evil]), "csv")
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
    assert len(frame) == 16 * len(seed) + 3
    assert frame.groupby("gate").size().to_dict() == {**{v["gate"]: 16 for v in seed}, evil["gate"]: 3}
    row = frame[(frame.gate == "int8hu") & (frame.case == "capital") & (frame.row == 5)].iloc[0]
    assert row["class"] == "oracle-artifact" and row["candidate_top1"] == 207 and row["control_top1"] == 207
    assert row["candidate_top1_text"] == " as" and math.isclose(row["margin"], 0.5)
    invalid = frame[frame["class"] == "invalid"].iloc[0]
    assert math.isnan(invalid["cosine"]) and invalid["gate"] == "mixed-edge"
    # Hostile token text is data here: read back exactly (quotes, pipes, newlines), not escaped.
    ev = frame[frame.gate == evil["gate"]].iloc[0]
    assert ev["target_text"] == evil["positions"][0]["target_text"]
    assert ev["context_text"] == evil["positions"][0]["context_text"]
    assert ev["case"] == "evil<b>case</b>|1"


def test_terminal_output_is_plain_and_inert(evil, seed):
    out = render(build_report(seed + [evil]), "terminal")
    assert "\x1b" not in out and "\u202e" not in out
    assert "int8hu: PASS — exact 14/16, rule 15/16" in out
    assert "⟨0x1b⟩[31mred" in out and "<script>" in out  # shown, as text
    # rich markup in a token is printed, not interpreted
    v = build_report([{**evil, "gate": "[bold red]gate[/]"}])
    assert "[bold red]gate[/]" in render(v, "terminal")


FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def test_csv_neutralises_formula_cells_but_not_numbers_and_the_json_keeps_them(seed):
    """A spreadsheet runs a cell starting with = + - @ (or tab, CR): text cells get a leading ',
    numbers (a negative cosine) stay numbers, and the JSON keeps every value as it was."""
    v = seed[0]
    for p, text in zip(v["positions"], FORMULAS):
        p["target_text"] = p["oracle_top1_text"] = text
    v["positions"][0]["case"] = "=cmd|' /C calc'!A0"
    v["positions"][1]["cosine"] = -0.25  # a number, however it starts
    cosines = [q["cosine"] for q in v["positions"]]  # the verdict stays one its positions support
    v["summary"].update(min_cosine=min(cosines), mean_cosine=sum(cosines) / len(cosines))
    v["passed"] = False
    v["summary"]["reasons"] = [f"min cosine -0.25 < min_cosine {v['policy']['min_cosine']}"]
    text = render(build_report([v]), "csv")
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
    assert list(frame["target_text"][:len(FORMULAS)]) == ["'" + t for t in FORMULAS]
    assert frame["case"][0] == "'=cmd|' /C calc'!A0" and frame["cosine"][1] == -0.25
    import csv

    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 1 + len(v["positions"])  # a cell holding a CR is quoted, not split into rows
    for row in rows[1:]:  # no cell of any row begins like a formula
        for cell in row:
            assert not cell.startswith(("=", "+", "@")) and not (cell.startswith("-") and not _is_number(cell)), cell
    back = json.loads(render(build_report([v]), "json"))
    assert [p["target_text"] for p in back["positions"][:len(FORMULAS)]] == FORMULAS
    assert back["positions"][0]["case"] == "=cmd|' /C calc'!A0"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False
