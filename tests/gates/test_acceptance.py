"""The published Qwen3.6-27B gate result, rebuilt as synthetic traces (the issue's acceptance scenario)."""

from __future__ import annotations

import pytest

from gates.engine import GateJob, evaluate, evaluate_many
from gates.policy import get_gate
from gates.verdict import Verdict

from helpers import (QWEN36_ARTIFACT_ROW, QWEN36_CASE, QWEN36_DEFECT_ROW, QWEN36_TIE_ROW,
                     make_qwen36_scenario)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return make_qwen36_scenario(tmp_path_factory.mktemp("qwen36"))


def _classes(v: Verdict) -> dict[int, str]:
    return {p["row"]: p["class"] for p in v.positions if p["class"] != "match"}


def test_int8hu_passes_with_one_artifact_and_one_tie_flip(scenario):
    v = evaluate(scenario["oracle"], scenario["int8hu"], scenario["fp16"], policy=get_gate("int8hu"))
    s = v.summary
    assert v and v.passed
    assert (s["positions"], s["exact"], s["rule"]) == (16, 14, 15)
    assert (s["oracle_artifacts"], s["tie_flips"], s["defects"], s["invalid"]) == (1, 1, 0, 0)
    assert _classes(v) == {QWEN36_ARTIFACT_ROW: "oracle-artifact", QWEN36_TIE_ROW: "tie-flip"}
    art = v.positions[QWEN36_ARTIFACT_ROW]
    assert art["margin"] == pytest.approx(0.50, abs=0.01) and art["confident"]
    assert art["candidate_top1"] == art["control_top1"] == art["oracle_top2"]
    tie = v.positions[QWEN36_TIE_ROW]
    assert tie["margin"] < 0.1 and not tie["confident"]
    assert tie["candidate_top1"] != tie["control_top1"] == tie["oracle_top1"]
    # the rule score counts the tie-flip, the confident-flip rate counts the artifact
    assert s["confident"] == 15 and s["confident_flips"] == 1
    lo, hi = s["confident_flip_rate_ci95"]
    assert lo < 1 / 15 < hi and hi < 0.35
    assert v.one_line().startswith("int8hu: PASS — exact 14/16, rule 15/16, 0 defects, 1 oracle-artifact, min cos 0.9")


def test_fp16_without_control_fails_on_the_margin_050_position(scenario):
    v = evaluate(scenario["oracle"], scenario["fp16"], policy=get_gate("fp16"))
    assert not v
    assert v.policy["control"] is None
    assert _classes(v) == {QWEN36_ARTIFACT_ROW: "defect"}
    assert v.summary["exact"] == v.summary["rule"] == 15
    assert v.positions[QWEN36_ARTIFACT_ROW]["margin"] == pytest.approx(0.50, abs=0.01)
    assert any("defect" in r for r in v.reasons)


def test_int4_flip_of_a_margin_069_position_the_control_gets_right_is_one_defect(scenario):
    v = evaluate(scenario["oracle"], scenario["int4lin"], scenario["fp16"], policy=get_gate("int4lin"))
    assert not v
    assert v.summary["defects"] == 1 and v.summary["oracle_artifacts"] == 1
    assert _classes(v) == {QWEN36_ARTIFACT_ROW: "oracle-artifact", QWEN36_DEFECT_ROW: "defect"}
    d = v.positions[QWEN36_DEFECT_ROW]
    assert d["margin"] == pytest.approx(0.69, abs=0.01)
    assert d["control_top1"] == d["oracle_top1"] != d["candidate_top1"]
    assert v.reasons == ["1 defect(s), max_defects 0"]


def test_one_pass_over_every_gate_gives_the_same_verdicts(scenario):
    jobs = [GateJob(get_gate("int8hu"), scenario["int8hu"], scenario["fp16"]),
            GateJob(get_gate("fp16"), scenario["fp16"]),
            GateJob(get_gate("int4lin"), scenario["int4lin"], scenario["fp16"])]
    together = evaluate_many(scenario["oracle"], jobs)
    for job, v in zip(jobs, together):
        alone = evaluate(scenario["oracle"], job.candidate, job.control, policy=job.policy)
        assert v.to_json() == alone.to_json()
    assert [bool(v) for v in together] == [True, False, False]
    assert {p["case"] for v in together for p in v.positions} == {QWEN36_CASE}
