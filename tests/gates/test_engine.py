"""The engine end to end through real trace files: trace agreement, NaN/Inf, the margin threshold,
classes against a plain re-implementation of DESIGN.md's rule, dtypes, determinism, threads."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gates import sweep
from gates.engine import GateJob, evaluate, evaluate_many
from gates.policy import GatePolicy
from harness.errors import InputError
from harness.trace import CaseTrace, base_metadata, open_trace, write_trace

from helpers import BF16

POLICY = GatePolicy(name="t", candidate="cand", control=None, min_margin=0.1, min_cosine=-1.0)


def _case(cid, logits, ids=None, prompt=5, seed=0):
    logits = np.asarray(logits)
    if logits.dtype == np.float64:
        logits = logits.astype(np.float32)  # the tests' values are exact in float32
    if ids is None:
        rng = np.random.default_rng(seed)
        ids = np.concatenate([rng.integers(0, logits.shape[1], prompt), np.argmax(logits, axis=1)])
    return CaseTrace(cid, np.asarray(ids, np.int64), logits)


def _write(path, cases, *, vocab=None, tok="", variant="cand"):
    vocab = vocab or cases[0].logits.shape[1]
    meta = base_metadata(runner="test", variant=variant, vocab_size=vocab, tokenizer_sha256=tok)
    return write_trace(path, meta, cases)


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(5)
    o = [_case("a", rng.normal(size=(4, 40)).astype(np.float32), seed=1),
         _case("b", rng.normal(size=(3, 40)).astype(np.float32), seed=2)]
    return tmp_path, o, _write(tmp_path / "oracle.safetensors", o)


# ---- traces must agree before anything is compared ---------------------------------------------

def test_a_missing_or_extra_case_is_named(pair):
    tmp, o, op = pair
    only_a = _write(tmp / "c.safetensors", [o[0]])
    with pytest.raises(InputError, match=r"case 'b' of the oracle is missing"):
        evaluate(op, only_a, policy=POLICY)
    extra = _write(tmp / "d.safetensors", o + [_case("z", o[0].logits, o[0].input_ids)])
    with pytest.raises(InputError, match=r"case 'z' is not in the oracle"):
        evaluate(op, extra, policy=POLICY)


def test_differing_input_ids_name_the_case_and_first_token(pair):
    tmp, o, op = pair
    ids = o[1].input_ids.copy()
    ids[6] += 1
    bad = _write(tmp / "c.safetensors", [o[0], CaseTrace("b", ids, o[1].logits)])
    with pytest.raises(InputError, match=r"case 'b': input_ids differ from the oracle's at token 6 "):
        evaluate(op, bad, policy=POLICY)
    longer = _write(tmp / "e.safetensors", [o[0], CaseTrace("b", np.append(o[1].input_ids, 3), o[1].logits)])
    with pytest.raises(InputError, match=r"case 'b': 9 input_ids, the oracle has 8"):
        evaluate(op, longer, policy=POLICY)


def test_row_count_vocab_and_tokenizer_disagreements_are_errors(pair):
    tmp, o, op = pair
    fewer = _write(tmp / "c.safetensors", [o[0], CaseTrace("b", o[1].input_ids, o[1].logits[1:])])
    with pytest.raises(InputError, match=r"case 'b': 2 logits rows, the oracle has 3"):
        evaluate(op, fewer, policy=POLICY)
    wide = _write(tmp / "w.safetensors", [CaseTrace(c.case_id, c.input_ids, np.pad(c.logits, ((0, 0), (0, 1))))
                                          for c in o])
    with pytest.raises(InputError, match="vocab_size 41 differs from the oracle's 40"):
        evaluate(op, wide, policy=POLICY)
    o_tok = _write(tmp / "ot.safetensors", o, tok="aa" * 32)
    c_tok = _write(tmp / "ct.safetensors", o, tok="bb" * 32)
    with pytest.raises(InputError, match="tokenizer_sha256"):
        evaluate(o_tok, c_tok, policy=POLICY)
    assert evaluate(o_tok, _write(tmp / "nt.safetensors", o), policy=POLICY)  # one side without a hash: fine
    with pytest.raises(InputError, match="control trace"):
        evaluate(op, op, fewer, policy=POLICY)


# ---- NaN and Inf --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_candidate_logit_makes_the_position_invalid_and_fails(pair, value):
    tmp, o, op = pair
    logits = o[0].logits.copy()
    logits[2, 11] = value
    bad = _write(tmp / "c.safetensors", [CaseTrace("a", o[0].input_ids, logits), o[1]])
    v = evaluate(op, bad, policy=POLICY)
    assert not v
    p = v.positions[2]
    assert p["class"] == "invalid" and p["nonfinite"] == "candidate" and p["candidate_top1"] is None
    assert math.isnan(p["cosine"]) and math.isnan(p["kl"])
    assert v.summary["invalid"] == 1 and v.summary["exact"] == 6
    assert math.isnan(v.summary["min_cosine"])  # the NaN reaches the bound, and fails it
    assert any("invalid" in r for r in v.reasons) and any("cosine" in r for r in v.reasons)
    text = v.to_json()
    assert '"cosine": "NaN"' in text and "NaN," not in text.replace('"NaN",', "")


def test_a_non_finite_control_row_fails_even_when_the_candidate_matches(pair):
    tmp, o, op = pair
    logits = o[1].logits.copy()
    logits[0] = np.nan
    ctrl = _write(tmp / "k.safetensors", [o[0], CaseTrace("b", o[1].input_ids, logits)])
    v = evaluate(op, op, ctrl, policy=replace(POLICY, control="fp16"))
    assert not v and v.summary["invalid"] == 1
    bad = [p for p in v.positions if p["class"] == "invalid"]
    assert [(p["case"], p["row"], p["nonfinite"]) for p in bad] == [("b", 0, "control")]


def test_an_oracle_row_with_nan_is_an_input_error_naming_case_and_row(pair):
    tmp, o, op = pair
    logits = o[1].logits.copy()
    logits[2, 0] = np.nan
    bad = _write(tmp / "o2.safetensors", [o[0], CaseTrace("b", o[1].input_ids, logits)])
    with pytest.raises(InputError, match=r"case 'b' row 2: oracle logits hold NaN or Inf"):
        evaluate(bad, op, policy=POLICY)


def test_no_positions_never_passes(tmp_path):
    meta = base_metadata(runner="test", variant="x", vocab_size=8)
    empty = write_trace(tmp_path / "e.safetensors", meta, [])
    v = evaluate(empty, empty, policy=POLICY)
    assert not v and v.reasons == ["no scored positions", "min cosine nan below min_cosine -1.0"]


# ---- the margin rule ----------------------------------------------------------------------------

def _two_token_rows(gaps):
    rows = np.full((len(gaps), 16), -20.0)
    rows[:, 3] = 2.0
    rows[np.arange(len(gaps)), 7] = 2.0 - np.asarray(gaps)
    return rows


def test_a_margin_exactly_at_min_margin_is_confident(tmp_path):
    o = _two_token_rows([0.5, 0.25])
    c = o.copy()
    c[:, [3, 7]] = c[:, [7, 3]]  # every row flips to the runner-up
    ids = np.concatenate([[1] * 5, [3, 3]])
    op = _write(tmp_path / "o.safetensors", [_case("a", o, ids)])
    cp = _write(tmp_path / "c.safetensors", [_case("a", c, ids)])
    for space in ("logit", "prob"):
        first = evaluate(op, cp, policy=replace(POLICY, margin_space=space, min_margin=0.0))
        m = first.positions[0]["margin"]
        at = evaluate(op, cp, policy=replace(POLICY, margin_space=space, min_margin=m))
        assert at.positions[0]["confident"] and at.positions[0]["class"] == "defect"
        above = evaluate(op, cp, policy=replace(POLICY, margin_space=space, min_margin=float(np.nextafter(m, 1))))
        assert not above.positions[0]["confident"] and above.positions[0]["class"] == "tie-flip"
    logit = evaluate(op, cp, policy=replace(POLICY, margin_space="logit", min_margin=0.5))
    assert [p["margin"] for p in logit.positions] == [0.5, 0.25]
    assert [p["class"] for p in logit.positions] == ["defect", "tie-flip"]
    assert logit.summary["margin_space"] == "logit"
    p = np.exp(0.0) / (1 + np.exp(-0.5) + 14 * np.exp(-22.0))
    prob = evaluate(op, cp, policy=POLICY)
    assert prob.positions[0]["margin"] == pytest.approx(p * (1 - np.exp(-0.5)), rel=1e-12)


def test_an_exact_argmax_tie_goes_to_the_lowest_token_id(tmp_path):
    o = np.zeros((1, 10))
    o[0, [2, 6]] = 5.0
    c = o.copy()
    c[0, 2] = 4.0  # the candidate resolves the tie the other way
    ids = np.concatenate([[1] * 5, [2]])
    op = _write(tmp_path / "o.safetensors", [_case("a", o, ids)])
    cp = _write(tmp_path / "c.safetensors", [_case("a", c, ids)])
    p = evaluate(op, cp, policy=POLICY).positions[0]
    assert (p["oracle_top1"], p["oracle_top2"], p["margin"], p["candidate_top1"]) == (2, 6, 0.0, 6)
    assert p["class"] == "tie-flip"


def _plain_classes(o, c, k, policy):
    out = []
    for r in range(len(o)):
        if not np.isfinite(c[r]).all() or (k is not None and not np.isfinite(k[r]).all()):
            out.append("invalid")
            continue
        t1 = int(np.argmax(o[r]))
        rest = o[r].copy()
        rest[t1] = -np.inf
        t2 = int(np.argmax(rest))
        e = np.exp(o[r] - o[r].max())
        p = e / e.sum()
        margin = p[t1] - p[t2] if policy.margin_space == "prob" else o[r, t1] - o[r, t2]
        cand = int(np.argmax(c[r]))
        if cand == t1:
            out.append("match")
        elif margin < policy.min_margin:
            out.append("tie-flip")
        elif k is not None and int(np.argmax(k[r])) == cand:
            out.append("oracle-artifact")
        else:
            out.append("defect")
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), space=st.sampled_from(["prob", "logit"]),
       margin=st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0]), control=st.booleans(),
       dtype=st.sampled_from(["f32", "f16", "bf16"]))
def test_classes_agree_with_a_plain_reading_of_the_rule(tmp_path, seed, space, margin, control, dtype):
    dt = {"f32": np.float32, "f16": np.float16, "bf16": BF16}[dtype]
    rng = np.random.default_rng(seed)
    vocab, rows = 12, 10
    o = (rng.normal(size=(rows, vocab)) * rng.choice([0.3, 3.0])).astype(dt)
    c = (o.astype(np.float32) + rng.normal(size=o.shape) * 0.4).astype(dt)
    k = (o.astype(np.float32) + rng.normal(size=o.shape) * 0.4).astype(dt) if control else None
    flip = rng.random(rows) < 0.3
    c[flip] = k[flip] if control else c[flip]
    if rng.random() < 0.3:
        c[rng.integers(rows), rng.integers(vocab)] = np.nan
    ids = np.concatenate([[0, 1, 2], np.argmax(o.astype(np.float32), axis=1)])
    d = tmp_path / f"h{seed}-{space}-{margin}-{control}-{dtype}"
    d.mkdir()
    op = _write(d / "o.safetensors", [CaseTrace("x", ids, o)])
    cp = _write(d / "c.safetensors", [CaseTrace("x", ids, c)])
    kp = _write(d / "k.safetensors", [CaseTrace("x", ids, k)]) if control else None
    pol = replace(POLICY, margin_space=space, min_margin=margin, control="fp16" if control else None)
    v = evaluate(op, cp, kp, policy=pol)
    f64 = lambda a: None if a is None else a.astype(np.float32).astype(np.float64)  # noqa: E731
    assert [p["class"] for p in v.positions] == _plain_classes(f64(o), f64(c), f64(k), pol)
    counts = {cls: sum(p["class"] == cls for p in v.positions) for cls in
              ("match", "tie-flip", "oracle-artifact", "defect", "invalid")}
    assert v.summary["exact"] == counts["match"] and v.summary["rule"] == counts["match"] + counts["tie-flip"]
    assert v.passed == (counts["defect"] == 0 and counts["invalid"] == 0)


# ---- one answer whatever the storage, the order of work, or the run ------------------------------

def test_the_stored_dtype_does_not_change_the_figures(tmp_path):
    rng = np.random.default_rng(9)
    base = rng.normal(size=(6, 64)).astype(np.float32).astype(BF16)  # exact in every wider dtype
    cand = (base.astype(np.float32) + rng.normal(size=base.shape).astype(np.float32) * 0.1).astype(BF16)
    ids = np.concatenate([[1, 2], np.argmax(base.astype(np.float32), axis=1)])
    verdicts = []
    for name, dt in (("bf16", BF16), ("f32", np.float32)):
        op = _write(tmp_path / f"o-{name}.safetensors", [CaseTrace("a", ids, base.astype(np.float32).astype(dt))])
        cp = _write(tmp_path / f"c-{name}.safetensors", [CaseTrace("a", ids, cand.astype(np.float32).astype(dt))])
        verdicts.append(evaluate(op, cp, policy=POLICY))
    assert verdicts[0].positions == verdicts[1].positions
    assert verdicts[0].summary == verdicts[1].summary


def test_verdict_json_is_byte_identical_across_runs_and_thread_counts(tmp_path):
    vocab = sweep.MIN_VOCAB + 100  # the fused path, where threads take rows side by side
    rng = np.random.default_rng(2)
    o = (rng.normal(size=(6, vocab)) * 3).astype(np.float16)
    cases = [_case("a", o[:4]), _case("b", o[4:], seed=3)]
    op = _write(tmp_path / "o.safetensors", cases)
    cands = [CaseTrace(c.case_id, c.input_ids, (c.logits.astype(np.float32) + rng.normal(size=c.logits.shape)
                                                .astype(np.float32) * 0.3).astype(np.float16)) for c in cases]
    cp = _write(tmp_path / "c.safetensors", cands)
    runs = [evaluate_many(op, [GateJob(POLICY, cp)], workers=w)[0].to_json() for w in (1, 2, 1, 3)]
    assert len(set(runs)) == 1
    assert '"class": "' in runs[0]


def test_the_fused_and_reference_paths_give_the_same_verdict(tmp_path, monkeypatch):
    vocab = sweep.MIN_VOCAB + 7
    rng = np.random.default_rng(4)
    o = (rng.normal(size=(5, vocab)) * 3).astype(np.float32)
    c = o + rng.normal(size=o.shape).astype(np.float32) * 0.5
    ids = np.concatenate([[0] * 5, np.argmax(o, 1)])
    op = _write(tmp_path / "o.safetensors", [_case("a", o, ids)])
    cp = _write(tmp_path / "c.safetensors", [_case("a", c, ids)])
    fused = evaluate(op, cp, policy=POLICY)
    monkeypatch.setattr(sweep, "MIN_VOCAB", vocab + 1)
    reference = evaluate(op, cp, policy=POLICY)
    for a, b in zip(fused.positions, reference.positions):
        for key, x in a.items():
            if isinstance(x, float):
                assert x == pytest.approx(b[key], rel=1e-9, abs=1e-13), key
            else:
                assert x == b[key], key


def test_long_cases_are_read_in_bounded_blocks(tmp_path, monkeypatch):
    import gates.engine as engine

    rng = np.random.default_rng(6)
    o = rng.normal(size=(40, 32)).astype(np.float32)
    op = _write(tmp_path / "o.safetensors", [_case("a", o)])
    whole = evaluate(op, op, policy=POLICY).to_json()
    seen = []
    real = engine.Trace.logits_rows

    def spy(self, cid, start, stop):
        seen.append(stop - start)
        return real(self, cid, start, stop)

    monkeypatch.setattr(engine.Trace, "logits_rows", spy)
    monkeypatch.setattr(engine, "READ_BYTES", 32 * 4 * 8)  # 8 rows a read
    monkeypatch.setattr(engine.metrics, "CHUNK_ELEMENTS", 32 * 4)
    assert evaluate(op, op, policy=POLICY).to_json() == whole
    assert seen and max(seen) == 8 and sum(seen) == 80


# ---- the effective policy ----------------------------------------------------------------------

def test_a_gate_run_without_its_control_says_so_and_counts_flips_as_defects(pair):
    tmp, o, op = pair
    logits = o[0].logits.copy()
    r = 1
    top = int(np.argmax(logits[r]))
    logits[r, top] = logits[r].min() - 1  # the candidate drops the oracle's top-1
    cp = _write(tmp / "c.safetensors", [CaseTrace("a", o[0].input_ids, logits), o[1]])
    pol = replace(POLICY, control="fp16", min_margin=0.0)
    v = evaluate(op, cp, policy=pol)
    assert v.policy["control"] is None and "no control trace was given" in v.summary["notes"][0]
    assert v.positions[r]["class"] == "defect"
    v2 = evaluate(op, cp, cp, policy=replace(POLICY, min_margin=0.0))
    assert v2.policy["control"] == f"trace:{cp}" and v2.positions[r]["class"] == "oracle-artifact"


def test_a_variant_other_than_the_gates_candidate_is_noted(pair):
    tmp, o, op = pair
    v = evaluate(op, op, policy=replace(POLICY, candidate="int8hu"))
    assert any("variant 'cand' is not the gate's candidate 'int8hu'" in n for n in v.summary["notes"])


def test_decode_fills_the_text_fields(pair):
    tmp, o, op = pair
    v = evaluate(op, op, policy=POLICY, decode=lambda ids: "".join(f"<{i}>" for i in ids))
    p = v.positions[0]
    ids = o[0].input_ids
    assert p["target_text"] == f"<{ids[p['position']]}>"
    assert p["context_text"] == "".join(f"<{i}>" for i in ids[:p["position"]])
    assert p["oracle_top1_text"] == f"<{p['oracle_top1']}>" and p["control_top1_text"] is None
    assert p["oracle_top2_text"] == f"<{p['oracle_top2']}>"


# ---- issue 13: the engine's input checks on trace contents -------------------------------------

def test_token_ids_outside_the_vocabulary_never_reach_a_verdict(pair):
    tmp, o, op = pair
    for bad_id in (40, -3):  # vocab 40
        ids = o[1].input_ids.copy()
        ids[2] = bad_id
        with pytest.raises(InputError, match=f"token id {bad_id}, outside"):  # the writer refuses them too
            _write(tmp / "refused.safetensors", [o[0], CaseTrace("b", ids, o[1].logits)])
        bad = tmp / f"bad{bad_id}.safetensors"  # another runtime's writer, e.g. an import
        safetensors.numpy.save_file({"a/input_ids": o[0].input_ids, "a/logits": o[0].logits, "b/input_ids": ids,
                                     "b/logits": o[1].logits}, str(bad),
                                    metadata={k: v for k, v in open_trace(op).metadata.items()})
        with pytest.raises(InputError, match=rf"{bad}: case 'b': input_ids hold token id {bad_id} at position 2, "
                                             r"outside the vocabulary \[0, 40\)"):
            evaluate(op, bad, policy=POLICY)
        with pytest.raises(InputError, match=f"token id {bad_id}"):
            evaluate(bad, op, policy=POLICY)


def test_a_long_case_gives_the_same_texts_from_the_ids_it_reads(tmp_path):
    # only the scored tokens and the CONTEXT_TOKENS before them are read; the texts must not change
    from gates.engine import CONTEXT_TOKENS

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 40)).astype(np.float32)
    c = _case("long", logits, prompt=CONTEXT_TOKENS * 3, seed=4)
    op = _write(tmp_path / "o.safetensors", [c])
    cp = _write(tmp_path / "c.safetensors", [_case("long", logits + 0.001, c.input_ids)])
    v = evaluate(op, cp, policy=POLICY, decode=lambda ids: ",".join(map(str, ids)))
    ids = c.input_ids
    for p in v.positions:
        pos = p["position"]
        assert p["context_text"] == ",".join(map(str, ids[pos - CONTEXT_TOKENS:pos]))
        assert p["target_token"] == int(ids[pos]) and p["target_text"] == str(int(ids[pos]))


def test_ids_past_the_tokenizer_are_refused_in_the_sequence_and_marked_in_predictions(tmp_path, capsys):
    from harness.cli import main
    from harness.models import fixture_model_path

    model = fixture_model_path()
    if not (model / "tokenizer.json").is_file():
        pytest.skip("the bundled fixture tokenizer is not there")
    vocab = 4096  # the model's padded vocabulary: the fixture tokenizer holds 2048 tokens
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, vocab)).astype(np.float32)
    logits[:, 2048:] -= 10.0  # the oracle never predicts a padded id...
    cand = logits.copy()
    cand[1, 3500] = 50.0  # ...the candidate does once
    ids = np.concatenate([[300, 301, 302], np.argmax(logits, axis=1)])

    def write(name, values, seq, runner):
        meta = base_metadata(runner=runner, variant="fp16" if runner != "hf" else "bf16", vocab_size=vocab)
        return write_trace(tmp_path / name, meta, [CaseTrace("a", seq, values)])

    op, cp = write("o.safetensors", logits, ids, "hf"), write("c.safetensors", cand, ids, "emulated")
    out = tmp_path / "v.json"
    assert main(["gate", "fp16", "--no-control", "--oracle", str(op), "--candidate", str(cp),
                 "--tokenizer", str(model), "--json", str(out)]) in (0, 1)
    p = json.loads(out.read_text())["positions"][1]
    assert p["candidate_top1"] == 3500 and p["candidate_top1_text"] == "<id 3500: not in the tokenizer>"
    capsys.readouterr()
    beyond = ids.copy()
    beyond[1] = 3000
    op2, cp2 = write("o2.safetensors", logits, beyond, "hf"), write("c2.safetensors", cand, beyond, "emulated")
    rc = main(["gate", "fp16", "--no-control", "--oracle", str(op2), "--candidate", str(cp2),
               "--tokenizer", str(model)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert str(op2) in err and "token id 3000, beyond the 2048 tokens of the tokenizer" in err
