"""`flipgate capture`: run a candidate on the oracle's token sequences and write its trace."""

from __future__ import annotations

import re
import sys

from ..cli import add_command, input_path, output_path

EXAMPLE = """\
flipgate capture int8hu --oracle oracle.safetensors --out int8hu.safetensors
flipgate capture int4lin --oracle oracle.safetensors --mode coreai-opt      # coreai-opt eager itself
flipgate capture int4-head --config flipgate.toml --model ~/models/Qwen3.6-27B --oracle oracle.safetensors
flipgate capture fp16 --cases cases.jsonl --full --out fp16.safetensors      # no oracle trace yet
flipgate capture int8hu --stream --max-memory 8GiB --model ~/models/Qwen3.6-27B --oracle oracle.safetensors
flipgate capture int8hu --device auto --oracle oracle.safetensors          # on a GPU when there is one
flipgate capture coreai:~/bundles/Qwen3.6-27B-int8hu --oracle oracle.safetensors   # on macOS"""

DESCRIPTION = """\
Run the candidate SPEC teacher-forced and write its flipgate.trace/1 file. SPEC is a variant
(a recipe name: fp16, int8lin, int8hu, int4lin, mixed, mixed-edge, or one from --config), or a
runner prefix: coreai:BUNDLE_DIR, coreai-python:BUNDLE_DIR, trace:FILE.

Token sequences: --oracle TRACE (the normal path) takes each case's tokens and scored rows from
the oracle's trace, so the candidate is scored on exactly the oracle's positions. --cases FILE
takes them from a case file instead: a case's given continuation is scored as is, and a case
without one gets the bf16 oracle's greedy continuation (computed here with the model). With
neither, the bundled case set is used that way.

An emulated variant loads the model in fp16, applies the recipe with Apple's quantizer
(--mode fast: each weight quantized once, bit-identical to --mode coreai-opt, coreai-opt's eager
fake quantization, and several times faster) and feeds the tokens one at a time through the
model's cache (S=1, as the device decodes). --full computes the rows in one causal pass instead:
faster, less faithful to the device. Rows holding Inf/NaN (fp16 overflow) are kept and reported
here; the gate counts them invalid.

--stream runs an emulated variant on a machine that cannot hold the fp16 model (54 GB for a 27B):
one decoder layer at a time is read from the memory-mapped safetensors, quantized and run over
every case token by token with that layer's own cache; then the final norm and the quantized head,
in vocabulary chunks, on the scored rows only. The rows are bit-identical to the in-memory capture's;
memory is about one layer + every position's hidden state (positions x hidden x 2 bytes) + one head
chunk, and --max-memory refuses a run up front, naming what it needs. Give it --oracle TRACE (or
cases with continuations): a case without one gets its continuation from the bf16 oracle, which
loads the whole model.

--device runs an emulated variant on cuda, mps, or the first of them present (auto); the trace
records the device. GPU rows are not bit-identical to CPU rows (other kernels): compare a GPU
capture with the CPU one before trusting it as the same evidence."""


def register(sub) -> None:
    p = add_command(sub, "capture", help="run a candidate (emulated variant or Core AI bundle) and write its trace",
                    description=DESCRIPTION, example=EXAMPLE)
    p.add_argument("spec", metavar="SPEC", help="variant (recipe name) or runner:ARG, e.g. int8hu, coreai:DIR")
    input_path(p, "--config", metavar="F", help="a recipe file (TOML, e.g. flipgate.toml) adding to the bundled recipes")
    input_path(p, "--model", kind="any", metavar="DIR", help="the fp16/bf16 checkpoint folder (default: the bundled fixture model)")
    src = p.add_mutually_exclusive_group()
    input_path(src, "--oracle", metavar="TRACE", help="take token sequences and scored rows from this oracle trace")
    input_path(src, "--cases", kind="cases", metavar="FILE", help='take them from this case file (JSONL, or a bundled set by name: fixture, big; default: fixture)')
    output_path(p, "--out", metavar="TRACE", help="trace to write (default: candidate-SPEC.safetensors)")
    p.add_argument("--full", action="store_true", help="one causal pass per case instead of S=1 steps (emulated)")
    p.add_argument("--mode", choices=("fast", "coreai-opt"), default="fast",
                   help="emulated quantization: fast (materialized weights, default) or coreai-opt (eager)")
    p.add_argument("--stream", action="store_true",
                   help="emulated: one decoder layer at a time from the memory-mapped checkpoint (S=1, bounded memory)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="with --stream: refuse up front unless the planned need fits, e.g. 8GiB")
    p.add_argument("--device", choices=("cpu", "cuda", "mps", "auto"), default="cpu",
                   help="emulated: where the fp16 model computes (default cpu; auto: cuda, then mps, then cpu)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: 1 for a small model such as the fixture, else torch's choice)")
    p.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    p.set_defaults(func=run)


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def default_out(spec: str) -> str:
    return f"candidate-{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec).strip('_') or 'spec'}.safetensors"


class _Watched:
    """A candidate whose cases are counted as they stream: progress, and rows holding Inf/NaN."""

    def __init__(self, candidate, total: int, say):
        self._c = candidate
        self.runner, self.variant = candidate.runner, candidate.variant
        self.total, self.say = total, say
        self.rows = 0
        self.nonfinite: dict[str, int] = {}

    def metadata(self) -> dict[str, str]:
        return self._c.metadata()

    def run(self, sequences):
        import numpy as np

        from reports.escape import visible

        for i, case in enumerate(self._c.run(sequences), start=1):
            bad = int((~np.isfinite(np.asarray(case.logits, dtype=np.float32))).any(axis=1).sum())
            if bad:
                self.nonfinite[case.case_id] = bad
            self.rows += case.rows
            self.say(f"  [{i}/{self.total}] {visible(case.case_id)}: {case.rows} rows" + (f", {bad} with Inf/NaN" if bad else ""))
            yield case


def sequences_from_cases(cases_path, model_dir, say):
    """Sequences from a case file: given continuations as they are, the rest the bf16 oracle's greedy."""
    import numpy as np

    from ..candidates.base import Sequence
    from ..cases import load_cases, tokenize_case
    from ..models import load_tokenizer

    case_set = load_cases(cases_path)
    tok = load_tokenizer(model_dir)
    cases = [tokenize_case(spec, tok) for spec in case_set]
    todo = [c for c in cases if c.continuation_ids is None]
    if todo:
        from oracles.hf import HFOracle

        oracle = HFOracle(model_dir, dtype="bfloat16")
        for c in cases:
            oracle.check_case(c)
        say(f"continuations: bf16 oracle greedy for {len(todo)} of {len(cases)} cases")
        cases = oracle.complete(cases)
    return [Sequence(c.id, np.asarray(c.input_ids, dtype=np.int64), len(c.continuation_ids)) for c in cases]


def run(args) -> int:
    import time

    from ..candidates import capture_to_trace, resolve, sequences_from_trace
    from ..errors import InputError
    from ..models import model_provenance, read_config, resolve_model_dir, tokenizer_sha256
    from ..trace import open_trace

    say = lambda msg: _say(args, msg)  # noqa: E731
    if args.out is None:  # the default name must not be an input either (checked before any work)
        from ..fileio import check_output_path, check_outputs

        check_output_path(default_out(args.spec))
        check_outputs({"--out (default)": default_out(args.spec)},
                      {"--oracle": args.oracle, "--cases": args.cases, "--config": args.config})
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads {args.threads}: expected a positive number of threads")
        import torch

        torch.set_num_threads(args.threads)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if args.config:  # a bad recipe file fails before any model runs
        from ..recipe import load_recipes

        load_recipes(args.config)
    model_dir = resolve_model_dir(args.model)
    model_tok = tokenizer_sha256(model_dir)
    if args.max_memory is not None and not args.stream:
        raise InputError("--max-memory applies to --stream (the in-memory capture holds the whole model)")
    options = {"model": str(model_dir), "recipes": args.config, "mode": args.mode, "full": args.full,
               "threads": args.threads, "device": args.device, "stream": args.stream,
               "max_memory": args.max_memory, "log": say}
    if args.oracle:
        oracle = open_trace(args.oracle)
        if oracle.tokenizer_sha256 and model_tok and oracle.tokenizer_sha256 != model_tok:
            raise InputError(f"{args.oracle}: the oracle was made with another tokenizer than {model_dir}'s "
                             f"(tokenizer.json sha256 differs): its token ids mean other text for this model")
        sequences = sequences_from_trace(oracle)
        vocab = oracle.vocab_size
        options["vocab_size"] = vocab
        say(f"sequences: {len(sequences)} cases from {args.oracle}")
    else:
        sequences = sequences_from_cases(args.cases, model_dir, say)
        cfg = read_config(model_dir)
        vocab = (cfg.get("text_config") or cfg).get("vocab_size")
    candidate = resolve(args.spec, **options)
    if candidate.runner != "emulated" and (args.stream or args.device != "cpu"):
        raise InputError(f"{args.spec}: --stream and --device apply to emulated variants, not to a "
                         f"{candidate.runner} runner")
    vocab = getattr(candidate, "vocab_size", None) or vocab
    out = args.out or default_out(args.spec)
    decode = ("one pass" if args.full else "S=1 layer-streamed" if args.stream else "S=1 stepwise") \
        if candidate.runner == "emulated" else candidate.runner
    say(f"{args.spec}: {candidate.runner} {candidate.variant} ({decode}"
        + (f", {args.mode}" + (f", {candidate.device}" if candidate.device != "cpu" else "")
           if candidate.runner == "emulated" else "") + f") -> {out}")
    from ..distributed import from_env

    launch = from_env()
    mine = launch.select(sequences) if launch is not None else sequences
    watched = _Watched(candidate, len(mine), say)
    t0 = time.perf_counter()

    def work(dest) -> None:
        capture_to_trace(watched, mine, dest, vocab_size=int(vocab), model=model_provenance(model_dir),
                         tokenizer_sha256=model_tok)

    if launch is None:
        work(out)
    else:
        from ..distributed import pin_device, remove_shares, run_shares
        from ..merge import merge_traces

        shares = launch.share_paths(out)
        pin_device(launch, getattr(args, "device", None) or "cpu")

        def finish() -> None:
            merge_traces(shares, out, order=[s.case_id for s in sequences])
            remove_shares(shares)

        say(f"rank {launch.rank}/{launch.world_size}: {len(mine)} of {len(sequences)} cases -> {shares[launch.rank]}")
        run_shares(launch, lambda: work(shares[launch.rank]), finish)
        if not launch.is_main:
            return 0
    took = time.perf_counter() - t0
    rows = (f"{watched.rows} rows" if launch is None
            else f"joined from {launch.world_size} ranks (this one: {watched.rows} rows)")
    say(f"wrote {out}: {len(sequences)} cases, {rows} in {took:.1f} s")
    if watched.nonfinite:
        bad = sum(watched.nonfinite.values())
        from reports.escape import visible

        where = ", ".join(f"{visible(c)} ({n})" for c, n in watched.nonfinite.items())
        print(f"flipgate capture: warning: {bad} of {watched.rows} rows hold Inf/NaN (fp16 overflow?) in "
              f"{where}; the gate counts them invalid", file=sys.stderr)
    return 0
