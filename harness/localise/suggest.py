"""The suggested recipe: the union of the culprits written as a recipe file (with a gate of the same
name) that restores them to the safe recipe, checked to plan exactly what was meant.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from ..recipe import FORMAT as RECIPES_FORMAT
from ..recipe import QuantSpec, Recipe, _toml_key, _toml_str, _toml_value, parse_recipes
from .groups import ModuleMap, Unit, _spec_key, restoration_label


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

    from ..recipe import _layer_count

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
