"""`flipgate merge`: join the shards of an oracle run into one trace."""

from __future__ import annotations

from harness.cli import add_command, input_path, output_path


def register(sub) -> None:
    p = add_command(
        sub, "merge", help="join trace shards (flipgate oracle --shard i/n) into one trace",
        description="Join traces made by `flipgate oracle --shard i/n` into one trace in the case set's "
                    "order. Refuses traces whose model, tokenizer, precision or case set differ, a case "
                    "found in two shards, and a missing shard.",
        example="flipgate merge oracle-0.safetensors oracle-1.safetensors --out oracle.safetensors")
    input_path(p, "traces", nargs="+", metavar="TRACE", help="shard traces, in any order")
    output_path(p, "--out", required=True, metavar="TRACE", help="merged trace to write")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.merge import merge_traces
    from harness.trace import open_trace

    out = merge_traces(args.traces, args.out)
    if not args.quiet:
        t = open_trace(out)
        print(f"wrote {out} ({len(t)} cases from {len(args.traces)} traces)")
    return 0
