"""The numerics: top-k and ties, rank, softmax margins, cosine and KL against plain formulas, the
fused column-blocked sweep against the reference path, Wilson intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gates import metrics, sweep

from helpers import BF16


def _naive_topk(row: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_top_k_orders_by_value_then_lowest_token_id(vocab, levels, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, size=(3, vocab)).astype(np.float64)  # few levels: many ties
    idx, val = metrics.top_k(x)
    for r in range(3):
        want = _naive_topk(x[r], 5)
        assert idx[r].tolist() == want
        assert val[r].tolist() == [x[r, i] for i in want]
        assert idx[r, 0] == np.argmax(x[r])  # the argmax rule the engine documents


@pytest.mark.parametrize("vocab", [4096, 4099, 5000, 70001])
def test_blocked_top_k_equals_a_full_sort(vocab):
    rng = np.random.default_rng(vocab)
    x = np.round(rng.normal(size=(4, vocab)) * 4) / 4  # coarse grid: ties at the top too
    x[1, :] = 0.0                                      # all equal
    x[2, -3:] = 100.0                                  # top-k in the tail past the last full block
    idx, val = metrics.top_k(x)
    for r in range(4):
        order = np.lexsort((np.arange(vocab), -x[r]))[:5]
        assert idx[r].tolist() == order.tolist()
    assert idx[1].tolist() == [0, 1, 2, 3, 4]
    assert idx[2].tolist()[:3] == [vocab - 3, vocab - 2, vocab - 1]


def test_rank_counts_better_tokens_and_ties_below_the_token_id():
    x = np.array([[3.0, 5.0, 5.0, 1.0, 5.0, 2.0, 0.0, 4.0]])
    idx, _ = metrics.top_k(x)
    # token 4 (value 5): tokens 1 and 2 tie with it at lower ids
    assert metrics.rank_of(x, np.array([4]), idx).tolist() == [3]
    # token 6 (value 0) is not in the top 5: the slow count must agree with a full sort
    assert metrics.rank_of(x, np.array([6]), idx).tolist() == [8]
    assert metrics.rank_of(x, np.array([1]), idx).tolist() == [1]


def _plain_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_oracle_margins_in_both_spaces_and_candidate_metrics_match_plain_formulas():
    rng = np.random.default_rng(3)
    o = rng.normal(size=(5, 300)) * 3
    c = o + rng.normal(size=o.shape) * 0.3
    orc = metrics.oracle_rows(o)
    cr = metrics.candidate_rows(c, o, orc)
    for r in range(5):
        p, q = _plain_softmax(o[r]), _plain_softmax(c[r])
        t1, t2 = _naive_topk(o[r], 2)
        assert (orc.top_idx[r, 0], orc.top_idx[r, 1]) == (t1, t2)
        assert orc.margin_prob[r] == pytest.approx(p[t1] - p[t2], rel=1e-12)
        assert orc.margin_logit[r] == pytest.approx(o[r, t1] - o[r, t2], rel=1e-14)
        assert orc.top1_prob[r] == pytest.approx(p[t1], rel=1e-12)
        assert orc.top2_prob[r] == pytest.approx(p[t2], rel=1e-12)
        assert cr.cosine[r] == pytest.approx(o[r] @ c[r] / np.linalg.norm(o[r]) / np.linalg.norm(c[r]), rel=1e-12)
        assert cr.kl[r] == pytest.approx(np.sum(p * np.log(p / q)), rel=1e-9)
        assert cr.top1[r] == np.argmax(c[r])
        assert cr.top1_prob[r] == pytest.approx(q.max(), rel=1e-12)
        assert cr.oracle_rank[r] == 1 + np.sum(c[r] > c[r, t1]) + np.sum(c[r, :t1] == c[r, t1])
        assert cr.top5_overlap[r] == len(set(_naive_topk(o[r], 5)) & set(_naive_topk(c[r], 5)))


def test_huge_logits_take_the_shifted_exp_and_stay_exact():
    o = np.array([[800.0, 799.0, 0.0, -5.0], [-900.0, -901.0, -950.0, -2000.0]])
    orc = metrics.oracle_rows(o)
    for r in range(2):
        p = _plain_softmax(o[r])
        assert orc.margin_prob[r] == pytest.approx(p[0] - p[1], rel=1e-12)
    cr = metrics.candidate_rows(o.copy(), o, orc)
    assert cr.kl.tolist() == [0.0, 0.0] and np.allclose(cr.cosine, 1.0)


def test_non_finite_candidate_rows_get_nan_metrics_never_numbers():
    o = np.random.default_rng(0).normal(size=(4, 50))
    c = o.copy()
    c[1, 7] = np.nan
    c[2, 3] = np.inf
    c[3, 0] = -np.inf
    cr = metrics.candidate_rows(c, o, metrics.oracle_rows(o))
    assert cr.finite.tolist() == [True, False, False, False]
    assert cr.top1.tolist()[1:] == [-1, -1, -1]
    assert all(math.isnan(x) for x in cr.cosine[1:]) and all(math.isnan(x) for x in cr.kl[1:])
    assert not (cr.cosine[1:] >= 0.0).any()  # a NaN compared with a bound is never within it
    ctrl = metrics.control_rows(c)
    assert ctrl.finite.tolist() == [True, False, False, False]


def test_widening_is_exact_for_every_stored_dtype():
    rng = np.random.default_rng(1)
    x32 = rng.normal(size=(3, 77)).astype(np.float32) * 10
    for dt in (np.float16, BF16, np.float32):
        stored = x32.astype(dt)
        assert np.array_equal(metrics.to_float64(stored), stored.astype(np.float32).astype(np.float64))
    special = np.array([[np.nan, np.inf, -np.inf, -0.0, 1e-40]], dtype=np.float32).astype(BF16)
    wide = metrics.to_float64(special)
    assert np.isnan(wide[0, 0]) and wide[0, 1] == np.inf and wide[0, 2] == -np.inf
    assert math.copysign(1.0, wide[0, 3]) == -1.0


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32], ids=["f16", "bf16", "f32"])
def test_fused_sweep_agrees_with_the_reference_path(dtype):
    vocab = sweep.MIN_VOCAB + 1234  # several column blocks and a ragged last one
    rng = np.random.default_rng(11)
    o = (rng.normal(size=(5, vocab)) * 3).astype(dtype)
    o[4, 100:110] = o[4].astype(np.float32).max()  # an exact tie at the top
    cands = [o.copy()] + [(o.astype(np.float32) + a * rng.normal(size=o.shape)).astype(dtype) for a in (0.05, 4.0)]
    cands[2][1, 17] = np.nan
    ctrl = (o.astype(np.float32) + 0.01 * rng.normal(size=o.shape)).astype(dtype)
    ctrl[3, 5] = np.inf
    orc, cstats, kstats = sweep.sweep(o, cands, [ctrl])
    o64 = metrics.to_float64(o)
    ref = metrics.oracle_rows(o64)
    assert np.array_equal(orc.top_idx, ref.top_idx)
    for name in ("top_val", "lse", "norm", "top1_prob", "top2_prob", "margin_prob", "margin_logit"):
        np.testing.assert_allclose(getattr(orc, name), getattr(ref, name), rtol=1e-12, err_msg=name)
    for c, got in zip(cands, cstats):
        want = metrics.candidate_rows(metrics.to_float64(c), o64, ref)
        for name in ("finite", "top1", "oracle_rank", "top5_overlap"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name
        for name in ("top1_prob", "cosine", "kl"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-9, atol=1e-14,
                                       err_msg=name)
    assert cstats[0].kl.tolist() == [0.0] * 5  # a candidate identical to the oracle: exactly 0
    assert not cstats[2].finite[1]
    want_k = metrics.control_rows(metrics.to_float64(ctrl))
    assert np.array_equal(kstats[0].finite, want_k.finite) and np.array_equal(kstats[0].top1, want_k.top1)
    np.testing.assert_allclose(kstats[0].top1_prob, want_k.top1_prob, rtol=1e-12)


def test_fused_sweep_hands_huge_logits_back_to_the_reference_path():
    o = np.zeros((1, sweep.MIN_VOCAB), np.float32)
    o[0, 3] = 700.0
    assert sweep.sweep(o, [o], []) is None


def test_fused_sweep_reports_a_non_finite_oracle_row():
    o = np.zeros((2, sweep.MIN_VOCAB), np.float32)
    o[1, 9] = np.nan
    with pytest.raises(ValueError) as e:
        sweep.sweep(o, [o], [])
    assert e.value.args == (1,)


def test_wilson_interval_closed_forms():
    z2 = metrics.WILSON_Z ** 2
    assert metrics.wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    assert metrics.wilson_interval(15, 15) == (pytest.approx(15 / (15 + z2)), 1.0)
    lo, hi = metrics.wilson_interval(1, 15)
    assert lo == pytest.approx(0.011866, abs=1e-5) and hi == pytest.approx(0.298165, abs=1e-5)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = metrics.wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.4038, abs=1e-4)
