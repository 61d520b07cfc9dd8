"""What a localisation can restore, and what it costs: every Linear module the candidate quantizes
differently from the safe recipe, as units (one kind in one layer) and groups of them (a kind, a
kind over a layer range), with their weight bytes under either recipe.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import InputError
from ..recipe import QuantSpec, Recipe


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
