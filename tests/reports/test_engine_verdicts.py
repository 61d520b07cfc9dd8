"""Reports from verdicts made by the real gate engine (gates.engine), not hand-built dicts: the
Verdict objects themselves, and the JSON files `Verdict.write` produces (NaN written as "NaN")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.cli import main
from harness.trace import CaseTrace
from reports import build_report, render

gates_engine = pytest.importorskip("gates.engine", reason="the gate engine (issue 4) is not in this tree")

VOCAB = 32
# A tokenizer of our own: some tokens are hostile text.
PIECES = [f"t{i}" for i in range(VOCAB)]
PIECES[3] = "<script>alert(1)</script>"
PIECES[4] = " |pipe|"
PIECES[5] = "\x1b[2J"


def decode(ids):
    return "".join(PIECES[i] for i in ids)


def _traces(trace_factory):
    rng = np.random.default_rng(7)
    rows, n = 6, 14
    oracle_logits = rng.normal(size=(rows, VOCAB)).astype(np.float32)
    for r in range(rows):  # a clear winner per row: every position confident (prob margin >= 0.1)
        oracle_logits[r, (r * 5 + 3) % VOCAB] += 6.0
        oracle_logits[r, (r * 5 + 4) % VOCAB] += 5.5 if r == 1 else 4.5  # row 1: a close (still confident) pair
    ids = rng.integers(0, VOCAB, size=n).astype(np.int64)
    ids[n - rows:] = oracle_logits.argmax(axis=1)  # teacher forcing on the oracle's greedy output
    ids[n - rows - 2:n - rows] = [5, 3]  # hostile tokens just before the scored rows
    cand = oracle_logits + rng.normal(scale=1e-3, size=oracle_logits.shape).astype(np.float32)
    cand[1, [8, 9]] = cand[1, [9, 8]]  # row 1: top-1 and top-2 swapped (a confident flip)
    ctrl = oracle_logits.copy()
    ctrl[1, [8, 9]] = ctrl[1, [9, 8]]  # the control flips identically: an oracle artifact
    bad = cand.copy()
    bad[4, 0] = np.nan  # row 4 unusable: invalid
    make = lambda name, lg, variant: trace_factory(name, [CaseTrace("c0", ids, lg)], vocab=VOCAB,  # noqa: E731
                                                   variant=variant)
    return (make("oracle.safetensors", oracle_logits, "bf16"), make("int8hu.safetensors", cand, "int8hu"),
            make("fp16.safetensors", ctrl, "fp16"), make("int4lin.safetensors", bad, "int4lin"))


@pytest.fixture
def engine_verdicts(trace_factory):
    from gates.policy import load_gates

    oracle, cand, ctrl, bad = _traces(trace_factory)
    from dataclasses import replace

    policies = load_gates()
    # six rows, all confident: below the bundled min_confident (12), which is not what these tests are about
    good = gates_engine.evaluate(oracle, cand, ctrl, policy=replace(policies["int8hu"], min_confident=6),
                                 decode=decode)
    broken = gates_engine.evaluate(oracle, bad, ctrl, policy=replace(policies["int4lin"], min_confident=6),
                                   decode=decode)
    return good, broken


def test_engine_verdict_objects_render(engine_verdicts):
    good, broken = engine_verdicts
    assert bool(good) and not bool(broken), good.summary["reasons"]
    report = build_report([good, broken])
    md = render(report, "md")
    assert "| int8hu | int8hu | fp16 | 5/6 | 5/6 | 0 | 1 | 0 | 0 |" in md
    assert "| int4lin | int4lin | fp16 | 4/6 | 4/6 | 0 | 1 | 0 | 1 |" in md
    assert "| oracle-artifact |" in md and "| invalid |" in md and "NaN" in md
    # the engine's reasons for a failure are shown
    assert "**Fails because:** 1 invalid position(s)" in md
    # hostile text from the decoder is shown inert
    assert "&lt;script&gt;" in md and "<script>" not in md and "\x1b" not in md
    every = render(build_report([good], all_positions=True), "md")
    assert "⟨0x1b⟩\\[2J&lt;script&gt;alert(1)&lt;/script&gt; |" in every  # row 0's context, spelled out
    page = render(report, "html")
    assert page.count("<script>") == 1 and "&lt;script&gt;" in page


def test_engine_json_files_render_through_the_cli(tmp_path, engine_verdicts, capsys):
    good, broken = engine_verdicts
    files = [str(good.write(tmp_path / "int8hu.json")), str(broken.write(tmp_path / "int4lin.json"))]
    assert '"NaN"' in (tmp_path / "int4lin.json").read_text()  # the engine's file form of NaN
    assert main(["report", *files, "--format", "json"]) == 0
    back = json.loads(capsys.readouterr().out)
    assert [v["gate"] for v in back] == ["int8hu", "int4lin"] and back[1]["summary"]["min_cosine"] == "NaN"
    assert main(["report", *files, "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "| int4lin | int4lin | fp16 | 4/6 | 4/6 | 0 | 1 | 0 | 1 | NaN |" in md
    assert main(["signoff", "int8hu", "--report-dir", str(tmp_path / "so"), "--verdicts", *files, "--quiet"]) == 0
    assert "sign-off folder:" in capsys.readouterr().out
