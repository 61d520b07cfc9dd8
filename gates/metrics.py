"""The numerics of the gate rule, vectorised over a chunk of rows, all in float64 (DESIGN.md, "Gate rule").

Every function here takes rows of logits already widened to float64 (`to_float64`); widening
float32, float16 and bfloat16 is exact, so a trace gives the same figures whatever it is stored in.

Conventions the whole engine shares:
  - argmax ties go to the lowest token id (what `np.argmax` does); `top_k` orders by value
    descending, then token id ascending, so its first entry is always the argmax;
  - a row is finite iff its sum of squares is: a NaN or an Inf anywhere makes that sum NaN or Inf,
    while finite float32/16 logits cannot overflow it in float64 (|x| <= 3.4e38, so x*x*V << 1e308);
  - cosine and KL of a row that is not finite are NaN, and NaN never passes a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

TOP_K = 5
# Top-k search: the k-th largest of the maxima of _BLOCKS disjoint blocks is a lower bound of the
# row's k-th largest value, so only the few blocks whose maximum reaches it need scanning.
_BLOCKS = 64
_BLOCKED_MIN_VOCAB = _BLOCKS * 64
# Rows per computing chunk: about 1 MiB of float64, so a chunk's temporaries stay in cache.
CHUNK_ELEMENTS = 1 << 17
_BF16 = np.dtype(ml_dtypes.bfloat16)
WILSON_Z = 1.959963984540054  # two-sided 95%


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, vocab))


def to_float64(rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Widen float32/float16/bfloat16 rows to float64 (exact)."""
    if out is None or out.shape != rows.shape:
        out = np.empty(rows.shape, dtype=np.float64)
    if rows.dtype == _BF16:
        # bfloat16 is the top half of a float32: shifting its bits is exact and much faster than a cast.
        wide = rows.view(np.uint16).astype(np.uint32)
        wide <<= 16
        np.copyto(out, wide.view(np.float32))
    else:
        np.copyto(out, rows, casting="safe")
    return out


def row_sumsq(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def top_k(x: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of each row's k largest entries: value descending, then token id ascending.

    Rows must be finite. Deterministic under ties (a tie goes to the lowest token id)."""
    b, vocab = x.shape
    k = min(k, vocab)
    if vocab < _BLOCKED_MIN_VOCAB:
        order = np.argsort(-x, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(x, order, axis=1)
    width = vocab // _BLOCKS
    body = x[:, :width * _BLOCKS].reshape(b, _BLOCKS, width)
    block_max = body.max(axis=2)
    # k-th largest block maximum: at least k entries (one per block) reach it, so the top k do too.
    threshold = np.partition(block_max, _BLOCKS - k, axis=1)[:, _BLOCKS - k]
    idx = np.empty((b, k), dtype=np.int64)
    val = np.empty((b, k), dtype=np.float64)
    tail_start = width * _BLOCKS
    for r in range(b):
        t = threshold[r]
        blocks = np.flatnonzero(block_max[r] >= t)
        seg = body[r, blocks]
        bi, ci = np.nonzero(seg >= t)
        cols = blocks[bi] * width + ci
        if tail_start < vocab:
            cols = np.concatenate([cols, tail_start + np.flatnonzero(x[r, tail_start:] >= t)])
        vals = x[r, cols]
        order = np.lexsort((cols, -vals))[:k]
        idx[r] = cols[order]
        val[r] = vals[order]
    return idx, val


def rank_of(x: np.ndarray, token: np.ndarray, top_idx: np.ndarray) -> np.ndarray:
    """1-based rank of `token[r]` in row r under the top_k order (1 means it is the argmax)."""
    hit = top_idx == token[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0).astype(np.int64)
    for r in np.flatnonzero(rank == 0):
        t = int(token[r])
        v = x[r, t]
        rank[r] = 1 + int(np.count_nonzero(x[r] > v)) + int(np.count_nonzero(x[r, :t] == v))
    return rank


# exp(x) summed unshifted when the row maximum lies in this window: no subtraction pass, no overflow
# (e^600 * 2^31 < 1e308), and what underflows (x < -745) weighs < e^-145 against the maximum's term.
_UNSHIFTED_EXP = (-600.0, 600.0)


def exp_rows(x: np.ndarray, row_max: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """out = exp(x - shift) per row; returns (shift, sum of out). Shift is 0 where that is safe."""
    lo, hi = _UNSHIFTED_EXP
    if np.all((row_max >= lo) & (row_max <= hi)):
        np.exp(x, out=out)
        shift = np.zeros_like(row_max)
    else:
        np.subtract(x, row_max[:, None], out=out)
        np.exp(out, out=out)
        shift = row_max
    return shift, out.sum(axis=1)


@dataclass
class OracleRows:
    """What the oracle's rows contribute to every comparison: top-k, softmax and norms."""

    top_idx: np.ndarray     # [b, k]
    top_val: np.ndarray     # [b, k]
    exp_shifted: np.ndarray  # [b, V]  exp(o - shift): proportional to softmax(o)
    exp_sum: np.ndarray     # [b]      its row sums
    lse: np.ndarray         # [b]  logsumexp(o)
    norm: np.ndarray        # [b]
    top1_prob: np.ndarray
    top2_prob: np.ndarray
    margin_prob: np.ndarray
    margin_logit: np.ndarray


def oracle_rows(o: np.ndarray, sumsq: np.ndarray | None = None) -> OracleRows:
    """Oracle rows must be finite (the caller checks `row_sumsq` first and names the row)."""
    top_idx, top_val = top_k(o)
    m = top_val[:, 0]
    e = np.empty_like(o)
    shift, s = exp_rows(o, m, e)
    lse = shift + np.log(s)
    gap = top_val[:, 1] - m if top_val.shape[1] > 1 else np.full_like(m, -np.inf)
    p1 = np.exp(m - lse)
    return OracleRows(
        top_idx=top_idx, top_val=top_val, exp_shifted=e, exp_sum=s, lse=lse,
        norm=np.sqrt(row_sumsq(o) if sumsq is None else sumsq),
        top1_prob=p1, top2_prob=p1 * np.exp(gap),
        # p1 - p2 = p1 (1 - e^(o2 - o1)): expm1 keeps the small margins exact
        margin_prob=-p1 * np.expm1(gap), margin_logit=-gap,
    )


@dataclass
class CandidateRows:
    finite: np.ndarray      # [b] bool
    top1: np.ndarray        # [b] int64, -1 where not finite
    top1_prob: np.ndarray   # NaN where not finite
    cosine: np.ndarray
    kl: np.ndarray
    oracle_rank: np.ndarray  # 0 where not finite
    top5_overlap: np.ndarray  # -1 where not finite


def _softmax_top(c: np.ndarray, top_val0: np.ndarray, scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logsumexp, probability of the top-1) of each row."""
    shift, s = exp_rows(c, top_val0, scratch)
    lse = shift + np.log(s)
    return lse, np.exp(top_val0 - lse)


def candidate_rows(c: np.ndarray, o: np.ndarray, orc: OracleRows, sumsq: np.ndarray | None = None) -> CandidateRows:
    """Compare candidate rows `c` with oracle rows `o` (both float64 [b, V])."""
    b = c.shape[0]
    sumsq = row_sumsq(c) if sumsq is None else sumsq
    finite = np.isfinite(sumsq)
    out = CandidateRows(finite=finite, top1=np.full(b, -1, np.int64), top1_prob=np.full(b, np.nan),
                        cosine=np.full(b, np.nan), kl=np.full(b, np.nan),
                        oracle_rank=np.zeros(b, np.int64), top5_overlap=np.full(b, -1, np.int64))
    if not finite.any():
        return out
    sel = slice(None) if finite.all() else np.flatnonzero(finite)
    cs, os_ = (c, o) if isinstance(sel, slice) else (c[sel], o[sel])
    e_o, s_o, lse_o = orc.exp_shifted[sel], orc.exp_sum[sel], orc.lse[sel]
    top_idx, top_val = top_k(cs)
    scratch = np.empty_like(cs)
    lse_c, top1_prob = _softmax_top(cs, top_val[:, 0], scratch)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.einsum("ij,ij->i", os_, cs) / (orc.norm[sel] * np.sqrt(sumsq[sel]))
    np.subtract(os_, cs, out=scratch)
    # KL(p_o || p_c) = sum p_o (o - c) - lse_o + lse_c; (o - c) first keeps small divergences exact.
    kl = np.einsum("ij,ij->i", e_o, scratch) / s_o - (lse_o - lse_c)
    o_top = orc.top_idx[sel]
    overlap = (top_idx[:, :, None] == o_top[:, None, :]).any(axis=2).sum(axis=1)
    out.top1[sel] = top_idx[:, 0]
    out.top1_prob[sel] = top1_prob
    out.cosine[sel] = np.clip(cosine, -1.0, 1.0)      # NaN (a zero row) stays NaN
    out.kl[sel] = np.maximum(kl, 0.0)                 # rounding can dip below 0; NaN stays NaN
    out.oracle_rank[sel] = rank_of(cs, o_top[:, 0], top_idx)
    out.top5_overlap[sel] = overlap
    return out


@dataclass
class ControlRows:
    finite: np.ndarray
    top1: np.ndarray
    top1_prob: np.ndarray


def control_rows(c: np.ndarray) -> ControlRows:
    b = c.shape[0]
    finite = np.isfinite(row_sumsq(c))
    top1 = np.full(b, -1, np.int64)
    prob = np.full(b, np.nan)
    if finite.any():
        sel = np.flatnonzero(finite)
        cs = c if len(sel) == b else c[sel]
        arg = np.argmax(cs, axis=1)   # first occurrence: ties go to the lowest token id
        _, p = _softmax_top(cs, cs[np.arange(len(sel)), arg], np.empty_like(cs))
        top1[sel] = arg
        prob[sel] = p
    return ControlRows(finite, top1, prob)


def wilson_interval(k: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n; (0, 1) when n == 0 (nothing known)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------
# What a count of defects proves: the exact (Clopper–Pearson) one-sided upper bound on the
# confident defect rate, and the confident positions a claim needs. Pure numpy: no scipy.

BOUND_CONFIDENCE = 0.95  # the verdict's `defect_rate_upper_95`


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (k + 1 terms)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    j = np.arange(1, k + 1, dtype=np.float64)
    log_choose = np.concatenate(([0.0], np.cumsum(np.log((n - j + 1) / j))))  # log C(n, j), j = 0..k
    terms = log_choose + np.arange(k + 1) * math.log(p) + (n - np.arange(k + 1)) * math.log1p(-p)
    top = float(terms.max())
    return min(1.0, math.exp(top) * float(np.exp(terms - top).sum()))


def clopper_pearson_upper(k: int, n: int, confidence: float = BOUND_CONFIDENCE) -> float:
    """One-sided exact upper bound on a rate after k events in n trials: the p at which
    P(X <= k) = 1 - confidence (the beta quantile B(confidence; k + 1, n - k)). 1.0 when n == 0."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} is not in (0, 1)")
    if n <= 0 or k >= n:
        return 1.0
    alpha = 1.0 - confidence
    if k == 0:
        return -math.expm1(math.log(alpha) / n)  # (1 - p)^n = alpha, without cancellation
    lo, hi = 0.0, 1.0
    for _ in range(200):  # bisection: the cdf falls as p rises; 200 halvings reach float resolution
        mid = 0.5 * (lo + hi)
        if binomial_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-16 * max(hi, 1e-300):
            break
    return hi  # the side that keeps the bound an upper bound


def positions_needed(rate: float, confidence: float = BOUND_CONFIDENCE, defects: int = 0) -> int:
    """The fewest confident positions n such that `defects` defects in n bound the defect rate at or
    below `rate` (Clopper–Pearson, one-sided). Zero defects: n = ceil(ln(1 - confidence) / ln(1 - rate))."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate {rate!r} is not in (0, 1)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} is not in (0, 1)")
    if defects < 0:
        raise ValueError(f"defects {defects!r} is negative")
    alpha = 1.0 - confidence

    def enough(n: int) -> bool:
        return binomial_cdf(defects, n, rate) <= alpha

    if defects == 0:
        n = max(1, math.ceil(math.log(alpha) / math.log1p(-rate)))
        while n > 1 and enough(n - 1):  # guard the closed form against rounding either way
            n -= 1
        while not enough(n):
            n += 1
        return n
    hi = defects + 1
    while not enough(hi):
        hi *= 2
    lo = hi // 2
    while lo + 1 < hi:  # the smallest n that is enough lies in (lo, hi]
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


def rule_of_three(rate: float) -> float:
    """The check beside the exact count at 95 %: 3 / rate (from -ln(0.05) = 2.996)."""
    return 3.0 / rate


def defect_rate_upper(defects: int, confident: int, confidence: float = BOUND_CONFIDENCE) -> float:
    """The verdict's bound: defects among the confident positions judged (one-sided Clopper–Pearson)."""
    return clopper_pearson_upper(int(defects), int(confident), confidence)


def _percent_up(x: float) -> str:
    """x as a percentage to 3 significant digits, rounded UP: a stated bound never claims more than
    was shown (0.29212 % reads 0.293 %, not 0.292 %)."""
    v = x * 100.0
    if v <= 0:
        return "0"
    d = 2 - math.floor(math.log10(v))
    up = math.ceil(v * 10 ** d - 1e-9) / 10 ** d
    return f"{up:.{max(d, 0)}f}"


def defect_bound_sentence(defects: int, confident: int, upper: float | None = None,
                          confidence: float = BOUND_CONFIDENCE) -> str:
    """'0 defects in 1,024 confident positions: the confident defect rate is below 0.293 % at 95 %'."""
    what = f"{defects:,} defect{'' if defects == 1 else 's'} in {confident:,} confident position" \
           f"{'' if confident == 1 else 's'}"
    if confident <= 0:
        return f"{what}: nothing bounds the confident defect rate"
    if upper is None:
        upper = defect_rate_upper(defects, confident, confidence)
    conf = f"{confidence * 100:g}"
    if upper >= 1.0:
        return f"{what}: the confident defect rate is not bounded below 100 % at {conf} %"
    return f"{what}: the confident defect rate is below {_percent_up(upper)} % at {conf} % (one-sided, exact)"
