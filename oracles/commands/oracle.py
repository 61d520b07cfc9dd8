"""`flipgate oracle`: compute the teacher-forced oracle trace of a case set.

Every option is declared once in `add_options` and resolved once in `oracle_options` (command
line over the config file's `[oracle]` table over the library defaults): a new flag is one
`add_argument` there plus one entry in `CONFIG_KEYS` if a config file may set it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import add_command, input_path, output_path

# config key -> (type check, is a path relative to the config file)
CONFIG_KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "model": (str, True),
    "cases": (str, True),
    "out": (str, True),
    "dtype": (str, False),
    "device": (str, False),
    "max_memory": ((str, dict), False),
    "stepwise": (bool, False),
    "min_margin": ((int, float), False),
    "min_confident_fraction": ((int, float), False),
    "batch_size": (int, False),
    "trust_remote_code": (bool, False),
    "stream": (bool, False),
    "sequences": (str, True),
    "threads": (int, False),
}

EXAMPLE = """\
flipgate oracle --out oracle.safetensors            # bundled fixture model and cases, bf16, CPU
flipgate oracle --model ~/models/Qwen3.6-27B --cases cases.jsonl --device auto \\
    --max-memory 0=70GiB,cpu=100GiB --shard 0/4 --out oracle-0.safetensors --resume
flipgate oracle --stepwise --dtype float32 --min-confident-fraction 0.5
flipgate oracle --dtype float32 --stream --sequences oracle-bf16.safetensors --max-memory 8GiB"""


def register(sub) -> None:
    p = add_command(
        sub, "oracle", help="compute the teacher-forced oracle trace (Hugging Face model, bf16 by default)",
        description="Compute the oracle trace: for each case, the greedy continuation unless the case gives "
                    "one, then the scored rows from one causal forward pass (or token by token with "
                    "--stepwise). Rows are written to OUT.parts/ as they are computed; --resume reuses them.",
        example=EXAMPLE)
    add_options(p)
    p.set_defaults(func=run)


def add_options(p: argparse.ArgumentParser) -> None:
    # defaults are None here so that a config file can supply them; oracle_options fills the rest
    input_path(p, "--config", metavar="F", help="a flipgate.toml whose [oracle] table gives defaults "
                   f"for these options ({', '.join(CONFIG_KEYS)})")
    input_path(p, "--model", kind="any", metavar="DIR_OR_ID", help="checkpoint folder or a hub id in the local cache "
                   "(default: the bundled fixture model)")
    input_path(p, "--cases", kind="cases", metavar="FILE", help="JSONL case file, or a bundled set by name: fixture (default), big")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"),
                   help="precision of the oracle (default: bfloat16, the checkpoint's native precision)")
    p.add_argument("--device", choices=("cpu", "cuda", "mps", "auto"),
                   help="where to run (default: cpu); auto = accelerate's device_map: GPUs, then CPU, then disk")
    p.add_argument("--max-memory", metavar="SPEC", help="with --device auto: per-device budget, e.g. 0=20GiB,cpu=60GiB; "
                   "with --stream: one size, e.g. 8GiB (checked before any weight is read)")
    output_path(p, "--out", metavar="TRACE", help="trace to write (default: oracle-<dtype>[-shard-i-of-n].safetensors)")
    p.add_argument("--stepwise", action="store_true", default=None,
                   help="compute rows token by token through the model's cache (S=1, as the device does)")
    p.add_argument("--shard", metavar="I/N", help="compute every N-th case starting at I (0-based); join with flipgate merge")
    p.add_argument("--resume", action="store_true", help="reuse the cases already written to OUT.parts/")
    p.add_argument("--min-margin", type=float, metavar="M",
                   help="probability margin below which a position is not confident (default: 0.1)")
    p.add_argument("--min-confident-fraction", type=float, metavar="X",
                   help="refuse the case set (exit 2, no trace written) if under X of its positions are confident")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="run up to B cases of equal length in one batch (default: 1, each case alone: "
                        "batching can change the last bits of the rows)")
    p.add_argument("--trust-remote-code", action="store_true", default=None,
                   help="let transformers run the checkpoint's own modeling code (off by default)")
    p.add_argument("--stream", action="store_true", default=None,
                   help="float32 only: run the checkpoint one decoder layer at a time from the memory-mapped "
                        "safetensors files (about one layer in memory, same logits as in-memory float32)")
    input_path(p, "--sequences", metavar="TRACE", help="with --stream: teacher-force this trace's sequences "
                   "(e.g. the bf16 oracle's) for cases that give no continuation")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: 1 for a small model such as the fixture, else torch's "
                        "choice); recorded in the trace as torch_threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def _config_table(path: str) -> tuple[dict, Path]:
    import tomllib

    from harness.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such config file")
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{p}: malformed TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    table = data.get("oracle", {})
    if not isinstance(table, dict):
        raise InputError(f"{p}: 'oracle' must be a table ([oracle])")
    for key, value in table.items():
        if key not in CONFIG_KEYS:
            raise InputError(f"{p}: [oracle] unknown key {key!r} (valid: {', '.join(CONFIG_KEYS)})")
        kind, _ = CONFIG_KEYS[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise InputError(f"{p}: [oracle] {key} = {value!r} has the wrong type")
    return table, p.parent


def oracle_options(args) -> dict:
    """The keyword arguments for oracles.hf.run_oracle: flags, then the config file, then defaults."""
    from oracles.hf import DEFAULT_BATCH_SIZE, DEFAULT_MIN_MARGIN, VARIANTS

    table, base = _config_table(args.config) if args.config else ({}, Path("."))
    opts: dict = {}
    for key, (_, is_path) in CONFIG_KEYS.items():
        value = getattr(args, key, None)
        if value is None and key in table:
            value = table[key]
            if is_path and not Path(value).is_absolute() and (key != "model" or (base / value).exists()):
                value = str(base / value)  # paths in a config file are relative to it
        opts[key] = value
    defaults = {"dtype": "bfloat16", "device": "cpu", "stepwise": False, "min_margin": DEFAULT_MIN_MARGIN,
                "batch_size": DEFAULT_BATCH_SIZE, "trust_remote_code": False}
    for key, value in defaults.items():
        if opts[key] is None:
            opts[key] = value
    if opts["out"] is None:
        shard = f"-shard-{args.shard.replace('/', '-of-')}" if args.shard else ""
        opts["out"] = f"oracle-{VARIANTS.get(opts['dtype'], opts['dtype'])}{shard}.safetensors"
    opts.update(shard=args.shard, resume=args.resume, quiet=args.quiet)
    return opts


def run(args) -> int:
    import sys

    from oracles.hf import run_oracle

    if getattr(args, "stream", None) and args.dtype is None:
        args.dtype = "float32"  # --stream is the float32 oracle
    opts = oracle_options(args)
    _check_resolved_paths(opts, args)
    _quiet_libraries(opts["quiet"] or not sys.stderr.isatty())
    stream, sequences = opts.pop("stream"), opts.pop("sequences")
    from harness.distributed import from_env

    launch = from_env()
    if launch is not None:
        return run_launched(launch, opts, stream=stream, sequences=sequences)
    if stream:
        from oracles.stream import run_streamed_oracle

        run_streamed_oracle(**opts, sequences=sequences)
        return 0
    if sequences is not None:
        from harness.errors import InputError

        raise InputError("--sequences applies to --stream only")
    run_oracle(**opts)
    return 0


def _check_resolved_paths(opts: dict, args) -> None:
    """The output as resolved (a default name, or one from the config file) against every input,
    before the model is loaded: the command line's own paths were checked by harness.cli already."""
    from harness.fileio import check_output_path, check_outputs

    check_output_path(opts["out"])
    check_outputs({"--out": opts["out"]}, {"--cases": opts["cases"], "--sequences": opts["sequences"],
                                           "--config": args.config, "--model": opts["model"]})


def run_launched(launch, opts: dict, *, stream: bool, sequences: str | None) -> int:
    """Under torchrun / accelerate launch / srun: this rank's share of the cases (the --shard RANK/WORLD
    split) beside --out, then rank 0 joins the shares into --out and removes them."""
    from harness.distributed import pin_device, remove_shares, run_shares
    from harness.errors import InputError
    from harness.merge import merge_traces
    from harness.trace import open_trace

    if opts["shard"]:
        raise InputError(f"--shard {opts['shard']}: under a launcher (WORLD_SIZE={launch.world_size}) each rank "
                         "takes its share from RANK and WORLD_SIZE; drop --shard")
    out = Path(opts["out"])
    if out.is_dir():
        raise InputError(f"{out}: is a folder; --out names the trace file to write")
    shares = launch.share_paths(out)
    pin_device(launch, opts["device"])
    min_fraction = opts.pop("min_confident_fraction")  # judged on the whole case set, after the join
    mine = dict(opts, out=str(shares[launch.rank]), shard=launch.shard)

    def work() -> None:
        if stream:
            from oracles.stream import run_streamed_oracle

            run_streamed_oracle(**mine, sequences=sequences)
        else:
            from oracles.hf import run_oracle

            run_oracle(**mine, keep_parts=True)

    def finish() -> None:
        import json
        import shutil

        if min_fraction is not None:
            rows = low = 0
            for share in shares:
                t = open_trace(share)
                rows += sum(t.rows(c) for c in t.case_ids)
                low += sum(int(v) for v in json.loads(t.metadata.get("low_margin", "{}")).values())
            frac = (rows - low) / rows if rows else 0.0
            if not frac >= min_fraction:
                raise InputError(f"{out}: only {frac:.1%} of {rows} scored positions are confident, below "
                                 f"--min-confident-fraction {min_fraction:g}: a gate on near-ties proves nothing "
                                 f"(the ranks' shares are kept beside it for --resume)")
        merge_traces(shares, out)
        remove_shares(shares)
        for share in shares:  # kept for --resume until the join succeeded
            shutil.rmtree(share.with_name(share.name + ".parts"), ignore_errors=True)
        if not opts["quiet"]:
            print(f"wrote {out}: {len(open_trace(out))} cases joined from {launch.world_size} ranks", flush=True)

    run_shares(launch, work, finish)
    return 0


def _quiet_libraries(no_bars: bool) -> None:
    """transformers' kernel-fallback notices are not the user's business; its loading bar only on a terminal."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if no_bars:
        hf_logging.disable_progress_bar()
