"""`flipgate oracle-diff A B`: which positions of a bf16 oracle does a float32 oracle dispute?"""

from __future__ import annotations

from harness.cli import add_command, input_path, output_path


def register(sub) -> None:
    p = add_command(
        sub, "oracle-diff",
        help="compare a bf16 oracle trace with a float32 one: argmax differences and margins below bf16 resolution",
        description="List the positions where the bf16 oracle (A) and the float32 oracle (B) pick different "
                    "tokens, or where A's top-1/top-2 logit gap is within ULPS steps of the bf16 format at that "
                    "logit's magnitude (below what a bf16 oracle can resolve). The JSON output stores, per "
                    "position, both oracles' top-1, top-2 and margin. Exit 1 if the oracles disagree where A "
                    "is confident (margin >= --min-margin) or a row holds NaN/Inf.",
        example="flipgate oracle-diff oracle-bf16.safetensors oracle-fp32.safetensors -o oracle-diff.json\n"
                "# the two traces:  flipgate oracle --out oracle-bf16.safetensors\n"
                "#   flipgate oracle --stream --sequences oracle-bf16.safetensors --out oracle-fp32.safetensors")
    input_path(p, "a", metavar="A", help="the reduced-precision (bf16) oracle trace")
    input_path(p, "b", metavar="B", help="the float32 oracle trace of the same cases")
    output_path(p, "-o", "--output", stdout=True, metavar="JSON", help="write every position (flipgate.oracle-diff/1)")
    p.add_argument("--margin-space", choices=("prob", "logit"), default="prob",
                   help="margin reported and used for 'confident' (default: prob)")
    p.add_argument("--min-margin", type=float, default=0.1, help="confidence threshold (default: 0.1)")
    p.add_argument("--ulps", type=float, default=1.0,
                   help="a bf16 top-2 logit gap of at most this many ulps is unresolved (default: 1)")
    p.add_argument("--resolution", choices=("bfloat16", "float16"), default=None,
                   help="format of A's computation (default: A's logits dtype or metadata, else bfloat16)")
    p.add_argument("--all", action="store_true", help="print every position, not only the flagged ones")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from harness.trace import open_trace
    from oracles.resolution import oracle_diff
    from reports.escape import visible

    a, b = open_trace(args.a), open_trace(args.b)
    diff = oracle_diff(a, b, margin_space=args.margin_space, min_margin=args.min_margin, ulps=args.ulps,
                       resolution_dtype=args.resolution)
    shown = diff.positions if args.all else diff.flagged()
    out = sys.stderr if args.output == "-" else sys.stdout  # with -o -, stdout carries the JSON
    if shown:
        print(f"{'case':16s} {'row':>3s} {'pos':>4s} {'bf16 top1':>9s} {'margin':>8s} {'gap':>9s} {'ulp':>9s} "
              f"{'fp32 top1':>9s} {'margin':>8s}  flags", file=out)
    for p in shown:
        flags = ",".join(f for f, on in (("argmax-differs", p.argmax_differs), ("unresolved", p.unresolved),
                                         ("confident", p.confident), ("invalid", p.invalid)) if on)
        print(f"{visible(p.case)[:16]:16s} {p.row:3d} {p.position:4d} {p.bf16_top1:9d} {_f(p.bf16_margin):>8s} "
              f"{_f(p.bf16_logit_gap):>9s} {_f(p.bf16_resolution):>9s} {p.fp32_top1:9d} {_f(p.fp32_margin):>8s}  "
              f"{flags}", file=out)
    s = diff.summary
    print(f"{a.path.name} vs {b.path.name} ({diff.policy['margin_space']} margin, "
          f"{diff.policy['resolution_dtype']} resolution x{diff.policy['ulps']:g}): {s['positions']} positions, "
          f"{s['argmax_differs']} argmax differs ({s['confident_argmax_differs']} where bf16 is confident), "
          f"{s['unresolved']} unresolved, {s['invalid']} invalid -> {'ok' if diff else 'DISPUTED'}", file=out)
    if args.output:
        diff.write(args.output)
        if args.output != "-":
            print(f"wrote {args.output}")
    return 0 if diff else 1


def _f(x) -> str:
    return "nan" if x is None else f"{x:.3g}"
