"""The record of a localisation (`flipgate.localise/1`): each defect's culprits and trial table, the
suggested recipe and its verification, the trial statistics.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .groups import Unit, groups_of, restoration_label
from .search import PositionResult


# -- the result ------------------------------------------------------------------------------------------------

SCHEMA = "flipgate.localise/1"

@dataclass
class Localisation:
    """What `localise` found. Truthy when every defect was localised and the suggested recipe
    repairs them all (and, when it was verified, its gate passes)."""

    gate: str
    candidate: str
    safe: str
    policy: dict
    n_layers: int
    kinds: list[str]
    positions: list[PositionResult]
    baseline: dict                       # the gate's verdict summary (one_line, defects, ...)
    suggested_name: str | None = None
    suggested_text: str | None = None
    suggested_units: list[Unit] = field(default_factory=list)
    suggested_repairs: bool | None = None
    sizes: dict = field(default_factory=dict)
    verification: dict | None = None     # the suggested recipe's gate, last round: passed, one_line, summary
    verifications: list[dict] = field(default_factory=list)  # every round
    untried: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    message: str = ""
    restorable: dict = field(default_factory=dict)  # kind -> layers
    present: dict = field(default_factory=dict)     # kind -> layers holding its modules (restorable or not)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return (bool(self.positions) and all(p.status == "localised" for p in self.positions)
                and bool(self.suggested_repairs)
                and (self.verification is None or bool(self.verification.get("passed"))))

    @property
    def no_defects(self) -> bool:
        return not self.positions

    def __bool__(self) -> bool:
        return self.no_defects or self.complete

    def culprit_units(self) -> set[Unit]:
        return {u for p in self.positions for g in p.culprits for u in g.units()}

    def one_line(self) -> str:
        if self.no_defects:
            return self.message
        n = len(self.positions)
        done = sum(p.status == "localised" for p in self.positions)
        culprits = restoration_label(self.culprit_units()) if self.culprit_units() else "none"
        text = f"{self.gate}: {done}/{n} defect(s) localised; culprits: {culprits}"
        if self.suggested_name:
            text += f"; suggested {self.suggested_name}"
            if self.verification is not None:
                text += " (gate " + ("PASS" if self.verification.get("passed") else "FAIL") + ")"
        return text

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA, "gate": self.gate, "candidate": self.candidate, "safe": self.safe,
            "complete": self.complete, "message": self.message, "policy": dict(self.policy),
            "baseline": dict(self.baseline), "layers": self.n_layers, "kinds": list(self.kinds),
            "restorable": {k: list(v) for k, v in self.restorable.items()},
            "present": {k: list(v) for k, v in self.present.items()},
            "positions": [p.to_dict() for p in self.positions],
            "suggested": None if self.suggested_name is None else {
                "name": self.suggested_name, "groups": [g.to_dict() for g in groups_of(self.suggested_units)],
                "repairs_all_defects": self.suggested_repairs, "recipe": self.suggested_text},
            "sizes": dict(self.sizes), "verification": self.verification, "verifications": list(self.verifications),
            "untried": list(self.untried), "stats": dict(self.stats), "notes": list(self.notes),
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        import json

        from ..fileio import write_text_atomic

        write_text_atomic(path, json.dumps(_json_ready(self.to_dict()), indent=2, ensure_ascii=True) + "\n")
        return Path(path)


def _json_ready(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else ("NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity"))
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if hasattr(x, "item"):
        return _json_ready(x.item())
    return x
