"""Core AI LanguageBundles: `metadata.json`, the tokenizer, and an audit of the compiled asset.

A LanguageBundle (apple/coreai-models' `bundle_llm_asset`) is a folder:

    BUNDLE/
      metadata.json        metadata_version "0.2", kind "llm", assets.main, language.{...}, compression
      NAME.aimodel/        the compiled model asset (Core AI IR bytecode + its metadata)
      tokenizer/           tokenizer.json (+ config), when language.embedded_tokenizer is true

`metadata.json`'s `compression` may say null even for an int8 bundle, or name a variant the bundle
is not, so the variant a bundle is gated as is checked against what the asset actually stores:
`AIModelAsset.summary()` (coreai-core, works on Linux) lists every constant's storage type with its
element count, so an int8 bundle shows Int8 codes where an fp16 one shows Float16. `check_variant`
refuses a variant that storage contradicts, comparing with the EXACT integer element counts the
variant's recipe makes coreai-opt + coreai-torch store on the oracle model (`expected_storage`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

METADATA_VERSIONS = ("0.2",)
_NDARRAY = re.compile(r"NDArray\s*\(\s*(\w+)\s*,\s*(.*)\)\s*$")
_INT_TYPE = re.compile(r"^(U?Int)(\d+)$")
_FLOAT_TYPES = ("Float16", "BFloat16", "Float32", "Float64")
# Recipe dtypes -> the integer bit width their codes are stored in.
_RECIPE_BITS = {"int8": 8, "int4": 4}


class BundleError(InputError):
    """A bundle that breaks the LanguageBundle layout; the message names the file and key."""


@dataclass(frozen=True)
class BundleMetadata:
    path: Path
    metadata_version: str
    kind: str
    name: str
    assets: dict[str, str]
    tokenizer: str | None
    vocab_size: int
    max_context_length: int | None
    function_map: dict[str, list[str]]
    embedded_tokenizer: bool
    compression: str | None
    raw: dict = field(repr=False)


@dataclass(frozen=True)
class LanguageBundle:
    path: Path
    metadata: BundleMetadata

    @property
    def asset_path(self) -> Path:
        return self.path / self.metadata.assets["main"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def functions(self) -> list[str]:
        """The asset functions the runner calls (function_map values), `main` first."""
        names: list[str] = []
        for fns in self.metadata.function_map.values():
            names += [f for f in fns if f not in names]
        return names or ["main"]


def _key(obj: dict, key: str, kind, path: Path, where: str, *, required: bool = True, default=None):
    if key not in obj:
        if required:
            raise BundleError(f"{path}: {where}{key!r} is missing")
        return default
    val = obj[key]
    if val is None and not required:
        return default
    if not isinstance(val, kind) or (kind is int and isinstance(val, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BundleError(f"{path}: {where}{key!r} must be {names}, found {json.dumps(val)[:60]}")
    return val


def read_metadata(bundle_dir: str | os.PathLike) -> BundleMetadata:
    """Read and validate `BUNDLE/metadata.json` (schema 0.2)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"{root}: {'no such bundle folder' if not root.exists() else 'a bundle is a folder'}")
    mp = root / "metadata.json"
    if not mp.is_file():
        raise BundleError(f"{root}: no metadata.json (not a Core AI LanguageBundle)")
    try:
        doc = json.loads(mp.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{mp}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{mp}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{mp}: must be a JSON object")
    version = _key(doc, "metadata_version", str, mp, "")
    if version.split(".")[0] != METADATA_VERSIONS[0].split(".")[0]:
        raise BundleError(f"{mp}: metadata_version {version!r} is not one flipgate reads "
                          f"({', '.join(METADATA_VERSIONS)})")
    kind = _key(doc, "kind", str, mp, "")
    if kind != "llm":
        raise BundleError(f"{mp}: kind {kind!r} is not a language model bundle (expected \"llm\")")
    assets = _key(doc, "assets", dict, mp, "")
    _key(assets, "main", str, mp, "assets.")  # validated here; open_bundle checks it exists
    lang = _key(doc, "language", dict, mp, "")
    vocab = _key(lang, "vocab_size", int, mp, "language.")
    if vocab <= 0:
        raise BundleError(f"{mp}: language.vocab_size must be positive, found {vocab}")
    ctx = _key(lang, "max_context_length", int, mp, "language.", required=False)
    if ctx is not None and ctx <= 0:
        raise BundleError(f"{mp}: language.max_context_length must be positive, found {ctx}")
    fmap = _key(lang, "function_map", dict, mp, "language.", required=False, default={"main": ["main"]})
    for k, v in fmap.items():
        if not isinstance(v, list) or not v or not all(isinstance(f, str) and f for f in v):
            raise BundleError(f"{mp}: language.function_map.{k} must be a non-empty list of function names")
    compression = doc.get("compression")
    if compression is not None and not isinstance(compression, str):
        raise BundleError(f"{mp}: 'compression' must be a string or null, found {json.dumps(compression)[:60]}")
    return BundleMetadata(
        path=mp, metadata_version=version, kind=kind, name=str(doc.get("name") or root.name),
        assets={k: v for k, v in assets.items() if isinstance(v, str)},
        tokenizer=lang.get("tokenizer") if isinstance(lang.get("tokenizer"), str) else None,
        vocab_size=vocab, max_context_length=ctx, function_map=fmap,
        embedded_tokenizer=bool(lang.get("embedded_tokenizer", True)), compression=compression, raw=doc)


def open_bundle(bundle_dir: str | os.PathLike) -> LanguageBundle:
    """Validate a LanguageBundle folder: metadata, the main asset, the embedded tokenizer."""
    md = read_metadata(bundle_dir)
    b = LanguageBundle(Path(bundle_dir), md)
    asset = b.asset_path
    if not asset.exists():
        raise BundleError(f"{md.path}: assets.main names {md.assets['main']!r}, which is not in the bundle")
    if asset.suffix != ".aimodel" or not asset.is_dir():
        raise BundleError(f"{asset}: assets.main must be a .aimodel asset folder")
    if md.embedded_tokenizer and not (b.tokenizer_dir / "tokenizer.json").is_file():
        raise BundleError(f"{b.path}: no tokenizer/tokenizer.json, though metadata.json says the "
                          f"tokenizer is embedded")
    return b


# -- tokenizer -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenizerCheck:
    """The bundle's tokenizer against the oracle's: truthy when the vocabulary and merges agree."""

    same: bool
    vocab_size: int
    merges: int
    reason: str = ""

    def __bool__(self) -> bool:
        return self.same


def _tokenizer_parts(path: Path) -> tuple[dict[str, int], list[tuple[str, ...]], dict[int, str], str]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: cannot read the tokenizer ({e.__class__.__name__}: {e})") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise BundleError(f"{path}: not a tokenizers tokenizer.json (no model.vocab)")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    added = {int(t["id"]): str(t["content"]) for t in doc.get("added_tokens") or []
             if isinstance(t, dict) and "id" in t and "content" in t}
    return model["vocab"], merges, added, str(model.get("type", ""))


def compare_tokenizers(bundle_tokenizer: str | os.PathLike, oracle_tokenizer: str | os.PathLike) -> TokenizerCheck:
    """Compare two tokenizer.json files by content (vocabulary ids, merges, added tokens)."""
    bp, op = Path(bundle_tokenizer), Path(oracle_tokenizer)
    bv, bm, ba, bt = _tokenizer_parts(bp)
    ov, om, oa, ot = _tokenizer_parts(op)
    n = len(set(bv.values()) | set(ba))

    def differ(reason: str) -> TokenizerCheck:
        return TokenizerCheck(False, n, len(bm), reason)

    if bt != ot:
        return differ(f"tokenizer model {bt!r} vs the oracle's {ot!r}")
    if len(bv) != len(ov):
        return differ(f"{len(bv)} vocabulary entries vs the oracle's {len(ov)}")
    for tok, i in bv.items():
        if ov.get(tok) != i:
            other = f"id {ov[tok]}" if tok in ov else "absent"
            return differ(f"token {tok!r} is id {i} in the bundle, {other} in the oracle's")
    if len(bm) != len(om):
        return differ(f"{len(bm)} merges vs the oracle's {len(om)}")
    for k, (a, b) in enumerate(zip(bm, om)):
        if a != b:
            return differ(f"merge #{k} is {' '.join(a)!r} in the bundle, {' '.join(b)!r} in the oracle's")
    for i in sorted(set(ba) | set(oa)):
        if ba.get(i) != oa.get(i):
            return differ(f"added token id {i} is {ba.get(i)!r} in the bundle, {oa.get(i)!r} in the oracle's")
    return TokenizerCheck(True, n, len(bm))


def check_tokenizer(bundle: LanguageBundle, model_dir: str | os.PathLike) -> TokenizerCheck:
    """The bundle's tokenizer against the oracle checkpoint's; raise a clear refusal if they differ."""
    oracle_tj = Path(model_dir) / "tokenizer.json"
    if not oracle_tj.is_file():
        raise InputError(f"{model_dir}: no tokenizer.json to check the bundle's tokenizer against")
    res = compare_tokenizers(bundle.tokenizer_dir / "tokenizer.json", oracle_tj)
    if not res:
        raise InputError(f"{bundle.tokenizer_dir / 'tokenizer.json'}: not the oracle's tokenizer "
                         f"({oracle_tj}): {res.reason}; token ids would not mean the same tokens")
    return res


# -- the compiled asset ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSig:
    name: str
    dtype: str
    shape: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.name} {self.dtype}[{'x'.join(self.shape)}]"


@dataclass(frozen=True)
class FunctionSig:
    name: str
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    states: tuple[TensorSig, ...]


def _sig(entry) -> TensorSig:
    name, desc = entry
    m = _NDARRAY.match(str(desc))
    if not m:
        return TensorSig(str(name), str(desc), ())
    dims = tuple(d.strip() for d in re.split(r"[×x]", m.group(2)) if d.strip())
    return TensorSig(str(name), m.group(1), dims)


def storage_bits(type_name: str) -> int | None:
    """Bit width of an integer storage type (Int8 -> 8, UInt4 -> 4); None for anything else."""
    m = _INT_TYPE.match(type_name)
    return int(m.group(2)) if m else None


def is_weight_storage(type_name: str) -> bool:
    """Floats and integers of 8 bits or fewer hold weights; wider integers and Bool hold indices,
    shapes and masks (counted apart)."""
    bits = storage_bits(type_name)
    return type_name in _FLOAT_TYPES or (bits is not None and bits <= 8)


@dataclass(frozen=True)
class AssetAudit:
    """What a compiled asset holds, from `AIModelAsset.summary(include_statistics=True)`."""

    path: Path
    functions: dict[str, FunctionSig]
    storage: dict[str, int]           # storage type -> element count
    compute_types: tuple[str, ...]
    operations: tuple[tuple[str, int], ...]
    compatibility_version: str = ""

    @property
    def weight_storage(self) -> dict[str, int]:
        return {k: v for k, v in self.storage.items() if is_weight_storage(k)}

    def storage_fractions(self) -> dict[str, float]:
        w = self.weight_storage
        total = sum(w.values())
        return {k: v / total for k, v in sorted(w.items(), key=lambda kv: -kv[1])} if total else {}

    def storage_mix(self) -> str:
        """e.g. `Int8 97.9% · Float16 2.1%` (weight-bearing storage only)."""
        return " · ".join(f"{k} {100 * f:.1f}%" for k, f in self.storage_fractions().items()) or "no weights"

    def elements_of_bits(self, bits: int) -> int:
        return sum(v for k, v in self.weight_storage.items() if storage_bits(k) == bits)

    @property
    def integer_bits(self) -> set[int]:
        return {b for k, v in self.weight_storage.items() if v and (b := storage_bits(k)) is not None}


def audit_asset(asset_path: str | os.PathLike) -> AssetAudit:
    """Read a `.aimodel` asset's signature and statistics (Linux and macOS; nothing is executed)."""
    p = Path(asset_path)
    try:
        from coreai.authoring.asset import AIModelAsset
    except ImportError as e:
        raise InputError(f"{p}: auditing a Core AI asset needs the coreai-core package "
                         f"(pip install coreai-core): {e}") from None
    try:
        summary = AIModelAsset.load(p).summary(include_statistics=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise InputError(f"{p}: not a readable Core AI asset ({first})") from None
    if summary is None:
        raise InputError(f"{p}: the asset holds no source program to audit")
    fns = {}
    for f in summary.function_names:
        fns[f] = FunctionSig(f, tuple(_sig(e) for e in summary.function_inputs(f)),
                             tuple(_sig(e) for e in summary.function_outputs(f)),
                             tuple(_sig(e) for e in summary.function_states(f)))
    storage: dict[str, int] = {}
    for name, count in summary.storage_types:
        storage[str(name)] = storage.get(str(name), 0) + int(count)
    return AssetAudit(p, fns, storage, tuple(str(t) for t in summary.compute_types),
                      tuple((str(o), int(c)) for o, c in summary.operation_distribution),
                      str(getattr(summary, "_compatibility_version", "")))


def check_functions(bundle: LanguageBundle, audit: AssetAudit) -> None:
    missing = [f for f in bundle.functions if f not in audit.functions]
    if missing:
        raise BundleError(f"{bundle.metadata.path}: language.function_map names {', '.join(missing)}, "
                          f"which the asset does not define (it has {', '.join(audit.functions) or 'none'})")


# -- variant against storage -----------------------------------------------------------------------
#
# What coreai-opt (0.4) + coreai-torch (0.4) store for a quantized Linear weight [out, in], measured on
# real converted assets of every bundled recipe (tests/harness/coreai/test_variant_storage.py):
#
#   codes        out * in elements of the recipe's integer type (Int8 / Int4)
#   scales       one Float16 per block (out * in / block_size; per channel: out)
#   zero points  one per block, in the codes' integer type. coreai-opt's `finalize` gives every weight
#                a zero-point tensor; under `symmetric` and `symmetric_with_clipping` it is all zero,
#                which coreai-torch writes as a splat constant, and the asset summary counts equal
#                splats ONCE, at the size of the first in program order. So an asymmetric weight adds
#                its block count (+1/32 of its codes at block 32: the "+3.1 % Int4" of mixed), and all
#                the symmetric weights of one integer type together add the block count of one of them.
#
# So each integer width has a finite set of possible counts, computed from the recipe and the model's
# module shapes; anything else contradicts the variant. (An asymmetric weight whose zero points all
# came out equal would be a splat too; trained weights of real size do not do that.) Storage cannot
# tell `symmetric` from `symmetric_with_clipping` (they store alike); only the numbers can.
# Measured per_channel (one scale per output row) and asymmetric int8 too; block 32 throughout.

@dataclass(frozen=True)
class ExpectedStorage:
    """The storage a recipe makes coreai-opt + coreai-torch write for one model (see above)."""

    codes: dict[int, int]                   # integer bits -> quantized weight elements
    zero_points: dict[int, int]             # integer bits -> zero points of asymmetric weights
    zero_splats: dict[int, tuple[int, ...]]  # integer bits -> block counts of the symmetric weights
    scales: int                             # fp16 scales: one per block of every quantized weight
    dense: int                              # Linear weight elements the recipe keeps in floating point

    @property
    def bits(self) -> set[int]:
        return {b for b, n in self.codes.items() if n}

    def allowed(self, bits: int) -> tuple[int, ...]:
        """Every element count of `bits`-bit integer storage this recipe can produce (sorted)."""
        base = self.codes.get(bits, 0) + self.zero_points.get(bits, 0)
        splats = self.zero_splats.get(bits, ())
        return tuple(sorted({base + s for s in splats})) if splats else (base,)

    def fits(self, found: dict[int, int], floats: int) -> bool:
        return (all(found.get(b, 0) in self.allowed(b) for b in self.bits | {b for b, n in found.items() if n})
                and floats >= self.scales + self.dense)

    def describe(self, bits: int) -> str:
        """e.g. `1,179,648 codes + 36,864 zero points = 1,216,512`."""
        parts = [f"{_fmt(self.codes.get(bits, 0))} codes"]
        if self.zero_points.get(bits):
            parts.append(f"{_fmt(self.zero_points[bits])} zero points")
        splats = sorted(set(self.zero_splats.get(bits, ())))
        if splats:
            size = _fmt(splats[0]) if len(splats) == 1 else f"{_fmt(splats[0])}..{_fmt(splats[-1])}"
            parts.append(f"one all-zero zero-point constant of {size}")
        allowed = self.allowed(bits)
        total = _fmt(allowed[0]) if len(allowed) == 1 else " or ".join(_fmt(a) for a in allowed[:4]) + (
            " or ..." if len(allowed) > 4 else "")
        return " + ".join(parts) + f" = {total}"

    def as_json(self) -> dict:
        return {"integer": {f"int{b}": {"codes": self.codes.get(b, 0), "zero_points": self.zero_points.get(b, 0),
                                        "zero_point_splat_sizes": sorted(set(self.zero_splats.get(b, ()))),
                                        "allowed": list(self.allowed(b))} for b in sorted(self.bits)},
                "fp16_scales": self.scales, "dense_linear_elements": self.dense}


@dataclass(frozen=True)
class VariantCheck:
    """Whether an asset's storage agrees with the variant it is gated as; truthy when it does."""

    variant: str
    ok: bool
    expected: ExpectedStorage | None   # None: no oracle model, only the integer widths were compared
    found: dict[int, int]              # integer bits -> elements the asset stores
    reason: str = ""
    note: str = ""

    def __bool__(self) -> bool:
        return self.ok


def recipe_bits(recipe) -> set[int]:
    """The integer widths a recipe's rules quantize to (an empty set: fp16, nothing quantized)."""
    return {_RECIPE_BITS[r.spec.dtype] for r in recipe.rules if r.spec is not None}


def meta_model(model_dir: str | os.PathLike):
    """The oracle model's architecture on the meta device, built from config.json (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(str(model_dir))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise InputError(f"{model_dir}: cannot build the model from its config.json ({first})") from None


def expected_storage(recipe, model) -> ExpectedStorage:
    """The exact storage `recipe` makes coreai-opt + coreai-torch write for `model` (see meta_model)."""
    modules = dict(model.named_modules())
    codes: dict[int, int] = {}
    zero_points: dict[int, int] = {}
    splats: dict[int, list[int]] = {}
    scales = dense = 0
    for name, spec in recipe.plan(model).items():
        out_f, in_f = modules[name].weight.shape
        if spec is None:
            dense += out_f * in_f
            continue
        bits = _RECIPE_BITS[spec.dtype]
        blocks = out_f * (in_f // spec.block_size) if spec.granularity == "per_block" else out_f
        codes[bits] = codes.get(bits, 0) + out_f * in_f
        scales += blocks
        if spec.qscheme == "asymmetric":
            zero_points[bits] = zero_points.get(bits, 0) + blocks
        else:
            splats.setdefault(bits, []).append(blocks)
    return ExpectedStorage(codes, zero_points, {b: tuple(v) for b, v in splats.items()}, scales, dense)


def _fmt(n: int) -> str:
    return f"{n:,}"


def _float_elements(audit: AssetAudit) -> int:
    return sum(n for k, n in audit.weight_storage.items() if k in _FLOAT_TYPES)


def check_variant(audit: AssetAudit, variant: str, recipe, *, expected: ExpectedStorage | None = None,
                  others: dict[str, ExpectedStorage] | None = None) -> VariantCheck:
    """Does the asset's storage contradict gating it as `variant` (whose recipe is `recipe`)?

    Contradictions: integer storage of a width the recipe never uses (an "fp16" bundle holding
    Int4); a width the recipe uses with no such storage (an "int8hu" bundle stored all Float16);
    and, given the recipe's `expected_storage` on the oracle model, an integer element count that
    is not one the recipe produces (an int8lin bundle, fp16 head, gated as int8hu), or fewer
    floating-point elements than the recipe's fp16 scales and fp16-kept Linear weights. `others`
    (variant -> expected storage) lets the refusal name the variants the storage does fit.
    """
    want = recipe_bits(recipe)
    found = {b: audit.elements_of_bits(b) for b in sorted(audit.integer_bits | want)}
    have = {b for b, n in found.items() if n}
    floats = _float_elements(audit)
    mix = audit.storage_mix()

    def refuse(reason: str) -> VariantCheck:
        fitting = [v for v, e in (others or {}).items() if v != variant and e.fits(found, floats)]
        hint = f"; its storage fits {', '.join(fitting)}" if fitting else ""
        return VariantCheck(variant, False, expected, found, reason + hint)

    extra = sorted(have - want)
    if extra:
        names = ", ".join(f"{_fmt(found[b])} elements of {b}-bit integers" for b in extra)
        what = "keeps every weight fp16" if not want else f"quantizes to {', '.join(f'int{b}' for b in sorted(want))} only"
        return refuse(f"gated as {variant!r}, whose recipe {what}, but the asset stores {names} ({mix})")
    missing = sorted(want - have)
    if missing:
        return refuse(f"gated as {variant!r}, whose recipe quantizes to "
                      f"{', '.join(f'int{b}' for b in missing)}, but the asset stores no {missing[0]}-bit "
                      f"integer weights ({mix}): metadata.json may say otherwise, the storage does not")
    if expected is None:
        return VariantCheck(variant, True, None, found, note="element counts not compared (no oracle model)")
    for b in sorted(expected.bits | have):
        if found.get(b, 0) not in expected.allowed(b):
            return refuse(f"gated as {variant!r}, whose recipe stores int{b} as {expected.describe(b)} elements "
                          f"on the oracle model, but the asset stores {_fmt(found.get(b, 0))} {b}-bit integers ({mix})")
    if floats < expected.scales + expected.dense:
        return refuse(f"gated as {variant!r}, whose recipe keeps {_fmt(expected.dense)} Linear weights in fp16 and "
                      f"stores {_fmt(expected.scales)} fp16 scales on the oracle model, but the asset holds only "
                      f"{_fmt(floats)} floating-point elements ({mix})")
    return VariantCheck(variant, True, expected, found)


def variant_expectations(model, recipes: dict[str, Any]) -> dict[str, ExpectedStorage]:
    """expected_storage for every recipe that fits the model (recipes that do not fit are left out)."""
    out: dict[str, ExpectedStorage] = {}
    for name, recipe in recipes.items():
        try:
            out[name] = expected_storage(recipe, model)
        except InputError:
            continue
    return out


def fitting_variants(audit: AssetAudit, expectations: dict[str, ExpectedStorage]) -> list[str]:
    """The variants whose exact storage the asset holds."""
    found = {b: audit.elements_of_bits(b) for b in audit.integer_bits}
    floats = _float_elements(audit)
    return [v for v, e in expectations.items() if e.fits(found, floats)]


@dataclass(frozen=True)
class VariantClaim:
    """The variant a trace of this bundle would claim, and where the claim comes from."""

    variant: str | None    # None: nothing is claimed (metadata.json says compression: null)
    source: str            # "?variant=" / "--variant" or "metadata.json 'compression'"


def claimed_variant(bundle: LanguageBundle, variant: str | None, *, option: str = "?variant=") -> VariantClaim:
    """The caller's variant if given, else metadata.json's `compression` (which may be null)."""
    if variant:
        return VariantClaim(variant, option)
    return VariantClaim(bundle.metadata.compression or None, f"{bundle.metadata.path} 'compression'")


def audit_claim(bundle: LanguageBundle, audit: AssetAudit, claim: VariantClaim, recipes: dict[str, Any],
                model_dir: str | os.PathLike | None, *,
                expectations: dict[str, ExpectedStorage] | None = None) -> VariantCheck | None:
    """Check a claimed variant against the asset's storage; InputError (one line) when it cannot hold.

    A claim that names no recipe is refused too: a label whose storage cannot be checked is not
    written into a trace. Returns None when nothing is claimed.
    """
    if claim.variant is None:
        return None
    recipe = recipes.get(claim.variant)
    if recipe is None:
        raise InputError(f"{bundle.path}: {claim.source} names variant {claim.variant!r}, which no recipe defines "
                         f"(recipes: {', '.join(recipes)}), so the asset's storage cannot be checked against it: "
                         f"name the recipe the bundle was built with (?variant=NAME, --variant NAME)")
    others = expectations
    if others is None and model_dir is not None:
        others = variant_expectations(meta_model(model_dir), recipes)
    expected = None if others is None else others.get(claim.variant)
    if others is not None and expected is None:  # the recipe does not fit the model: plan() raises why
        expected = expected_storage(recipe, meta_model(model_dir))
    check = check_variant(audit, claim.variant, recipe, expected=expected, others=others)
    if not check:
        said = "" if claim.source.startswith(("?", "--")) else f"{claim.source} says {claim.variant!r}: "
        raise InputError(f"{bundle.path}: {said}{check.reason}")
    return check
