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
    p.add_argument("--variant", help="check that the asset's storage fits this variant's recipe")
    input_path(p, "--config", metavar="F", help="a recipes file adding to the bundled recipes")
    p.add_argument("--no-audit", action="store_true", help="skip the asset audit (metadata and tokenizer only)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..coreai.bundle import (
        audit_asset, check_functions, check_tokenizer, check_variant, expected_elements, meta_model, open_bundle,
        variant_expectations,
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
    vcheck = None
    if args.variant:
        if audit is None:
            raise InputError("--variant needs the asset audit: drop --no-audit")
        from ..recipe import load_recipes

        recipes = load_recipes(args.config)
        if args.variant not in recipes:
            raise InputError(f"unknown variant {args.variant!r}: valid variants are {', '.join(recipes)}")
        arch = meta_model(model_dir)
        vcheck = check_variant(audit, args.variant, recipes[args.variant],
                               expected=expected_elements(recipes[args.variant], arch),
                               others=variant_expectations(arch, recipes))

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
        if vcheck is not None:
            doc["variant_check"] = {"variant": vcheck.variant, "ok": vcheck.ok, "reason": vcheck.reason,
                                    "expected": vcheck.expected, "found": vcheck.found}
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
        if vcheck is not None and vcheck:
            print(f"  variant {vcheck.variant}: the asset's storage agrees with the recipe "
                  + ", ".join(f"(int{b}: {n:,} elements)" for b, n in sorted(vcheck.found.items())))
    if vcheck is not None and not vcheck:
        raise InputError(f"{bundle.path}: {vcheck.reason}")
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
