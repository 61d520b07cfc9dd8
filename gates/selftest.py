"""Negative controls for the gate itself (`flipgate selftest`): a test of the test.

From an oracle trace alone, build candidates whose verdict is known in advance — some must fail
(a confident row forced to the runner-up, NaN and Inf rows, rows shifted by one position, another
case's logits, a control that does not explain a flip), some must pass (the oracle itself, the oracle
plus noise below every threshold, a flip the control explains, a flip below the margin) — run the
real engine on each through real trace files, and compare with what an independent, deliberately
plain float64 reference computation says. Some must be refused outright (exit 2, never judged): the
candidate's own file as its control, a control holding the candidate's exact rows, the oracle's file as
the candidate, and a failed verdict whose `passed` was edited to true, read back. One must fail for
want of evidence: oracle and candidate with all-equal logits (no confident position, `min_confident`).
Any disagreement is a bug in the harness.

Must-fail probes are judged on the classes alone (cosine and KL bounds off), so that each fails
through the mechanism it probes, not through a neighbouring bound; the bounds get probes of their
own. Must-pass probes are judged under the gate's full policy.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from harness.errors import InputError
from harness.trace import CaseTrace, Trace, base_metadata, open_trace, write_trace

from .engine import evaluate
from .policy import GatePolicy, get_gate
from .verdict import Verdict, check_verdict


# ---------------------------------------------------------------------------------------------
# The default oracle: synthetic, but with every kind of row the gate distinguishes
# ---------------------------------------------------------------------------------------------

def synthetic_oracle(path: str | os.PathLike, *, cases: int = 3, rows: int = 16, vocab: int = 4099,
                     seed: int = 0) -> Path:
    """A bf16 oracle trace with confident rows, near-ties, an exact tie and moderate margins.

    The vocabulary (4099) is above the size where the engine's blocked top-k search takes over and
    is not a multiple of its block count, so that path and its tail are exercised."""
    import ml_dtypes

    rng = np.random.default_rng(seed)
    out = []
    for ci in range(cases):
        logits = np.clip(rng.normal(0.0, 2.0, size=(rows, vocab)), -10.0, 10.0)
        targets = np.empty(rows, np.int64)
        for r in range(rows):
            t1, t2 = (int(t) for t in rng.choice(vocab, size=2, replace=False))
            kind = r % 4
            if kind in (0, 1):      # confident: top-2 gap 2 logits (margin ~0.76)
                logits[r, t1], logits[r, t2] = 20.0, 18.0
            elif kind == 2:         # near-tie: one bfloat16 step apart (margin ~0.06)
                logits[r, t1], logits[r, t2] = 20.0, 19.875
            else:                   # moderate: gap 0.5 (margin ~0.24)
                logits[r, t1], logits[r, t2] = 20.0, 19.5
            if ci == 0 and r == rows - 1:   # an exact tie: argmax goes to the lower token id
                logits[r, t2] = 20.0
            targets[r] = min(t1, t2) if logits[r, t1] == logits[r, t2] else t1
        prompt = rng.integers(0, vocab, size=8, dtype=np.int64)
        out.append(CaseTrace(f"synthetic-{ci}", np.concatenate([prompt, targets]),
                             logits.astype(np.float32).astype(ml_dtypes.bfloat16)))
    meta = base_metadata(runner="selftest", variant="bf16", vocab_size=vocab, model="synthetic selftest oracle")
    return write_trace(path, meta, out)


# ---------------------------------------------------------------------------------------------
# The reference: plain float64, one row at a time, sharing no code with the engine
# ---------------------------------------------------------------------------------------------

@dataclass
class _RefRow:
    top1: int
    top2: int
    margin: float
    logit_gap: float


def _ref_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - math.log(float(np.sum(np.exp(shifted))))


def _ref_row(o: np.ndarray, space: str) -> _RefRow:
    top1 = int(np.argmax(o))
    rest = o.copy()
    rest[top1] = -np.inf
    top2 = int(np.argmax(rest))
    p = np.exp(_ref_log_softmax(o))
    margin = float(p[top1] - p[top2]) if space == "prob" else float(o[top1] - o[top2])
    return _RefRow(top1, top2, margin, float(o[top1] - o[top2]))


def _ref_cosine(o: np.ndarray, c: np.ndarray) -> float:
    return float(np.sum(o * c) / math.sqrt(float(np.sum(o * o)) * float(np.sum(c * c))))


def _ref_kl(o: np.ndarray, c: np.ndarray) -> float:
    lo, lc = _ref_log_softmax(o), _ref_log_softmax(c)
    return float(np.sum(np.exp(lo) * (lo - lc)))


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------

@dataclass
class Probe:
    name: str
    what: str
    expect_pass: bool
    candidate: dict[str, np.ndarray]
    control: dict[str, np.ndarray] | None = None
    classes: dict[tuple[str, int], str] = field(default_factory=dict)  # (case, row) -> expected class
    reason: str | None = None      # a word the verdict's failure reasons must contain
    full_policy: bool = False      # judged under the gate's bounds (must-pass) or on classes alone
    policy_change: dict = field(default_factory=dict)
    check: Callable[[Verdict], list[str]] | None = None
    oracle: dict[str, np.ndarray] | None = None  # the probe's own oracle rows (default: the oracle's)
    refusal: str | None = None     # the gate must refuse to judge (InputError) with this in its message
    control_is: str | None = None  # "candidate" / "oracle": the control (or candidate) is that very file


@dataclass
class ProbeResult:
    name: str
    what: str
    expect_pass: bool
    verdict: Verdict | None = None
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    refused: str | None = None     # the InputError the gate (or the verdict reader) refused with
    expect_refusal: bool = False

    @property
    def ok(self) -> bool:
        return self.skipped is not None or not self.problems


@dataclass
class SelftestResult:
    gate: str
    oracle: str
    results: list[ProbeResult]

    def __bool__(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def wrong(self) -> list[ProbeResult]:
        return [r for r in self.results if not r.ok]

    def lines(self) -> list[str]:
        out = []
        for r in self.results:
            if r.skipped:
                out.append(f"skip  {r.name}: not applicable ({r.skipped})")
                continue
            got = "REFUSED" if r.refused is not None else "PASS" if r.verdict else "FAIL"
            want = "REFUSED" if r.expect_refusal else "PASS" if r.expect_pass else "FAIL"
            out.append(f"{'ok   ' if r.ok else 'WRONG'} {r.name}: expected {want}, got {got} — {r.what}")
            out.extend(f"        {p}" for p in r.problems)
        ran = [r for r in self.results if not r.skipped]
        out.append(f"selftest of gate {self.gate} on {self.oracle}: {sum(r.ok for r in ran)} of {len(ran)} probes "
                   f"right, {len(self.wrong)} wrong, {len(self.results) - len(ran)} not applicable")
        return out


class _Builder:
    """Probe candidates built from the oracle's rows (float64 copies, written as float32)."""

    def __init__(self, logits: dict[str, np.ndarray], policy: GatePolicy):
        self.logits = logits
        self.policy = policy
        self.ref = {cid: [_ref_row(row, policy.margin_space) for row in x] for cid, x in logits.items()}
        self.confident = [(cid, r) for cid, rows in self.ref.items() for r, rr in enumerate(rows)
                          if rr.margin >= policy.min_margin]

    def copy(self) -> dict[str, np.ndarray]:
        return {cid: x.copy() for cid, x in self.logits.items()}

    def swapped(self, where: tuple[str, int], other: str = "top2", base=None) -> dict[str, np.ndarray]:
        """The oracle with top-1's value swapped with another token's at one row."""
        out = base if base is not None else self.copy()
        cid, r = where
        rr = self.ref[cid][r]
        o = self.logits[cid][r]
        t = rr.top2 if other == "top2" else self._third(cid, r)
        out[cid][r, rr.top1], out[cid][r, t] = o[t], o[rr.top1]
        return out

    def _third(self, cid, r) -> int:
        o = self.logits[cid][r].copy()
        rr = self.ref[cid][r]
        o[[rr.top1, rr.top2]] = -np.inf
        return int(np.argmax(o))

    def most_confident(self):
        """The confident row with the widest strict top-1/top-2 gap, or None."""
        best = None
        for cid, r in self.confident:
            gap = self.ref[cid][r].logit_gap
            if gap > 0 and (best is None or gap > self.ref[best[0]][best[1]].logit_gap):
                best = (cid, r)
        return best

    def least_confident(self):
        """A row below the margin whose top-1 strictly beats top-2 (so a swap flips it), or None."""
        rows = [(cid, r) for cid, rr in self.ref.items() for r, x in enumerate(rr)
                if x.margin < self.policy.min_margin and x.logit_gap > 0]
        return min(rows, key=lambda w: self.ref[w[0]][w[1]].margin) if rows else None

    def as_control(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A control's rows: the arrays shifted by a constant, which changes no argmax, so that a control
        never holds a candidate's exact rows (the gate refuses such a control)."""
        return {cid: x + 0.5 for cid, x in arrays.items()}

    def flips_somewhere(self, cand: dict[str, np.ndarray]) -> bool:
        """Whether the reference sees a confident row whose argmax this candidate changes."""
        return any(int(np.argmax(cand[cid][r])) != self.ref[cid][r].top1 for cid, r in self.confident)

    def noise_amplitude(self) -> float:
        """Noise below every threshold: it cannot reorder a confident top-1, nor reach the cosine or KL bounds."""
        eps = 1e-3
        gaps = [self.ref[c][r].logit_gap for c, r in self.confident if self.ref[c][r].logit_gap > 0]
        if gaps:
            eps = min(eps, 0.25 * min(gaps))
        if self.policy.max_kl is not None:
            eps = min(eps, 0.5 * math.sqrt(self.policy.max_kl))
        vocab = next(iter(self.logits.values())).shape[1]
        min_norm = min(float(np.min(np.linalg.norm(x, axis=1))) for x in self.logits.values())
        eps = min(eps, 0.25 * math.sqrt(max(0.0, 1.0 - self.policy.min_cosine)) * min_norm / math.sqrt(vocab))
        return eps

    def noisy(self, seed: int = 0) -> dict[str, np.ndarray]:
        eps = self.noise_amplitude()
        rng = np.random.default_rng(seed)
        out = {}
        for cid, x in self.logits.items():
            c = x + rng.uniform(-eps, eps, size=x.shape)
            # top-1 gets the full +eps: an exact tie in the oracle keeps going to the same (lowest) id
            tops = np.array([rr.top1 for rr in self.ref[cid]])
            c[np.arange(len(tops)), tops] = x[np.arange(len(tops)), tops] + eps
            out[cid] = c
        return out


def build_probes(logits: dict[str, np.ndarray], policy: GatePolicy) -> tuple[list[Probe], list[ProbeResult]]:
    """The probes for this oracle and policy, and the ones that cannot be built from it (skipped)."""
    b = _Builder(logits, policy)
    probes: list[Probe] = []
    skipped: list[ProbeResult] = []
    cids = list(logits)
    first = (cids[0], 0)

    def skip(name, what, expect, why):
        skipped.append(ProbeResult(name, what, expect, skipped=why))

    def exact_match_check(v: Verdict) -> list[str]:
        problems = []
        for p in v.positions:
            rr = b.ref[p["case"]][p["row"]]
            if (p["oracle_top1"], p["oracle_top2"]) != (rr.top1, rr.top2):
                problems.append(f"{p['case']} row {p['row']}: engine top1/top2 {p['oracle_top1']}/{p['oracle_top2']}, "
                                f"reference {rr.top1}/{rr.top2}")
            if not abs(p["margin"] - rr.margin) <= 1e-9 * max(1.0, abs(rr.margin)):
                problems.append(f"{p['case']} row {p['row']}: engine margin {p['margin']!r}, reference {rr.margin!r}")
            if p["confident"] != (rr.margin >= policy.min_margin):
                problems.append(f"{p['case']} row {p['row']}: confident {p['confident']} disagrees with the "
                                f"reference margin {rr.margin!r}")
            if not (p["kl"] == 0.0 and p["cosine"] >= 1.0 - 1e-12 and p["oracle_rank_in_candidate"] == 1
                    and p["candidate_top1"] == rr.top1):
                problems.append(f"{p['case']} row {p['row']}: the oracle against itself gives cosine "
                                f"{p['cosine']!r}, KL {p['kl']!r}, rank {p['oracle_rank_in_candidate']}")
        return problems[:5]

    probes.append(Probe("oracle-itself", "the oracle judged against itself", True, b.copy(),
                        classes={(c, r): "match" for c in cids for r in range(len(logits[c]))},
                        full_policy=True, check=exact_match_check))
    noisy = b.noisy()
    probes.append(Probe("oracle-plus-tiny-noise",
                        f"the oracle plus uniform noise of ±{b.noise_amplitude():.2g}, below every threshold", True,
                        noisy, classes={w: "match" for w in b.confident}, full_policy=True))

    nan_row = b.copy()
    nan_row[first[0]][first[1]] = np.nan
    probes.append(Probe("row-set-to-nan", "one candidate row entirely NaN", False, nan_row,
                        classes={first: "invalid"}, reason="invalid"))
    for name, value in (("one-logit-nan", np.nan), ("one-logit-inf", np.inf), ("one-logit-minus-inf", -np.inf)):
        bad = b.copy()
        bad[first[0]][first[1], -1] = value
        probes.append(Probe(name, f"one logit of one candidate row set to {value}", False, bad,
                            classes={first: "invalid"}, reason="invalid"))
    ctrl_nan = b.copy()
    ctrl_nan[first[0]][first[1]] = np.nan
    probes.append(Probe("control-row-nan", "a perfect candidate, but the control's row is NaN", False, b.copy(),
                        control=b.as_control(ctrl_nan), classes={first: "invalid"}, reason="invalid"))

    where = b.most_confident()
    forced_what = "one confident row's argmax forced to the oracle's runner-up"
    if where is None:
        for name in ("confident-row-forced-to-runner-up", "control-explains-flip", "control-disagrees",
                     "control-flips-elsewhere", "cosine-bound", "kl-bound"):
            skip(name, forced_what, name in ("control-explains-flip",), "the oracle has no confident row")
    else:
        forced = b.swapped(where)
        probes.append(Probe("confident-row-forced-to-runner-up", forced_what + " (no control)", False, forced,
                            classes={where: "defect"}, reason="defect"))
        probes.append(Probe("control-explains-flip", "the same forced flip, and the control flips identically",
                            True, forced, control=b.as_control(b.swapped(where)), classes={where: "oracle-artifact"}))
        probes.append(Probe("control-disagrees", "the forced flip, the control keeps the oracle's top-1", False,
                            forced, control=b.as_control(b.copy()), classes={where: "defect"}, reason="defect"))
        if logits[where[0]].shape[1] >= 3:
            probes.append(Probe("control-flips-elsewhere", "the forced flip, the control flips to a third token",
                                False, forced, control=b.as_control(b.swapped(where, "top3")), classes={where: "defect"},
                                reason="defect"))
        o, c = logits[where[0]][where[1]], forced[where[0]][where[1]]
        cos, kl = _ref_cosine(o, c), _ref_kl(o, c)
        if cos < 1.0 - 1e-6:
            probes.append(Probe("cosine-bound", f"an explained flip (cosine {cos:.9f}) under min_cosine just above it",
                                False, forced, control=b.as_control(b.swapped(where)), reason="cosine",
                                policy_change={"min_cosine": min(1.0, cos + 1e-7)}))
        else:
            skip("cosine-bound", "min_cosine bound", False, "the forced flip leaves the cosine at 1")
        if kl > 1e-9:
            probes.append(Probe("kl-bound", f"an explained flip (KL {kl:.4g}) under max_kl of half of it", False,
                                forced, control=b.as_control(b.swapped(where)), reason="KL", policy_change={"max_kl": kl / 2}))
        else:
            skip("kl-bound", "max_kl bound", False, "the forced flip leaves KL at 0")

    # the gate must refuse a control that is not an independent run, and the oracle as a candidate
    flipped = b.swapped(where) if where is not None else b.copy()
    probes.append(Probe("control-is-candidate", "the candidate's own file given as its control", False, flipped,
                        control_is="candidate", refusal="candidate's own file"))
    probes.append(Probe("control-holds-candidate-rows", "a control file holding the candidate's exact rows",
                        False, flipped, control={c: x.copy() for c, x in flipped.items()}, refusal="exact rows"))
    probes.append(Probe("oracle-as-candidate", "the oracle's own file given as the candidate", False, b.copy(),
                        control_is="oracle", refusal="oracle's own file"))
    # a vacuous pass: oracle and candidate with all-equal logits have no confident position
    flat = {c: np.ones_like(x) for c, x in logits.items()}
    probes.append(Probe("no-confident-positions", "oracle and candidate with all-equal logits (no confident "
                        "position)", False, flat, oracle=flat, reason="confident",
                        policy_change={"min_confident": max(1, policy.min_confident)}))

    low = b.least_confident()
    if low is None:
        skip("tie-flip-below-margin", "a flip below the margin", True, "no row below the margin")
    else:
        probes.append(Probe("tie-flip-below-margin", "the runner-up taken at a row below the margin (reported, "
                            "never failing)", True, b.swapped(low), classes={low: "tie-flip"}))

    shifted = b.copy()
    for cid, x in logits.items():
        if len(x) > 1:
            shifted[cid][:-1] = x[1:]
    if b.flips_somewhere(shifted):
        probes.append(Probe("rows-shifted-by-one", "each row holds the next position's logits (an off-by-one)",
                            False, shifted, reason="defect"))
    else:
        skip("rows-shifted-by-one", "an off-by-one", False, "shifting changes no confident argmax")

    if len(cids) >= 2:
        other = {}
        for i, cid in enumerate(cids):
            src = logits[cids[(i + 1) % len(cids)]]
            idx = np.arange(len(logits[cid])) % len(src)
            other[cid] = src[idx].copy()
        if b.flips_somewhere(other):
            probes.append(Probe("logits-of-another-case", "every case given the next case's logits", False,
                                other, reason="defect"))
        else:
            skip("logits-of-another-case", "another case's logits", False, "no confident argmax changes")
    else:
        skip("logits-of-another-case", "another case's logits", False, "the oracle has one case")
    # every other probe probes its own mechanism: the evidence bound asks no more than this oracle holds
    evidence = min(policy.min_confident, len(b.confident))
    for p in probes:
        p.policy_change.setdefault("min_confident", evidence)
    return probes, skipped


def _write(path: Path, oracle: Trace, arrays: dict[str, np.ndarray], variant: str) -> Path:
    meta = base_metadata(runner="selftest", variant=variant, vocab_size=oracle.vocab_size,
                         tokenizer_sha256=oracle.tokenizer_sha256 or "")
    cases = [CaseTrace(cid, oracle.input_ids(cid), x.astype(np.float32)) for cid, x in arrays.items()]
    return write_trace(path, meta, cases)


def _judge(probe: Probe, verdict: Verdict) -> list[str]:
    problems = []
    if bool(verdict) != probe.expect_pass:
        problems.append(f"the gate {'passed' if verdict else 'failed'}"
                        + (f" ({'; '.join(verdict.reasons)})" if verdict.reasons else ""))
    if probe.reason and not verdict.passed and not any(probe.reason in r for r in verdict.reasons):
        problems.append(f"no failure reason mentions {probe.reason!r}: {verdict.reasons}")
    by_pos = {(p["case"], p["row"]): p for p in verdict.positions}
    for where, cls in probe.classes.items():
        got = by_pos.get(where, {}).get("class")
        if got != cls:
            problems.append(f"{where[0]} row {where[1]}: class {got!r}, expected {cls!r}")
    if probe.check:
        problems.extend(probe.check(verdict))
    try:  # the verdict, written and read back, must re-judge to itself
        check_verdict(json.loads(verdict.to_json()), f"the {probe.name} verdict")
    except InputError as e:
        problems.append(f"the verdict reader refuses the engine's own verdict: {e}")
    return problems


def run_selftest(oracle: str | os.PathLike | None = None, *, gate: str | GatePolicy = "int8hu",
                 config: str | os.PathLike | None = None, max_cases: int = 3,
                 workdir: str | os.PathLike | None = None) -> SelftestResult:
    """Run every probe through the real engine and real trace files; truthy iff every verdict is right."""
    policy = gate if isinstance(gate, GatePolicy) else get_gate(gate, config)
    with tempfile.TemporaryDirectory(prefix="flipgate-selftest-", dir=workdir) as tmp:
        tmp = Path(tmp)
        source = str(oracle) if oracle is not None else "a synthetic oracle"
        oracle_path = Path(oracle) if oracle is not None else synthetic_oracle(tmp / "synthetic-oracle.safetensors")
        full = open_trace(oracle_path)
        cids = full.case_ids[:max(1, max_cases)]
        # the probes' oracle: the chosen cases, in the oracle's own dtype
        sub = write_trace(tmp / "oracle.safetensors",
                          {**full.metadata, "variant": full.variant}, [full.case(c) for c in cids])
        sub_trace = open_trace(sub)
        logits = {c: full.case(c).logits.astype(np.float64) for c in cids}
        for cid, x in logits.items():
            bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
            if bad.size:
                raise InputError(f"{oracle_path}: case {cid!r} row {int(bad[0])}: oracle logits hold NaN or Inf")
        probes, results = build_probes(logits, policy)
        classes_only = replace(policy, max_defects=0, min_cosine=-1.0, max_kl=None)
        done = []
        for i, probe in enumerate(probes):
            orc = sub_trace if probe.oracle is None else \
                open_trace(_write(tmp / f"probe{i}-oracle.safetensors", sub_trace, probe.oracle, "bf16"))
            cand = orc.path if probe.control_is == "oracle" else \
                _write(tmp / f"probe{i}-candidate.safetensors", sub_trace, probe.candidate, probe.name)
            ctrl = cand if probe.control_is == "candidate" else \
                _write(tmp / f"probe{i}-control.safetensors", sub_trace, probe.control, "control") \
                if probe.control is not None else None
            pol = policy if probe.full_policy else classes_only
            pol = replace(pol, control=f"trace:{ctrl}" if ctrl else None, **probe.policy_change)
            try:
                verdict = evaluate(orc, cand, ctrl, policy=pol)
            except InputError as e:
                done.append(_refused(probe, str(e)))
                continue
            result = ProbeResult(probe.name, probe.what, probe.expect_pass, verdict, _judge(probe, verdict),
                                 expect_refusal=probe.refusal is not None)
            if probe.refusal is not None:
                result.problems.insert(0, f"the gate judged it instead of refusing ({probe.refusal!r})")
            done.append(result)
        done.append(_edited_verdict_probe(done, tmp))
    return SelftestResult(policy.name, source, done + results)


def _refused(probe: Probe, message: str) -> ProbeResult:
    result = ProbeResult(probe.name, probe.what, probe.expect_pass, refused=message,
                         expect_refusal=probe.refusal is not None)
    if probe.refusal is None:
        result.problems.append(f"the gate refused to judge: {message}")
    elif probe.refusal not in message:
        result.problems.append(f"refused, but not for {probe.refusal!r}: {message}")
    return result


def _edited_verdict_probe(done: list[ProbeResult], tmp: Path) -> ProbeResult:
    """A failed verdict whose `passed` is edited to true must be refused when read back."""
    name, what = "edited-verdict", "a verdict listing a defect, its 'passed' edited to true"
    failed = next((r.verdict for r in done if r.verdict is not None and not r.verdict.passed
                   and r.verdict.summary["defects"]), None)
    if failed is None:
        return ProbeResult(name, what, False, skipped="no probe produced a verdict with a defect")
    path = tmp / "edited.verdict.json"
    text = failed.to_json()
    edited = text.replace('"passed": false', '"passed": true', 1)
    path.write_text(edited, encoding="utf-8")
    result = ProbeResult(name, what, False, expect_refusal=True)
    if edited == text:
        result.problems.append("the verdict's JSON has no '\"passed\": false' to edit")
        return result
    try:
        Verdict.load(path)
    except InputError as e:
        result.refused = str(e)
        if "passed" not in result.refused:
            result.problems.append(f"refused, but not for its 'passed': {e}")
        return result
    result.problems.append("the edited verdict was read back as a pass")
    result.verdict = Verdict.load(path)
    return result
