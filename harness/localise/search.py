"""The search: for each defect, the smallest set of groups whose restoration repairs it (all
restorable modules, then kinds, then bisection over layers), preferring groups already chosen.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .groups import Group, Unit, groups_of, kind_label, layer_ranges, restoration_label
from .trials import Defect, OutOfBudget, TrialResult, TrialRunner, judge_row


# -- the search ------------------------------------------------------------------------------------------

REPAIRED = ("match", "tie-flip", "oracle-artifact")

@dataclass
class PositionResult:
    defect: Defect
    status: str = "pending"   # localised | partial | not-repaired | not-reproduced | untried
    culprits: list[Group] = field(default_factory=list)
    trials: list[TrialResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = self.defect
        rec = d.record
        out = {"case": d.case, "row": d.row, "position": d.position, "target_token": rec.get("target_token"),
               "oracle_top1": d.oracle_top1, "oracle_top2": d.oracle_top2, "margin": d.margin,
               "candidate_top1": d.candidate_top1, "control_top1": d.control_top1,
               "found_by": d.found_by, "status": self.status, "culprits": [g.to_dict() for g in self.culprits],
               "trials": [t.to_dict() for t in self.trials], "notes": list(self.notes)}
        for k in ("context_text", "target_text", "oracle_top1_text", "candidate_top1_text", "control_top1_text"):
            if k in rec:
                out[k] = rec[k]
        return out


class Search:
    """Coarse-to-fine localisation of every defect, sharing trials (see the module docstring)."""

    def __init__(self, runner: TrialRunner, defects: list[Defect], margin_space: str,
                 log: Callable[[str], None] | None = None):
        self.runner = runner
        self.map = runner.map
        self.defects = defects
        self.margin_space = margin_space
        self.results = {d.key: PositionResult(d) for d in defects}
        self.chosen: set[Unit] = set()   # the union of culprits so far: preferred where there is a choice
        self.untried: list[str] = []
        self.exhausted = False
        self.log = log or (lambda _msg: None)
        self.trial_sets: set[frozenset] = set()

    # -- one trial at one position -------------------------------------------------------------------

    def trial(self, units: Iterable[Unit], defect: Defect) -> TrialResult:
        units = frozenset(units)
        reused = self.runner.known(units, defect.case, defect.row)
        rows = self.runner.rows(units, defect.case, defect.row)
        self.trial_sets.add(units)
        cls, top1, lead = judge_row(defect, rows[defect.row], self.margin_space)
        res = TrialResult(units, restoration_label(units), cls, top1, lead, cls in REPAIRED, reused)
        pr = self.results[defect.key]
        if not any(t.units == units for t in pr.trials):
            pr.trials.append(res)
        return res

    def repairs(self, units: Iterable[Unit], defect: Defect) -> bool:
        return self.trial(units, defect).repaired

    # -- the order of choice ---------------------------------------------------------------------------

    def _preference(self, units: frozenset[Unit]):
        return (-len(units & self.chosen), self.map.cost(units - self.chosen), sorted(units))

    # -- per position ------------------------------------------------------------------------------------

    def add(self, defects: list[Defect]) -> None:
        for d in defects:
            if d.key not in self.results:
                self.defects.append(d)
                self.results[d.key] = PositionResult(d)

    def run(self, todo: list[Defect] | None = None, base: frozenset[Unit] = frozenset(), rounds: int = 3) -> None:
        """Localise `todo` (default: every defect) on top of `base`; then, while the union of all
        culprits leaves some localised defect unrepaired, localise those again on top of the union."""
        todo = list(self.defects if todo is None else todo)
        for round_no in range(rounds):
            for d in todo:
                try:
                    self.localise(d, base)
                except OutOfBudget:
                    self._out_of_budget(d)
                    break
            if self.exhausted:
                break
            # the union must repair every localised defect at once; those it does not are done again on top of it
            union = frozenset(self.chosen)
            todo = []
            for d in self.defects:
                pr = self.results[d.key]
                if pr.status not in ("localised", "partial"):
                    continue
                try:
                    ok = self.repairs(union, d)
                except OutOfBudget:
                    self._out_of_budget(None)
                    break
                if not ok:
                    pr.notes.append(f"round {round_no + 1}: the union of all culprits ({restoration_label(union)}) "
                                    "does not repair it: localised again on top of that union")
                    todo.append(d)
            if self.exhausted or not todo:
                break
            base = union
        for d in todo:
            if not self.exhausted:
                self.results[d.key].notes.append(f"still not repaired by the union after {rounds} rounds")

    def _out_of_budget(self, current: Defect | None) -> None:
        self.exhausted = True
        if current is not None and self.results[current.key].status == "pending":
            self.results[current.key].status = "untried"
        for d in self.defects:
            pr = self.results[d.key]
            if pr.status in ("pending",):
                pr.status = "untried"
            if pr.status == "untried":
                self.untried.append(f"defect {d.key} (position {d.position}): not localised")

    def localise(self, d: Defect, base: frozenset[Unit]) -> None:
        """Find the groups that repair `d` on top of `base` (nothing, or the union of earlier culprits)."""
        pr = self.results[d.key]
        every = self.map.all_units()
        if pr.status == "pending":
            start = self.trial(base, d)
            if start.repaired:
                pr.status = "not-reproduced"
                pr.notes.append(f"the trial restoring {restoration_label(base)} gives {start.cls}, not the verdict's "
                                "defect: the trace was not made by this decode (another mode, model or recipe?)")
                return
        if not self.repairs(every | base, d):
            pr.status = "not-repaired"
            pr.notes.append("restoring every restorable module to the safe recipe does not repair it")
            return
        self.log(f"localising defect {d.key} (position {d.position})")
        before = frozenset().union(*(g.units() for g in pr.culprits)) if pr.culprits else frozenset()
        kinds = sorted(self.map.kinds, key=lambda k: self._preference(self.map.kind_units(k)))
        chosen_kinds = None
        try:
            for size in range(1, len(kinds) + 1):
                combos = sorted(itertools.combinations(kinds, size),
                                key=lambda ks: self._preference(self._kinds_units(ks)))
                fixing = []
                for ks in combos:
                    # every kind at once is known to repair it; singles are all tried (the evidence table)
                    if size == len(kinds) or self.repairs(base | self._kinds_units(ks), d):
                        fixing.append(ks)
                        if size > 1:
                            break
                if fixing:
                    chosen_kinds = fixing[0]
                    break
        except OutOfBudget:
            pr.culprits = groups_of(every | before)
            pr.status = "partial"
            pr.notes.append("the budget ran out before a kind was singled out: every restorable group is the culprit "
                            "set known to repair it")
            self.untried.append(f"defect {d.key}: kinds not singled out")
            self.chosen |= every
            raise
        current = {k: self.map.kind_layers(k) for k in chosen_kinds}
        partial = False
        for k in chosen_kinds:
            if len(current[k]) <= 1:
                continue
            ctx = base | frozenset().union(*(self._units(k2, current[k2]) for k2 in chosen_kinds if k2 != k))
            try:
                current[k] = self.refine(k, current[k], ctx, d)
            except _Partial as p:
                current[k] = p.layers
                partial = True
                self.untried.append(f"defect {d.key}: {kind_label(k)} layers {layer_ranges(p.untried)} not narrowed")
                break
        units = frozenset().union(*(self._units(k, current[k]) for k in chosen_kinds))
        if base:
            pr.notes.append(f"on top of {restoration_label(base)} it also needs {restoration_label(units)}")
        pr.culprits = groups_of(units | before)
        pr.status = "partial" if partial else "localised"
        self.chosen |= units
        if partial:
            raise OutOfBudget()

    def _kinds_units(self, kinds: Iterable[str]) -> frozenset[Unit]:
        return frozenset().union(*(self.map.kind_units(k) for k in kinds))

    def _units(self, kind: str, layers: Iterable[int]) -> frozenset[Unit]:
        layers = list(layers)
        if not layers:
            return self.map.kind_units(kind)
        return frozenset((kind, layer) for layer in layers)

    def refine(self, kind: str, layers: list[int], ctx: frozenset[Unit], d: Defect) -> list[int]:
        """The fewest of `layers` (of `kind`) that repair `d` with `ctx` restored, by bisection.
        Precondition: restoring all of `layers` (with ctx) repairs it."""
        if len(layers) == 1:
            return layers
        mid = len(layers) // 2
        halves = sorted([layers[:mid], layers[mid:]], key=lambda h: self._preference(self._units(kind, h)))
        try:
            for h in halves:
                if self.repairs(ctx | self._units(kind, h), d):
                    return self.refine(kind, h, ctx, d)
        except OutOfBudget:
            raise _Partial(layers, layers) from None
        # neither half alone: both are needed; narrow each with the other restored
        a, b = halves
        try:
            ra = self.refine(kind, a, ctx | self._units(kind, b), d)
        except _Partial as p:
            raise _Partial(p.layers + b, p.untried + b) from None
        try:
            rb = self.refine(kind, b, ctx | self._units(kind, ra), d)
        except _Partial as p:
            raise _Partial(ra + p.layers, p.untried) from None
        return sorted(ra + rb)


class _Partial(Exception):
    def __init__(self, layers: list[int], untried: list[int]):
        super().__init__()
        self.layers = sorted(layers)
        self.untried = sorted(untried)
