"""Recipes as data: the bundled variants follow DESIGN.md's table; user files add and override;
bad recipes fail with the file, recipe, rule and module named."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch

from harness.errors import InputError
from harness.models import fixture_model_path
from harness.recipe import QuantSpec, bundled_recipes_path, get_recipe, load_recipes, parse_recipes

VARIANTS = ["fp16", "int8lin", "int8hu", "int4lin", "mixed", "mixed-edge"]


def meta_model(**overrides):
    """The fixture's architecture without its weights (plans need names and shapes only)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(fixture_model_path()))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


@pytest.fixture(scope="module")
def model():
    return meta_model()


def spec(dtype, qscheme, block=32):
    return QuantSpec(dtype, qscheme, "per_block", block, 1)


CLIP8, CLIP4 = spec("int8", "symmetric_with_clipping"), spec("int4", "symmetric_with_clipping")
SYM8, ASYM4 = spec("int8", "symmetric"), spec("int4", "asymmetric")


def by_kind(plan):
    """Plan entries grouped: head, attention, GatedDeltaNet, MLP (first/last/middle layers)."""
    last = max(int(m.group(1)) for n in plan if (m := re.search(r"layers\.(\d+)\.", n)))
    out = {}
    for name, s in plan.items():
        if name == "lm_head":
            kind = "head"
        elif ".mlp." in name:
            layer = int(re.search(r"layers\.(\d+)\.", name).group(1))
            kind = "mlp-edge" if layer in (0, last) else "mlp"
        elif ".self_attn." in name:
            kind = "attention"
        else:
            kind = "gdn"
        out.setdefault(kind, set()).add(s)
    return out


def test_bundled_variants_follow_the_design_table(model):
    recipes = load_recipes()
    assert list(recipes) == VARIANTS
    want = {
        "fp16": dict(head=None, attention=None, gdn=None, mlp=None, **{"mlp-edge": None}),
        "int8lin": dict(head=None, attention=CLIP8, gdn=CLIP8, mlp=CLIP8, **{"mlp-edge": CLIP8}),
        "int8hu": dict(head=SYM8, attention=CLIP8, gdn=CLIP8, mlp=CLIP8, **{"mlp-edge": CLIP8}),
        "int4lin": dict(head=None, attention=CLIP4, gdn=CLIP4, mlp=CLIP4, **{"mlp-edge": CLIP4}),
        "mixed": dict(head=CLIP8, attention=CLIP8, gdn=CLIP8, mlp=ASYM4, **{"mlp-edge": ASYM4}),
        "mixed-edge": dict(head=CLIP8, attention=CLIP8, gdn=CLIP8, mlp=ASYM4, **{"mlp-edge": CLIP8}),
    }
    for name, kinds in want.items():
        got = by_kind(recipes[name].plan(model))
        assert got == {k: {v} for k, v in kinds.items()}, name


def test_plan_covers_linears_only(model):
    plan = get_recipe("int8hu").plan(model)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(plan) == linears and len(linears) == 63
    # embeddings, norms and the depthwise conv are never in a plan
    assert not any(k in n for n in plan for k in ("embed", "norm", "conv1d"))
    assert plan["model.layers.0.linear_attn.in_proj_b"] == CLIP8  # [6, 128]: tiny but block-aligned


def test_recipe_text_is_a_self_contained_recipe_file(model, tmp_path):
    for name, recipe in load_recipes().items():
        again = parse_recipes(recipe.text, "text")[name]
        assert again.plan(model) == recipe.plan(model)
        assert [r.spec for r in again.rules] == [r.spec for r in recipe.rules]
    assert "layers = [0, -1]" in load_recipes()["mixed-edge"].text  # extends and defaults resolved in
    p = tmp_path / "one.toml"
    p.write_text(get_recipe("mixed-edge").text)
    assert load_recipes(p)["mixed-edge"].plan(model) == get_recipe("mixed-edge").plan(model)


def test_user_file_adds_overrides_and_extends(model, tmp_path):
    p = tmp_path / "flipgate.toml"
    p.write_text("""
[gates.int6]                 # another part's table: left alone
candidate = "int6"

[recipes.int4-head]
description = "int4lin with an int4 head"
extends = "int4lin"
rules = [{ name = "head", modules = 'lm_head', dtype = "int4", qscheme = "symmetric_with_clipping", block_size = 64 }]

[recipes.int8hu]
description = "int8hu with a per-channel head"
extends = "int8hu"
rules = [{ name = "head", modules = 'lm_head', dtype = "int8", qscheme = "symmetric", granularity = "per_channel" }]
""")
    recipes = load_recipes(p)
    assert set(VARIANTS) < set(recipes)
    plan = recipes["int4-head"].plan(model)
    assert plan["lm_head"] == spec("int4", "symmetric_with_clipping", 64)
    assert plan["model.layers.3.mlp.up_proj"] == CLIP4
    head = recipes["int8hu"].plan(model)["lm_head"]
    assert (head.granularity, head.block_size, head.axis, head.qscheme) == ("per_channel", None, 0, "symmetric")
    assert [r.name for r in recipes["int8hu"].rules] == ["head", "body"]  # the user's head replaced the bundled one
    assert recipes["int8hu"].source == str(p)
    assert load_recipes()["int8hu"].plan(model)["lm_head"] == SYM8  # the bundled file is untouched


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(InputError, match=r"unknown variant 'int3': valid variants are fp16, int8lin, int8hu, "
                                          r"int4lin, mixed, mixed-edge"):
        get_recipe("int3")


BAD = [
    ('rules = [{ name = "body", modules = "lm_head", dtype = "int6" }]', r"rule 'body': unknown dtype 'int6'"),
    ('rules = [{ name = "body", modules = "lm_head", dtype = "int8", qscheme = "nf4" }]',
     r"rule 'body': unknown qscheme 'nf4' \(valid: symmetric_with_clipping, symmetric, asymmetric\)"),
    ('rules = [{ name = "b", modules = "lm_head", dtype = "int8", qscheme = "symmetric", granularity = "per_group" }]',
     r"rule 'b': unknown granularity 'per_group'"),
    ('rules = [{ name = "b", modules = "lm_head", dtype = "int8", qscheme = "symmetric", axis = 0 }]',
     r"rule 'b': per_block on axis 0 is not supported"),
    ('rules = [{ name = "b", modules = "lm_head", dtype = "int8", qscheme = "symmetric", block_size = 0 }]',
     r"rule 'b': per_block needs a positive integer 'block_size'"),
    ('rules = [{ name = "b", modules = "(", dtype = "fp16" }]', r"rule 'b': 'modules' is not a valid regular"),
    ('rules = [{ name = "b", modules = "x", dtype = "fp16", bits = 4 }]', r"rule 'b': unknown key 'bits'"),
    ('rules = [{ modules = "x", dtype = "fp16" }, { modules = "y", dtype = "fp16", name = "rule-1" }]',
     r"two rules are named 'rule-1'"),
    ('extends = "nope"', r"recipe 'bad': extends 'nope', which is not a known recipe"),
    ('rule = []', r"recipe 'bad': unknown key 'rule'"),
]


@pytest.mark.parametrize("body,message", BAD)
def test_bad_recipes_name_file_recipe_and_rule(tmp_path, body, message):
    p = tmp_path / "r.toml"
    p.write_text(f"[recipes.bad]\n{body}\n")
    with pytest.raises(InputError, match=message) as e:
        load_recipes(p)
    assert str(p) in str(e.value)


def test_malformed_toml_and_extends_cycle(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[recipes.a\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(p))}: malformed TOML"):
        load_recipes(p)
    p.write_text('[recipes.a]\nextends = "b"\n[recipes.b]\nextends = "a"\n')
    with pytest.raises(InputError, match="'extends' forms a cycle"):
        load_recipes(p)
    with pytest.raises(InputError, match="no such recipe file"):
        load_recipes(tmp_path / "missing.toml")


def test_rules_that_match_nothing_are_named(model, tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("""[recipes.gpt]
defaults = { qscheme = "symmetric", block_size = 32 }
rules = [
  { name = "attn", modules = 'transformer\\.h\\.\\d+\\.attn\\.c_attn', dtype = "int8" },
  { name = "body", modules = '.*layers\\.\\d+\\.mlp\\.\\w+', dtype = "int8" },
  { name = "shadowed", modules = '.*layers\\.\\d+\\.mlp\\.up_proj', dtype = "int4" },
]
""")
    with pytest.raises(InputError) as e:
        load_recipes(p)["gpt"].plan(model)
    msg = str(e.value)
    assert "recipe 'gpt'" in msg and str(p) in msg and "does not fit" in msg
    assert "rule 'attn'" in msg and "rule 'shadowed'" in msg and "rule 'body'" not in msg
    assert "lm_head" in msg  # says what the model's Linear modules are


def test_bundled_recipes_on_an_architecture_they_do_not_fit():
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128))
    with pytest.raises(InputError, match=r"recipe 'int8lin' .*rule 'body' \(modules '.*'\) matched no module"):
        get_recipe("int8lin").plan(gpt2)
    assert get_recipe("fp16").plan(gpt2) == {"lm_head": None}


def test_block_size_must_divide_the_input_width(tmp_path):
    odd = meta_model(intermediate_size=400)  # down_proj's input width 400 is not a multiple of 32
    with pytest.raises(InputError, match=r"recipe 'int8hu' .* rule 'body': block size 32 does not divide the "
                                         r"input width 400 of model\.layers\.0\.mlp\.down_proj \(weight \[128, 400\]\)"):
        get_recipe("int8hu").plan(odd)
    p = tmp_path / "r.toml"
    p.write_text('[recipes.pc]\nrules = [{ name = "all", modules = ".*", dtype = "int8", qscheme = "symmetric", '
                 'granularity = "per_channel" }]\n')
    plan = load_recipes(p)["pc"].plan(odd)  # per channel has no block to fit
    assert Counter(s.granularity for s in plan.values()) == {"per_channel": 63}


def test_layers_selects_first_and_last(model):
    plan = get_recipe("mixed-edge").plan(model)
    int8_mlp = sorted(n for n, s in plan.items() if ".mlp." in n and s.dtype == "int8")
    assert int8_mlp == sorted(f"model.layers.{i}.mlp.{p}_proj" for i in (0, 7) for p in ("gate", "up", "down"))


def test_type_rule_names_a_module_that_is_not_linear(model, tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[recipes.conv]\nrules = [{ name = "conv", modules = ".*conv1d", type = "Conv1d", dtype = "int8", '
                 'qscheme = "symmetric", block_size = 4 }]\n')
    with pytest.raises(InputError, match=r"rule 'conv': matches model\.layers\.0\.linear_attn\.conv1d, a Conv1d: "
                                         r"only Linear weights are quantized"):
        load_recipes(p)["conv"].plan(model)


def test_bundled_file_documents_every_rule_key():
    text = bundled_recipes_path().read_text()
    for key in ("name", "modules", "type", "layers", "dtype", "qscheme", "granularity", "block_size", "axis",
                "extends", "defaults"):
        assert re.search(rf"^#\s+`?{key}`?", text, re.M) or f"`{key}" in text, key
    json.dumps(load_recipes()["int8hu"].text)  # plain text, fit for trace metadata
