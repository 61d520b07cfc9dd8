"""Flip localisation: which quantized modules cause each defect, and the cheapest recipe that removes them.

A gate compares a candidate recipe (say `int4lin`) with the oracle; its defects are confident
positions where the candidate picks another token. Every Linear module that the candidate
quantizes differently from a *safe* recipe (default `fp16`; `int8lin` is another sensible one) can
be *restored*: given the safe recipe's weight instead of the candidate's. A **trial** restores a
set of modules, decodes the cases that hold defects S=1 through the model's cache (exactly as the
emulated candidate does) and asks, with the gate engine's own rule, what class each defect
position now gets. A defect is **repaired** by a restoration when the gate no longer counts it:
match, tie-flip, or oracle-artifact (the candidate now flips as the control does).

Groups, coarse to fine: a kind (attention, GatedDeltaNet, MLP, head) -> a kind over a contiguous
range of layers -> one layer of one kind (a *unit*, the finest group). For each defect:

  1. restore every restorable module: if that does not repair it, the safe recipe cannot, and the
     position is reported `not-repaired` (no culprit);
  2. restore each kind alone; if none repairs it, the smallest combination of kinds that does;
  3. bisect each chosen kind's layers (the other chosen kinds stay restored): keep the half that
     repairs; where neither half alone does, keep both and narrow each with the other restored.
     That is bisection, never an exhaustive search; it ends at single layers.

When several groups would do, the one already chosen for an earlier defect wins, then the one
with fewer weight bytes to restore. The **suggested recipe** restores the union of every defect's
culprits; it is checked by a trial on every defect case (defects it leaves are localised again on
top of it) and, unless told not to, by capturing it over the whole case set and judging it with
the gate's policy. Restorations interact: a suggestion can flip a position the candidate got
right, so defects that capture finds are localised on top of the suggestion, and the grown
suggestion verified again (at most VERIFY_ROUNDS captures).

Where the time goes, and what is shared between trials:
  - only the cases holding defects run, each only up to its last defect position, and the head
    only at the defect rows (a 248k-vocabulary head costs more than a layer);
  - every trial's rows are kept, keyed by (restored units, case), so no restoration runs twice;
  - the *layer prefix*: a trial whose restorations all lie at or above layer L computes layers
    below L exactly as an earlier trial that restored the same units below L did. The output of
    every layer at every step is recorded per trial, and a later trial replays the recorded
    output of layer L-1 instead of computing layers 0..L-1 (bit-identical: a layer's output
    depends only on its input and its own cache; positions are passed explicitly, since a skipped
    attention layer's cache no longer counts the tokens). A head-only trial computes nothing but
    the head. tests/harness/test_localise.py checks replayed rows against computed ones bit for bit.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import tempfile
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import InputError
from .models import torch_threads
from .recipe import FORMAT as RECIPES_FORMAT
from .recipe import QuantSpec, Recipe, _toml_key, _toml_str, _toml_value, parse_recipes

SCHEMA = "flipgate.localise/1"
DEFAULT_BUDGET = 200
DEFAULT_SAFE = "fp16"
REPAIRED = ("match", "tie-flip", "oracle-artifact")
# Kinds in report order: (key, label). The mixer's attribute name inside a decoder layer gives the kind.
KINDS = (("attention", "attention"), ("gdn", "GatedDeltaNet"), ("mlp", "MLP"), ("head", "head"))
KIND_LABELS = dict(KINDS)
_MIXER_KINDS = {"self_attn": "attention", "attn": "attention", "attention": "attention",
                "linear_attn": "gdn", "mlp": "mlp", "feed_forward": "mlp", "block_sparse_moe": "mlp"}
_LAYER_PART = re.compile(r"(?:^|\.)layers\.(\d+)\.([A-Za-z_][A-Za-z0-9_]*)")
RECORD_BYTES = 1 << 30  # recorded layer outputs kept for the layer-prefix reuse (least recently used go first)


def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind)


# -- weight bytes ------------------------------------------------------------------------------------

def weight_bytes(spec: QuantSpec | None, shape: tuple[int, int]) -> int:
    """Bytes a Linear weight `[out, in]` takes when stored as `spec` (None: fp16): the codes, one
    fp16 scale per block (per row for per_channel) and, for the asymmetric scheme, one zero point
    per block at the codes' width."""
    out_f, in_f = shape
    n = out_f * in_f
    if spec is None:
        return 2 * n
    bits = int(spec.dtype.removeprefix("int"))
    blocks = out_f * (in_f // spec.block_size if spec.granularity == "per_block" else 1)
    zero_points = math.ceil(blocks * bits / 8) if spec.qscheme == "asymmetric" else 0
    return math.ceil(n * bits / 8) + 2 * blocks + zero_points


def model_bytes(model, plan: dict[str, QuantSpec | None]) -> int:
    """Weight bytes of the whole model under a plan: Linear weights as planned, every other
    parameter (embeddings, norms, convolutions, biases) at fp16."""
    total = 0
    planned = set(plan)
    for name, p in model.named_parameters(remove_duplicate=True):
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module in planned:
            total += weight_bytes(plan[module], tuple(p.shape))
        else:
            total += 2 * p.numel()
    return total


# -- groups ----------------------------------------------------------------------------------------------

Unit = tuple[str, int]  # (kind, layer); layer -1 for a module outside the decoder layers (the head)


@dataclass(frozen=True)
class Group:
    """A kind over some layers (all of one kind's layers, a range, or one layer)."""

    kind: str
    layers: tuple[int, ...]  # () for the head

    @property
    def label(self) -> str:
        return kind_label(self.kind) + (f" {layer_ranges(self.layers)}" if self.layers else "")

    def units(self) -> frozenset[Unit]:
        return frozenset((self.kind, layer) for layer in self.layers) if self.layers else frozenset({(self.kind, -1)})

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers), "label": self.label}


def layer_ranges(layers: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    out = []
    for _, run in itertools.groupby(enumerate(sorted(set(layers))), key=lambda x: x[1] - x[0]):
        run = [x[1] for x in run]
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def groups_of(units: Iterable[Unit]) -> list[Group]:
    """Units gathered per kind, in report order."""
    per: dict[str, list[int]] = {}
    for kind, layer in units:
        per.setdefault(kind, [])
        if layer >= 0:
            per[kind].append(layer)
    order = {k: i for i, (k, _) in enumerate(KINDS)}
    return [Group(k, tuple(sorted(per[k]))) for k in sorted(per, key=lambda k: (order.get(k, len(order)), k))]


def restoration_label(units: Iterable[Unit]) -> str:
    units = list(units)
    return "; ".join(g.label for g in groups_of(units)) if units else "nothing (the candidate)"


@dataclass
class UnitInfo:
    unit: Unit
    modules: list[str]
    boundary: int          # the first layer boundary its restoration can change (see TrialRunner)
    restore_bytes: int     # bytes(safe) - bytes(candidate) over its modules


@dataclass
class ModuleMap:
    """The restorable modules of a model (candidate and safe recipes plan them differently), per unit."""

    units: dict[Unit, UnitInfo]
    n_layers: int
    candidate_plan: dict[str, QuantSpec | None]
    safe_plan: dict[str, QuantSpec | None]
    present: dict[str, list[int]] = field(default_factory=dict)  # kind -> layers holding its Linears at all

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(g.kind for g in groups_of(self.units)))

    def kind_units(self, kind: str) -> frozenset[Unit]:
        return frozenset(u for u in self.units if u[0] == kind)

    def kind_layers(self, kind: str) -> list[int]:
        return sorted(u[1] for u in self.units if u[0] == kind and u[1] >= 0)

    def cost(self, units: Iterable[Unit]) -> int:
        return sum(self.units[u].restore_bytes for u in units)

    def modules(self, units: Iterable[Unit]) -> list[str]:
        return [m for u in units for m in self.units[u].modules]

    def all_units(self) -> frozenset[Unit]:
        return frozenset(self.units)


def module_map(model, candidate: Recipe, safe: Recipe) -> ModuleMap:
    """Which Linear modules can be restored, grouped by (kind, layer). InputError names both
    recipes when there is nothing to restore."""
    cand_plan = candidate.plan(model)
    safe_plan = safe.plan(model)
    head = _head_name(model)
    layer_ids = [int(m.group(1)) for n in cand_plan if (m := _LAYER_PART.search(n))]
    n_layers = max(layer_ids) + 1 if layer_ids else 0
    units: dict[Unit, UnitInfo] = {}
    present: dict[str, set[int]] = {}
    for name, cspec in cand_plan.items():
        m = _LAYER_PART.search(name)
        if m is not None:
            present.setdefault(_MIXER_KINDS.get(m.group(2), m.group(2)), set()).add(int(m.group(1)))
        sspec = safe_plan.get(name)
        if _spec_key(cspec) == _spec_key(sspec):
            continue
        if m is not None:
            layer, part = int(m.group(1)), m.group(2)
            unit: Unit = (_MIXER_KINDS.get(part, part), layer)
            boundary = layer
        elif name == head:
            unit, boundary = ("head", -1), n_layers
        else:  # a Linear outside the decoder layers and not the head: it may touch every layer
            unit, boundary = (name, -1), 0
        shape = tuple(model.get_submodule(name).weight.shape)
        info = units.setdefault(unit, UnitInfo(unit, [], boundary, 0))
        info.modules.append(name)
        info.restore_bytes += weight_bytes(sspec, shape) - weight_bytes(cspec, shape)
    if not units:
        raise InputError(f"candidate recipe {candidate.name!r} ({candidate.source}) has nothing to restore relative "
                         f"to safe recipe {safe.name!r} ({safe.source}): both plan every Linear module alike")
    return ModuleMap(units, n_layers, cand_plan, safe_plan, {k: sorted(v) for k, v in present.items()})


def _spec_key(spec: QuantSpec | None):
    return None if spec is None else (spec.dtype, spec.qscheme, spec.granularity, spec.block_size, spec.axis)


def _head_name(model) -> str | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None
    return next((n for n, m in model.named_modules() if m is head), None)


# -- trials ---------------------------------------------------------------------------------------------

@dataclass
class CaseWork:
    """What a trial computes for one case: steps 0..steps-1, and the head at the defect rows."""

    case_id: str
    input_ids: np.ndarray
    prompt_len: int
    rows: tuple[int, ...]  # the defect rows of this case, ascending

    @property
    def steps(self) -> int:
        return self.prompt_len + self.rows[-1]  # step t consumes x[t]; row k is the output of step P-1+k

    def step_of(self, row: int) -> int:
        return self.prompt_len - 1 + row


class OutOfBudget(Exception):
    pass


class _State:
    """Shared by the layer switches during one case run."""

    def __init__(self):
        self.step = 0
        self.start = 0            # layers below this are not computed
        self.replay = None        # [steps, 1, 1, H]: the output of layer start-1 at each step
        self.outputs: list[list] | None = None  # per layer: its output at each step (recording)


_SWITCH = None


def _layer_switch(layer, index: int, state: _State):
    """Wrap one decoder layer: it computes the layer or, below the replay start, skips it and hands
    on the recorded output of the last skipped layer (torch is imported only when this runs)."""
    global _SWITCH
    if _SWITCH is None:
        import torch

        class LayerSwitch(torch.nn.Module):
            def __init__(self, layer, index, state):
                super().__init__()
                self.layer = layer
                self.index = index
                self.state = state

            def forward(self, hidden_states, *args, **kwargs):
                st = self.state
                if self.index < st.start:
                    return st.replay[st.step] if self.index == st.start - 1 else hidden_states
                out = self.layer(hidden_states, *args, **kwargs)
                if st.outputs is not None:
                    st.outputs[self.index].append(out)
                return out

        _SWITCH = LayerSwitch
    return _SWITCH(layer, index, state)


@dataclass
class TrialStats:
    runs: int = 0               # case runs (one restoration decoded over one case)
    reused: int = 0             # answers served from the kept rows
    seconds: float = 0.0
    layer_steps: int = 0        # decoder layers computed, summed over steps
    layer_steps_full: int = 0   # what the same runs would have computed without the layer prefix
    head_rows: int = 0

    def to_dict(self) -> dict:
        return {"case_runs": self.runs, "reused": self.reused, "seconds": self.seconds,
                "layer_steps": self.layer_steps, "layer_steps_without_prefix": self.layer_steps_full,
                "head_rows": self.head_rows,
                "runs_per_second": self.runs / self.seconds if self.seconds > 0 else None}


class TrialRunner:
    """Decodes restorations of the candidate over the defect cases (S=1, the model's cache, fp16).

    The model is the fp16 checkpoint; each restorable module holds two materialized weights (the
    candidate's and the safe recipe's, both from `apply_plan`), and a trial swaps them in."""

    def __init__(self, model, modules: ModuleMap, work: dict[str, CaseWork], *, budget: int | None = None,
                 record_bytes: int = RECORD_BYTES, prefix_reuse: bool = True):
        import torch

        from .candidates.emulated import _cache_keyword, apply_plan

        self.model = model
        self.map = modules
        self.work = work
        self.budget = budget
        self.prefix_reuse = prefix_reuse
        self.record_bytes = record_bytes
        self.stats = TrialStats()
        self._rows: dict[tuple[frozenset, str], dict[int, np.ndarray]] = {}
        self._records: OrderedDict[tuple, object] = OrderedDict()
        self._record_size = 0
        restorable = modules.modules(modules.units)
        self._modules = {n: model.get_submodule(n) for n in restorable}
        originals = {n: m.weight for n, m in self._modules.items()}
        # the safe weights (apply_plan leaves a module the safe recipe keeps at fp16 as it is) ...
        apply_plan(model, modules.safe_plan, only=restorable)
        self._safe = {n: m.weight for n, m in self._modules.items()}
        for n, m in self._modules.items():
            m.weight = originals[n]
        # ... then the candidate's, everywhere: the model starts as the candidate
        apply_plan(model, modules.candidate_plan)
        self._candidate = {n: m.weight for n, m in self._modules.items()}
        self._restored: frozenset[str] = frozenset()
        self.decoder = model.get_decoder()
        self._decoder_kw = _cache_keyword(self.decoder)
        self.head = model.get_output_embeddings()
        self.state = _State()
        layers = self.decoder.layers
        self._layers = list(layers)
        self.n_layers = len(layers)
        if self.n_layers != modules.n_layers:
            raise InputError(f"the model has {self.n_layers} decoder layers but its module names count "
                             f"{modules.n_layers}")
        self._wrap(True)
        self._torch = torch

    def _wrap(self, on: bool) -> None:
        layers = self.decoder.layers
        for i, layer in enumerate(self._layers):
            layers[i] = _layer_switch(layer, i, self.state) if on else layer

    @contextmanager
    def plain(self):
        """The model as loaded (layers unwrapped: module names as the recipes know them), candidate weights."""
        self._swap(frozenset())
        self._wrap(False)
        try:
            yield self.model
        finally:
            self._wrap(True)

    def close(self) -> None:
        """Put the decoder layers back and the candidate's weights; drop the records."""
        self._swap(frozenset())
        self._wrap(False)
        self._records.clear()
        self._record_size = 0


    # -- the answers -----------------------------------------------------------------------------

    def known(self, units: frozenset[Unit], case_id: str, row: int) -> bool:
        return row in self._rows.get((units, case_id), ())

    def rows(self, units: frozenset[Unit], case_id: str, row: int | None = None) -> dict[int, np.ndarray]:
        """The candidate's logits (float16) at the case's defect rows with `units` restored (kept
        rows are reused while they hold `row`; a case whose defect rows grew is decoded again)."""
        key = (units, case_id)
        got = self._rows.get(key)
        if got is not None and (row is None or row in got):
            self.stats.reused += 1
            return got
        if self.budget is not None and self.stats.runs >= self.budget:
            raise OutOfBudget()
        got = self._run(units, self.work[case_id])
        self._rows[key] = got
        return got

    # -- one case run ------------------------------------------------------------------------------

    def _below(self, units: frozenset[Unit], boundary: int) -> frozenset[Unit]:
        return frozenset(u for u in units if self.map.units[u].boundary < boundary)

    def _swap(self, units: frozenset[Unit]) -> None:
        want = frozenset(self.map.modules(units))
        for name in want ^ self._restored:
            self._modules[name].weight = self._safe[name] if name in want else self._candidate[name]
        self._restored = want

    def _run(self, units: frozenset[Unit], work: CaseWork):
        torch = self._torch
        from transformers import DynamicCache

        t0 = time.perf_counter()
        self._swap(units)
        steps = work.steps
        start = 0
        if self.prefix_reuse:
            for b in range(self.n_layers, 0, -1):
                rec = self._records.get((work.case_id, b, self._below(units, b)))
                if rec is not None and rec.shape[0] >= steps:
                    self._records.move_to_end((work.case_id, b, self._below(units, b)))
                    start = b
                    break
        st = self.state
        st.start = start
        st.replay = self._records[(work.case_id, start, self._below(units, start))] if start else None
        st.outputs = [[] for _ in range(self.n_layers)] if self.prefix_reuse else None
        head_at = {work.step_of(r): r for r in work.rows}
        cache = DynamicCache(config=self.model.config)
        kw = {self._decoder_kw: cache, "use_cache": True}
        x = torch.as_tensor(np.array(work.input_ids, dtype=np.int64))[None]
        out: dict[int, np.ndarray] = {}
        try:
            with torch.inference_mode():
                for t in range(steps):
                    st.step = t
                    # explicit positions: a skipped attention layer's cache does not count the tokens
                    hidden = self.decoder(input_ids=x[:, t:t + 1], position_ids=torch.tensor([[t]]),
                                          **kw).last_hidden_state
                    if t in head_at:
                        out[head_at[t]] = self.head(hidden)[0, -1].to(torch.float16).numpy()
            if st.outputs is not None:
                for layer in range(start, self.n_layers):
                    self._keep((work.case_id, layer + 1, self._below(units, layer + 1)),
                               torch.stack(st.outputs[layer]))
        finally:
            st.outputs = None
            st.replay = None
            st.start = 0
        self.stats.runs += 1
        self.stats.layer_steps += (self.n_layers - start) * steps
        self.stats.layer_steps_full += self.n_layers * steps
        self.stats.head_rows += len(out)
        self.stats.seconds += time.perf_counter() - t0
        return out

    def _keep(self, key, tensor) -> None:
        if key in self._records:
            return
        size = tensor.numel() * tensor.element_size()
        if size > self.record_bytes:
            return
        self._records[key] = tensor
        self._record_size += size
        while self._record_size > self.record_bytes:
            _, old = self._records.popitem(last=False)
            self._record_size -= old.numel() * old.element_size()


# -- judging one trial at one position -----------------------------------------------------------------

@dataclass
class Defect:
    """A defect position of the gate's verdict, with the oracle's numbers a trial is judged against."""

    case: str
    row: int
    position: int
    oracle_top1: int
    oracle_top2: int
    margin: float
    candidate_top1: int | None
    control_top1: int | None
    confident: bool
    record: dict                  # the verdict's position record (texts included)
    oracle_row: np.ndarray = field(repr=False, default=None)
    found_by: str = "the gate"     # or the verification round of a suggested recipe that made it

    @property
    def key(self) -> str:
        return f"{self.case}:{self.row}"


@dataclass
class TrialResult:
    units: frozenset
    label: str
    cls: str
    candidate_top1: int | None
    lead: float          # the candidate's own margin for the oracle's top-1 (negative: it prefers another token)
    repaired: bool
    reused: bool

    def to_dict(self) -> dict:
        return {"restored": self.label, "groups": [g.to_dict() for g in groups_of(self.units)],
                "class": self.cls, "candidate_top1": self.candidate_top1, "lead": _finite_or_none(self.lead),
                "repaired": self.repaired, "reused": self.reused}


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def judge_row(defect: Defect, row: np.ndarray, margin_space: str) -> tuple[str, int | None, float]:
    """(class, candidate top-1, lead) of one candidate row at a defect position, by the engine's rule."""
    from gates import metrics
    from gates.engine import _classify

    o = metrics.to_float64(defect.oracle_row[None])
    c = metrics.to_float64(np.asarray(row)[None])
    orc = metrics.oracle_rows(o)
    cr = metrics.candidate_rows(c, o, orc)
    finite = bool(cr.finite[0])
    top1 = int(cr.top1[0]) if finite else None
    cls = _classify(finite, top1, defect.oracle_top1, defect.confident, defect.control_top1)
    if not finite:
        return cls, None, math.nan
    own = metrics.oracle_rows(c)  # the candidate's own top-2 and margins
    t = defect.oracle_top1
    if margin_space == "logit":
        other = own.top_val[0, 1] if int(own.top_idx[0, 0]) == t else own.top_val[0, 0]
        lead = float(c[0, t] - other)
    else:
        p_t = float(np.exp(c[0, t] - own.lse[0]))
        other = float(own.top2_prob[0]) if int(own.top_idx[0, 0]) == t else float(own.top1_prob[0])
        lead = p_t - other
    return cls, top1, lead


# -- the search ------------------------------------------------------------------------------------------

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


# -- the suggested recipe ---------------------------------------------------------------------------------

def suggested_recipe_text(name: str, candidate: Recipe, safe: Recipe, mm: ModuleMap, units: Iterable[Unit],
                          model, policy=None) -> str:
    """A recipe file (and, given the gate's policy, a gate of the same name) that restores `units`
    to the safe recipe and otherwise is the candidate recipe. Rules restoring modules come first,
    so they win over the candidate's (the first matching rule decides a module); a candidate rule
    left deciding no module is dropped (a recipe may not hold a rule that matches nothing)."""
    units = sorted(set(units), key=lambda u: (u[0], u[1]))
    restored = set(mm.modules(units))
    kept = _rules_still_deciding(candidate, model, restored)
    taken = {r.name for r in candidate.rules}
    lines = [f"# Suggested by `flipgate localise`: {candidate.name} with the culprits of its defects restored",
             f"# to {safe.name}. Run it:  flipgate compare --config THIS_FILE --gates {name}",
             f"format = {_toml_str(RECIPES_FORMAT)}", "",
             f"[recipes.{_toml_key(name)}]",
             f"description = {_toml_str(f'{candidate.name} with {restoration_label(units)} restored to {safe.name}')}",
             "rules = ["]
    for unit in units:
        per_spec: dict[object, list[str]] = {}
        for m in mm.units[unit].modules:
            per_spec.setdefault(_spec_key(mm.safe_plan.get(m)), []).append(m)
        for i, (key, mods) in enumerate(per_spec.items()):
            spec = mm.safe_plan.get(mods[0])
            rule_name = f"restore-{unit[0]}" + (f"-{unit[1]}" if unit[1] >= 0 else "") + (f"-{i + 1}" if i else "")
            while rule_name in taken:
                rule_name = "localise-" + rule_name
            taken.add(rule_name)
            values: dict[str, object] = {"name": rule_name, "modules": _alternation(sorted(mods))}
            if spec is None:
                values["dtype"] = "fp16"
            else:
                values.update(dtype=spec.dtype, qscheme=spec.qscheme, granularity=spec.granularity, axis=spec.axis)
                if spec.granularity == "per_block":
                    values["block_size"] = spec.block_size
            lines.append("  { " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in values.items()) + " },")
    for r in kept:
        lines.append("  { " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in r.values.items()) + " },")
    lines.append("]")
    if policy is not None:
        lines += ["", f"[gates.{_toml_key(name)}]",
                  f"description = {_toml_str(f'{policy.name} with the localised culprits restored to {safe.name}')}",
                  f"candidate = {_toml_str(name)}",
                  f"control = {_toml_str(policy.control or 'none')}",
                  f"min_margin = {policy.min_margin!r}",
                  f"margin_space = {_toml_str(policy.margin_space)}",
                  f"max_defects = {policy.max_defects}",
                  f"min_cosine = {policy.min_cosine!r}",
                  f"min_confident = {getattr(policy, 'min_confident', 0)}"]
        if policy.max_kl is not None:
            lines.append(f"max_kl = {policy.max_kl!r}")
    return "\n".join(lines) + "\n"


def _rules_still_deciding(recipe: Recipe, model, taken: set[str]) -> list:
    """The recipe's rules that still decide some module once the modules in `taken` are decided
    before them (the same first-match walk as `Recipe.plan`)."""
    import torch

    from .recipe import _layer_count

    modules = list(model.named_modules())
    n_layers = _layer_count(n for n, _ in modules)
    deciding = set()
    for name, module in modules:
        if name in taken:
            continue
        for rule in recipe.rules:
            if rule.matches(name, module, n_layers):
                if isinstance(module, torch.nn.Linear) or rule.type is not None:
                    deciding.add(rule.name)
                    break
    return [r for r in recipe.rules if r.name in deciding]


def _alternation(names: list[str]) -> str:
    """A regular expression matching exactly these module names (fullmatch)."""
    prefix = os.path.commonprefix(names)
    prefix = prefix[:prefix.rfind(".") + 1] if len(names) > 1 else prefix
    if len(names) == 1:
        return re.escape(names[0])
    return re.escape(prefix) + "(" + "|".join(re.escape(n[len(prefix):]) for n in names) + ")"


def check_suggested(text: str, name: str, model, expected: dict[str, QuantSpec | None], source: str) -> Recipe:
    """Parse the suggested recipe back and make sure it plans exactly `expected`."""
    recipe = parse_recipes(text, source)[name]
    plan = recipe.plan(model)
    bad = [m for m in expected if _spec_key(plan.get(m)) != _spec_key(expected[m])]
    if bad:
        raise RuntimeError(f"suggested recipe {name!r} plans {bad[0]} as {plan.get(bad[0])}, "
                           f"not {expected[bad[0]]} (a bug in flipgate localise)")
    return recipe


# -- the result ------------------------------------------------------------------------------------------------

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

        from .fileio import write_text_atomic

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


# -- the whole job ------------------------------------------------------------------------------------------------

def defects_of(verdict, oracle) -> list[Defect]:
    """The verdict's defect positions, with the oracle rows they are judged against."""
    out = []
    for p in verdict.positions:
        if p["class"] != "defect":
            continue
        row = np.array(oracle.logits_rows(p["case"], p["row"], p["row"] + 1)[0])
        out.append(Defect(p["case"], int(p["row"]), int(p["position"]), int(p["oracle_top1"]),
                          int(p["oracle_top2"]), float(p["margin"]), p["candidate_top1"], p["control_top1"],
                          bool(p.get("confident", True)), dict(p), row))
    return out


def localise_traces(policy, *, oracle, candidate_trace, control=None, candidate: Recipe, safe: Recipe,
                    model_dir, budget: int | None = DEFAULT_BUDGET, verify: bool = True,
                    suggested_name: str | None = None, decode=None, work_dir: str | os.PathLike | None = None,
                    prefix_reuse: bool = True, threads: int | None = None,
                    log: Callable[[str], None] | None = None) -> Localisation:
    """Localise the defects of `candidate_trace` (made by `candidate`, the gate's recipe) under
    `policy`, restoring modules to `safe`. `oracle`, `candidate_trace`, `control` are traces or paths;
    the model at `model_dir` is the checkpoint they were made from."""
    from .models import read_config, resolve_model_dir

    cfg = read_config(resolve_model_dir(model_dir))
    hidden = (cfg.get("text_config") or cfg).get("hidden_size")
    with torch_threads(threads, hidden if isinstance(hidden, int) else None):
        return _localise_traces(policy, oracle=oracle, candidate_trace=candidate_trace, control=control,
                                candidate=candidate, safe=safe, model_dir=model_dir, budget=budget, verify=verify,
                                suggested_name=suggested_name, decode=decode, work_dir=work_dir,
                                prefix_reuse=prefix_reuse, log=log)


def _localise_traces(policy, *, oracle, candidate_trace, control, candidate: Recipe, safe: Recipe, model_dir,
                     budget, verify, suggested_name, decode, work_dir, prefix_reuse, log) -> Localisation:
    from gates.engine import evaluate

    from .candidates.emulated import load_fp16
    from .models import resolve_model_dir
    from .trace import Trace, open_trace

    say = log or (lambda _msg: None)
    if budget is not None and budget < 1:
        raise InputError(f"--budget {budget}: at least 1 trial is needed")
    oracle_t = oracle if isinstance(oracle, Trace) else open_trace(oracle)
    cand_t = candidate_trace if isinstance(candidate_trace, Trace) else open_trace(candidate_trace)
    ctrl_t = None if control is None else (control if isinstance(control, Trace) else open_trace(control))
    model_dir = resolve_model_dir(model_dir)
    model = load_fp16(model_dir)
    mm = module_map(model, candidate, safe)  # InputError when there is nothing to restore
    restorable = {k: mm.kind_layers(k) for k in mm.kinds}
    sizes = {"candidate": model_bytes(model, mm.candidate_plan), "safe": model_bytes(model, mm.safe_plan)}

    verdict = evaluate(oracle_t, cand_t, ctrl_t, policy=policy, decode=decode)
    baseline = {"one_line": verdict.one_line(), "passed": bool(verdict), **{
        k: verdict.summary[k] for k in ("positions", "exact", "rule", "defects", "oracle_artifacts", "invalid",
                                        "min_cosine")}}
    loc = Localisation(gate=policy.name, candidate=candidate.name, safe=safe.name, policy=policy.to_dict(),
                       n_layers=mm.n_layers, kinds=mm.kinds, positions=[], baseline=baseline, sizes=sizes,
                       restorable=restorable, present={k: mm.present.get(k, []) for k in mm.kinds})
    defects = defects_of(verdict, oracle_t)
    if not defects:
        loc.message = (f"gate {policy.name!r}: {candidate.name} has no defects against the oracle "
                       f"({verdict.one_line()}): nothing to localise")
        if not verdict:
            loc.notes.append("the gate fails for other reasons: " + "; ".join(verdict.reasons))
        return loc

    work: dict[str, CaseWork] = {}
    for d in defects:
        _add_row(work, oracle_t, d)
    say(f"{len(defects)} defect(s) in {len(work)} case(s); restorable: "
        + ", ".join(f"{kind_label(k)} {layer_ranges(v) or ''}".strip() for k, v in restorable.items()))
    runner = TrialRunner(model, mm, work, budget=budget, prefix_reuse=prefix_reuse)
    search = Search(runner, defects, policy.margin_space, log=say)
    t0 = time.perf_counter()
    search.run()
    capture_seconds = 0.0
    for vround in range(1, VERIFY_ROUNDS + 1):
        union = frozenset(search.chosen)
        if not union:
            break
        loc.suggested_units = sorted(union)
        try:
            repaired = [search.repairs(union, d) for d in search.defects
                        if search.results[d.key].status not in ("not-repaired", "untried")]
            loc.suggested_repairs = all(repaired) and not any(
                search.results[d.key].status in ("not-repaired", "untried") for d in search.defects)
        except OutOfBudget:
            loc.suggested_repairs = None
            search.untried.append("the suggested recipe's trial on every defect case")
        name = suggested_name or f"{candidate.name}-localised"
        expected = dict(mm.candidate_plan)
        for m in mm.modules(union):
            expected[m] = mm.safe_plan.get(m)
        with runner.plain():  # module names as the recipe knows them
            text = suggested_recipe_text(name, candidate, safe, mm, union, model, policy=replace(policy, name=name))
            suggested = check_suggested(text, name, model, expected, f"suggested recipe {name}")
            loc.sizes["suggested"] = model_bytes(model, expected)
        loc.suggested_name, loc.suggested_text = name, text
        if not verify or search.exhausted:
            break
        say(f"verifying {name}: capturing it over every case and judging it with gate {policy.name}")
        t1 = time.perf_counter()
        checked = verify_capture(suggested, model_dir, oracle_t, ctrl_t,
                                 replace(policy, name=name, candidate=name), work_dir=work_dir, decode=decode)
        capture_seconds += time.perf_counter() - t1
        loc.verification = _verification_summary(checked, union, vround)
        loc.verifications.append(loc.verification)
        new = [d for d in defects_of(checked, oracle_t) if d.key not in search.results]
        if checked or not new or vround == VERIFY_ROUNDS:
            break
        say(f"{name} leaves {len(new)} defect(s) at other positions: localising them on top of it")
        for d in new:
            d.found_by = f"verification round {vround}: a defect of {name}"
            _add_row(work, oracle_t, d)
        search.add(new)
        search.run(todo=new, base=union)
    loc.positions = [search.results[d.key] for d in search.defects]
    loc.untried = list(dict.fromkeys(search.untried))
    loc.stats = {"trials": len(search.trial_sets), **runner.stats.to_dict(),
                 "search_seconds": time.perf_counter() - t0 - capture_seconds,
                 "verify_seconds": capture_seconds, "budget": budget}
    runner.close()
    return loc


VERIFY_ROUNDS = 3


def _add_row(work: dict[str, CaseWork], oracle, d: Defect) -> None:
    ids = oracle.input_ids(d.case)
    prev = work.get(d.case)
    rows = tuple(sorted(set((prev.rows if prev else ()) + (d.row,))))
    work[d.case] = CaseWork(d.case, ids, len(ids) - oracle.rows(d.case), rows)


def _verification_summary(verdict, units, round_no: int) -> dict:
    s = verdict.summary
    return {"gate": verdict.gate, "round": round_no, "restored": restoration_label(units),
            "passed": bool(verdict), "one_line": verdict.one_line(), "reasons": verdict.reasons,
            **{k: s[k] for k in ("positions", "exact", "rule", "defects", "oracle_artifacts", "invalid", "min_cosine")},
            "defect_positions": [{"case": p["case"], "row": p["row"], "position": p["position"]}
                                 for p in verdict.positions if p["class"] == "defect"]}


def verify_capture(recipe: Recipe, model_dir, oracle, control, policy, *, work_dir=None, decode=None):
    """Capture a recipe over the oracle's sequences (the emulated candidate, S=1) and judge it: the Verdict."""
    from gates.engine import evaluate

    from .candidates.base import capture_to_trace, sequences_from_trace
    from .candidates.emulated import EmulatedCandidate
    from .trace import open_trace

    cand = EmulatedCandidate(recipe, Path(model_dir))
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="flipgate-localise-") as tmp:
        path = capture_to_trace(cand, sequences_from_trace(oracle), Path(tmp) / f"{recipe.name}.safetensors",
                                vocab_size=oracle.vocab_size)
        return evaluate(oracle, open_trace(path), control, policy=policy, decode=decode)


def localise(gate: str, *, config: str | os.PathLike | None = None, safe: str = DEFAULT_SAFE,
             budget: int | None = DEFAULT_BUDGET, model: str | None = None, cases: str | None = None,
             cache_dir: str | None = None, oracle: str | None = None, refresh: bool = False,
             verify: bool = True, suggested_name: str | None = None, quiet: bool = False,
             threads: int | None = None, log: Callable[[str], None] | None = None) -> Localisation:
    """`flipgate localise`: the gate's oracle, candidate and control traces from the pipeline's
    cache (computed if missing), then `localise_traces`."""
    from gates.policy import load_gates

    from .models import read_config
    from .pipeline import _decoder, _has_recipes, workspace
    from .recipe import get_recipe
    from .trace import open_trace

    policies = load_gates(str(config) if config else None)
    if gate not in policies:
        raise InputError(f"unknown gate {gate!r} (defined: {', '.join(policies)})")
    policy = policies[gate]
    recipes_path = str(config) if config and _has_recipes(config) else None
    if ":" in policy.candidate:
        raise InputError(f"gate {gate!r}: candidate {policy.candidate!r} is not a recipe; localisation restores "
                         "modules of an emulated recipe (name a gate whose candidate is a recipe)")
    candidate = get_recipe(policy.candidate, recipes_path)
    safe_recipe = get_recipe(safe, recipes_path)
    ws = workspace(model=model, cases=cases, cache_dir=cache_dir, refresh=refresh, quiet=quiet, log=log)
    if safe_recipe.name == candidate.name:
        raise InputError(f"candidate recipe {candidate.name!r} and safe recipe {safe_recipe.name!r} are the same "
                         "recipe: nothing to restore")
    _check_restorable(ws.model_dir, candidate, safe_recipe)  # before any model runs
    cfg = read_config(ws.model_dir)
    hidden = (cfg.get("text_config") or cfg).get("hidden_size")
    with torch_threads(threads, hidden if isinstance(hidden, int) else None):
        oracle_path = Path(oracle) if oracle else ws.oracle_trace()
        oracle_t = open_trace(oracle_path)
        model_tok = ws.tokenizer_sha256()
        if oracle is not None and oracle_t.tokenizer_sha256 and oracle_t.tokenizer_sha256 != model_tok:
            raise InputError(f"{oracle_path}: this oracle trace was not made with the tokenizer of model "
                             f"{ws.model_dir}: its candidate cannot be run on these sequences")
        cand_path = ws.candidate_trace(policy.candidate, oracle_path, recipes_path)
        ctrl_path = ws.candidate_trace(policy.control, oracle_path, recipes_path) if policy.control else None
        return _localise_traces(policy, oracle=oracle_t, candidate_trace=cand_path, control=ctrl_path,
                                candidate=candidate, safe=safe_recipe, model_dir=ws.model_dir, budget=budget,
                                verify=verify, suggested_name=suggested_name, decode=_decoder(ws.model_dir),
                                work_dir=None, prefix_reuse=True, log=ws.say)


def _check_restorable(model_dir: Path, candidate: Recipe, safe: Recipe) -> None:
    """InputError naming both recipes when they plan the model alike (the model is built on torch's
    meta device: module names and shapes, no weights, whatever its size)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(str(model_dir))
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(cfg)
    except Exception:  # the real model is checked the same way once it is loaded
        return
    module_map(skeleton, candidate, safe)


__all__ = ["localise", "localise_traces", "Localisation", "Group", "ModuleMap", "module_map", "TrialRunner",
           "Search", "CaseWork", "Defect", "judge_row", "weight_bytes", "model_bytes", "suggested_recipe_text",
           "layer_ranges", "restoration_label", "groups_of", "SCHEMA", "DEFAULT_BUDGET", "KINDS"]
