"""The engine's fast path for head-sized vocabularies: one pass over each row in cache-sized column blocks.

`metrics.oracle_rows` / `candidate_rows` make about ten passes over a float64 row, each a full
vocabulary long: at 248320 tokens a row is 2 MB, larger than a core's cache, so every pass comes
from main memory. Here each row of every trace is widened to float64 one column block at a time
(COLUMN_BLOCK tokens, a few hundred kB for all operands together) and every per-row sum is
accumulated while the block is in cache: sum of squares, sum of exp, the oracle-candidate dot
product, the KL numerator and the maxima of SUB_BLOCK-token sub-blocks. Top-k then reads back only
the sub-blocks whose maximum reaches the k-th largest sub-block maximum (exactly the set that can
hold the top k), from the stored values. Results equal the reference path's up to float64 rounding
(the sums are taken in another order); tests/gates checks the two against each other.

The exp sums are taken unshifted (`metrics.exp_rows`); a row whose maximum falls outside that
window sends its chunk back to the reference path (the caller gets None).
"""

from __future__ import annotations

import numpy as np

from . import metrics

# 8192 float64 = 64 kB a buffer: all operands of a block stay in L2. It also keeps the dot products
# single-threaded in OpenBLAS (it threads ddot above 10000 elements, which costs more than it saves here).
COLUMN_BLOCK = 8192
SUB_BLOCK = 256
MIN_VOCAB = 4 * COLUMN_BLOCK
_ALIGN = 64


def _aligned(n: int) -> np.ndarray:
    """A float64 buffer on a 64-byte boundary: the BLAS kernels then see the same alignment every run,
    so their summation order, and the verdict's last digits, cannot depend on where malloc put it."""
    raw = np.empty(n + _ALIGN // 8, dtype=np.float64)
    skip = (-raw.ctypes.data % _ALIGN) // 8
    return raw[skip:skip + n]


def _top_k_from_sub(src: np.ndarray, sub_max: np.ndarray, k: int, sub: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one finite stored row (value descending, token id ascending) from its sub-block maxima."""
    vocab = src.shape[0]
    n = sub_max.shape[0]
    k = min(k, vocab)
    t = np.partition(sub_max, n - k)[n - k] if n >= k else -np.inf
    blocks = np.flatnonzero(sub_max >= t)
    cols = (blocks[:, None] * sub + np.arange(sub)).ravel()
    cols = cols[cols < vocab]
    vals = metrics.to_float64(src[cols])
    keep = vals >= t
    cols, vals = cols[keep], vals[keep]
    order = np.lexsort((cols, -vals))[:k]
    return cols[order], vals[order]


def _rank(src: np.ndarray, token: int, top_idx: np.ndarray) -> int:
    hit = np.flatnonzero(top_idx == token)
    if hit.size:
        return int(hit[0]) + 1
    x = metrics.to_float64(src)
    v = x[token]
    return 1 + int(np.count_nonzero(x > v)) + int(np.count_nonzero(x[:token] == v))


def _in_window(m: float) -> bool:
    lo, hi = metrics._UNSHIFTED_EXP
    return lo <= m <= hi


def sweep(o_rows: np.ndarray, cand_rows: list[np.ndarray], ctrl_rows: list[np.ndarray], *,
          column_block: int = COLUMN_BLOCK, sub_block: int = SUB_BLOCK):
    """Stats of b rows: (OracleRows, [CandidateRows], [ControlRows]), or None to take the reference path.

    Rows come as stored (float32/16, bfloat16), [b, V]. OracleRows.exp_shifted is None here.
    Raises ValueError(row) if an oracle row is not finite."""
    assert column_block % sub_block == 0
    b, vocab = o_rows.shape
    k = metrics.TOP_K
    nsub = -(-vocab // sub_block)
    rel = np.arange(0, column_block, sub_block)
    ob, eb, xb, sb = (_aligned(column_block) for _ in range(4))
    nc, nk = len(cand_rows), len(ctrl_rows)

    o_top_idx = np.empty((b, min(k, vocab)), np.int64)
    o_top_val = np.empty((b, min(k, vocab)))
    o_ss, o_s = np.empty(b), np.empty(b)
    c_ss, c_s, c_oc, c_kl = (np.empty((nc, b)) for _ in range(4))
    k_ss, k_s = np.empty((nk, b)), np.empty((nk, b))
    c_max = np.full((nc, b), np.nan)
    k_max = np.full((nk, b), np.nan)
    o_sub = np.empty(nsub)
    c_sub = np.empty((nc, nsub))
    k_sub = np.empty((nk, nsub))
    cands = [metrics.CandidateRows(finite=np.zeros(b, bool), top1=np.full(b, -1, np.int64),
                                   top1_prob=np.full(b, np.nan), cosine=np.full(b, np.nan),
                                   kl=np.full(b, np.nan), oracle_rank=np.zeros(b, np.int64),
                                   top5_overlap=np.full(b, -1, np.int64)) for _ in range(nc)]
    ctrls = [metrics.ControlRows(np.zeros(b, bool), np.full(b, -1, np.int64), np.full(b, np.nan))
             for _ in range(nk)]

    with np.errstate(all="ignore"):  # NaN/Inf rows are judged below, not warned about
        for r in range(b):
            acc_o = [0.0, 0.0]
            acc_c = np.zeros((nc, 4))
            acc_k = np.zeros((nk, 2))
            for j0 in range(0, vocab, column_block):
                j1 = min(vocab, j0 + column_block)
                w = j1 - j0
                idx = rel[: -(-w // sub_block)]
                s0 = j0 // sub_block
                o = metrics.to_float64(o_rows[r, j0:j1], ob[:w])
                acc_o[0] += float(np.dot(o, o))
                o_sub[s0:s0 + len(idx)] = np.maximum.reduceat(o, idx)
                e = np.exp(o, out=eb[:w])
                acc_o[1] += float(e.sum())
                scratch = sb[:w]
                for i, rows in enumerate(cand_rows):
                    x = metrics.to_float64(rows[r, j0:j1], xb[:w])
                    a = acc_c[i]
                    a[0] += float(np.dot(x, x))
                    c_sub[i, s0:s0 + len(idx)] = np.maximum.reduceat(x, idx)
                    a[1] += float(np.exp(x, out=scratch).sum())
                    a[2] += float(np.dot(o, x))
                    np.subtract(o, x, out=scratch)
                    a[3] += float(np.dot(e, scratch))
                for i, rows in enumerate(ctrl_rows):
                    x = metrics.to_float64(rows[r, j0:j1], xb[:w])
                    acc_k[i, 0] += float(np.dot(x, x))
                    k_sub[i, s0:s0 + len(idx)] = np.maximum.reduceat(x, idx)
                    acc_k[i, 1] += float(np.exp(x, out=scratch).sum())
            if not np.isfinite(acc_o[0]):
                raise ValueError(r)
            ti, tv = _top_k_from_sub(o_rows[r], o_sub, k, sub_block)
            if not _in_window(tv[0]):
                return None
            o_top_idx[r], o_top_val[r] = ti, tv
            o_ss[r], o_s[r] = acc_o
            c_ss[:, r], c_s[:, r], c_oc[:, r], c_kl[:, r] = acc_c.T
            k_ss[:, r], k_s[:, r] = acc_k.T
            for i, rows in enumerate(cand_rows):
                if not np.isfinite(c_ss[i, r]):
                    continue
                ci, cv = _top_k_from_sub(rows[r], c_sub[i], k, sub_block)
                if not _in_window(cv[0]):
                    return None
                c = cands[i]
                c.finite[r] = True
                c.top1[r] = ci[0]
                c.oracle_rank[r] = _rank(rows[r], int(ti[0]), ci)
                c.top5_overlap[r] = len(np.intersect1d(ci, ti))
                c_max[i, r] = cv[0]
            for i, rows in enumerate(ctrl_rows):
                if not np.isfinite(k_ss[i, r]):
                    continue
                ki, kv = _top_k_from_sub(rows[r], k_sub[i], 1, sub_block)
                if not _in_window(kv[0]):
                    return None
                ctrls[i].finite[r] = True
                ctrls[i].top1[r] = ki[0]
                k_max[i, r] = kv[0]

        m = o_top_val[:, 0]
        lse = np.log(o_s)
        gap = o_top_val[:, 1] - m if o_top_val.shape[1] > 1 else np.full_like(m, -np.inf)
        p1 = np.exp(m - lse)
        norm = np.sqrt(o_ss)
        orc = metrics.OracleRows(top_idx=o_top_idx, top_val=o_top_val, exp_shifted=None, exp_sum=o_s, lse=lse,
                                 norm=norm, top1_prob=p1, top2_prob=p1 * np.exp(gap),
                                 margin_prob=-p1 * np.expm1(gap), margin_logit=-gap)
        for i, c in enumerate(cands):
            f = c.finite
            lse_c = np.log(c_s[i])
            c.top1_prob[f] = np.exp(c_max[i, f] - lse_c[f])
            cos = c_oc[i] / (norm * np.sqrt(c_ss[i]))
            c.cosine[:] = np.where(f, np.clip(cos, -1.0, 1.0), np.nan)
            kl = c_kl[i] / o_s - (lse - lse_c)
            c.kl[:] = np.where(f, np.maximum(kl, 0.0), np.nan)
        for i, c in enumerate(ctrls):
            f = c.finite
            c.top1_prob[f] = np.exp(k_max[i, f] - np.log(k_s[i, f]))
    return orc, cands, ctrls
