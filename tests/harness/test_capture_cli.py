"""`flipgate capture`: the thin command over the emulated (and any other) candidate runner."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.models import fixture_model_path, tokenizer_sha256
from harness.recipe import parse_recipes
from harness.trace import CaseTrace, base_metadata, open_trace, write_trace

FIXTURE = fixture_model_path()
pytestmark = pytest.mark.slow  # runs the fixture model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small fp16 models: one thread, no spinning pool on a busy machine
    yield
    torch.set_num_threads(n)


def fake_oracle(path, cases, vocab=2048, tokenizer=None):
    """An oracle-shaped trace (only its token sequences and row counts matter to capture)."""
    rng = np.random.default_rng(0)
    traces = [CaseTrace(cid, np.asarray(ids, dtype=np.int64), rng.normal(size=(rows, vocab)).astype(np.float32))
              for cid, ids, rows in cases]
    meta = base_metadata(runner="hf", variant="bf16", vocab_size=vocab,
                         tokenizer_sha256=tokenizer_sha256(FIXTURE) if tokenizer is None else tokenizer)
    return write_trace(path, meta, traces)


CASES = [("a", [312, 45, 1023, 7, 88, 1500, 9, 640], 3), ("b", [5, 6, 7, 8, 9], 2)]


def test_capture_from_oracle_trace_stepwise(tmp_path, capsys):
    oracle = fake_oracle(tmp_path / "oracle.safetensors", CASES)
    out = tmp_path / "int8hu.safetensors"
    assert main(["capture", "int8hu", "--oracle", str(oracle), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "emulated int8hu (S=1 stepwise, fast)" in err and "[2/2] b: 2 rows" in err and "Inf/NaN" not in err
    t = open_trace(out)
    assert (t.runner, t.variant, t.vocab_size, t.case_ids) == ("emulated", "int8hu", 2048, ["a", "b"])
    for cid, ids, rows in CASES:
        c = t.case(cid)
        assert c.input_ids.tolist() == ids and c.rows == rows and t.logits_dtype(cid) == "F16"
        assert np.isfinite(c.logits).all()
    md = t.metadata
    assert [r.spec for r in parse_recipes(md["recipe"])["int8hu"].rules][0].qscheme == "symmetric"
    assert md["coreai_opt_version"] and md["mode"] == "fast" and md["decode"] == "stepwise"
    assert md["tokenizer_sha256"] == tokenizer_sha256(FIXTURE)
    assert json.loads(md["model"])["sha256"]["model.safetensors"]


def test_capture_from_cases_with_given_continuations(tmp_path, capsys):
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"id": "list", "prompt": "Return a new list containing",
                                 "continuation": " all items from the iterable"}) + "\n"
                     + json.dumps({"id": "ids", "prompt_ids": [5, 6, 7], "continuation_ids": [8, 9]}) + "\n")
    out = tmp_path / "t.safetensors"
    assert main(["capture", "int4lin", "--cases", str(cases), "--out", str(out), "--full", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    t = open_trace(out)
    from harness.models import load_tokenizer

    cont = load_tokenizer(FIXTURE).encode(" all items from the iterable", add_special_tokens=False)
    assert t.rows("list") == len(cont) and t.case("list").targets.tolist() == cont
    assert t.case("ids").input_ids.tolist() == [5, 6, 7, 8, 9] and t.rows("ids") == 2
    assert t.metadata["decode"] == "full"


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    oracle = fake_oracle(tmp_path / "oracle.safetensors", CASES)
    out = tmp_path / "out.safetensors"
    assert main(["capture", "int3", "--oracle", str(oracle), "--out", str(out)]) == 2
    assert "unknown variant 'int3': valid variants are fp16, int8lin, int8hu, int4lin, mixed, mixed-edge" \
        in capsys.readouterr().err
    other = fake_oracle(tmp_path / "other.safetensors", CASES, tokenizer="0" * 64)
    assert main(["capture", "fp16", "--oracle", str(other), "--out", str(out)]) == 2
    assert "made with another tokenizer" in capsys.readouterr().err
    assert main(["capture", "fp16", "--oracle", str(oracle), "--threads", "0", "--out", str(out)]) == 2
    wide = fake_oracle(tmp_path / "wide.safetensors", CASES, vocab=4096)
    assert main(["capture", "fp16", "--oracle", str(wide), "--out", str(out)]) == 2
    assert "differs from the oracle's 4096" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["capture", "fp16", "--oracle", str(oracle), "--cases", "x.jsonl"])
    assert e.value.code == 2
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["capture", "--help"])
    text = capsys.readouterr().out
    assert "example:" in text and "flipgate capture int8hu --oracle" in text and "--cases" in text


def test_architecture_the_recipe_does_not_fit(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(gpt2)
    oracle = fake_oracle(tmp_path / "oracle.safetensors", [("a", [1, 2, 3, 4], 2)], vocab=64, tokenizer="")
    assert main(["capture", "int8lin", "--model", str(gpt2), "--oracle", str(oracle),
                 "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "recipe 'int8lin'" in err and "rule 'body'" in err and "matched no module" in err
    assert "rule 'head'" not in err  # the head rule fits (lm_head): only the rules that matched nothing


def test_fp16_overflow_gives_invalid_rows_and_a_warning(tmp_path, capsys):
    """A model that overflows in fp16: rows of Inf/NaN are kept (the gate counts them invalid)."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "hot"
    shutil.copytree(FIXTURE, model)
    weights = load_file(model / "model.safetensors")
    head = weights["lm_head.weight"].float()
    # the largest head weight just under fp16's 65504: the weights load, the logits overflow
    weights["lm_head.weight"] = (head * (60000 / head.abs().max())).to(torch.bfloat16)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    oracle = fake_oracle(tmp_path / "oracle.safetensors", CASES)
    out = tmp_path / "hot.safetensors"
    assert main(["capture", "fp16", "--model", str(model), "--oracle", str(oracle), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "rows hold Inf/NaN (fp16 overflow?)" in err and "the gate counts them invalid" in err
    t = open_trace(out)
    bad = sum(int((~np.isfinite(t.case(c).logits.astype(np.float32))).any(axis=1).sum()) for c in t.case_ids)
    assert bad > 0 and f"{bad} of 5 rows" in err


def test_expected_figures_on_the_fixture(tmp_path):
    """DESIGN's expectation: fp16 and int8hu gate clean against the bf16 oracle with the fp16 control
    (ties at most); int4lin shows confident flips or lower cosine (here in one pass per case)."""
    from gates.engine import evaluate
    from gates.policy import load_gates
    from oracles.hf import run_oracle

    oracle = run_oracle(out=tmp_path / "oracle.safetensors", quiet=True)
    traces = {v: tmp_path / f"{v}.safetensors" for v in ("fp16", "int8hu", "int4lin")}
    for v in ("int8hu", "int4lin"):
        assert main(["capture", v, "--oracle", str(oracle), "--full", "--quiet", "--out", str(traces[v])]) == 0
    # with no --oracle: the bundled cases, continued by the bf16 oracle's greedy decode, as run_oracle does
    assert main(["capture", "fp16", "--full", "--quiet", "--out", str(traces["fp16"])]) == 0
    o, c = open_trace(oracle), open_trace(traces["fp16"])
    assert c.case_ids == o.case_ids and len(c.case_ids) == 11
    assert all(np.array_equal(c.input_ids(cid), o.input_ids(cid)) and c.rows(cid) == 16 for cid in o.case_ids)
    gates = load_gates()
    fp16 = evaluate(oracle, traces["fp16"], policy=gates["fp16"])
    int8hu = evaluate(oracle, traces["int8hu"], traces["fp16"], policy=gates["int8hu"])
    int4 = evaluate(oracle, traces["int4lin"], traces["fp16"], policy=gates["int8hu"])
    assert fp16 and int8hu, (fp16.one_line(), int8hu.one_line())
    for v in (fp16, int8hu):
        assert v.summary["defects"] == 0 and v.summary["invalid"] == 0
    assert int4.summary["defects"] + int4.summary["oracle_artifacts"] > 0 or \
        int4.summary["min_cosine"] < int8hu.summary["min_cosine"] - 0.05
    assert int4.summary["mean_cosine"] < int8hu.summary["mean_cosine"]
