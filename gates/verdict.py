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
            raise InputError(f"{source}: positions[{i}] class {p['class']!r} is not one of {', '.join(CLASSES)}")

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
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}: not JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(d, source=str(p))
