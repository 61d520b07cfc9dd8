"""Trials: a restoration of the candidate decoded over the defect cases (S=1 through the model's
cache, only up to the last defect, the layer prefix replayed from earlier trials), and each defect
row judged with the gate engine's rule.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .groups import ModuleMap, RECORD_BYTES, Unit, groups_of


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

        from ..candidates.emulated import _cache_keyword, apply_plan

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
        apply_plan(model, modules.safe_plan, only=restorable, keep_codes=False, in_place=False)
        self._safe = {n: m.weight for n, m in self._modules.items()}
        for n, m in self._modules.items():
            m.weight = originals[n]
        # ... then the candidate's, everywhere: the model starts as the candidate
        apply_plan(model, modules.candidate_plan, keep_codes=False, in_place=False)
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
