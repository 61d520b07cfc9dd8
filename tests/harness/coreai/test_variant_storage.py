"""The variant a bundle is gated as, against what its asset stores: real bundles of every bundled recipe
(built in conftest.py with coreai-opt + coreai-torch), exact expected storage, and labels never taken on
trust (metadata.json's `compression` is checked like `?variant=`)."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.cli import main
from harness.coreai.bundle import (
    audit_asset, check_variant, expected_storage, fitting_variants, meta_model, open_bundle, variant_expectations,
)
from harness.errors import InputError
from harness.recipe import load_recipes

VARIANTS = ("fp16", "int8lin", "int8hu", "int4lin", "mixed", "mixed-edge")   # every bundled recipe


@pytest.fixture(scope="module")
def expectations(fixture_dir):
    return variant_expectations(meta_model(fixture_dir), load_recipes())


@pytest.fixture(scope="module")
def audits(variant_bundle):
    return {v: audit_asset(open_bundle(variant_bundle(v)).asset_path) for v in VARIANTS}


def test_expected_storage_counts_codes_scales_and_zero_points(expectations):
    """The fixture: body Linears 1,893,376 weights (MLP 1,179,648), lm_head 262,144; blocks of 32."""
    mixed = expectations["mixed"]
    assert mixed.codes == {4: 1_179_648, 8: 713_728 + 262_144}
    assert mixed.zero_points == {4: 1_179_648 // 32}          # asymmetric: one Int4 zero point per block
    assert mixed.allowed(4) == (1_179_648 + 36_864,)            # +3.1 %, exactly
    assert mixed.scales == (1_893_376 + 262_144) // 32 and mixed.dense == 0
    int8lin = expectations["int8lin"]
    assert int8lin.zero_points == {} and int8lin.dense == 262_144
    # the symmetric weights' all-zero zero points: one splat constant, the size of one weight's blocks
    assert 1_893_376 + 128 in int8lin.allowed(8) and 1_893_376 + 8_192 not in int8lin.allowed(8)
    assert expectations["fp16"].bits == set() and expectations["fp16"].dense == 1_893_376 + 262_144


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_real_bundle_fits_its_own_variant_exactly(variant, audits, expectations):
    audit = audits[variant]
    exp = expectations[variant]
    for bits in exp.bits | audit.integer_bits:
        assert audit.elements_of_bits(bits) in exp.allowed(bits), (bits, audit.storage)
    # every bundled recipe stores something different on the fixture: exactly one fits
    assert fitting_variants(audit, expectations) == [variant]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_real_bundle_is_refused_as_every_other_variant(variant, audits, expectations):
    recipes = load_recipes()
    for other in VARIANTS:
        res = check_variant(audits[variant], other, recipes[other], expected=expectations[other], others=expectations)
        assert bool(res) is (other == variant), (variant, other, res.reason)
        if other != variant:
            assert res.reason.startswith(f"gated as {other!r}") and res.reason.endswith(f"its storage fits {variant}")


OTHER_SCHEMES = """
format = "flipgate.recipes/1"
[recipes.pc8]
description = "per-channel int8 body, asymmetric int8 head"
rules = [
  { name = "head", modules = 'lm_head', dtype = "int8", qscheme = "asymmetric", granularity = "per_block", block_size = 32 },
  { name = "body", modules = '.*layers\\.\\d+\\.(self_attn|linear_attn|mlp)\\.\\w+', dtype = "int8", qscheme = "symmetric_with_clipping", granularity = "per_channel" },
]
[recipes.sym4]
description = "int4 symmetric body, fp16 head"
rules = [
  { name = "head", modules = 'lm_head', dtype = "fp16" },
  { name = "body", modules = '.*layers\\.\\d+\\.(self_attn|linear_attn|mlp)\\.\\w+', dtype = "int4", qscheme = "symmetric", block_size = 32 },
]
"""


def test_per_channel_asymmetric_int8_and_symmetric_int4_are_exact_too(fixture_dir, bundle_builder, tmp_path):
    """Schemes no bundled recipe uses, on real bundles: per-channel scales (one per output row), an asymmetric
    int8 head (an Int8 zero point per block), symmetric int4 (all-zero zero points, one splat counted)."""
    path = tmp_path / "recipes.toml"
    path.write_text(OTHER_SCHEMES, encoding="utf-8")
    recipes = load_recipes(path)
    arch = meta_model(fixture_dir)
    for variant in ("pc8", "sym4"):
        bundle = bundle_builder(fixture_dir, variant, tmp_path / variant, recipes=path)
        audit = audit_asset(open_bundle(bundle).asset_path)
        exp = expected_storage(recipes[variant], arch)
        assert check_variant(audit, variant, recipes[variant], expected=exp), audit.storage
        fits = fitting_variants(audit, variant_expectations(arch, recipes))
        # symmetric and symmetric_with_clipping store alike (codes, scales, all-zero zero points): storage
        # cannot tell sym4 from int4lin, only the numbers could
        assert fits == {"pc8": ["pc8"], "sym4": ["int4lin", "sym4"]}[variant]
    assert exp.codes == {4: 1_893_376}
    pc8 = expected_storage(recipes["pc8"], arch)
    assert pc8.zero_points == {8: 262_144 // 32} and pc8.scales == 262_144 // 32 + sum(pc8.zero_splats[8])


def test_inspect_accepts_a_genuine_mixed_bundle(variant_bundle, fixture_dir, capsys):
    """Asymmetric int4 stores one zero point per block (+3.1 % Int4 elements): part of the recipe, no excess."""
    assert main(["inspect", str(variant_bundle("mixed")), "--model", str(fixture_dir), "--variant", "mixed"]) == 0
    out = capsys.readouterr().out
    assert "variant mixed: the asset's storage agrees with the recipe (int4: 1,216,512 elements)" in out
    assert "storage fits: mixed\n" in out
    assert main(["inspect", str(variant_bundle("mixed")), "--model", str(fixture_dir), "--variant", "mixed",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    check = doc["variant_check"]   # `flipgate card` reads this one
    assert (check["variant"], check["ok"], check["source"]) == ("mixed", True, "--variant")
    assert check["expected"]["integer"]["int4"] == {"codes": 1_179_648, "zero_points": 36_864,
                                                    "zero_point_splat_sizes": [], "allowed": [1_216_512]}
    assert check["found"] == {"4": 1_216_512, "8": doc["asset_audit"]["storage"]["Int8"]}
    assert doc["storage_fits"] == ["mixed"]


def test_inspect_refuses_mixed_edge_as_mixed(variant_bundle, fixture_dir, capsys):
    assert main(["inspect", str(variant_bundle("mixed-edge")), "--model", str(fixture_dir), "--variant", "mixed"]) == 2
    err = capsys.readouterr().err
    assert "gated as 'mixed', whose recipe stores int4 as 1,179,648 codes + 36,864 zero points = 1,216,512" in err
    assert err.endswith("its storage fits mixed-edge\n") and err.count("\n") == 1


# -- a label is never taken on trust -----------------------------------------------------------------

def _relabel(bundle, tmp_path, compression):
    root = tmp_path / "relabelled"
    shutil.copytree(bundle, root)
    md = json.loads((root / "metadata.json").read_text(encoding="utf-8"))
    md["compression"] = compression
    (root / "metadata.json").write_text(json.dumps(md), encoding="utf-8")
    return root


def test_an_fp16_bundle_labelled_int8hu_is_refused(variant_bundle, fixture_dir, coreai_oracle, tmp_path, capsys):
    """metadata.json says int8hu, the asset is all Float16: inspect (no --variant) and every candidate refuse,
    before anything runs, instead of capturing a trace that claims variant=int8hu."""
    from harness.candidates import resolve

    liar = _relabel(variant_bundle("fp16"), tmp_path, "int8hu")
    assert main(["inspect", str(liar), "--model", str(fixture_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "metadata.json 'compression' says 'int8hu': gated as 'int8hu', whose recipe quantizes to int8" in err
    assert err.rstrip().endswith("its storage fits fp16")

    out = tmp_path / "t.safetensors"
    assert main(["capture", f"coreai-python:{liar}", "--oracle", str(coreai_oracle), "--model", str(fixture_dir),
                 "--out", str(out), "--quiet"]) == 2
    assert "says 'int8hu': gated as 'int8hu'" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(InputError, match="says 'int8hu': gated as 'int8hu'"):
        resolve(f"coreai:{liar}", llm_runner="/bin/true", model=str(fixture_dir))
    # the label is checked even without an oracle model to count elements against: no Int8 at all
    with pytest.raises(InputError, match="stores no 8-bit integer weights"):
        resolve(f"coreai-python:{liar}")


def test_a_true_label_is_checked_and_recorded(variant_bundle, fixture_dir, tmp_path, capsys):
    from harness.candidates import resolve

    honest = _relabel(variant_bundle("int4lin"), tmp_path, "int4lin")
    cand = resolve(f"coreai-python:{honest}", model=str(fixture_dir))
    assert cand.variant == "int4lin" and cand.variant_check
    meta = cand.metadata()
    assert meta["variant_source"].endswith("metadata.json 'compression'")
    assert meta["storage_check"] == "int4lin agrees with the asset's storage"
    assert main(["inspect", str(honest), "--model", str(fixture_dir)]) == 0
    out = capsys.readouterr().out
    assert "variant int4lin: the asset's storage agrees with the recipe (int4: 1,893,504 elements)" in out


def test_a_label_that_names_no_recipe_is_not_claimed(variant_bundle, fixture_dir, tmp_path, capsys):
    from harness.candidates import resolve

    odd = _relabel(variant_bundle("int8hu"), tmp_path, "w8-whatever")
    with pytest.raises(InputError, match="'compression' names variant 'w8-whatever', which no recipe defines"):
        resolve(f"coreai-python:{odd}", model=str(fixture_dir))
    # the caller may name the recipe it was built with: then that claim is what is checked
    assert resolve(f"coreai-python:{odd}?variant=int8hu", model=str(fixture_dir)).variant == "int8hu"
    assert main(["inspect", str(odd), "--model", str(fixture_dir)]) == 0
    assert "compression 'w8-whatever' names no recipe: not checked" in capsys.readouterr().out


def test_a_claim_is_never_unaudited(light_bundle, llm_runner_standin):
    from harness.candidates import resolve

    with pytest.raises(InputError, match="claims variant 'int8hu': a claimed variant is always checked"):
        resolve(f"coreai:{light_bundle}?variant=int8hu", llm_runner=str(llm_runner_standin), audit=False)
    assert resolve(f"coreai:{light_bundle}", llm_runner=str(llm_runner_standin), audit=False).variant == "coreai"


def test_expected_storage_needs_no_weights(fixture_dir):
    """Counted on the meta-device model (config.json only): nothing is loaded."""
    exp = expected_storage(load_recipes()["int8hu"], meta_model(fixture_dir))
    assert exp.allowed(8) == tuple(sorted({1_893_376 + 262_144 + b for b in exp.zero_splats[8]}))
