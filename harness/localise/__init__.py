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

One job per module: groups (what can be restored, and its bytes), trials (decode a restoration,
judge each defect row), search (the smallest repairing groups), suggest (the suggested recipe
file), result (the `flipgate.localise/1` record), job (the whole run).
"""

from __future__ import annotations

from .groups import Group, KINDS, KIND_LABELS, ModuleMap, RECORD_BYTES, Unit, UnitInfo, _LAYER_PART, _MIXER_KINDS, _head_name, _spec_key, groups_of, kind_label, layer_ranges, model_bytes, module_map, restoration_label, weight_bytes  # noqa: F401
from .trials import CaseWork, Defect, OutOfBudget, TrialResult, TrialRunner, TrialStats, _SWITCH, _State, _finite_or_none, _layer_switch, judge_row  # noqa: F401
from .search import PositionResult, REPAIRED, Search, _Partial  # noqa: F401
from .suggest import _alternation, _rules_still_deciding, check_suggested, suggested_recipe_text  # noqa: F401
from .result import Localisation, SCHEMA, _json_ready  # noqa: F401
from .job import DEFAULT_BUDGET, DEFAULT_SAFE, VERIFY_ROUNDS, _add_row, _check_restorable, _localise_traces, _verification_summary, defects_of, localise, localise_traces, verify_capture  # noqa: F401
from ..models import torch_threads  # noqa: F401  (imported from here by tests and benchmarks)

__all__ = ["localise", "localise_traces", "Localisation", "Group", "ModuleMap", "module_map", "TrialRunner",
           "Search", "CaseWork", "Defect", "judge_row", "weight_bytes", "model_bytes", "suggested_recipe_text",
           "layer_ranges", "restoration_label", "groups_of", "SCHEMA", "DEFAULT_BUDGET", "KINDS"]
