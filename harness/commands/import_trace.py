"""`flipgate import`: llm-runner `--save-logits` files made on a Mac -> a trace the gate reads anywhere."""

from __future__ import annotations

from ..cli import add_command, input_path, output_dir, output_path

EXAMPLE = """\
flipgate import greeting.logits.json --oracle oracle.safetensors --variant int8hu --out int8hu-coreai.safetensors
flipgate import a.json b.json --case greeting --case docs --cases cases.jsonl --out coreai.safetensors
flipgate import --emit-raw-tokens dumps/ --oracle oracle.safetensors     # then, on the Mac: sh dumps/run-llm-runner.sh BUNDLE"""


def register(sub) -> None:
    p = add_command(
        sub, "import", help="turn llm-runner --save-logits files (made on a Mac) into a trace",
        description="Turn `llm-runner --raw-tokens CASE.tokens.json --save-logits CASE.logits.json "
                    "--save-logits-length full --inference-engine-variant coreai-sequential` files into one "
                    "flipgate.trace/1 file, checking each dump against its case: one row per token after the "
                    "first, the echoed token ids, the vocabulary width. The sequences come from the oracle "
                    "trace (--oracle) or the case file (--cases, tokenized with --model's tokenizer). "
                    "--emit-raw-tokens writes the --raw-tokens files and a script to run on the Mac.",
        example=EXAMPLE)
    input_path(p, "logits", nargs="*", metavar="LOGITS.json", help="llm-runner --save-logits files, one per case")
    p.add_argument("--case", action="append", dest="case_ids", metavar="ID",
                   help="the case of each file, in order (default: from file names, CASE.logits.json)")
    input_path(p, "--oracle", metavar="TRACE", help="the oracle trace whose sequences the dumps were made from")
    input_path(p, "--cases", metavar="FILE", help="the JSONL case file the dumps were made from")
    input_path(p, "--model", kind="any", metavar="DIR", help="with --cases: the oracle checkpoint whose tokenizer made the "
                   "token ids (default: the bundled fixture model)")
    p.add_argument("--variant", default="coreai", help="the variant the dumps are gated as (default: coreai)")
    output_path(p, "--out", metavar="TRACE", help="trace to write")
    output_dir(p, "--emit-raw-tokens", metavar="DIR", help="instead: write DIR/CASE.tokens.json for each case "
                   "(or each --case) and DIR/run-llm-runner.sh that runs llm-runner on them")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..coreai.dumps import emit_raw_tokens, import_dumps
    from ..errors import InputError

    if args.emit_raw_tokens:
        if args.logits:
            raise InputError("--emit-raw-tokens writes the inputs for llm-runner: give no logits files with it")
        written = emit_raw_tokens(args.emit_raw_tokens, oracle=args.oracle, cases=args.cases, model=args.model,
                                  case_ids=args.case_ids)
        print(f"wrote {len(written) - 1} raw-token files and {written[-1]}")
        print(f"on the Mac: sh {written[-1]} /path/to/Bundle [path/to/llm-runner]")
        return 0
    if not args.logits:
        raise InputError("give the logits files to import (or --emit-raw-tokens DIR)")
    if not args.out:
        raise InputError("--out TRACE is required")
    out = import_dumps(args.logits, args.case_ids, args.out, oracle=args.oracle, cases=args.cases,
                       model=args.model, variant=args.variant)
    print(f"{out}: {len(args.logits)} case(s) imported as runner=import variant={args.variant}")
    return 0
