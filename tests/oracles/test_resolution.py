"""oracle-diff: bf16 resolution, argmax disputes, the stored fp32 top-1/margin, bad input, the command."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from harness.cli import main
from harness.errors import InputError
from harness.trace import CaseTrace, open_trace
from oracles.resolution import oracle_diff, resolution

BF16 = np.dtype(ml_dtypes.bfloat16)
V = 16


def test_resolution_is_the_gap_to_the_next_bf16_and_fp16_value():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=2000) * 10.0 ** rng.integers(-3, 4, size=2000))
    for dtype, np_dtype, uint in (("bfloat16", BF16, np.uint16), ("float16", np.dtype(np.float16), np.uint16)):
        v = np.abs(x).astype(np_dtype)
        v = v[(v > 0) & np.isfinite(v.astype(np.float64))]
        nxt = (v.view(uint) + 1).view(np_dtype)
        expected = nxt.astype(np.float64) - v.astype(np.float64)
        np.testing.assert_array_equal(resolution(v.astype(np.float64), dtype), expected)
        np.testing.assert_array_equal(resolution(-v.astype(np.float64), dtype), expected)
    assert resolution(np.array([1.0]))[0] == 2.0 ** -7
    assert resolution(np.array([12.0]))[0] == 2.0 ** -4


def _row(pairs, base=-5.0):
    r = np.full(V, base)
    for tok, val in pairs.items():
        r[tok] = val
    return r


@pytest.fixture
def traces(trace_factory):
    """A bf16 oracle and an fp32 oracle of one 5-row case; which rows dispute what is set by hand."""
    ids = np.arange(12, dtype=np.int64)
    bf = np.stack([
        _row({3: 10.0, 4: 2.0}),         # 0: clear, both agree
        _row({5: 12.0, 6: 11.9375}),     # 1: one bf16 ulp apart (ulp at 8..16 is 1/16); fp32 picks 6
        _row({7: 6.0, 8: 2.0}),          # 2: confident in bf16, fp32 picks 8: a disputed confident position
        _row({9: 4.0, 10: 3.999}),       # 3: rounds to an exact bf16 tie; both agree
        _row({1: 3.0, 2: 1.0}),          # 4: agree
    ]).astype(BF16)
    fp = np.stack([
        _row({3: 10.01, 4: 2.0}),
        _row({5: 11.95, 6: 11.97}),
        _row({7: 5.0, 8: 5.5}),
        _row({9: 4.0, 10: 3.999}),
        _row({1: 3.0, 2: 1.0}),
    ]).astype(np.float32)
    a = trace_factory("bf16.safetensors", [CaseTrace("c", ids, bf)], vocab=V, variant="bf16")
    b = trace_factory("fp32.safetensors", [CaseTrace("c", ids, fp)], vocab=V, variant="fp32", dtype="float32")
    return a, b


def test_flags_disputes_and_unresolved_margins_and_stores_fp32_top1(traces):
    a, b = traces
    diff = oracle_diff(open_trace(a), open_trace(b))
    assert diff.policy["resolution_dtype"] == "bfloat16"
    p = diff.positions
    assert [x.argmax_differs for x in p] == [False, True, True, False, False]
    assert [x.fp32_top1 for x in p] == [3, 6, 8, 9, 1]
    assert p[1].unresolved and p[1].bf16_logit_gap == pytest.approx(0.0625)
    assert p[1].bf16_resolution == 2.0 ** -4
    # bf16 rounds 4.0 and 3.999 to the same value: a tie the bf16 oracle cannot resolve
    assert p[3].unresolved and p[3].bf16_logit_gap == 0.0
    assert not p[0].unresolved and not p[2].unresolved
    assert p[2].confident and not p[1].confident
    fp_probs = np.exp([5.0, 5.5]) / (np.exp([5.0, 5.5]).sum() + 14 * np.exp(-5.0))
    assert p[2].fp32_margin == pytest.approx(fp_probs[1] - fp_probs[0], rel=1e-6)
    assert [x.flagged for x in p] == [False, True, True, True, False]
    s = diff.summary
    assert s["confident_argmax_differs"] == 1 and s["unresolved"] == 2 and s["flagged"] == 3
    assert not diff  # the bf16 oracle is sure at row 2 and wrong by the fp32 one


def test_more_ulps_widens_the_unresolved_band(traces):
    a, b = traces
    narrow = oracle_diff(open_trace(a), open_trace(b), ulps=0.5)
    wide = oracle_diff(open_trace(a), open_trace(b), ulps=1e4)
    assert [x.unresolved for x in narrow.positions] == [False, False, False, True, False]
    assert all(x.unresolved for x in wide.positions)


def test_agreeing_oracles_pass_and_nan_never_does(trace_factory):
    ids = np.arange(8, dtype=np.int64)
    rng = np.random.default_rng(1)
    lg = rng.normal(size=(3, V)) * 4
    a = trace_factory("a.safetensors", [CaseTrace("c", ids, lg.astype(BF16))], vocab=V)
    b = trace_factory("b.safetensors", [CaseTrace("c", ids, lg.astype(np.float32))], vocab=V)
    assert oracle_diff(open_trace(a), open_trace(b))
    bad = lg.astype(np.float32)
    bad[1, 0] = np.nan
    c = trace_factory("nan.safetensors", [CaseTrace("c", ids, bad)], vocab=V)
    diff = oracle_diff(open_trace(a), open_trace(c))
    assert not diff and diff.summary["invalid"] == 1
    assert diff.positions[1].invalid and diff.positions[1].fp32_margin is None
    json.dumps(diff.to_json(), allow_nan=False)


def test_bad_pairs_are_refused_naming_the_case(trace_factory):
    ids = np.arange(8, dtype=np.int64)
    lg = np.zeros((3, V), dtype=np.float32)
    a = open_trace(trace_factory("a.safetensors", [CaseTrace("c", ids, lg.astype(BF16))], vocab=V))
    other = open_trace(trace_factory("o.safetensors", [CaseTrace("c", ids[::-1].copy(), lg)], vocab=V))
    with pytest.raises(InputError, match=r"case 'c' holds another token sequence"):
        oracle_diff(a, other)
    low = open_trace(trace_factory("low.safetensors", [CaseTrace("c", ids, lg.astype(BF16))], vocab=V))
    with pytest.raises(InputError, match=r"not F32; the second trace must be the float32 oracle"):
        oracle_diff(a, low)
    none = open_trace(trace_factory("none.safetensors", [CaseTrace("d", ids, lg)], vocab=V))
    with pytest.raises(InputError, match=r"case 'c' of .* is missing"):
        oracle_diff(a, none)


def test_command_writes_every_position_and_exits_1_on_a_confident_dispute(traces, tmp_path, capsys):
    a, b = traces
    out = tmp_path / "diff.json"
    assert main(["oracle-diff", str(a), str(b), "-o", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "argmax-differs,unresolved" in printed and "DISPUTED" in printed
    doc = json.loads(out.read_text())
    assert doc["schema"] == "flipgate.oracle-diff/1" and doc["passed"] is False
    assert len(doc["positions"]) == 5 and doc["positions"][2]["fp32_top1"] == 8
    assert main(["oracle-diff", str(a), str(a)]) == 2  # A as the "fp32" trace: BF16 logits, refused
    assert "not F32" in capsys.readouterr().err
