"""Quantization recipes as data (DESIGN.md, "Variants"): load, validate, match modules.

A recipe file is TOML (`harness/data/recipes.toml` is the bundled one and documents every key).
`load_recipes(path)` returns the bundled recipes plus those of a user file; `Recipe.plan(model)`
decides, for every Linear module of a model, the `QuantSpec` it gets (or None: stays fp16).

Errors name the file, the recipe, the rule and the module at fault:
  - a rule that decides no module of the model (the architecture does not fit the recipe);
  - an unknown dtype, qscheme, granularity or key;
  - a block size that does not divide a matched weight's input width.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from .errors import InputError
from .fileio import note_input
from .quants import DTYPE_BITS, SCHEMES, BlockQuant, scheme

FORMAT = "flipgate.recipes/1"
DTYPES = (*DTYPE_BITS, "fp16")
GRANULARITIES = ("per_block", "per_channel")
RULE_KEYS = {"name", "modules", "type", "layers", "dtype", "qscheme", "granularity", "block_size", "axis"}
SPEC_KEYS = ("dtype", "qscheme", "granularity", "block_size", "axis")
RECIPE_KEYS = {"description", "defaults", "extends", "rules"}
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def bundled_recipes_path() -> Path:
    return Path(str(resources.files("harness") / "data" / "recipes.toml"))


@dataclass(frozen=True)
class QuantSpec:
    """How one weight is quantized: the recipe's words, in coreai-opt's vocabulary."""

    dtype: str            # int8 | int4
    qscheme: str          # symmetric_with_clipping | symmetric | asymmetric
    granularity: str      # per_block | per_channel
    block_size: int | None  # None for per_channel
    axis: int
    rule: str = field(default="", compare=False)

    def scheme(self) -> BlockQuant:
        return scheme(self.qscheme, self.dtype, self.block_size if self.granularity == "per_block" else None)

    def describe(self) -> str:
        blk = f"block {self.block_size}" if self.granularity == "per_block" else "per channel"
        return f"{self.dtype} {self.qscheme} {blk}"

    def coreai_opt_spec(self):
        """The same spec as a `coreai_opt.quantization.QuantizationSpec` (imports torch)."""
        import torch
        from coreai_opt.quantization import QuantizationSpec

        gran: dict[str, Any] = {"type": self.granularity, "axis": self.axis}
        if self.granularity == "per_block":
            gran["block_size"] = self.block_size
        return QuantizationSpec(dtype=getattr(torch, self.dtype), qscheme=self.qscheme, granularity=gran)


@dataclass(frozen=True)
class Rule:
    name: str
    modules: str
    pattern: re.Pattern = field(repr=False, compare=False)
    type: str | None
    layers: tuple[int, ...] | None
    spec: QuantSpec | None  # None: keep fp16
    values: dict = field(repr=False, compare=False)  # resolved keys, for Recipe.text

    def matches(self, name: str, module, n_layers: int) -> bool:
        if self.pattern.fullmatch(name) is None:
            return False
        if self.type is not None:
            cls = type(module)
            if self.type not in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}"):
                return False
        if self.layers is not None:
            m = _LAYER_INDEX.search(name)
            if m is None:
                return False
            idx = int(m.group(1))
            wanted = {i if i >= 0 else n_layers + i for i in self.layers}
            if idx not in wanted:
                return False
        return True


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    rules: tuple[Rule, ...]
    source: str  # the file it came from

    @property
    def text(self) -> str:
        """The recipe as a self-contained recipe file (defaults and `extends` resolved):
        `load_recipes(path_holding_this_text)[name]` plans exactly as this recipe does."""
        lines = [f"format = {_toml_str(FORMAT)}", "", f"[recipes.{_toml_key(self.name)}]",
                 f"description = {_toml_str(self.description)}"]
        if not self.rules:
            lines.append("rules = []")
        else:
            lines.append("rules = [")
            for r in self.rules:
                items = ", ".join(f"{k} = {_toml_value(v)}" for k, v in r.values.items())
                lines.append(f"  {{ {items} }},")
            lines.append("]")
        return "\n".join(lines) + "\n"

    def plan(self, model) -> dict[str, QuantSpec | None]:
        """For every Linear module of `model` (a torch module): its QuantSpec, or None (fp16).

        Raises InputError naming the recipe, rule and module when a rule decides no module, when
        a rule matches a module that is not a Linear, or when a block size does not divide a
        matched weight's input width.
        """
        import torch

        modules = list(model.named_modules())
        n_layers = _layer_count(name for name, _ in modules)
        linear_names = [n for n, m in modules if isinstance(m, torch.nn.Linear)]
        plan: dict[str, QuantSpec | None] = {}
        decided: dict[str, list[str]] = {r.name: [] for r in self.rules}
        for name, module in modules:
            for rule in self.rules:
                if not rule.matches(name, module, n_layers):
                    continue
                if not isinstance(module, torch.nn.Linear):
                    if rule.type is None:
                        continue  # a name pattern also names norms, convs: only Linears are quantized
                    raise InputError(f"{self._where(rule)}: matches {name}, a {type(module).__name__}: "
                                     f"only Linear weights are quantized")
                decided[rule.name].append(name)
                if rule.spec is not None:
                    _check_fits(self, rule, name, module)
                plan[name] = rule.spec
                break
        unmatched = [r for r in self.rules if not decided[r.name]]
        if unmatched:
            listed = "; ".join(f"rule {r.name!r} (modules {r.modules!r}"
                               + (f", layers {list(r.layers)}" if r.layers is not None else "") + ")"
                               for r in unmatched)
            shapes = list(dict.fromkeys(re.sub(r"\.\d+\.", ".N.", n) for n in linear_names))
            sample = ", ".join(shapes[:24]) + (", ..." if len(shapes) > 24 else "")
            raise InputError(f"recipe {self.name!r} ({self.source}): the model's architecture does not fit: "
                             f"{listed} matched no module, or only modules an earlier rule decides "
                             f"(its Linear modules: {sample or 'none'})")
        for name in linear_names:
            plan.setdefault(name, None)
        return plan

    def _where(self, rule: Rule) -> str:
        return f"recipe {self.name!r} ({self.source}) rule {rule.name!r}"


def _check_fits(recipe: Recipe, rule: Rule, name: str, module) -> None:
    out_f, in_f = module.weight.shape
    spec = rule.spec
    if spec.granularity == "per_block" and in_f % spec.block_size:
        raise InputError(f"{recipe._where(rule)}: block size {spec.block_size} does not divide the input "
                         f"width {in_f} of {name} (weight [{out_f}, {in_f}])")


def _layer_count(names: Iterable[str]) -> int:
    idx = [int(m.group(1)) for n in names if (m := _LAYER_INDEX.search(n))]
    return max(idx) + 1 if idx else 0


# -- loading -------------------------------------------------------------------------------------

def load_recipes(path: str | os.PathLike | None = None) -> dict[str, Recipe]:
    """The bundled recipes, plus (replacing any of the same name) those of the file at `path`."""
    recipes = _load_file(bundled_recipes_path())
    if path is not None:
        recipes.update(_load_file(Path(path), known=dict(recipes)))
    return recipes


def get_recipe(name: str, path: str | os.PathLike | None = None) -> Recipe:
    recipes = load_recipes(path)
    try:
        return recipes[name]
    except KeyError:
        raise InputError(f"unknown variant {name!r}: valid variants are {', '.join(recipes)}"
                         + ("" if path is None else f" (bundled recipes plus {path})")) from None


def parse_recipes(text: str, source: str = "<string>", known: dict[str, Recipe] | None = None
                  ) -> dict[str, Recipe]:
    """The [recipes.NAME] tables of a TOML text. Other top-level tables are left alone: a
    flipgate.toml holds recipes beside [gates.*] and [oracle]. `extends` may name a recipe of
    the same text or one of `known` (the bundled ones)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{source}: malformed TOML ({e})") from None
    fmt = doc.get("format")
    if isinstance(fmt, str) and fmt.startswith("flipgate.recipes/") and fmt != FORMAT:
        raise InputError(f"{source}: unknown format {fmt!r} (this flipgate reads {FORMAT!r})")
    raw = doc.get("recipes", {})
    if not isinstance(raw, dict):
        raise InputError(f"{source}: 'recipes' must be a table of [recipes.NAME] tables")
    return {name: _build(name, raw, source, (), known or {}) for name in raw}


def _load_file(path: Path, known: dict[str, Recipe] | None = None) -> dict[str, Recipe]:
    if not path.is_file():
        raise InputError(f"{path}: no such recipe file")
    note_input(path)  # this run must not overwrite it (harness.fileio)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_recipes(text, str(path), known)


def _build(name: str, raw: dict, source: str, chain: tuple[str, ...], known: dict[str, Recipe]) -> Recipe:
    where = f"{source}: recipe {name!r}"
    if name in chain:
        raise InputError(f"{where}: 'extends' forms a cycle ({' -> '.join(chain + (name,))})")
    body = raw[name]
    if not isinstance(body, dict):
        raise InputError(f"{where}: must be a table")
    unknown = sorted(set(body) - RECIPE_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(sorted(RECIPE_KEYS))})")
    defaults = body.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InputError(f"{where}: 'defaults' must be a table")
    bad = sorted(set(defaults) - set(SPEC_KEYS))
    if bad:
        raise InputError(f"{where}: defaults: unknown key {bad[0]!r} (valid: {', '.join(SPEC_KEYS)})")
    rules_raw = body.get("rules", [] if "extends" in body else None)
    if not isinstance(rules_raw, list):
        raise InputError(f"{where}: 'rules' must be an array of tables (an empty array quantizes nothing)")
    rules = [_rule(r, i, defaults, where) for i, r in enumerate(rules_raw)]
    names = [r.name for r in rules]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{where}: two rules are named {dup[0]!r} (rule names must be unique)")
    parent = body.get("extends")
    if parent is not None:
        # a recipe may extend the bundled recipe of its own name (add rules in front of it)
        if isinstance(parent, str) and parent in raw and parent != name:
            inherited = _build(parent, raw, source, chain + (name,), known).rules
        elif isinstance(parent, str) and parent in known:
            inherited = known[parent].rules
        else:
            raise InputError(f"{where}: extends {parent!r}, which is not a known recipe "
                             f"(recipes: {', '.join(dict.fromkeys([*raw, *known]))})")
        # a rule of the same name replaces the inherited one
        rules.extend(r for r in inherited if r.name not in names)
    desc = body.get("description", "")
    if not isinstance(desc, str):
        raise InputError(f"{where}: 'description' must be a string")
    return Recipe(name, desc, tuple(rules), source)


def _rule(r: Any, index: int, defaults: dict, recipe_where: str) -> Rule:
    where = f"{recipe_where} rule #{index + 1}"
    if not isinstance(r, dict):
        raise InputError(f"{where}: a rule must be a table")
    name = r.get("name", f"rule-{index + 1}")
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: 'name' must be a non-empty string")
    where = f"{recipe_where} rule {name!r}"
    unknown = sorted(set(r) - RULE_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(sorted(RULE_KEYS))})")
    modules = r.get("modules")
    if not isinstance(modules, str) or not modules:
        raise InputError(f"{where}: 'modules' (a regular expression over module names) is required")
    try:
        pattern = re.compile(modules)
    except re.error as e:
        raise InputError(f"{where}: 'modules' is not a valid regular expression ({e})") from None
    mtype = r.get("type")
    if mtype is not None and (not isinstance(mtype, str) or not mtype):
        raise InputError(f"{where}: 'type' must be a module class name such as 'Linear'")
    layers = r.get("layers")
    if layers is not None:
        if (not isinstance(layers, list) or not layers
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
            raise InputError(f"{where}: 'layers' must be a non-empty list of layer indices (-1: the last)")
        layers = tuple(layers)

    v = {k: r[k] if k in r else defaults.get(k) for k in SPEC_KEYS}
    dtype = v["dtype"]
    if dtype not in DTYPES:
        raise InputError(f"{where}: unknown dtype {dtype!r} (valid: {', '.join(DTYPES)})")
    values: dict[str, Any] = {"name": name, "modules": modules}
    if mtype is not None:
        values["type"] = mtype
    if layers is not None:
        values["layers"] = list(layers)
    values["dtype"] = dtype
    spec = None
    if dtype != "fp16":
        qs = v["qscheme"]
        if qs not in SCHEMES:
            raise InputError(f"{where}: unknown qscheme {qs!r} (valid: {', '.join(SCHEMES)})")
        gran = v["granularity"] or "per_block"
        if gran not in GRANULARITIES:
            raise InputError(f"{where}: unknown granularity {gran!r} (valid: {', '.join(GRANULARITIES)})")
        want_axis = 1 if gran == "per_block" else 0
        axis = want_axis if v["axis"] is None else v["axis"]
        if axis != want_axis:
            raise InputError(f"{where}: {gran} on axis {axis!r} is not supported (Linear weights are [out, in]: "
                             f"per_block runs along axis 1, per_channel is axis 0)")
        block = v["block_size"]
        if gran == "per_block":
            if not isinstance(block, int) or isinstance(block, bool) or block < 1:
                raise InputError(f"{where}: per_block needs a positive integer 'block_size', got {block!r}")
        else:
            block = None
        spec = QuantSpec(dtype, qs, gran, block, axis, rule=name)
        values.update(qscheme=qs, granularity=gran, axis=axis)
        if block is not None:
            values["block_size"] = block
    return Rule(name, modules, pattern, mtype, layers, spec, values)


# -- minimal TOML writing (Recipe.text) ----------------------------------------------------------

def _toml_str(s: str) -> str:
    if "'" not in s and s.isprintable():
        return f"'{s}'"  # a literal string: regular expressions stay readable
    return json.dumps(s, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_str(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
