"""`flipgate trace`: validate trace files and summarise them."""

from __future__ import annotations

from ..cli import add_command


def register(sub) -> None:
    p = add_command(
        sub, "trace", help="validate flipgate.trace/1 files and print what they hold",
        example="flipgate trace oracle.safetensors candidate.safetensors")
    p.add_argument("traces", nargs="+", metavar="TRACE", help="trace files to check")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evidence import evidence_of, label
    from ..trace import open_trace

    for path in args.traces:
        t = open_trace(path)
        print(f"{t.path}: {t.metadata['format']} runner={t.runner} variant={t.variant} "
              f"evidence={label(evidence_of(t.metadata))!r} "
              f"vocab={t.vocab_size} cases={len(t)}")
        for cid in t.case_ids:
            print(f"  {cid}: {t.tokens(cid)} tokens, {t.rows(cid)} scored rows ({t.logits_dtype(cid)})")
    return 0
