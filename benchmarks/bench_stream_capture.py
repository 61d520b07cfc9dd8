"""Layer-streamed S=1 capture vs the in-memory capture: peak RSS and time per position, side by side.

    python benchmarks/bench_stream_capture.py                 # ~1.1 GB bf16 synthetic checkpoint
    python benchmarks/bench_stream_capture.py --layers 48     # ~1.6 GB

A synthetic Qwen3.5-architecture checkpoint (random weights, bf16 in shards with an index, made by
bench_stream_oracle.py's `make_checkpoint`) is written to a temporary folder and deleted afterwards.
Each capture runs in a fresh subprocess that reports its own peak RSS (VmHWM) and its RSS after the
imports both pay (torch, transformers, the modeling code, flipgate), before any weight is read.
In-memory = `EmulatedCandidate` (what `flipgate capture VARIANT` runs: the fp16 model loaded,
the recipe applied, S=1 through the model's cache); streamed = `StreamedCandidate` (`--stream`).
Both get the same sequences; their rows are compared bit for bit. Times include loading and
quantizing the weights (both sides quantize every weight once), best of --repeat alternating runs.
The 27B projection scales the streamed peak above the baseline by the ratio of the largest decoder
layer's fp16 bytes, and adds the 27B case set's hidden states.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stream_oracle import QWEN36_27B, bench_config, layer_bytes_fp32, make_checkpoint, rss_now  # noqa: E402


def sequences(n_cases: int, length: int, rows: int, vocab: int):
    import numpy as np

    from harness.candidates.base import Sequence

    rng = np.random.default_rng(0)
    return [Sequence(f"case-{i}", rng.integers(0, vocab, size=length + (i % 2) * 8), rows) for i in range(n_cases)]


def child(mode: str, model_dir: str, args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from harness.models import read_config

    seqs = sequences(args.cases, args.length, args.rows, read_config(Path(model_dir))["vocab_size"])
    import accelerate  # noqa: F401
    import transformers.models.qwen3_5.modeling_qwen3_5  # noqa: F401
    from transformers.utils import logging as hf_logging

    from harness.candidates.emulated import EmulatedCandidate
    from harness.candidates.streamed import StreamedCandidate
    from harness.recipe import get_recipe
    from oracles.stream import StreamedCheckpoint, peak_rss_bytes  # noqa: F401

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    recipe = get_recipe(args.variant)
    base = rss_now()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if mode == "stream":
        cand = StreamedCandidate(recipe, Path(model_dir), threads=args.threads)
    else:
        cand = EmulatedCandidate(recipe, Path(model_dir), threads=args.threads)
    logits = {c.case_id: c.logits for c in cand.run(seqs)}
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if mode == "stream":
        st = cand.stats
        stats = {"largest_layer_bytes": st.largest_layer_bytes, "need_bytes": st.need_bytes,
                 "hidden_bytes": st.hidden_bytes, "head_chunk_rows": st.head_chunk_rows,
                 "head_chunks": st.head_chunks, "load_s": st.load_seconds, "compute_s": st.compute_seconds,
                 "record_s": st.record_seconds}
    else:
        stats = {"load_quantize_s": cand.quantize_seconds}
    np.savez(args.out, **logits)
    print(json.dumps({"mode": mode, "wall_s": wall, "cpu_s": cpu, "positions": sum(s.rows for s in seqs),
                      "steps": sum(len(s.input_ids) - 1 for s in seqs), "baseline_rss": base,
                      "peak_rss": peak_rss_bytes(), "stats": stats, "torch_threads": torch.get_num_threads()}))


def run_child(mode: str, model_dir: Path, args, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(model_dir), "--cases", str(args.cases),
           "--length", str(args.length), "--rows", str(args.rows), "--out", str(out), "--variant", args.variant,
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {mode:7s} wall {r['wall_s']:.1f}s cpu {r['cpu_s']:.1f}s peak {r['peak_rss'] / 2**20:.0f} MiB",
          flush=True)
    return r


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=32, help="decoder layers (multiple of 4; default 32: 1.1 GB bf16)")
    p.add_argument("--variant", default="int8hu")
    p.add_argument("--cases", type=int, default=2)
    p.add_argument("--length", type=int, default=16, help="tokens per case (every other case has 8 more)")
    p.add_argument("--rows", type=int, default=8, help="scored rows per case")
    p.add_argument("--repeat", type=int, default=1, help="alternate the two captures this many times (best kept)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides (default 1)")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args)
        return 0
    if args.layers % 4:
        p.error("--layers must be a multiple of 4 (3 GatedDeltaNet : 1 full attention)")

    import numpy as np

    cfg = bench_config(args.layers)
    tmp = Path(tempfile.mkdtemp(prefix="flipgate-bench-stream-capture-"))
    loads = [load_average()]
    try:
        model_dir = tmp / "model"
        t0 = time.perf_counter()
        make_checkpoint(model_dir, cfg)
        disk = sum(f.stat().st_size for f in model_dir.iterdir())
        print(f"synthetic checkpoint: {args.layers} layers, hidden {cfg['hidden_size']}, vocab {cfg['vocab_size']}: "
              f"{disk / 2**20:.0f} MiB bf16 on disk ({time.perf_counter() - t0:.0f}s to write)", flush=True)
        if disk < 1e9:
            print("  (below 1 GB: not the size the goal is measured on)")
        results = {"stream": [], "memory": []}
        for rep in range(args.repeat):
            for mode in ("memory", "stream") if rep % 2 == 0 else ("stream", "memory"):
                results[mode].append(run_child(mode, model_dir, args, tmp / f"{mode}.npz"))
                loads.append(load_average())
        a, b = np.load(tmp / "memory.npz"), np.load(tmp / "stream.npz")
        identical = all(np.array_equal(a[k].view(np.uint16), b[k].view(np.uint16)) for k in a.files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def best(mode, key):
        return min(r[key] for r in results[mode])

    mem, st = results["memory"][0], results["stream"][0]
    positions, steps = mem["positions"], mem["steps"]
    mem_peak, st_peak = best("memory", "peak_rss"), best("stream", "peak_rss")
    base = min(best("memory", "baseline_rss"), best("stream", "baseline_rss"))
    mem_t, st_t = best("memory", "wall_s") / positions, best("stream", "wall_s") / positions
    mem_c, st_c = best("memory", "cpu_s") / positions, best("stream", "cpu_s") / positions
    layer_b = st["stats"]["largest_layer_bytes"]
    layer27 = layer_bytes_fp32(QWEN36_27B)[0] // 2  # fp16
    above = st_peak - base
    hidden27 = 64 * 64 * QWEN36_27B["hidden_size"] * 2  # 64 cases of 64 tokens
    proj = base + above * layer27 / layer_b + hidden27
    print(f"{'':28s} {'in-memory':>12s} {'streamed':>12s} {'ratio':>8s}")
    print(f"{'peak RSS (MiB)':28s} {mem_peak / 2**20:12.0f} {st_peak / 2**20:12.0f} {st_peak / mem_peak:8.3f}")
    print(f"{'peak RSS above baseline':28s} {(mem_peak - base) / 2**20:12.0f} {above / 2**20:12.0f} "
          f"{above / (mem_peak - base):8.3f}")
    print(f"{'time per position (s)':28s} {mem_t:12.2f} {st_t:12.2f} {st_t / mem_t:8.3f}")
    print(f"{'CPU time per position (s)':28s} {mem_c:12.2f} {st_c:12.2f} {st_c / mem_c:8.3f}")
    print(f"baseline RSS after imports {base / 2**20:.0f} MiB; {positions} positions ({steps} S=1 steps); "
          f"{args.variant}; {mem['torch_threads']} torch thread(s); rows bit-identical: {identical}; "
          f"load average {', '.join(loads)}")
    print(f"in-memory: load + quantize {mem['stats']['load_quantize_s']:.1f}s; streamed: read + quantize "
          f"{st['stats']['load_s']:.1f}s, compute {st['stats']['compute_s']:.1f}s, record {st['stats']['record_s']:.2f}s; "
          f"largest layer {layer_b / 2**20:.1f} MiB fp16, planned need {st['stats']['need_bytes'] / 2**20:.0f} MiB, "
          f"head chunk {st['stats']['head_chunk_rows']} rows x {st['stats']['head_chunks']}")
    print(f"27B: largest layer {layer27 / 2**30:.2f} GiB fp16 (x{layer27 / layer_b:.1f} this one's); projected "
          f"streamed peak RSS {proj / 2**30:.1f} GiB (baseline + {layer27 / layer_b:.1f} x {above / 2**20:.0f} MiB "
          f"+ {hidden27 / 2**20:.0f} MiB of hidden states for 64 cases of 64 tokens); the in-memory capture "
          f"holds the whole fp16 model, ~54 GB")
    figures = {"layers": args.layers, "positions": positions, "steps": steps, "baseline_rss": base,
               "memory_peak_rss": mem_peak, "stream_peak_rss": st_peak, "rss_ratio": st_peak / mem_peak,
               "rss_above_baseline_ratio": above / (mem_peak - base), "time_ratio": st_t / mem_t,
               "cpu_time_ratio": st_c / mem_c, "bit_identical": identical, "layer_bytes": layer_b,
               "layer_bytes_27b": layer27, "projected_27b_peak_rss": proj, "load_average": loads, "runs": results}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
