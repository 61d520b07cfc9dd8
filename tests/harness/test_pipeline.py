"""The shared gate pipeline (harness/pipeline.py): gate selection, given traces, the trace cache.

The models themselves run in tests/harness/test_pytest_plugin.py (TestEmbeddedDefault); here the
candidates are `trace:FILE` specs, which go through the same cache and runner interface.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gates.verdict import Verdict
from harness.errors import InputError
from harness.models import fixture_model_path, tokenizer_sha256
from harness.pipeline import GateRun, run_gates, select_gates, workspace, write_verdicts
from harness.trace import CaseTrace, base_metadata, open_trace, write_trace
from helpers import QWEN36_ARTIFACT_ROW, QWEN36_CASE, make_case, make_qwen36_scenario


@pytest.fixture
def qwen36(tmp_path):
    return make_qwen36_scenario(tmp_path)


# ---- gate selection ---------------------------------------------------------------------------------

def test_select_gates_keeps_order_expands_all_and_drops_repeats():
    defined = ["fp16", "int8hu", "int4lin"]
    assert select_gates(["int4lin", "fp16", "int4lin"], defined) == ["int4lin", "fp16"]
    assert select_gates(["all"], defined) == defined
    assert select_gates(None, defined) == defined
    assert select_gates(["int4lin", "all"], defined) == ["int4lin", "fp16", "int8hu"]


def test_an_unknown_gate_names_the_defined_ones():
    with pytest.raises(InputError, match=r"unknown gate 'int9' \(defined: fp16, int8hu\)"):
        select_gates(["int8hu", "int9"], ["fp16", "int8hu"])


# ---- given traces: nothing runs, nothing is decoded with a foreign tokenizer ------------------------

def test_given_traces_are_judged_without_the_model(qwen36, tmp_path):
    run = run_gates(["int8hu"], oracle=str(qwen36["oracle"]), candidate=str(qwen36["int8hu"]),
                    control=str(qwen36["fp16"]), cache_dir=str(tmp_path / "cache"), log=lambda m: None)
    assert isinstance(run, GateRun) and run and list(run.verdicts) == ["int8hu"]
    v = run.verdicts["int8hu"]
    assert v.summary["exact"] == 14 and v.summary["rule"] == 15 and v.summary["oracle_artifacts"] == 1
    assert run.one_lines() == [v.one_line()]
    # the oracle's tokenizer is not the bundled model's: no token text, and provenance from the trace
    assert all("context_text" not in p for p in v.positions)
    assert run.provenance["model"] == "synthetic Qwen3.6-27B gate scenario"
    assert run.provenance["model_sha256"] == {} and run.provenance["cases"] == ""
    assert set(run.traces) == {"oracle", "candidate:int8hu", "control:int8hu"}
    assert v.provenance["trace_sha256"]["oracle"] == run.provenance["trace_sha256"]["oracle"]
    assert not (tmp_path / "cache").exists()  # nothing computed, nothing cached


def test_a_given_candidate_without_a_control_is_judged_without_one(qwen36):
    run = run_gates(["int8hu"], oracle=str(qwen36["oracle"]), candidate=str(qwen36["int8hu"]), log=lambda m: None)
    v = run.verdicts["int8hu"]
    assert not run and not v
    artifact = next(p for p in v.positions if p["row"] == QWEN36_ARTIFACT_ROW and p["case"] == QWEN36_CASE)
    assert artifact["class"] == "defect" and artifact["control_top1"] is None
    assert any("no control trace was given" in n for n in v.summary["notes"])


def test_a_given_candidate_answers_exactly_one_gate(qwen36):
    with pytest.raises(InputError, match="answers one gate, but 2 are named"):
        run_gates(["int8hu", "int4lin"], oracle=str(qwen36["oracle"]), candidate=str(qwen36["int8hu"]))


def test_candidates_are_not_run_on_an_oracle_of_another_tokenizer(qwen36, tmp_path):
    with pytest.raises(InputError, match="not made with the tokenizer of model"):
        run_gates(["int8hu"], oracle=str(qwen36["oracle"]), cache_dir=str(tmp_path / "cache"), log=lambda m: None)
    assert not (tmp_path / "cache" / "traces").exists()


def test_unknown_gate_through_run_gates(qwen36):
    with pytest.raises(InputError, match="unknown gate 'int9'"):
        run_gates(["int9"], oracle=str(qwen36["oracle"]))


# ---- the trace cache, with `trace:` candidates on an oracle made with the bundled tokenizer ---------

@pytest.fixture
def fixture_traces(tmp_path):
    """An oracle in the bundled model's vocabulary and tokenizer, a close candidate and a control."""
    vocab = 2048
    tok = tokenizer_sha256(fixture_model_path())
    rng = np.random.default_rng(5)
    cases = {cid: (rng.integers(3, 500, size=14), rng.normal(size=(6, vocab)) * 3) for cid in ("one", "two")}

    def write(name, variant, noise, dtype):
        meta = base_metadata(runner="test", variant=variant, vocab_size=vocab, tokenizer_sha256=tok)
        out = [CaseTrace(cid, ids, (lg + rng.normal(size=lg.shape) * noise).astype(np.float32).astype(dtype))
               for cid, (ids, lg) in cases.items()]
        return write_trace(tmp_path / f"{name}.safetensors", meta, out)

    return {"oracle": write("oracle", "bf16", 0.0, np.float32), "cand": write("cand", "cand", 0.05, np.float16),
            "ctrl": write("ctrl", "fp16", 0.01, np.float16)}


def test_cache_computes_each_trace_once_reuses_it_and_refreshes_on_demand(fixture_traces, tmp_path):
    config = tmp_path / "flipgate.toml"
    config.write_text(
        f'[gates.a]\ncandidate = "trace:{fixture_traces["cand"]}"\ncontrol = "trace:{fixture_traces["ctrl"]}"\n'
        f'min_cosine = 0.9\nmin_confident = 0\n'
        f'[gates.b]\ncandidate = "trace:{fixture_traces["cand"]}"\ncontrol = "trace:{fixture_traces["ctrl"]}"\n'
        f'min_cosine = 0.9\nmax_kl = 1e-9\n', encoding="utf-8")
    cache = tmp_path / "cache"
    log: list[str] = []
    kw = dict(config=str(config), oracle=str(fixture_traces["oracle"]), cache_dir=str(cache), log=log.append)

    run = run_gates(["a", "b"], **kw)
    assert [ln.split(": ")[1].split(" ")[0] for ln in log if "done in" not in ln] == ["running", "running"]
    cached = sorted(cache.joinpath("traces").iterdir())
    assert len(cached) == 2  # candidate and control once each, shared by both gates
    assert bool(run.verdicts["a"]) and not run.verdicts["b"] and not run  # b's max_kl cannot hold
    # the oracle was made with the bundled tokenizer, so the rows carry token text
    p = run.verdicts["a"].positions[0]
    assert isinstance(p["context_text"], str) and p["context_text"] and isinstance(p["oracle_top1_text"], str)
    assert sorted(open_trace(p).variant for p in cached) == ["cand", "fp16"]
    for path in cached:  # a cached trace holds the same sequences and logits as its source
        got = open_trace(path)
        src = open_trace(fixture_traces["cand" if got.variant == "cand" else "ctrl"])
        for cid in src.case_ids:
            assert np.array_equal(got.case(cid).logits, src.case(cid).logits)

    mtimes = {p.name: p.stat().st_mtime_ns for p in cached}
    log.clear()
    again = run_gates(["a", "b"], **kw)
    assert all(": cached " in ln for ln in log) and len(log) == 2
    assert {p.name: p.stat().st_mtime_ns for p in cache.joinpath("traces").iterdir()} == mtimes
    assert again.verdicts["a"].summary == run.verdicts["a"].summary

    log.clear()
    run_gates(["a"], **kw, refresh=True)
    assert sum(": running " in ln for ln in log) == 2
    assert {p.name for p in cache.joinpath("traces").iterdir()} == set(mtimes)


def test_oracle_cache_key_follows_weights_cases_and_dtype(tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "x", "prompt": "def f():"}\n', encoding="utf-8")
    base = workspace(cases=str(cases), cache_dir=str(tmp_path)).oracle_key()
    assert workspace(cases=str(cases), cache_dir=str(tmp_path / "elsewhere")).oracle_key() == base
    assert workspace(cases=str(cases), dtype="float32").oracle_key() != base
    cases.write_text('{"id": "x", "prompt": "def g():"}\n', encoding="utf-8")
    assert workspace(cases=str(cases)).oracle_key() != base


def test_write_verdicts_round_trips(qwen36, tmp_path):
    run = run_gates(["int4lin"], oracle=str(qwen36["oracle"]), candidate=str(qwen36["int4lin"]),
                    control=str(qwen36["fp16"]), log=lambda m: None)
    paths = write_verdicts(run, tmp_path / "out")
    back = Verdict.load(paths["int4lin"])
    assert back.passed is False and back.summary["defects"] == 1
    assert json.loads(paths["int4lin"].read_text(encoding="utf-8"))["gate"] == "int4lin"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["int4lin.verdict.json"]


def test_disagreeing_traces_are_an_input_error_naming_the_file(qwen36, tmp_path):
    other = write_trace(tmp_path / "other.safetensors", base_metadata(runner="t", variant="x", vocab_size=256),
                        [make_case("elsewhere", vocab=256)])
    with pytest.raises(InputError, match=f"{other}.*case '{QWEN36_CASE}' of the oracle is missing"):
        run_gates(["int8hu"], oracle=str(qwen36["oracle"]), candidate=str(other))


# ---- two runs at once on one cache ----------------------------------------------------------------

@pytest.mark.slow
def test_two_concurrent_compare_runs_leave_a_consistent_cache(tmp_path):
    """Two real `flipgate compare` processes on one fresh cache: each entry is computed once (the other
    run waits on its lock, then reuses it), both succeed, and every cached trace reads."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "harness.cli", "compare", "--gates", "fp16", "--cache", str(cache),
           "--report-dir", str(tmp_path / "reports")]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for _ in range(2)]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    logs = "".join(err for _, err in results)
    for entry in ("oracle", "fp16"):  # computed by one run, reused by the other
        assert logs.count(f"{entry}: running") == 1 and logs.count(f"{entry}: cached") == 1, logs
    traces = sorted(p.name for p in (cache / "traces").iterdir() if p.suffix == ".safetensors")
    assert len(traces) == 2 and traces[0].startswith("fp16-") and traces[1].startswith("oracle-"), traces
    for name in traces:
        open_trace(cache / "traces" / name)
    leftovers = [p.name for p in (cache / "traces").iterdir() if p.name.endswith((".part", ".parts"))]
    assert leftovers == []
    # a third run reuses both
    third = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert third.returncode == 0 and "oracle: cached" in third.stderr and "fp16: cached" in third.stderr
