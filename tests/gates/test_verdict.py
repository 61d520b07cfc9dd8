"""flipgate.verdict/1: the schema's keys, deterministic bytes, NaN kept explicit, strict loading."""

from __future__ import annotations

import json
import math

import pytest

from gates.engine import evaluate
from gates.policy import get_gate
from gates.verdict import POSITION_KEYS, SCHEMA, SUMMARY_KEYS, Verdict
from harness.errors import InputError

from helpers import make_qwen36_scenario


@pytest.fixture(scope="module")
def verdict(tmp_path_factory):
    paths = make_qwen36_scenario(tmp_path_factory.mktemp("q"))
    return evaluate(paths["oracle"], paths["int8hu"], paths["fp16"], policy=get_gate("int8hu"))


def test_every_key_of_the_schema_is_there(verdict):
    d = json.loads(verdict.to_json())
    assert list(d) == ["schema", "gate", "passed", "policy", "summary", "positions", "provenance"]
    assert d["schema"] == SCHEMA and d["gate"] == "int8hu" and d["passed"] is True
    assert set(SUMMARY_KEYS) <= set(d["summary"])
    for extra in ("max_kl", "margin_space", "confident_flip_rate_ci95", "reasons", "notes"):
        assert extra in d["summary"]
    for p in d["positions"]:
        assert list(p)[:len(POSITION_KEYS)] == list(POSITION_KEYS)
        for extra in ("oracle_top1_prob", "oracle_top2_prob", "candidate_top1_prob", "control_top1_prob"):
            assert isinstance(p[extra], float)
        assert all(isinstance(p[k], int) for k in ("row", "position", "target_token", "oracle_top1", "oracle_top2"))
    assert d["policy"]["control"] == "fp16" and d["policy"]["min_margin"] == 0.1
    assert d["provenance"]["candidate"]["variant"] == "int8hu"


def test_json_is_deterministic_and_round_trips(verdict, tmp_path):
    text = verdict.to_json()
    assert text == verdict.to_json()
    path = verdict.write(tmp_path / "v.json")
    assert path.read_text() == text
    again = Verdict.load(path)
    assert again.to_json() == text and bool(again) is True
    assert again.one_line() == verdict.one_line()
    # rounded to 10 significant digits: the file does not carry platform noise in the last bits
    floats = [x for p in json.loads(text)["positions"] for x in p.values() if isinstance(x, float)]
    assert floats and all(x == float(f"{x:.10g}") for x in floats)
    assert any(x != float(f"{x:.9g}") for x in floats)


def test_nan_and_inf_are_explicit_strings_and_come_back_as_floats(verdict):
    d = verdict.to_dict()
    # a consistent verdict with NaN and ±Inf in it (the reader re-judges what it reads)
    d["positions"][0]["cosine"] = math.nan
    d["positions"][0]["kl"] = -math.inf
    d["positions"][1]["kl"] = math.inf
    d["summary"].update(min_cosine=math.nan, mean_cosine=math.nan, max_kl=math.inf, mean_kl=math.nan,
                        reasons=["min cosine nan below min_cosine 0.99"])
    d["passed"] = False
    d["positions"][0]["target_text"] = "NaN"  # text that looks like a number stays text
    v = Verdict.from_dict(d)
    text = v.to_json()
    parsed = json.loads(text)  # strict JSON: no bare NaN tokens
    assert parsed["summary"]["min_cosine"] == "NaN" and parsed["summary"]["max_kl"] == "Infinity"
    assert parsed["positions"][0]["kl"] == "-Infinity" and parsed["positions"][0]["cosine"] == "NaN"
    back = Verdict.from_dict(parsed)
    assert math.isnan(back.summary["min_cosine"]) and back.summary["max_kl"] == math.inf
    assert back.positions[0]["kl"] == -math.inf and math.isnan(back.positions[0]["cosine"])
    assert back.positions[0]["target_text"] == "NaN"
    assert "min cos NaN" in back.one_line()


def test_one_line_names_the_scores(verdict):
    assert verdict.one_line() == (f"int8hu: PASS — exact 14/16, rule 15/16, 0 defects, 1 oracle-artifact, "
                                  f"min cos {verdict.summary['min_cosine']:.4f}")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("schema"), "no 'schema' key"),
    (lambda d: d.update(schema="flipgate.verdict/2"), "schema 'flipgate.verdict/2' is not 'flipgate.verdict/1'"),
    (lambda d: d.pop("summary"), "lacks key 'summary'"),
    (lambda d: d.update(passed="true"), "'passed' must be true or false"),
    (lambda d: d["summary"].pop("defects"), "summary lacks key 'defects'"),
    (lambda d: d["positions"][3].pop("kl"), r"positions\[3\] lacks key 'kl'"),
    (lambda d: d["positions"][0].update({"class": "fine"}), r"class 'fine' is not one of"),
])
def test_loading_refuses_what_is_not_a_verdict(verdict, tmp_path, mutate, message):
    d = json.loads(verdict.to_json())
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match=message) as e:
        Verdict.load(path)
    assert str(path) in str(e.value)


def test_loading_a_file_that_is_not_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match="malformed JSON"):
        Verdict.load(p)
    with pytest.raises(InputError, match="cannot read"):
        Verdict.load(tmp_path / "missing.json")


def test_write_is_atomic(verdict, tmp_path, monkeypatch):
    target = tmp_path / "v.json"
    target.write_text("previous")

    # text that cannot be encoded fails half-way through writing the temporary file
    monkeypatch.setattr(Verdict, "to_json", lambda self: '{"schema": "\ud800"}')
    with pytest.raises(UnicodeEncodeError):
        verdict.write(target)
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["v.json"]
