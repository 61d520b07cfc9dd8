"""`flipgate inspect`: what a Core AI LanguageBundle holds, and whether it can be gated as a variant."""

from __future__ import annotations

from ..cli import add_command, input_path

EXAMPLE = """\
flipgate inspect ~/bundles/Qwen3.6-27B-int8hu --model ~/models/Qwen3.6-27B --variant int8hu
flipgate inspect BUNDLE --json > bundle.json"""


def register(sub) -> None:
    p = add_command(
        sub, "inspect", help="validate a Core AI LanguageBundle and audit its compiled asset",
        description="Read and validate BUNDLE/metadata.json and the embedded tokenizer, print the vocabulary, "
                    "context length, functions, states and compression, check the tokenizer against the oracle "
                    "checkpoint's, and audit the compiled asset's storage (e.g. Int8 97.9% · Float16 2.1%). "
                    "With --variant, refuse (exit 2) a variant the storage contradicts: metadata.json may say "
                    "compression: null for an int8 bundle, the storage does not lie.",
        example=EXAMPLE)
    input_path(p, "bundle", kind="dir", metavar="BUNDLE_DIR")
    input_path(p, "--model", kind="any", metavar="DIR", help="the oracle checkpoint (default: the bundled fixture model)")
    p.add_argument("--variant", help="check that the asset's storage fits this variant's recipe (metadata.json's "
                   "compression, when it names a recipe, is always checked)")
    input_path(p, "--config", metavar="F", help="a recipes file adding to the bundled recipes")
    p.add_argument("--no-audit", action="store_true", help="skip the asset audit (metadata and tokenizer only)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..coreai.bundle import (
        VariantClaim, audit_asset, audit_claim, check_functions, check_tokenizer, fitting_variants, meta_model,
        open_bundle, variant_expectations,
    )
    from ..errors import InputError
    from ..models import resolve_model_dir

    bundle = open_bundle(args.bundle)
    md = bundle.metadata
    model_dir = resolve_model_dir(args.model)
    tok = check_tokenizer(bundle, model_dir) if md.embedded_tokenizer else None
    audit = None if args.no_audit else audit_asset(bundle.asset_path)
    if audit is not None:
        check_functions(bundle, audit)
    if args.variant and audit is None:
        raise InputError("--variant needs the asset audit: drop --no-audit")
    checks, claims, fits, unchecked = [], [], None, ""
    if audit is None and md.compression:
        unchecked = f"metadata.json's compression {md.compression!r} not checked against the storage (--no-audit)"
    if audit is not None:
        from ..recipe import load_recipes

        recipes = load_recipes(args.config)
        if args.variant and args.variant not in recipes:
            raise InputError(f"unknown variant {args.variant!r}: valid variants are {', '.join(recipes)}")
        expectations = variant_expectations(meta_model(model_dir), recipes)
        fits = fitting_variants(audit, expectations)
        # metadata.json's own claim is checked whether or not --variant is given; a name that is no
        # recipe cannot be checked, and inspect says so (a candidate refuses to claim it)
        if md.compression and md.compression in recipes:
            claims.append(VariantClaim(md.compression, f"{md.path} 'compression'"))
        elif md.compression:
            unchecked = (f"metadata.json's compression {md.compression!r} names no recipe: not checked "
                         f"(a coreai: candidate refuses to claim it; give ?variant=NAME)")
        if args.variant and args.variant != md.compression:
            claims.append(VariantClaim(args.variant, "--variant"))
        for claim in claims:
            checks.append(audit_claim(bundle, audit, claim, recipes, model_dir, expectations=expectations))

    if args.json:
        from reports.speed import weight_bytes

        doc = {
            "bundle": str(bundle.path), "bundle_bytes": _bytes_on_disk(bundle.path), "name": md.name,
            "metadata_version": md.metadata_version,
            "vocab_size": md.vocab_size, "max_context_length": md.max_context_length,
            "function_map": md.function_map, "compression": md.compression, "asset": md.assets["main"],
            "tokenizer": None if tok is None else {"same_as_oracle": tok.same, "vocab": tok.vocab_size,
                                                    "merges": tok.merges, "oracle": str(model_dir)},
        }
        if audit is not None:
            doc["asset_audit"] = {
                "functions": {f: {k: [s.describe() for s in getattr(sig, k)] for k in ("inputs", "outputs", "states")}
                              for f, sig in audit.functions.items()},
                "storage": audit.storage, "weight_storage_mix": audit.storage_fractions(),
                "weight_bytes": weight_bytes(audit.storage, str(bundle.asset_path)),
                "compute_types": list(audit.compute_types), "operations": dict(audit.operations)}
            doc["storage_fits"] = fits
        if unchecked:
            doc["note"] = unchecked
        # a contradiction never gets here (it is refused above): every check printed held
        found = [{"variant": c.variant, "source": claim.source, "ok": c.ok, "reason": c.reason,
                  "expected": c.expected.as_json(), "found": c.found} for c, claim in zip(checks, claims)]
        if found:
            doc["variant_check"] = found[-1]   # --variant's when given, else metadata.json's claim
            doc["variant_checks"] = found
        from ..cli import write_data

        write_data(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        print(f"{bundle.path}: Core AI LanguageBundle {md.name!r} (metadata {md.metadata_version})")
        print(f"  vocab {md.vocab_size}, context {md.max_context_length or 'unspecified'}, asset {md.assets['main']}")
        print("  functions: " + "; ".join(f"{k} -> {', '.join(v)}" for k, v in md.function_map.items()))
        comp = md.compression if md.compression is not None else "null (metadata.json names none; see storage)"
        print(f"  compression: {comp}")
        if tok is not None:
            print(f"  tokenizer: same as the oracle's ({tok.vocab_size} tokens, {tok.merges} merges; {model_dir})")
        if audit is not None:
            for name, sig in audit.functions.items():
                print(f"  function {name}:")
                for kind in ("inputs", "outputs", "states"):
                    items = getattr(sig, kind)
                    print(f"    {kind}: {', '.join(s.describe() for s in items) or 'none'}")
            print(f"  weight storage: {audit.storage_mix()}")
            other = {k: v for k, v in audit.storage.items() if k not in audit.weight_storage}
            if other:
                print("  index/shape constants: " + ", ".join(f"{k} {v:,}" for k, v in other.items()))
            print(f"  compute types: {', '.join(audit.compute_types)}")
            print("  operations: " + ", ".join(f"{o} {n}" for o, n in audit.operations[:8])
                  + (f", ... ({len(audit.operations)} kinds)" if len(audit.operations) > 8 else ""))
            print(f"  storage fits: {', '.join(fits) if fits else 'no recipe exactly'}")
        if unchecked:
            print(f"  note: {unchecked}")
        for vcheck in checks:
            print(f"  variant {vcheck.variant}: the asset's storage agrees with the recipe "
                  + ", ".join(f"(int{b}: {n:,} elements)" for b, n in sorted(vcheck.found.items())))
    return 0


def _bytes_on_disk(folder) -> int:
    """Bytes of the regular files under the bundle folder (links not followed): its size on disk."""
    import os
    import stat

    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
