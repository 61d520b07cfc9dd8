"""`flipgate gate NAME --oracle T --candidate T [--control T]`: judge traces under a named gate."""

from __future__ import annotations

from harness.cli import add_command


def register(sub) -> None:
    p = add_command(
        sub, "gate", help="judge a candidate trace against an oracle trace under a named gate",
        description="Judge a candidate trace against an oracle trace under a named gate (bundled: fp16, "
                    "int8lin, int8hu, int4lin, mixed, mixed-edge; a flipgate.toml may add or override gates). Prints the "
                    "summary and every position that is not a match; exit 0 if the gate passes, 1 if it fails, "
                    "2 on bad input.",
        example="flipgate gate int8hu --oracle oracle.safetensors --candidate int8hu.safetensors \\\n"
                "    --control fp16.safetensors --json int8hu.verdict.json")
    p.add_argument("gate", metavar="NAME", help="gate name (see --list)", nargs="?")
    p.add_argument("--oracle", metavar="TRACE", help="oracle trace (flipgate.trace/1)")
    p.add_argument("--candidate", metavar="TRACE", help="candidate trace")
    ctrl = p.add_mutually_exclusive_group()
    ctrl.add_argument("--control", metavar="TRACE", help="control trace (the gate's control, e.g. fp16)")
    ctrl.add_argument("--no-control", action="store_true",
                      help="judge without the gate's control: every confident flip is then a defect")
    p.add_argument("--json", metavar="OUT", help="write the verdict (flipgate.verdict/1) here")
    p.add_argument("--config", metavar="TOML", help="gate definitions overriding the bundled ones "
                                                    "(default: ./flipgate.toml if present)")
    p.add_argument("--min-margin", type=float, metavar="X", help="override the gate's min_margin")
    p.add_argument("--margin-space", choices=("prob", "logit"), help="override the gate's margin_space")
    p.add_argument("--max-defects", type=int, metavar="N", help="override the gate's max_defects")
    p.add_argument("--min-cosine", type=float, metavar="X", help="override the gate's min_cosine")
    p.add_argument("--max-kl", metavar="X", help="override the gate's max_kl ('none' removes it)")
    p.add_argument("--oracle-fp32", metavar="TRACE",
                   help="a float32 oracle trace of the same sequences (flipgate oracle --stream): each "
                        "oracle-artifact is then confirmed by fp32 or not (overrides the gate's oracle_fp32)")
    p.add_argument("--reference", choices=("oracle", "fp32"),
                   help="override the gate's reference: fp32 judges against the --oracle-fp32 trace outright")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="folder with tokenizer.json, to show tokens as text (hash checked against the traces)")
    p.add_argument("--list", action="store_true", help="list the defined gates and exit")
    p.set_defaults(func=run)


def _max_kl(text):
    from harness.errors import InputError

    if text is None or text.strip().lower() == "none":
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--max-kl {text!r}: expected a number or 'none'") from None


def _decoder(tokenizer_dir, traces):
    """A decode function from tokenizer.json (the `tokenizers` library: no torch)."""
    from pathlib import Path

    from harness.errors import InputError
    from harness.fileio import sha256_file

    path = Path(tokenizer_dir)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{tokenizer_dir}: no tokenizer.json there")
    digest = sha256_file(path)
    for t in traces:
        if t.tokenizer_sha256 and t.tokenizer_sha256 != digest:
            raise InputError(f"{path}: sha256 {digest[:12]}… is not the tokenizer of {t.path} "
                             f"({t.tokenizer_sha256[:12]}…)")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    size = tok.get_vocab_size(with_added_tokens=True)
    for t in traces:  # the sequences must be this tokenizer's ids (the reader checked them against vocab_size)
        if t.max_token_id >= size:
            raise InputError(f"{t.path}: input_ids hold token id {t.max_token_id}, beyond the {size} tokens of "
                             f"the tokenizer {path}")

    def decode(ids):
        # a predicted id may lie in the model's padded vocabulary, past the tokenizer: say so, never drop it
        ids = [int(i) for i in ids]
        if all(0 <= i < size for i in ids):
            return tok.decode(ids, skip_special_tokens=False)
        return "".join(tok.decode([i], skip_special_tokens=False) if 0 <= i < size
                       else f"<id {i}: not in the tokenizer>" for i in ids)
    return decode


def run(args) -> int:
    from dataclasses import replace

    from harness.errors import InputError
    from harness.trace import open_trace

    from ..engine import evaluate
    from ..policy import load_gates, with_overrides
    from ..report import print_verdict

    gates = load_gates(args.config)
    if args.list:
        for name, g in gates.items():
            ctrl = g.control or "-"
            print(f"{name:12s} candidate {g.candidate:10s} control {ctrl:8s} min_margin {g.min_margin:g} "
                  f"({g.margin_space}) max_defects {g.max_defects} min_cosine {g.min_cosine:g}"
                  + (f" max_kl {g.max_kl:g}" if g.max_kl is not None else "")
                  + (f"  [{g.source}]" if g.source != "bundled" else ""))
        return 0
    if not args.gate:
        raise InputError(f"name a gate (valid gates: {', '.join(gates)})")
    if args.gate not in gates:
        raise InputError(f"unknown gate {args.gate!r} (valid gates: {', '.join(gates)})")
    if not args.oracle or not args.candidate:
        raise InputError("--oracle TRACE and --candidate TRACE are required (running models on demand is "
                         "`flipgate compare`)")
    policy = with_overrides(gates[args.gate], min_margin=args.min_margin, margin_space=args.margin_space,
                            max_defects=args.max_defects, min_cosine=args.min_cosine, max_kl=_max_kl(args.max_kl),
                            reference=args.reference)
    oracle, candidate = open_trace(args.oracle), open_trace(args.candidate)
    control = open_trace(args.control) if args.control else None
    if args.no_control:
        policy = replace(policy, control=None)
    elif control is None and policy.control:
        raise InputError(f"gate {policy.name!r} compares with control {policy.control!r}: give its trace with "
                         "--control TRACE, or --no-control to judge without one")
    elif control is not None and not policy.control:
        policy = replace(policy, control=f"trace:{args.control}")
    decode = None
    if args.tokenizer:
        decode = _decoder(args.tokenizer, [t for t in (oracle, candidate, control) if t is not None])
    oracle_fp32 = open_trace(args.oracle_fp32) if args.oracle_fp32 else None
    verdict = evaluate(oracle, candidate, control, policy=policy, decode=decode, oracle_fp32=oracle_fp32)
    print_verdict(verdict)
    if args.json:
        verdict.write(args.json)
        print(f"verdict written to {args.json}")
    return 0 if verdict else 1
