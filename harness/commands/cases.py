"""`flipgate cases`: build, size and hash case sets (library: harness/caseset.py, gates/metrics.py)."""

from __future__ import annotations

import argparse

from ..cli import add_command
from ..errors import InputError

_EXAMPLE = """flipgate cases build --corpus docs.jsonl --target-confident 1024 --seed 1 --out cases.jsonl
flipgate cases size --rate 0.01 --confidence 0.95
flipgate cases hash cases.jsonl --model ~/models/Qwen3.6-27B"""


def register(sub) -> None:
    p = add_command(sub, "cases", help="build a case set from a corpus, size it for a claim, print its hash",
                    description="Case sets that can prove something. `build` cuts prompts from a corpus, runs the "
                                "bf16 oracle and keeps cases until enough positions are confident; `size` says how "
                                "many confident positions a zero-defect gate needs to bound the defect rate; `hash` "
                                "prints the case set hash that traces and verdicts carry.",
                    example=_EXAMPLE)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    cmds = p.add_subparsers(dest="cases_command", metavar="SUBCOMMAND", title="subcommands")

    b = add_command(cmds, "build", help="cut prompts from a corpus and pin the oracle's continuations",
                    description="Cut one prompt from each paragraph (plain text) or document (JSONL: {\"text\": "
                                "..., \"id\": ...} per line) in an order shuffled by --seed, with a length drawn "
                                "from --prompt-tokens and cut back to a word boundary; drop near-duplicates (word "
                                "3-gram Jaccard >= --max-similarity); run the bf16 oracle on each (greedy "
                                "continuation, one-pass rows, as `flipgate oracle` does) and keep cases until "
                                "--target-confident positions have a probability margin >= --min-margin. Writes "
                                "the case file with every continuation pinned (continuation_ids) and a summary "
                                "sidecar (OUT with .summary.json): confident count, margin histogram, tie fraction "
                                "per case. The same inputs and seed give byte-identical files.",
                    example="flipgate cases build --corpus scripts/cases/heldout-docstrings.jsonl "
                            "--target-confident 1024 --seed 0 --out big.jsonl")
    b.add_argument("--corpus", required=True, metavar="FILE", help="plain text or JSONL corpus")
    b.add_argument("--model", metavar="DIR", help="oracle checkpoint folder (default: the bundled fixture model)")
    b.add_argument("--target-confident", required=True, type=int, metavar="N",
                   help="stop once this many scored positions are confident")
    b.add_argument("--out", required=True, metavar="FILE", help="case file to write (JSONL)")
    b.add_argument("--seed", type=int, default=0, help="shuffles the corpus and draws prompt lengths (default 0)")
    b.add_argument("--min-margin", type=float, default=0.1,
                   help="confident when the oracle's top-1 minus top-2 probability is at least this (default 0.1)")
    b.add_argument("--prompt-tokens", default="16-64", metavar="MIN-MAX",
                   help="prompt length range in tokens, drawn uniformly (default 16-64)")
    b.add_argument("--new-tokens", type=int, default=16, help="continuation length per case (default 16)")
    b.add_argument("--max-similarity", type=float, default=0.5,
                   help="drop a prompt whose word 3-gram Jaccard similarity to a kept one reaches this (default 0.5)")
    b.add_argument("--unit", choices=("paragraph", "document"),
                   help="what a prompt is cut from (default: paragraph for text, document for JSONL)")
    b.add_argument("--max-cases", type=int, metavar="N", help="stop after N cases even short of the target (an error)")
    b.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"), help="where the oracle runs")
    b.add_argument("--quiet", action="store_true", help="print only the summary")
    b.set_defaults(func=run_build)

    s = add_command(cmds, "size", help="confident positions a zero-defect gate needs to bound the defect rate",
                    description="The fewest confident positions n such that a result of --defects defects (default "
                                "0) bounds the confident defect rate below --rate at --confidence, by the exact "
                                "one-sided binomial (Clopper–Pearson) bound; zero defects: n = ceil(ln(1 - "
                                "confidence) / ln(1 - rate)). The rule of three (3 / rate) is printed beside it as a "
                                "check. --positions N turns it around: the bound that N positions give.",
                    example="flipgate cases size --rate 0.01 --confidence 0.95")
    s.add_argument("--rate", type=float, help="the defect rate to bound, e.g. 0.01 for 1 %%")
    s.add_argument("--confidence", type=float, default=0.95, help="one-sided confidence (default 0.95)")
    s.add_argument("--defects", type=int, default=0, help="defects the result may hold (default 0)")
    s.add_argument("--positions", type=int, metavar="N", help="instead: the bound N confident positions give")
    s.set_defaults(func=run_size)

    h = add_command(cmds, "hash", help="print the case set hash of case files or traces",
                    description="The case set hash (sha256 of the case ids and token sequences; harness/caseset.py) "
                                "that traces and verdicts carry as case_set_sha256. A trace's is computed from its "
                                "own sequences and checked against the one it records; a case file's needs every "
                                "continuation pinned, and --model's tokenizer for text prompts.",
                    example="flipgate cases hash harness/data/cases/big.jsonl oracle.safetensors")
    h.add_argument("files", nargs="+", metavar="FILE", help="case files (JSONL, or a bundled name) or traces")
    h.add_argument("--model", metavar="DIR", help="the tokenizer for text prompts (default: the bundled fixture model)")
    h.set_defaults(func=run_hash)


def _range(spec: str) -> tuple[int, int]:
    try:
        lo, _, hi = spec.partition("-")
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise InputError(f"--prompt-tokens {spec!r}: expected MIN-MAX, e.g. 16-64") from None
    return a, b


def run_build(args: argparse.Namespace) -> int:
    from ..caseset import build_case_set, format_summary, write_case_set

    log = None if args.quiet else print
    result = build_case_set(corpus=args.corpus, target_confident=args.target_confident, model=args.model,
                            seed=args.seed, min_margin=args.min_margin, prompt_tokens=_range(args.prompt_tokens),
                            new_tokens=args.new_tokens, max_similarity=args.max_similarity, unit=args.unit,
                            device=args.device, max_cases=args.max_cases, log=log)
    out, side = write_case_set(result, args.out)
    for line in format_summary(result.summary):
        print(line)
    print(f"wrote {out} and {side}")
    return 0


def run_size(args: argparse.Namespace) -> int:
    from gates.metrics import defect_bound_sentence, positions_needed, rule_of_three

    if not 0.0 < args.confidence < 1.0:
        raise InputError(f"--confidence {args.confidence!r}: expected a value in (0, 1), e.g. 0.95")
    if args.defects < 0:
        raise InputError(f"--defects {args.defects}: expected 0 or more")
    if args.positions is not None:
        if args.positions < 0 or args.defects > args.positions:
            raise InputError(f"--positions {args.positions}: expected at least --defects ({args.defects})")
        print(defect_bound_sentence(args.defects, args.positions, confidence=args.confidence))
        return 0
    if args.rate is None:
        raise InputError("cases size: give --rate (the defect rate to bound) or --positions N")
    if not 0.0 < args.rate < 1.0:
        raise InputError(f"--rate {args.rate!r}: expected a rate in (0, 1), e.g. 0.01")
    n = positions_needed(args.rate, args.confidence, args.defects)
    print(f"{n:,} confident positions: {args.defects} defect{'' if args.defects == 1 else 's'} in {n:,} bound the "
          f"confident defect rate below {args.rate:.4g} ({args.rate * 100:.4g} %) at {args.confidence * 100:g} % "
          "(one-sided Clopper–Pearson)")
    if args.defects == 0 and abs(args.confidence - 0.95) < 1e-12:
        print(f"check: rule of three, 3 / rate = {rule_of_three(args.rate):,.1f}")
    print(defect_bound_sentence(args.defects, n, confidence=args.confidence))
    return 0


def run_hash(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..caseset import case_file_sha256, trace_case_set_sha256
    from ..cases import resolve_cases_path

    tokenizer = None
    for f in args.files:
        p = Path(f)
        if p.suffix.lower() == ".safetensors":
            from ..trace import open_trace

            print(f"{trace_case_set_sha256(open_trace(p))}  {p}")
            continue
        path = resolve_cases_path(f)
        if tokenizer is None:
            from ..models import load_tokenizer, resolve_model_dir

            tokenizer = load_tokenizer(resolve_model_dir(args.model))
        print(f"{case_file_sha256(path, tokenizer)}  {path}")
    return 0
