"""The whole job: a gate's defects found and localised (`localise`, `localise_traces`), the
suggested recipe verified by capturing and judging it, defects it exposes localised on top of it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..models import torch_threads
from ..recipe import Recipe
from .groups import kind_label, layer_ranges, model_bytes, module_map, restoration_label
from .result import Localisation
from .search import Search
from .suggest import check_suggested, suggested_recipe_text
from .trials import CaseWork, Defect, OutOfBudget, TrialRunner


# -- the whole job ------------------------------------------------------------------------------------------------

DEFAULT_SAFE = "fp16"

DEFAULT_BUDGET = 200

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
    from ..models import read_config, resolve_model_dir

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

    from ..candidates.emulated import load_fp16
    from ..models import resolve_model_dir
    from ..trace import Trace, open_trace

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

    from ..candidates.base import capture_to_trace, sequences_from_trace
    from ..candidates.emulated import EmulatedCandidate
    from ..trace import open_trace

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

    from ..models import read_config
    from ..pipeline import _decoder, _has_recipes, workspace
    from ..recipe import get_recipe
    from ..trace import open_trace

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
