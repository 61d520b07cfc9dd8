"""`flipgate selftest`: negative controls for the gate engine (candidates whose verdict is known)."""

from __future__ import annotations

from harness.cli import add_command, input_path


def register(sub) -> None:
    p = add_command(
        sub, "selftest", help="check the gate engine with candidates that must fail and ones that must pass",
        description="Build probe candidates from an oracle trace (default: a synthetic one) whose verdict is "
                    "known in advance — a confident row forced to the runner-up, NaN/Inf rows, rows shifted by "
                    "one, another case's logits, controls that do or do not explain a flip, the oracle itself, "
                    "the oracle plus noise below every threshold, no confident position at all — and run the real "
                    "gate on each; the candidate's own file or rows as its control, the oracle as the candidate and "
                    "a failed verdict edited to pass must be refused. Exit 0 if every verdict is right, 1 if any is "
                    "wrong (a harness bug), 2 on bad input.",
        example="flipgate selftest\nflipgate selftest --oracle oracle.safetensors --gate int8hu")
    input_path(p, "--oracle", metavar="TRACE", help="oracle trace to build the probes from "
                                                     "(default: a synthetic bf16 oracle)")
    p.add_argument("--gate", default="int8hu", metavar="NAME",
                   help="gate whose margin rule and bounds the probes use (default: int8hu)")
    input_path(p, "--config", metavar="TOML", help="gate definitions (default: ./flipgate.toml if present)")
    p.add_argument("--max-cases", type=int, default=3, metavar="N",
                   help="use the oracle's first N cases (default: 3)")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.errors import InputError

    from ..selftest import run_selftest

    if args.max_cases < 1:
        raise InputError(f"--max-cases {args.max_cases}: must be at least 1")
    result = run_selftest(args.oracle, gate=args.gate, config=args.config, max_cases=args.max_cases)
    print("\n".join(result.lines()))
    return 0 if result else 1
