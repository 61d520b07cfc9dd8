"""The verdict of a gate, `flipgate.verdict/1` (DESIGN.md, "Verdict"): truthy iff the gate passed.

`to_json()` is deterministic: keys in a fixed order (provenance sorted), floats rounded to
FLOAT_DIGITS significant digits, and NaN/Inf written as the strings "NaN", "Infinity", "-Infinity"
(plain JSON has no such numbers; a reader that sees a string where a bound wants a number cannot
mistake it for a pass). `from_dict`/`load` turn those strings back into floats.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness import safejson
from harness.errors import InputError
from harness.fileio import write_text_atomic

SCHEMA = "flipgate.verdict/1"
FLOAT_DIGITS = 10
KEYS = ("schema", "gate", "passed", "policy", "summary", "positions", "provenance")
POSITION_KEYS = ("case", "row", "position", "target_token", "oracle_top1", "oracle_top2", "margin",
                 "candidate_top1", "control_top1", "class", "cosine", "kl", "oracle_rank_in_candidate",
                 "top5_overlap")
SUMMARY_KEYS = ("positions", "exact", "rule", "confident", "tie_flips", "oracle_artifacts", "defects",
                "invalid", "min_cosine", "mean_cosine", "mean_kl")
CLASSES = ("match", "tie-flip", "oracle-artifact", "defect", "invalid")
_FLOAT_KEYS = frozenset({
    "margin", "margin_prob", "margin_logit", "cosine", "kl", "oracle_top1_prob", "oracle_top2_prob",
    "candidate_top1_prob", "control_top1_prob", "min_cosine", "mean_cosine", "mean_kl", "max_kl",
    "min_margin", "confident_flip_rate", "confident_flip_rate_ci95"})
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _plain(x):
    """JSON-ready copy: rounded finite floats, NaN/Inf as strings."""
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        r = float(f"{x:.{FLOAT_DIGITS}g}")
        return 0.0 if r == 0 else r  # one zero: -0.0 and 0.0 would print differently
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item"):  # a numpy scalar
        return _plain(x.item())
    return str(x)


def _unspecial(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if k in _FLOAT_KEYS:
            if isinstance(v, str) and v in _SPECIAL:
                v = _SPECIAL[v]
            elif isinstance(v, list):
                v = [_SPECIAL.get(x, x) if isinstance(x, str) else x for x in v]
        out[k] = v
    return out


MAX_DEPTH = 64  # a verdict nests 4 deep; provenance a little more
def json_depth(text: str) -> int:
    """How deep `text`'s arrays and objects nest (brackets inside strings do not count), in linear time."""
    return safejson.measure(text)[0]


def parse_json(text: str, source: str, *, max_depth: int = MAX_DEPTH):
    """`json.loads` for a verdict file: a file nested deeper than `max_depth`, or one that is not JSON,
    is an InputError naming `source` (never a RecursionError from the parser)."""
    try:
        return safejson.loads(text, max_depth=max_depth)
    except safejson.JSONLimitError as e:
        raise InputError(f"{source}: not a flipgate verdict (JSON {e}; a verdict nests at most {max_depth})") from None
    except RecursionError:
        raise InputError(f"{source}: not a flipgate verdict (JSON nested too deep)") from None
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e).split(";")[0]
        raise InputError(f"{source}: not a verdict (malformed JSON: {msg}{where})") from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")



def check_verdict(d, source: str = "verdict") -> None:
    """Raise InputError naming `source` and the key at fault unless `d` is a flipgate.verdict/1 dict.

    The one reading of the schema: the gate engine's loader and the reports both call it.
    A pass must be stated, never inferred: `"passed": "false"` or null is an error, not a pass."""
    from collections.abc import Mapping

    if not isinstance(d, Mapping):
        raise InputError(f"{source}: not a flipgate verdict (not a JSON object)")
    if "schema" not in d:
        raise InputError(f"{source}: not a flipgate verdict (no 'schema' key; expected {SCHEMA!r})")
    if d["schema"] != SCHEMA:
        raise InputError(f"{source}: schema {d['schema']!r} is not {SCHEMA!r}")
    missing = [k for k in KEYS if k not in d]
    if missing:
        raise InputError(f"{source}: verdict lacks key {missing[0]!r}")
    if not isinstance(d["gate"], str) or not d["gate"]:
        raise InputError(f"{source}: 'gate' must be a non-empty string")
    if not isinstance(d["passed"], bool):
        raise InputError(f"{source}: 'passed' must be true or false, found {d['passed']!r}")
    if not isinstance(d["summary"], Mapping) or not isinstance(d["policy"], Mapping):
        raise InputError(f"{source}: 'summary' and 'policy' must be objects")
    lacking = [k for k in SUMMARY_KEYS if k not in d["summary"]]
    if lacking:
        raise InputError(f"{source}: summary lacks key {lacking[0]!r}")
    if not isinstance(d["positions"], list):
        raise InputError(f"{source}: 'positions' must be a list")
    for i, p in enumerate(d["positions"]):
        if not isinstance(p, Mapping):
            raise InputError(f"{source}: positions[{i}] is not an object")
        lacking = [k for k in POSITION_KEYS if k not in p]
        if lacking:
            raise InputError(f"{source}: positions[{i}] lacks key {lacking[0]!r}")
        if p["class"] not in CLASSES:
            raise InputError(f"{source}: positions[{i}] class {_short(p['class'])} is not one of {', '.join(CLASSES)}")
    rejudge(d, source)


# ---- re-judging a verdict from its own positions and policy (DESIGN.md, "Verdict") -----------------
#
# A verdict file is text anyone can edit. Before a report or a sign-off believes its `passed`, every
# position's class is derived again from its stored numbers, the summary's counts and extremes from
# the positions, and `passed` from the counts and the policy's bounds; any disagreement is refused.
# Floats are stored to FLOAT_DIGITS significant digits, so a number within rounding of a threshold
# (a margin at min_margin, a cosine at min_cosine) may go either way: there the verdict's own
# reading is kept.

_ROUNDING = 10.0 ** (2 - FLOAT_DIGITS)  # relative: well above the storage rounding, far below any real gap


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _near(a: float, b: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return a == b
    return abs(a - b) <= _ROUNDING * max(1.0, abs(a), abs(b))


def _int(v, where: str, *, none: bool = False) -> int | None:
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{where} = {_short(v)}: expected an integer{' or null' if none else ''}")
    return v


def _real(v, where: str, *, none: bool = False) -> float | None:
    if v is None and none:
        return None
    if isinstance(v, str) and v in _SPECIAL:
        return _SPECIAL[v]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"{where} = {_short(v)}: expected a number")
    try:
        return float(v)
    except OverflowError:
        raise InputError(f"{where}: the integer {str(v)[:20]}... is too large for a number") from None


def _same(stored: float, derived: float, *, rel: float = _ROUNDING) -> bool:
    if math.isnan(stored) or math.isnan(derived):
        return math.isnan(stored) and math.isnan(derived)
    if math.isinf(stored) or math.isinf(derived):
        return stored == derived
    return abs(stored - derived) <= rel * max(1.0, abs(stored), abs(derived))


def _extreme(values: list[float], pick) -> float:
    """min/max as the engine takes them (numpy): NaN if any value is NaN or there is none."""
    if not values or any(math.isnan(x) for x in values):
        return math.nan
    return pick(values)


def _mean(values: list[float]) -> float:
    if not values:
        return math.nan
    if not all(math.isfinite(x) for x in values):
        return sum(values) / len(values)  # NaN or ±inf, as numpy's mean (fsum raises on inf - inf)
    return math.fsum(values) / len(values)


def rejudge(d, source: str = "verdict") -> None:
    """Raise InputError naming `source` and the key unless `d`'s classes, summary and `passed` are what
    its own positions and policy give (the verdict's schema is checked first: `check_verdict`)."""
    pol, s = d["policy"], d["summary"]
    w = f"{source}: policy"
    for key in ("min_margin", "max_defects", "min_cosine"):
        if key not in pol:
            raise InputError(f"{w} lacks key {key!r}")
    space = pol.get("margin_space", "prob")
    if space not in ("prob", "logit"):
        raise InputError(f"{w} margin_space = {_short(space)}: expected 'prob' or 'logit'")
    min_margin = _real(pol["min_margin"], f"{w} min_margin")
    max_defects = _int(pol["max_defects"], f"{w} max_defects")
    min_cosine = _real(pol["min_cosine"], f"{w} min_cosine")
    max_kl = _real(pol.get("max_kl"), f"{w} max_kl", none=True)
    # a verdict written before min_confident existed was judged without it
    min_confident = _int(pol.get("min_confident", 0), f"{w} min_confident")
    if max_defects < 0 or min_confident < 0:
        raise InputError(f"{w} max_defects and min_confident must not be negative")
    if not math.isfinite(min_margin) or math.isnan(min_cosine) or (max_kl is not None and math.isnan(max_kl)):
        raise InputError(f"{w}: min_margin, min_cosine and max_kl must be numbers")
    has_control = pol.get("control") is not None

    counts = dict.fromkeys(CLASSES, 0)
    confident_lo = confident_hi = judged_lo = judged_hi = 0
    cosines: list[float] = []
    kls: list[float] = []
    for i, p in enumerate(d["positions"]):
        w = f"{source}: positions[{i}]"
        margin = _real(p["margin"], f"{w} margin")
        if not math.isfinite(margin):
            raise InputError(f"{w} margin = {_short(p['margin'])}: an oracle's margin is always finite")
        own = p.get(f"margin_{space}")
        if own is not None and not _same(_real(own, f"{w} margin_{space}"), margin):
            raise InputError(f"{w} margin {margin!r} is not its margin_{space} {own!r} (the policy's margin_space)")
        confident = {margin >= min_margin}
        if "confident" in p:
            if not isinstance(p["confident"], bool):
                raise InputError(f"{w} confident = {_short(p['confident'])}: expected true or false")
            if _near(margin, min_margin):   # within rounding of the threshold: the verdict's reading stands
                confident = {p["confident"]}
            elif p["confident"] not in confident:
                raise InputError(f"{w} confident = {str(p['confident']).lower()} disagrees with its margin "
                                 f"{margin!r} (min_margin {min_margin!r})")
        elif _near(margin, min_margin):
            confident = {True, False}
        top1 = _int(p["oracle_top1"], f"{w} oracle_top1")
        if _int(p["oracle_top2"], f"{w} oracle_top2") == top1:
            raise InputError(f"{w} oracle_top2 = {top1} is its oracle_top1: the oracle's two best are two tokens")
        cand = _int(p["candidate_top1"], f"{w} candidate_top1", none=True)
        ctrl = _int(p["control_top1"], f"{w} control_top1", none=True)
        if ctrl is not None and not has_control:
            raise InputError(f"{w} control_top1 = {ctrl} but the policy has no control")
        if cand is None or (has_control and ctrl is None):
            expected = {"invalid"}
        elif cand == top1:
            expected = {"match"}
        else:
            expected = {"tie-flip" if not c else "oracle-artifact" if ctrl == cand else "defect" for c in confident}
        cosine, kl = _real(p["cosine"], f"{w} cosine"), _real(p["kl"], f"{w} kl")
        if math.isnan(cosine) or math.isnan(kl):  # a non-finite row shows in its metrics: invalid fits too
            expected.add("invalid")
        cls = p["class"]
        if cls not in expected:
            raise InputError(f"{w} class {cls!r} disagrees with its own numbers (oracle_top1 {top1}, "
                             f"candidate_top1 {cand}, control_top1 {ctrl}, margin {margin!r}): expected "
                             + " or ".join(sorted(expected)))
        if cls != "invalid":
            rank = _int(p["oracle_rank_in_candidate"], f"{w} oracle_rank_in_candidate")
            if rank < 1 or (rank == 1) != (cand == top1):
                raise InputError(f"{w} oracle_rank_in_candidate {rank} disagrees with candidate_top1 {cand} "
                                 f"(oracle_top1 {top1})")
        counts[cls] += 1
        confident_lo += confident == {True}
        confident_hi += True in confident
        if cls in ("match", "oracle-artifact", "defect"):  # what the defect-rate bound counts
            judged_lo += confident == {True}
            judged_hi += True in confident
        cosines.append(cosine)
        kls.append(kl)

    w = f"{source}: summary"
    n = len(d["positions"])
    derived = {"positions": n, "exact": counts["match"], "rule": counts["match"] + counts["tie-flip"],
               "tie_flips": counts["tie-flip"], "oracle_artifacts": counts["oracle-artifact"],
               "defects": counts["defect"], "invalid": counts["invalid"]}
    for key, value in derived.items():
        if _int(s[key], f"{w} {key}") != value:
            raise InputError(f"{w} {key} = {s[key]} disagrees with its positions ({value})")
    confident = _int(s["confident"], f"{w} confident")
    if not confident_lo <= confident <= confident_hi:
        raise InputError(f"{w} confident = {confident} disagrees with its positions "
                         f"({confident_lo if confident_lo == confident_hi else f'{confident_lo} to {confident_hi}'})")
    # the bound a report states in words ("below 0.29 % at 95 %") is recomputed, never read
    if "confident_judged" in s or "defect_rate_upper_95" in s:
        judged = _int(s.get("confident_judged", confident), f"{w} confident_judged")
        if not judged_lo <= judged <= judged_hi:
            raise InputError(f"{w} confident_judged = {judged} disagrees with its positions")
        if "defect_rate_upper_95" in s:
            from .metrics import defect_rate_upper

            stored = _real(s["defect_rate_upper_95"], f"{w} defect_rate_upper_95", none=True)
            value = defect_rate_upper(counts["defect"], judged)
            if (stored is None) != (value is None) or (stored is not None and not _same(stored, value, rel=1e-6)):
                raise InputError(f"{w} defect_rate_upper_95 = {_short(s['defect_rate_upper_95'])} disagrees with "
                                 f"{counts['defect']} defect(s) in {judged} confident positions ({value!r})")
    min_cos, max_kl_seen = _extreme(cosines, min), _extreme(kls, max)
    for key, value, rel in (("min_cosine", min_cos, _ROUNDING), ("mean_cosine", _mean(cosines), 1e-6),
                            ("mean_kl", _mean(kls), 1e-6), ("max_kl", max_kl_seen, _ROUNDING)):
        if key not in s:
            continue
        stored = _real(s[key], f"{w} {key}")
        if not _same(stored, value, rel=rel):
            raise InputError(f"{w} {key} = {_short(s[key])} disagrees with its positions ({value!r})")

    fails: list[str] = []
    unsure = False
    if n == 0:
        fails.append("no scored positions")
    if counts["invalid"]:
        fails.append(f"{counts['invalid']} invalid position(s)")
    if counts["defect"] > max_defects:
        fails.append(f"{counts['defect']} defect(s) > max_defects {max_defects}")
    if confident < min_confident:
        fails.append(f"{confident} confident position(s) < min_confident {min_confident}")
    if math.isnan(min_cos) or (min_cos < min_cosine and not _near(min_cos, min_cosine)):
        fails.append(f"min cosine {min_cos!r} < min_cosine {min_cosine!r}")
    unsure |= _near(min_cos, min_cosine)
    if max_kl is not None:
        if math.isnan(max_kl_seen) or (max_kl_seen > max_kl and not _near(max_kl_seen, max_kl)):
            fails.append(f"max KL {max_kl_seen!r} > max_kl {max_kl!r}")
        unsure |= _near(max_kl_seen, max_kl)
    if d["passed"] and fails:
        raise InputError(f"{source}: 'passed' is true, but its own positions fail the gate ({fails[0]})")
    if not d["passed"] and not fails and not unsure:
        raise InputError(f"{source}: 'passed' is false, but its own positions hold every bound of its policy")
    reasons = s.get("reasons")
    if isinstance(reasons, list) and bool(reasons) == d["passed"]:
        raise InputError(f"{source}: summary reasons {_short(reasons)} disagree with 'passed' {str(d['passed']).lower()}")

@dataclass
class Verdict:
    gate: str
    passed: bool
    policy: dict
    summary: dict
    positions: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.passed)

    @property
    def reasons(self) -> list[str]:
        """Why the gate failed (empty when it passed)."""
        return list(self.summary.get("reasons", []))

    def gate_policy(self):
        from .policy import GatePolicy

        return GatePolicy.from_dict(self.policy)

    def non_matches(self) -> list[dict]:
        return [p for p in self.positions if p["class"] != "match"]

    def one_line(self) -> str:
        s = self.summary
        n = s["positions"]
        cos = s["min_cosine"]
        cos_text = "NaN" if isinstance(cos, float) and math.isnan(cos) else f"{cos:.4f}"
        arts = _plural(s["oracle_artifacts"], "oracle-artifact")
        if "oracle_artifacts_confirmed" in s:
            arts += f" ({s['oracle_artifacts_confirmed']} confirmed by fp32)"
        parts = [f"exact {s['exact']}/{n}", f"rule {s['rule']}/{n}", _plural(s["defects"], "defect"), arts]
        if s["invalid"]:
            parts.append(f"{s['invalid']} invalid")
        parts.append(f"min cos {cos_text}")
        if self.policy.get("max_kl") is not None:
            parts.append(f"max KL {s['max_kl']:.3g}")
        return f"{self.gate}: {'PASS' if self.passed else 'FAIL'} — " + ", ".join(parts)

    def to_dict(self) -> dict:
        """Plain Python values (floats may be NaN); `to_json` is the file form."""
        return {"schema": SCHEMA, "gate": self.gate, "passed": bool(self.passed), "policy": dict(self.policy),
                "summary": dict(self.summary), "positions": [dict(p) for p in self.positions],
                "provenance": dict(self.provenance)}

    def to_json(self) -> str:
        d = _plain(self.to_dict())
        d["provenance"] = json.loads(json.dumps(d["provenance"], sort_keys=True))

        def block(value) -> str:
            return json.dumps(value, indent=2, ensure_ascii=True).replace("\n", "\n  ")

        lines = []
        for key in KEYS:
            if key == "positions":
                rows = ",\n".join("    " + json.dumps(p, ensure_ascii=True) for p in d["positions"])
                text = "[\n" + rows + "\n  ]" if rows else "[]"
            else:
                text = block(d[key])
            lines.append(f"  {json.dumps(key)}: {text}")
        return "{\n" + ",\n".join(lines) + "\n}\n"

    def write(self, path: str | os.PathLike) -> Path:
        write_text_atomic(path, self.to_json())
        return Path(path)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "verdict") -> "Verdict":
        check_verdict(d, source)
        return cls(gate=d["gate"], passed=d["passed"], policy=_unspecial(d["policy"]),
                   summary=_unspecial(d["summary"]), positions=[_unspecial(p) for p in d["positions"]],
                   provenance=dict(d["provenance"] or {}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Verdict":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"{p}: cannot read ({e.strerror})") from None
        except UnicodeDecodeError:
            raise InputError(f"{p}: not a flipgate verdict (not UTF-8 text)") from None
        return cls.from_dict(parse_json(text, str(p)), source=str(p))
