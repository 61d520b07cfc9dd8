"""Shards (`flipgate oracle --shard i/n`) and `flipgate merge`: the merged trace is the unsharded one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.cli import main
from harness.errors import InputError
from harness.merge import join_cases, merge_traces
from harness.trace import base_metadata, open_trace
from helpers import make_case
from oracles.hf import run_oracle


@pytest.fixture(scope="module")
def shards(given_cases, tmp_path_factory, single_thread):
    d = tmp_path_factory.mktemp("shards")
    with single_thread():
        return [run_oracle(cases=given_cases, shard=f"{i}/3", out=d / f"s{i}.safetensors", quiet=True) for i in range(3)]


def test_shards_hold_every_third_case(shards, given_cases):
    from harness.cases import load_cases

    ids = load_cases(given_cases).ids
    for i, s in enumerate(shards):
        t = open_trace(s)
        assert t.case_ids == ids[i::3] and t.metadata["shard"] == f"{i}/3"
        assert json.loads(t.metadata["case_set"]) == ids


def test_merged_shards_equal_the_unsharded_run(shards, given_cases, tmp_path, capsys):
    whole = run_oracle(cases=given_cases, out=tmp_path / "whole.safetensors", quiet=True)
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(shards[2]), str(shards[0]), str(shards[1]), "--out", str(out)]) == 0
    assert "11 cases from 3 traces" in capsys.readouterr().out
    m, w = open_trace(out), open_trace(whole)
    assert m.case_ids == w.case_ids  # the case set's order, whatever order the shards came in
    for cid in w.case_ids:
        assert np.array_equal(m.input_ids(cid), w.input_ids(cid))
        assert m.logits_dtype(cid) == w.logits_dtype(cid)
        assert np.array_equal(m.case(cid).logits.astype(np.float32), w.case(cid).logits.astype(np.float32))
    assert json.loads(m.metadata["low_margin"]) == json.loads(w.metadata["low_margin"])
    assert m.metadata["confident_fraction"] == w.metadata["confident_fraction"]
    assert m.metadata["model"] == w.metadata["model"] and m.metadata["shard"] == "" == w.metadata["shard"]
    assert len(json.loads(m.metadata["merged_from"])) == 3


@pytest.mark.parametrize("problem", ["missing shard", "same shard twice", "other dtype", "other case set"])
def test_merge_refuses(problem, shards, given_cases, tmp_path, capsys):
    if problem == "missing shard":
        paths, match = shards[:2], "give every shard"
    elif problem == "same shard twice":
        paths, match = [shards[0], shards[0], shards[1], shards[2]], "also in"
    elif problem == "other dtype":
        other = run_oracle(cases=given_cases, shard="2/3", dtype="float32", out=tmp_path / "f.safetensors", quiet=True)
        paths, match = [shards[0], shards[1], other], "variant"
    else:
        fewer = tmp_path / "fewer.jsonl"
        fewer.write_text("\n".join(given_cases.read_text().splitlines()[:3]) + "\n")
        other = run_oracle(cases=fewer, shard="2/3", out=tmp_path / "c.safetensors", quiet=True)
        paths, match = [shards[0], shards[1], other], "case set"
    out = tmp_path / "m.safetensors"
    capsys.readouterr()
    with pytest.raises(InputError, match=match):
        merge_traces(paths, out)
    assert main(["merge", *map(str, paths), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err
    assert not out.exists()


def test_merge_refuses_another_model_or_tokenizer(trace_factory, tmp_path):
    a = trace_factory("a.safetensors", [make_case("x")], model="m1", tokenizer_sha256="t1")
    b = trace_factory("b.safetensors", [make_case("y")], model="m2", tokenizer_sha256="t1")
    c = trace_factory("c.safetensors", [make_case("z")], model="m1", tokenizer_sha256="t2")
    with pytest.raises(InputError, match="another model"):
        merge_traces([a, b], tmp_path / "o.safetensors")
    with pytest.raises(InputError, match="another tokenizer"):
        merge_traces([a, c], tmp_path / "o.safetensors")
    # traces without a case set (other runners) join in the order given
    d = trace_factory("d.safetensors", [make_case("w", seed=3)], model="m1", tokenizer_sha256="t1")
    m = open_trace(merge_traces([d, a], tmp_path / "o.safetensors"))
    assert m.case_ids == ["w", "x"] and np.array_equal(m.case("x").logits, open_trace(a).case("x").logits)


def test_merge_refuses_to_overwrite_an_input(shards):
    with pytest.raises(InputError, match="overwrite"):
        merge_traces(shards, shards[0])


def test_join_cases_streams_mixed_dtypes(tmp_path, trace_factory):
    import ml_dtypes

    a = trace_factory("a.safetensors", [make_case("p", dtype=np.float16), make_case("q", dtype=ml_dtypes.bfloat16)])
    b = trace_factory("b.safetensors", [make_case("r", rows=2, n=5)])
    meta = base_metadata(runner="test", variant="bf16", vocab_size=32)
    out = join_cases(tmp_path / "j.safetensors", meta, [(b, "r"), (a, "q"), (a, "p")])
    j = open_trace(out)
    assert j.case_ids == ["r", "q", "p"] and j.logits_dtype("q") == "BF16" and j.logits_dtype("p") == "F16"
    for src, cid in ((a, "p"), (a, "q"), (b, "r")):
        assert np.array_equal(j.case(cid).logits, open_trace(src).case(cid).logits)
    with pytest.raises(InputError, match="given twice"):
        join_cases(tmp_path / "k.safetensors", meta, [(a, "p"), (a, "p")])
    assert not (tmp_path / "k.safetensors").exists()


def test_merge_applies_the_case_id_rule_to_the_case_set_it_reads(trace_factory, tmp_path):
    from harness.cases import case_id_problem

    bad = "../outside"
    a = trace_factory("a.safetensors", [make_case("x")], case_set=json.dumps(["x", bad]))
    with pytest.raises(InputError, match="metadata 'case_set' lists case") as e:
        merge_traces([a], tmp_path / "o.safetensors")
    assert case_id_problem(bad) in str(e.value)
    deep = trace_factory("d.safetensors", [make_case("x")], case_set="[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="not a JSON list of case ids"):  # not a RecursionError
        merge_traces([deep], tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
