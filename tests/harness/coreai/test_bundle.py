"""LanguageBundle metadata and tokenizer checks, and the storage-vs-variant rules (no asset needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.coreai.bundle import (
    AssetAudit, BundleError, check_tokenizer, check_variant, compare_tokenizers, open_bundle, read_metadata,
    recipe_bits,
)
from harness.errors import InputError
from harness.recipe import load_recipes


def _bundle(tmp_path: Path, fixture_dir: Path, **changes) -> Path:
    root = tmp_path / "B"
    (root / "m.aimodel").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    shutil.copy(fixture_dir / "tokenizer.json", root / "tokenizer" / "tokenizer.json")
    md = {"metadata_version": "0.2", "kind": "llm", "name": "B", "assets": {"main": "m.aimodel"},
          "language": {"tokenizer": "x", "vocab_size": 2048, "max_context_length": 4096,
                       "embedded_tokenizer": True, "function_map": {"main": ["main"]}},
          "compression": None}
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        target = md[section] if leaf else md
        if value is _DROP:
            target.pop(leaf or section)
        else:
            target[leaf or section] = value
    (root / "metadata.json").write_text(json.dumps(md), encoding="utf-8")
    return root


_DROP = object()


def test_valid_bundle(tmp_path, fixture_dir):
    b = open_bundle(_bundle(tmp_path, fixture_dir))
    md = b.metadata
    assert (md.vocab_size, md.max_context_length, md.compression, b.functions) == (2048, 4096, None, ["main"])
    assert b.asset_path.name == "m.aimodel"
    assert check_tokenizer(b, fixture_dir)


@pytest.mark.parametrize("changes, message", [
    ({"kind": "diffusion"}, "kind 'diffusion' is not a language model bundle"),
    ({"metadata_version": "1.0"}, "metadata_version '1.0' is not one flipgate reads"),
    ({"metadata_version": _DROP}, "'metadata_version' is missing"),
    ({"assets": {"main": "other.aimodel"}}, "assets.main names 'other.aimodel', which is not in the bundle"),
    ({"language__vocab_size": "2048"}, "'language.vocab_size' must be int|language.'vocab_size' must be int"),
    ({"language__vocab_size": 0}, "language.vocab_size must be positive"),
    ({"language__function_map": {"main": []}}, "language.function_map.main must be a non-empty list"),
    ({"compression": 8}, "'compression' must be a string or null"),
])
def test_metadata_errors_name_the_key(tmp_path, fixture_dir, changes, message):
    with pytest.raises(BundleError, match=message):
        open_bundle(_bundle(tmp_path, fixture_dir, **changes))


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle folder"):
        read_metadata(tmp_path / "missing")
    with pytest.raises(BundleError, match="no metadata.json"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text("{ nope")
    with pytest.raises(BundleError, match=r"metadata.json: malformed JSON"):
        read_metadata(tmp_path)


def test_missing_embedded_tokenizer(tmp_path, fixture_dir):
    root = _bundle(tmp_path, fixture_dir)
    (root / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="no tokenizer/tokenizer.json"):
        open_bundle(root)


def _edit_tokenizer(path: Path, edit) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    edit(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


def test_tokenizer_differences_are_refused_clearly(tmp_path, fixture_dir):
    root = _bundle(tmp_path, fixture_dir)
    tj = root / "tokenizer" / "tokenizer.json"
    original = tj.read_text(encoding="utf-8")
    vocab = json.loads(original)["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]

    def swap(doc):
        v = doc["model"]["vocab"]
        v[a], v[b] = v[b], v[a]

    _edit_tokenizer(tj, swap)
    with pytest.raises(InputError, match=f"not the oracle's tokenizer .*token {a!r} is id {vocab[b]} in the bundle, "
                                         f"id {vocab[a]} in the oracle's"):
        check_tokenizer(open_bundle(root), fixture_dir)

    tj.write_text(original, encoding="utf-8")
    _edit_tokenizer(tj, lambda d: d["model"]["merges"].reverse())
    res = compare_tokenizers(tj, fixture_dir / "tokenizer.json")
    assert not res and res.reason.startswith("merge #0 is")

    tj.write_text(original, encoding="utf-8")
    _edit_tokenizer(tj, lambda d: d["model"]["vocab"].pop(a))
    assert "2047 vocabulary entries vs the oracle's 2048" in compare_tokenizers(tj, fixture_dir / "tokenizer.json").reason


# -- storage against the variant --------------------------------------------------------------------

def _audit(storage: dict) -> AssetAudit:
    return AssetAudit(Path("x.aimodel"), {}, storage, (), ())


# Storage as coreai-torch writes the fixture (measured on real assets: test_variant_storage.py): body linears
# 1,893,376 weights, lm_head 262,144, embeddings 262,144; one fp16 scale per 32-block; the symmetric weights'
# all-zero zero points counted once, at one weight's block count (128: a k_proj; 8,192: the lm_head).
BODY, HEAD, EMBED = 1_893_376, 262_144, 262_144


@pytest.fixture(scope="module")
def expected(fixture_dir):
    from harness.coreai.bundle import meta_model, variant_expectations

    return variant_expectations(meta_model(fixture_dir), load_recipes())


INT8HU = {"Int8": BODY + HEAD + 8_192, "Float16": EMBED + 75_237, "Int32": 315, "Bool": 44}
INT8LIN = {"Int8": BODY + 128, "Float16": EMBED + HEAD + 67_045, "Int32": 315}
FP16 = {"Float16": BODY + HEAD + EMBED + 7_877, "Float32": 2_385, "Int32": 315, "UInt32": 157}
INT4 = {"Int4": BODY + 128, "Float16": EMBED + HEAD + 67_045}


def test_storage_mix_counts_weights_only():
    a = _audit(INT8HU)
    assert a.storage_mix().startswith("Int8 ") and "Float16" in a.storage_mix() and "Int32" not in a.storage_mix()
    assert abs(sum(a.storage_fractions().values()) - 1) < 1e-12
    assert a.integer_bits == {8}


@pytest.mark.parametrize("storage, variant, ok, message", [
    (INT8HU, "int8hu", True, ""),
    (INT8LIN, "int8lin", True, ""),
    (FP16, "fp16", True, ""),
    (INT4, "int4lin", True, ""),
    (FP16, "int8hu", False, r"quantizes to int8, but the asset stores no 8-bit integer weights \(Float16 99.9% · Float32 0.1%\)"),
    (INT4, "fp16", False, r"whose recipe keeps every weight fp16, but the asset stores 1,893,504 elements of 4-bit"),
    (INT8HU, "fp16", False, r"keeps every weight fp16, but the asset stores .* 8-bit integers .*; its storage fits int8hu"),
    (INT8LIN, "int8hu", False, r"stores int8 as 2,155,520 codes \+ one all-zero zero-point constant of 24..8,192 = "
                               r".* elements on the oracle model, but the asset stores 1,893,504 8-bit integers .*; "
                               r"its storage fits int8lin"),
    (INT8HU, "int8lin", False, r"stores int8 as 1,893,376 codes \+ .* stores 2,163,712 8-bit .*fits int8hu"),
    # one zero point too many or too few is a contradiction: no tolerance
    ({**INT8HU, "Int8": BODY + HEAD + 8_193}, "int8hu", False, r"the asset stores 2,163,713 8-bit integers"),
    ({**INT8HU, "Int8": BODY + HEAD + 8_191}, "int8hu", False, r"the asset stores 2,163,711 8-bit integers"),
    # the codes are there but the fp16 scales are not
    ({**INT8HU, "Float16": 1_000}, "int8hu", False, r"stores 67,360 fp16 scales on the oracle model, but the asset "
                                                    r"holds only 1,000 floating-point elements"),
    (INT4, "int8hu", False, r"quantizes to int8 only, but the asset stores 1,893,504 elements of 4-bit integers"),
])
def test_variant_against_storage(storage, variant, ok, message, expected):
    recipes = load_recipes()
    res = check_variant(_audit(storage), variant, recipes[variant], expected=expected[variant], others=expected)
    assert bool(res) is ok
    if not ok:
        import re

        assert re.search(message, res.reason), res.reason


def test_without_an_oracle_model_only_the_widths_are_compared():
    recipes = load_recipes()
    # int8lin storage gated as int8hu cannot be told apart without element counts...
    res = check_variant(_audit(INT8LIN), "int8hu", recipes["int8hu"])
    assert res and res.note == "element counts not compared (no oracle model)"
    # ...but a width mismatch still is
    assert not check_variant(_audit(FP16), "int8hu", recipes["int8hu"])


def test_recipe_bits():
    r = load_recipes()
    assert [recipe_bits(r[v]) for v in ("fp16", "int8hu", "int4lin", "mixed")] == [set(), {8}, {4}, {4, 8}]
