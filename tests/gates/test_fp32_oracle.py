"""The fp32 oracle in the gate: each confident flip says whether fp32 picks the candidate's token, an
oracle-artifact is confirmed by fp32 or not, and a gate can be judged against the fp32 oracle outright."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from gates.engine import GateJob, evaluate, evaluate_many
from gates.policy import GatePolicy, load_gates
from gates.report import format_verdict
from gates.verdict import Verdict
from harness.cli import main
from harness.errors import InputError
from harness.trace import CaseTrace, base_metadata, write_trace

from helpers import BF16

V = 12
IDS = np.arange(20, 28, dtype=np.int64) % V  # 3 prompt tokens + 5 scored rows
# five rows, four confident: min_confident 0 (test_roles.py tests the bound)
POLICY = GatePolicy(name="g", candidate="cand", control="ctrl", min_margin=0.1, max_defects=1, min_cosine=-1.0,
                    min_confident=0)


def _rows(*tops: tuple[int, float, int, float]) -> np.ndarray:
    """One row per (top1, logit, top2, logit) over a floor of 0."""
    out = np.zeros((len(tops), V))
    for r, (a, la, b, lb) in enumerate(tops):
        out[r, a], out[r, b] = la, lb
    return out


# row: 0 match | 1 artifact fp32 confirms | 2 artifact fp32 does not | 3 defect fp32 agrees | 4 tie-flip
ORACLE = _rows((1, 8, 2, 1), (3, 8, 4, 7), (5, 8, 6, 6), (7, 8, 8, 1), (9, 5, 10, 4.99))
FP32 = _rows((1, 8, 2, 1), (4, 8, 3, 7.9), (5, 8, 6, 6), (8, 8, 7, 7), (10, 5, 9, 4.99))
CAND = _rows((1, 8, 2, 1), (4, 8, 3, 1), (6, 8, 5, 1), (8, 8, 7, 1), (10, 8, 9, 1))
CTRL = _rows((1, 8, 2, 1), (4, 8, 3, 1), (6, 8, 5, 1), (2, 8, 7, 1), (9, 8, 10, 1))


@pytest.fixture
def traces(tmp_path):
    def write(name, rows, dtype, variant):
        meta = base_metadata(runner="test", variant=variant, vocab_size=V)
        return write_trace(tmp_path / f"{name}.safetensors", meta,
                           [CaseTrace("c", IDS, rows.astype(np.float32).astype(dtype))])

    return {"oracle": write("oracle", ORACLE, BF16, "bf16"), "fp32": write("fp32", FP32, np.float32, "fp32"),
            "cand": write("cand", CAND, np.float32, "cand"), "ctrl": write("ctrl", CTRL, np.float32, "ctrl")}


def test_each_confident_flip_records_whether_fp32_agrees(traces):
    v = evaluate(traces["oracle"], traces["cand"], traces["ctrl"], policy=POLICY, oracle_fp32=traces["fp32"])
    p = v.positions
    assert [x["class"] for x in p] == ["match", "oracle-artifact", "oracle-artifact", "defect", "tie-flip"]
    assert [x["fp32_top1"] for x in p] == [1, 4, 5, 8, 10]
    assert [x["fp32_confirms"] for x in p] == [None, True, False, True, None]
    assert p[1]["class_text"] == "oracle-artifact (confirmed by fp32)"
    assert p[2]["class_text"] == "oracle-artifact (not confirmed by fp32)"
    assert "class_text" not in p[3]
    s = v.summary
    assert (s["oracle_artifacts_confirmed"], s["oracle_artifacts_unconfirmed"], s["fp32_confirmed_flips"]) == (1, 1, 2)
    assert v.passed and v.provenance["oracle_fp32"]["path"] == str(traces["fp32"])
    assert "2 oracle-artifacts (1 confirmed by fp32)" in v.one_line()
    text = format_verdict(v)
    assert "oracle-artifact (confirmed by fp32)" in text and "oracle-artifact (not confirmed by fp32)" in text
    back = Verdict.from_dict(json.loads(v.to_json()))
    assert [x.get("class_text") for x in back.positions] == [x.get("class_text") for x in p]


def test_without_fp32_the_verdict_is_as_before(traces):
    v = evaluate(traces["oracle"], traces["cand"], traces["ctrl"], policy=POLICY)
    assert all("fp32_top1" not in x and "class_text" not in x for x in v.positions)
    assert "oracle_artifacts_confirmed" not in v.summary and "confirmed by fp32" not in v.one_line()


def test_the_reports_show_the_class_text(traces):
    from reports.model import flip_cells, flip_row

    v = evaluate(traces["oracle"], traces["cand"], traces["ctrl"], policy=POLICY, oracle_fp32=traces["fp32"])
    d = json.loads(v.to_json())
    rows = [flip_row(d, p) for p in d["positions"]]
    assert rows[1].cls == "oracle-artifact"  # the key the renderers style by
    assert "oracle-artifact (confirmed by fp32)" in flip_cells(rows[1])
    assert "oracle-artifact (not confirmed by fp32)" in flip_cells(rows[2])
    assert "defect" in flip_cells(rows[3])


def test_a_policy_can_judge_against_the_fp32_oracle_outright(traces):
    pol = replace(POLICY, reference="fp32", oracle_fp32=str(traces["fp32"]))
    v = evaluate(traces["oracle"], traces["cand"], traces["ctrl"], policy=pol)
    # against fp32: rows 1 and 3 match now; row 2 stays a flip the control shares; row 4 is the fp32 top-1
    assert [x["oracle_top1"] for x in v.positions] == [1, 4, 5, 8, 10]
    assert [x["class"] for x in v.positions] == ["match", "match", "oracle-artifact", "match", "match"]
    assert v.provenance["oracle"]["path"] == str(traces["fp32"])
    assert v.provenance["bf16_oracle"]["path"] == str(traces["oracle"])
    assert any("judged against the fp32 oracle" in n for n in v.summary["notes"])
    # gates with and without the fp32 reference judged in one call keep their order
    plain, fp32 = evaluate_many(traces["oracle"], [GateJob(POLICY, traces["cand"], traces["ctrl"]),
                                                   GateJob(pol, traces["cand"], traces["ctrl"])])
    assert plain.positions[1]["class"] == "oracle-artifact" and fp32.positions[1]["class"] == "match"
    assert "fp32_top1" not in plain.positions[1]  # a gate without an fp32 oracle is judged as before


def test_bad_fp32_input_is_refused(traces, tmp_path):
    with pytest.raises(InputError, match=r"reference = \"fp32\"\): give its trace"):
        evaluate(traces["oracle"], traces["cand"], policy=replace(POLICY, reference="fp32", control=None))
    other = write_trace(tmp_path / "other.safetensors", base_metadata(runner="t", variant="fp32", vocab_size=V),
                        [CaseTrace("c", IDS[::-1].copy(), FP32.astype(np.float32))])
    with pytest.raises(InputError, match=r"fp32 oracle trace .*other\.safetensors: case 'c': input_ids differ"):
        evaluate(traces["oracle"], traces["cand"], policy=POLICY, oracle_fp32=other)
    bad = FP32.astype(np.float32)
    bad[2, 0] = np.nan
    nan = write_trace(tmp_path / "nan.safetensors", base_metadata(runner="t", variant="fp32", vocab_size=V),
                      [CaseTrace("c", IDS, bad)])
    with pytest.raises(InputError, match=r"nan\.safetensors: case 'c' row 2: oracle logits hold NaN"):
        evaluate(traces["oracle"], traces["cand"], policy=POLICY, oracle_fp32=nan)


def test_config_key_and_flags(traces, tmp_path, capsys):
    cfg = tmp_path / "flipgate.toml"
    cfg.write_text('[gates.g]\ncandidate = "cand"\ncontrol = "ctrl"\nmax_defects = 1\nmin_cosine = -1.0\n'
                   'min_confident = 0\noracle_fp32 = "fp32.safetensors"\n')
    g = load_gates(cfg)["g"]
    assert g.oracle_fp32 == str(tmp_path / "fp32.safetensors") and g.reference == "oracle"
    args = ["gate", "g", "--config", str(cfg), "--oracle", str(traces["oracle"]), "--candidate", str(traces["cand"]),
            "--control", str(traces["ctrl"])]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "oracle-artifact (confirmed by fp32)" in out and "(1 confirmed by fp32)" in out
    assert main(args + ["--reference", "fp32"]) == 0
    assert "judged against the fp32 oracle" in capsys.readouterr().out
    cfg.write_text('[gates.g]\ncandidate = "cand"\nreference = "bf16"\n')
    assert main(["gate", "g", "--config", str(cfg), "--oracle", str(traces["oracle"]),
                 "--candidate", str(traces["cand"])]) == 2
    assert "reference = 'bf16': valid values: oracle, fp32" in capsys.readouterr().err
