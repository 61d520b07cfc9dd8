"""A verdict read back is re-judged (DESIGN.md, "Verdict"): its classes from its numbers, its summary
from its positions, `passed` from its summary and policy; any disagreement is an InputError naming the
file and the key. Also: nesting too deep is an InputError, and random mutations of a real verdict file
either read back or raise InputError, never another exception."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gates.engine import evaluate
from gates.policy import get_gate
from gates.verdict import Verdict, check_verdict, parse_json
from harness.errors import InputError

from helpers import QWEN36_ARTIFACT_ROW, QWEN36_DEFECT_ROW, QWEN36_TIE_ROW, make_qwen36_scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return make_qwen36_scenario(tmp_path_factory.mktemp("q"))


@pytest.fixture(scope="module")
def int4(scenario):
    """A failing verdict: one defect (row QWEN36_DEFECT_ROW), one oracle-artifact, as plain JSON."""
    v = evaluate(scenario["oracle"], scenario["int4lin"], scenario["fp16"], policy=get_gate("int4lin"))
    assert not v and v.summary["defects"] == 1
    return json.loads(v.to_json())


@pytest.fixture(scope="module")
def int8(scenario):
    v = evaluate(scenario["oracle"], scenario["int8hu"], scenario["fp16"], policy=get_gate("int8hu"))
    assert v
    return json.loads(v.to_json())


def _load(d, tmp_path, name="v.json"):
    path = tmp_path / name
    path.write_text(json.dumps(d), encoding="utf-8")
    return Verdict.load(path), path


def _refused(d, tmp_path, match):
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(InputError, match=match) as e:
        Verdict.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    return str(e.value)


def test_real_verdicts_read_back_as_they_were_written(int4, int8, scenario, tmp_path):
    for d in (int4, int8):
        v, _ = _load(d, tmp_path)
        assert v.passed == d["passed"] and v.summary["defects"] == d["summary"]["defects"]
    # every bundled gate's verdict on the scenario, under several margins and spaces
    for gate in ("fp16", "int8hu", "int4lin"):
        for margin, space in ((0.1, "prob"), (0.5, "prob"), (0.04, "prob"), (1.0, "logit")):
            pol = replace(get_gate(gate), min_margin=margin, margin_space=space, min_confident=0)
            ctrl = scenario["fp16"] if gate != "fp16" else None
            v = evaluate(scenario["oracle"], scenario[gate], ctrl, policy=pol)
            check_verdict(json.loads(v.to_json()))
            check_verdict(v.to_dict())  # in memory too: NaN as floats, not strings


def test_passed_edited_to_true_with_a_defect_listed_is_refused(int4, tmp_path):
    # main: read as a PASS by Verdict.load, `flipgate report` and `flipgate signoff --verdicts`
    d = copy.deepcopy(int4)
    d["passed"] = True
    _refused(d, tmp_path, r"'passed' is true, but its own positions fail the gate \(1 defect")
    d["summary"]["reasons"] = []  # the reasons edited away too: the positions still say defect
    _refused(d, tmp_path, "'passed' is true")


def test_hiding_the_defect_is_refused_at_the_key_that_disagrees(int4, tmp_path):
    row = QWEN36_DEFECT_ROW
    d = copy.deepcopy(int4)
    d["passed"] = True
    d["summary"]["reasons"] = []
    d["summary"]["defects"] = 0
    _refused(d, tmp_path, r"summary defects = 0 disagrees with its positions \(1\)")
    d["positions"][row]["class"] = "oracle-artifact"  # the control does not pick the candidate's token
    _refused(d, tmp_path, rf"positions\[{row}\] class 'oracle-artifact' disagrees with its own numbers.*"
                          "expected defect")
    d["positions"][row]["class"] = "tie-flip"  # the margin says confident
    _refused(d, tmp_path, rf"positions\[{row}\] class 'tie-flip' disagrees")
    d["positions"][row]["class"] = "match"
    _refused(d, tmp_path, rf"positions\[{row}\] class 'match' disagrees")
    d["positions"][row]["candidate_top1"] = d["positions"][row]["oracle_top1"]  # the rank still says 2
    _refused(d, tmp_path, rf"positions\[{row}\] oracle_rank_in_candidate 2 disagrees with candidate_top1")
    d["positions"][row]["confident"] = False
    d["positions"][row]["class"] = "tie-flip"
    _refused(d, tmp_path, rf"positions\[{row}\] confident = false disagrees with its margin")


def test_every_summary_key_and_bound_is_re_derived(int8, int4, tmp_path):
    for key, value in (("exact", 16), ("rule", 16), ("confident", 16), ("tie_flips", 0), ("oracle_artifacts", 0),
                       ("invalid", 1), ("positions", 15)):
        d = copy.deepcopy(int8)
        d["summary"][key] = value
        _refused(d, tmp_path, f"summary {key} = {value} disagrees with its positions")
    d = copy.deepcopy(int8)
    d["summary"]["min_cosine"] = 0.9999999
    _refused(d, tmp_path, "summary min_cosine = 0.9999999 disagrees with its positions")
    d = copy.deepcopy(int8)
    d["summary"]["mean_kl"] = 0.0
    _refused(d, tmp_path, "summary mean_kl = 0.0 disagrees")
    # bounds: a passed verdict whose own numbers break its policy's bound
    for key, value, why in (("min_cosine", 0.99999999, "min cosine"), ("max_kl", 1e-9, "max KL"),
                            ("min_confident", 16, "15 confident position")):
        d = copy.deepcopy(int8)
        d["policy"][key] = value
        _refused(d, tmp_path, f"'passed' is true, but its own positions fail the gate \\({why}")
    # and a failed verdict whose numbers hold every bound
    d = copy.deepcopy(int4)
    d["policy"]["max_defects"] = 1
    _refused(d, tmp_path, "'passed' is false, but its own positions hold every bound")
    d = copy.deepcopy(int8)
    d["summary"]["reasons"] = ["made up"]
    _refused(d, tmp_path, "summary reasons .* disagree with 'passed' true")


def test_a_margin_within_rounding_of_the_threshold_keeps_the_verdicts_reading(int8, tmp_path):
    row = QWEN36_TIE_ROW  # a tie-flip, margin 0.04
    for confident, cls in ((False, "tie-flip"), (True, "defect")):
        d = copy.deepcopy(int8)
        p = d["positions"][row]
        d["policy"]["min_margin"] = p["margin"] = p["margin_prob"]  # the stored margin *is* the threshold
        p["confident"], p["class"] = confident, cls
        d["summary"]["confident"] = sum(q["confident"] for q in d["positions"])
        if cls == "defect":
            d["passed"], d["summary"]["reasons"] = False, ["1 defect(s), max_defects 0"]
            d["summary"].update(tie_flips=0, defects=1, rule=d["summary"]["rule"] - 1)
            if "confident_judged" in d["summary"]:  # the defect-rate bound counts it now
                from gates.metrics import defect_rate_upper

                judged = d["summary"]["confident_judged"] + 1
                d["summary"].update(confident_judged=judged, defect_rate_upper_95=defect_rate_upper(1, judged))
        _load(d, tmp_path)
    d["positions"][row]["margin"] = d["positions"][row]["margin_prob"] = d["policy"]["min_margin"] - 1e-3
    _refused(d, tmp_path, "confident = true disagrees with its margin")


def test_wrong_types_are_refused_naming_the_key(int8, tmp_path):
    for where, key, value, match in (
            ("positions", "margin", "0.5", r"positions\[0\] margin = '0.5': expected a number"),
            ("positions", "candidate_top1", 1.5, r"positions\[0\] candidate_top1 = 1.5: expected an integer"),
            ("positions", "oracle_top1", True, r"positions\[0\] oracle_top1 = True: expected an integer"),
            ("positions", "confident", "yes", r"positions\[0\] confident = 'yes': expected true or false"),
            ("positions", "margin", "NaN", r"positions\[0\] margin = 'NaN': an oracle's margin is always finite"),
            ("positions", "cosine", 10 ** 400, r"positions\[0\] cosine: the integer 1000.* too large"),
            ("policy", "max_defects", "0", r"policy max_defects = '0': expected an integer"),
            ("policy", "margin_space", "odds", "policy margin_space = 'odds'"),
            ("policy", "max_defects", -1, "policy max_defects and min_confident must not be negative"),
            ("summary", "exact", None, "summary exact = None: expected an integer")):
        d = copy.deepcopy(int8)
        (d[where][0] if where == "positions" else d[where])[key] = value
        _refused(d, tmp_path, match)


def test_json_nested_200000_deep_is_one_line_naming_the_file(tmp_path, capsys):
    from harness.cli import main
    from reports import load_verdict_file

    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    for read in (Verdict.load, load_verdict_file):
        with pytest.raises(InputError, match="nested 200000 deep") as e:
            read(path)
        assert str(path) in str(e.value)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1
    # brackets inside strings are text, not nesting
    assert parse_json(json.dumps({"a": "[" * 1000}), "x") == {"a": "[" * 1000}


def test_numbers_json_cannot_hold_are_input_errors(int8, tmp_path):
    text = json.dumps(int8).replace('"exact": 14', '"exact": ' + "9" * 5000, 1)
    path = tmp_path / "big.json"
    path.write_text(text)
    with pytest.raises(InputError, match=str(path)):
        Verdict.load(path)


# ---- fuzz: mutations of a real verdict file --------------------------------------------------------

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from(["NaN", "Infinity", "-Infinity", "match", "defect", "invalid"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


def _paths(x, prefix=()):
    yield prefix
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, prefix + (i,))


def _read_or_refuse(tmp_path, text: str, name: str) -> None:
    from reports import load_verdict_file

    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    for read in (Verdict.load, load_verdict_file):
        try:
            read(path)
        except InputError as e:
            assert "\n" not in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_structural_mutations_read_or_raise_input_error(int4, int8, tmp_path, data):
    d = copy.deepcopy(data.draw(st.sampled_from([int4, int8])))
    paths = list(_paths(d))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths[1:]))
        parent = d
        for k in where[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["replace", "delete", "flip"]))
        key = where[-1]
        try:
            if action == "delete":
                del parent[key]
            elif action == "flip" and isinstance(parent[key], bool):
                parent[key] = not parent[key]
            elif action == "flip" and isinstance(parent[key], (int, float)):
                parent[key] = parent[key] + data.draw(st.sampled_from([-1, 1, 1e-12, 0.5]))
            else:
                parent[key] = data.draw(_JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation changed what this path leads to
        paths = list(_paths(d))
    _read_or_refuse(tmp_path, json.dumps(d, allow_nan=True), "structural.json")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_byte_mutations_read_or_raise_input_error(int4, tmp_path, data):
    text = json.dumps(int4, indent=1)
    chars = list(text)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(chars) - 1))
        op = data.draw(st.sampled_from(["set", "delete", "insert"]))
        c = data.draw(st.sampled_from(list('[]{}",:0123456789.eE-+ntfaNI\\\ud800\x00\u2028') + ["\n"]))
        if op == "set":
            chars[i] = c
        elif op == "delete":
            del chars[i]
        else:
            chars.insert(i, c)
    _read_or_refuse(tmp_path, "".join(chars), "bytes.json")


def test_an_artifact_the_control_does_not_explain_is_refused(int8, tmp_path):
    d = copy.deepcopy(int8)
    d["positions"][QWEN36_ARTIFACT_ROW]["control_top1"] = d["positions"][QWEN36_ARTIFACT_ROW]["oracle_top1"]
    _refused(d, tmp_path, rf"positions\[{QWEN36_ARTIFACT_ROW}\] class 'oracle-artifact' disagrees.*expected defect")
    d["policy"]["control"] = None  # and a control_top1 where the policy has no control
    _refused(d, tmp_path, rf"positions\[0\] control_top1 = \d+ but the policy has no control")
