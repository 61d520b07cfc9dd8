"""Oracle-resolution check: where does a bf16 oracle say something its own precision cannot back?

    diff = oracle_diff(open_trace("oracle-bf16.safetensors"), open_trace("oracle-fp32.safetensors"))
    bool(diff)        # True: the oracles agree wherever the bf16 one is confident, and nothing is NaN
    diff.flagged()    # positions whose argmax differs, or whose bf16 top-2 gap is within bf16 resolution

The bf16 oracle's logits are bf16 numbers: at a logit of magnitude x, adjacent bf16 values are
one ulp = 2^(floor(log2 x) - 7) apart, and the final rounding alone moves each logit by up to half
of that (the layers before it by far more). A top-1/top-2 logit gap of at most `ulps` such steps
is below what the bf16 oracle can resolve: its order there is the rounding's, not the model's.
The gap is judged in logit space whatever the margin space, because that is where the rounding
happens; the probability margin is reported beside it. Per position the fp32 oracle's top-1, top-2
and margin are stored, so a gate (or a person) can ask the fp32 oracle instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import InputError
from harness.trace import Trace

SCHEMA = "flipgate.oracle-diff/1"
# fraction bits of the formats an oracle can compute in
_FRACTION_BITS = {"bfloat16": 7, "float16": 10, "float32": 23}
_ALIASES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "BF16": "bfloat16", "fp16": "float16", "float16": "float16",
            "F16": "float16", "fp32": "float32", "float32": "float32", "F32": "float32"}


def resolution(x: np.ndarray, dtype: str = "bfloat16") -> np.ndarray:
    """Spacing of adjacent `dtype` values at magnitude |x| (one ulp), elementwise, float64."""
    bits = _FRACTION_BITS[dtype]
    ax = np.abs(np.asarray(x, dtype=np.float64))
    _, e = np.frexp(ax)  # ax = m * 2**e, 0.5 <= m < 1, so floor(log2 ax) = e - 1
    ulp = np.ldexp(1.0, e - 1 - bits)
    tiny = np.ldexp(1.0, -126 - bits if dtype != "float16" else -14 - bits)
    return np.where(ax > 0, np.maximum(ulp, tiny), tiny)


def resolution_dtype_of(trace: Trace, case_id: str | None = None) -> str:
    """The format a trace's oracle computed in: its logits' dtype if reduced, else its metadata."""
    cid = case_id or trace.case_ids[0]
    st = trace.logits_dtype(cid)
    if st in ("BF16", "F16"):
        return _ALIASES[st]
    for key in ("dtype", "variant"):
        name = _ALIASES.get(trace.metadata.get(key, ""))
        if name:
            return name
    return "bfloat16"


@dataclass(frozen=True)
class DiffPosition:
    """One scored position seen by both oracles (A: reduced precision, B: float32)."""

    case: str
    row: int
    position: int
    target_token: int
    bf16_top1: int
    bf16_top2: int
    bf16_margin: float | None        # in the margin space asked for
    bf16_logit_gap: float | None     # logit top1 - top2
    bf16_resolution: float | None    # one ulp of the bf16 format at the top-1 logit's magnitude
    fp32_top1: int
    fp32_top2: int
    fp32_margin: float | None
    fp32_logit_gap: float | None
    argmax_differs: bool
    unresolved: bool          # bf16 gap within `ulps` ulps: below the bf16 oracle's resolution
    confident: bool           # bf16 margin >= min_margin: a gate would require this argmax
    invalid: bool             # NaN or Inf in either row

    @property
    def flagged(self) -> bool:
        return self.argmax_differs or self.unresolved or self.invalid

    def as_dict(self) -> dict:
        d = asdict(self)
        d["flagged"] = self.flagged
        return d


@dataclass
class OracleDiff:
    """The comparison of two oracle traces; truthy when the bf16 oracle can be trusted as is:
    no NaN/Inf, and the fp32 oracle's argmax agrees wherever the bf16 one is confident."""

    a: dict
    b: dict
    policy: dict
    positions: list[DiffPosition] = field(default_factory=list)

    def flagged(self) -> list[DiffPosition]:
        return [p for p in self.positions if p.flagged]

    @property
    def summary(self) -> dict:
        ps = self.positions
        return {
            "positions": len(ps),
            "argmax_differs": sum(p.argmax_differs for p in ps),
            "unresolved": sum(p.unresolved for p in ps),
            "flagged": sum(p.flagged for p in ps),
            "confident": sum(p.confident for p in ps),
            "confident_argmax_differs": sum(p.confident and p.argmax_differs for p in ps),
            "invalid": sum(p.invalid for p in ps),
        }

    def __bool__(self) -> bool:
        s = self.summary
        return s["invalid"] == 0 and s["confident_argmax_differs"] == 0 and s["positions"] > 0

    def lookup(self) -> dict[tuple[str, int], DiffPosition]:
        return {(p.case, p.row): p for p in self.positions}

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "passed": bool(self), "a": self.a, "b": self.b, "policy": self.policy,
                "summary": self.summary, "positions": [p.as_dict() for p in self.positions]}

    def write(self, path: str | Path) -> Path:
        from harness.fileio import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")
        return Path(path)


def _top2(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # argmax is the first maximum (numpy's rule, as the gate uses); top2 the best of the rest
    top1 = np.argmax(rows, axis=-1)
    masked = rows.copy()
    masked[np.arange(rows.shape[0]), top1] = -np.inf
    return top1, np.argmax(masked, axis=-1)


def _margins(rows: np.ndarray, t1: np.ndarray, t2: np.ndarray, space: str) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(rows.shape[0])
    gap = rows[idx, t1] - rows[idx, t2]
    if space == "logit":
        return gap, gap
    z = rows - rows[idx, t1][:, None]
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    return p[idx, t1] - p[idx, t2], gap


def _describe(trace: Trace) -> dict:
    return {"path": str(trace.path), "runner": trace.runner, "variant": trace.variant,
            "dtype": trace.metadata.get("dtype", ""), "logits_dtype": trace.logits_dtype(trace.case_ids[0])}


def oracle_diff(a: Trace, b: Trace, *, margin_space: str = "prob", min_margin: float = 0.1, ulps: float = 1.0,
                resolution_dtype: str | None = None) -> OracleDiff:
    """Compare a reduced-precision oracle trace `a` (bf16) with a float32 oracle trace `b` of the same cases."""
    if margin_space not in ("prob", "logit"):
        raise InputError(f"--margin-space {margin_space!r}: expected 'prob' or 'logit'")
    if not (np.isfinite(min_margin) and min_margin >= 0):
        raise InputError(f"--min-margin {min_margin!r}: expected a non-negative number")
    if not (np.isfinite(ulps) and ulps >= 0):
        raise InputError(f"--ulps {ulps!r}: expected a non-negative number")
    if a.vocab_size != b.vocab_size:
        raise InputError(f"{b.path}: vocab_size {b.vocab_size} differs from {a.path}'s {a.vocab_size}")
    missing = [c for c in a.case_ids if c not in b]  # a set lookup: `set(...)` in the condition was quadratic
    if missing:
        raise InputError(f"{b.path}: case {missing[0]!r} of {a.path} is missing (the fp32 oracle must hold "
                         f"every case of the bf16 one)")
    for cid in a.case_ids:
        if b.logits_dtype(cid) != "F32":
            raise InputError(f"{b.path}: case {cid!r}: logits are {b.logits_dtype(cid)}, not F32; the second "
                             f"trace must be the float32 oracle")
    res_dtype = _ALIASES.get(resolution_dtype or "", None) if resolution_dtype else resolution_dtype_of(a)
    if res_dtype is None:
        raise InputError(f"--resolution {resolution_dtype!r}: expected bfloat16 or float16")
    diff = OracleDiff(a=_describe(a), b=_describe(b),
                      policy={"margin_space": margin_space, "min_margin": float(min_margin), "ulps": float(ulps),
                              "resolution_dtype": res_dtype})
    for cid in a.case_ids:
        ca, cb = a.case(cid), b.case(cid)
        if ca.rows != cb.rows or not np.array_equal(ca.input_ids, cb.input_ids):
            raise InputError(f"{b.path}: case {cid!r} holds another token sequence than in {a.path} "
                             f"({len(cb.input_ids)} tokens/{cb.rows} rows vs {len(ca.input_ids)}/{ca.rows})")
        la = ca.logits.astype(np.float64)
        lb = cb.logits.astype(np.float64)
        bad = ~(np.isfinite(la).all(axis=-1) & np.isfinite(lb).all(axis=-1))
        la_s = np.where(np.isfinite(la), la, -np.inf)
        lb_s = np.where(np.isfinite(lb), lb, -np.inf)
        a1, a2 = _top2(la_s)
        b1, b2 = _top2(lb_s)
        with np.errstate(invalid="ignore", over="ignore"):
            am, agap = _margins(la_s, a1, a2, margin_space)
            bm, bgap = _margins(lb_s, b1, b2, margin_space)
        idx = np.arange(ca.rows)
        res = resolution(np.maximum(np.abs(la_s[idx, a1]), np.abs(la_s[idx, a2])), res_dtype)
        targets = ca.targets
        for k in range(ca.rows):
            invalid = bool(bad[k])
            num = (lambda x: None) if invalid else _num  # no margin of a row with NaN/Inf is reported
            diff.positions.append(DiffPosition(
                case=cid, row=k, position=ca.position(k), target_token=int(targets[k]),
                bf16_top1=int(a1[k]), bf16_top2=int(a2[k]),
                bf16_margin=num(am[k]), bf16_logit_gap=num(agap[k]), bf16_resolution=num(res[k]),
                fp32_top1=int(b1[k]), fp32_top2=int(b2[k]), fp32_margin=num(bm[k]), fp32_logit_gap=num(bgap[k]),
                argmax_differs=bool(not invalid and a1[k] != b1[k]),
                unresolved=bool(not invalid and agap[k] <= ulps * res[k]),
                confident=bool(not invalid and am[k] >= min_margin),
                invalid=invalid))
    return diff


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None  # JSON has no NaN; None never compares as a pass
