"""Streamed fp32 oracle vs in-memory fp32 oracle: peak RSS and time per position, side by side.

    python benchmarks/bench_stream_oracle.py                 # ~1.7 GB fp32 synthetic checkpoint
    python benchmarks/bench_stream_oracle.py --layers 8      # smaller (>= 300 MB fp32 still)

A synthetic Qwen3.5-architecture checkpoint (random weights, stored bf16 in shards with an index,
as real checkpoints are) is written to a temporary folder and deleted afterwards. Each oracle runs
in a fresh subprocess that reports its own peak RSS (VmHWM: file-backed mmap pages count too, and
unlike ru_maxrss it does not inherit the parent's) and its RSS after imports, before any weight is
read (the interpreter, torch and the modeling code: the baseline both pay).
Both oracles get the same sequences; the logits are compared bit for bit. Times are the best of
--repeat alternating runs, wall clock and CPU seconds (the latter steadier on a shared machine). The 27B projection
scales the measured above-baseline peak by the ratio of the largest layer's float32 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN36_27B = dict(  # the published 27B gate's shape (DESIGN.md)
    vocab_size=248320, hidden_size=5120, intermediate_size=17408, num_hidden_layers=64,
    layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 16,
    num_attention_heads=24, num_key_value_heads=4, head_dim=256,
    linear_num_key_heads=16, linear_num_value_heads=48, linear_key_head_dim=128, linear_value_head_dim=128,
    linear_conv_kernel_dim=4, tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
)


def bench_config(layers: int) -> dict:
    # 27B proportions at hidden 1024: GQA 8 query / 2 KV heads, GatedDeltaNet 12 value / 4 key heads
    return dict(
        vocab_size=32768, hidden_size=1024, intermediate_size=3456, num_hidden_layers=layers,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * (layers // 4),
        num_attention_heads=8, num_key_value_heads=2, head_dim=128,
        linear_num_key_heads=4, linear_num_value_heads=12, linear_key_head_dim=128, linear_value_head_dim=128,
        linear_conv_kernel_dim=4, tie_word_embeddings=False, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
    )


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at the parent's resident set at fork time,
    # and the parent has just written the checkpoint
    from oracles.stream import peak_rss_bytes

    return peak_rss_bytes()


def layer_bytes_fp32(config: dict) -> tuple[int, int]:
    """(largest decoder layer, lm_head) float32 bytes of a config, from a weightless skeleton."""
    import torch
    from accelerate import init_empty_weights
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    with init_empty_weights():
        m = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**config))
    layers = [sum(p.numel() for p in layer.parameters()) * 4 for layer in m.model.layers]
    return max(layers), m.lm_head.weight.numel() * 4


def make_checkpoint(path: Path, config: dict, shard_bytes: int = 200 * 2**20) -> int:
    """Random bf16 weights in shards + index; returns the float32 size in bytes."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    cfg = Qwen3_5TextConfig(**config, eos_token_id=0, bos_token_id=None, pad_token_id=None)
    with init_empty_weights():
        skeleton = Qwen3_5ForCausalLM(cfg)
    gen = torch.Generator().manual_seed(0)
    shards, current, size, total = [], {}, 0, 0
    for name, p in skeleton.named_parameters():
        if name.endswith("A_log"):
            t = torch.empty(p.shape).uniform_(1, 16, generator=gen).log()
        elif name.endswith("dt_bias") or name.endswith("linear_attn.norm.weight"):
            t = torch.ones(p.shape)
        elif "norm" in name:
            t = torch.randn(p.shape, generator=gen) * 0.05  # (1 + w) norms
        else:
            t = torch.randn(p.shape, generator=gen) * 0.02
        current[name] = t.to(torch.bfloat16)
        size += t.numel() * 2
        total += t.numel() * 4
        if size >= shard_bytes:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    path.mkdir(parents=True)
    weight_map = {}
    for k, tensors in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in tensors})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg.architectures = ["Qwen3_5ForCausalLM"]
    cfg.save_pretrained(path)
    return total


def sequences(n_cases: int, length: int, rows: int, vocab: int):
    import numpy as np

    from harness.candidates.base import Sequence

    rng = np.random.default_rng(0)
    # two lengths, so that both batching and single cases occur
    return [Sequence(f"case-{i}", rng.integers(0, vocab, size=length + (i % 2) * 8), rows)
            for i in range(n_cases)]


def child(mode: str, model_dir: str, n_cases: int, length: int, rows: int, out: str, batch_size: int,
          threads: int) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)

    from harness.models import read_config

    cfg = read_config(Path(model_dir))
    seqs = sequences(n_cases, length, rows, cfg["vocab_size"])
    # Both modes import the modeling code (~150 MB of resident libraries): before the baseline is read.
    import accelerate  # noqa: F401
    import transformers.models.qwen3_5.modeling_qwen3_5  # noqa: F401
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from oracles.stream import StreamedOracle

    base = rss_now()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stats = {}
    if mode == "stream":
        oracle = StreamedOracle(model_dir, batch_size=batch_size)
        logits = {t.case_id: t.logits for t in oracle.run(seqs)}
        stats = oracle.stats.as_dict()
    else:
        logits = {}
        try:
            from oracles.hf import HFOracle
        except ImportError:
            HFOracle = None
        if HFOracle is not None:
            oracle = HFOracle(model_dir, dtype="float32")
            by_key: dict = {}
            for s in seqs:
                by_key.setdefault((len(s.input_ids), s.rows), []).append(s)
            for group in by_key.values():
                for j in range(0, len(group), batch_size):
                    run = group[j:j + batch_size]
                    rows_ = oracle.rows_batch(np.stack([s.input_ids for s in run]), run[0].rows)
                    logits.update({s.case_id: r for s, r in zip(run, rows_)})
        else:
            from harness.models import load_causal_lm

            model = load_causal_lm(Path(model_dir), "float32")
            with torch.inference_mode():
                for s in seqs:
                    lg = model(input_ids=torch.from_numpy(s.input_ids)[None], logits_to_keep=s.rows + 1).logits
                    logits[s.case_id] = lg[0, :-1].numpy()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0  # CPU seconds of this process: steadier than wall on a shared machine
    np.savez(out, **logits)
    print(json.dumps({"mode": mode, "wall_s": wall, "cpu_s": cpu, "positions": sum(s.rows for s in seqs),
                      "baseline_rss": base, "peak_rss": peak_rss(), "stats": stats,
                      "torch_threads": torch.get_num_threads()}))


def run_child(mode: str, model_dir: Path, args, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(model_dir), "--cases", str(args.cases),
           "--length", str(args.length), "--rows", str(args.rows), "--out", str(out),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=24, help="decoder layers (multiple of 4; default 24)")
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--length", type=int, default=48, help="tokens per case (every other case has 8 more)")
    p.add_argument("--rows", type=int, default=16, help="scored rows per case")
    p.add_argument("--batch-size", type=int, default=1, help="equal-length cases per batch, both oracles (default 1, as flipgate oracle)")
    p.add_argument("--repeat", type=int, default=3, help="alternate the two oracles this many times (best kept)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads, both oracles (default 1: on a shared machine a second OpenMP thread "
                        "spin-waits for a busy core and the timings stop meaning anything)")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.cases, args.length, args.rows, args.out, args.batch_size,
              args.threads)
        return 0
    if args.layers % 4:
        p.error("--layers must be a multiple of 4 (3 GatedDeltaNet : 1 full attention)")

    import numpy as np

    cfg = bench_config(args.layers)
    tmp = Path(tempfile.mkdtemp(prefix="flipgate-bench-stream-"))
    try:
        model_dir = tmp / "model"
        t0 = time.perf_counter()
        fp32_bytes = make_checkpoint(model_dir, cfg)
        disk = sum(f.stat().st_size for f in model_dir.iterdir())
        print(f"synthetic checkpoint: {args.layers} layers, hidden {cfg['hidden_size']}, vocab {cfg['vocab_size']}: "
              f"{fp32_bytes / 2**20:.0f} MiB in float32, {disk / 2**20:.0f} MiB bf16 on disk "
              f"({time.perf_counter() - t0:.0f}s to write)")
        assert fp32_bytes >= 300e6
        results = {"stream": [], "memory": []}
        for rep in range(args.repeat):
            for mode in ("memory", "stream") if rep % 2 == 0 else ("stream", "memory"):
                results[mode].append(run_child(mode, model_dir, args, tmp / f"{mode}.npz"))
        a, b = np.load(tmp / "memory.npz"), np.load(tmp / "stream.npz")
        identical = all(np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) for k in a.files)
        max_diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
        argmax_same = all(np.array_equal(a[k].argmax(-1), b[k].argmax(-1)) for k in a.files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def best(mode, key):
        return min(r[key] for r in results[mode])

    mem, st = results["memory"][0], results["stream"][0]
    positions = mem["positions"]
    mem_peak, st_peak = best("memory", "peak_rss"), best("stream", "peak_rss")
    base = min(best("memory", "baseline_rss"), best("stream", "baseline_rss"))
    mem_t, st_t = best("memory", "wall_s") / positions, best("stream", "wall_s") / positions
    mem_c, st_c = best("memory", "cpu_s") / positions, best("stream", "cpu_s") / positions
    layer_b, head_b = layer_bytes_fp32(cfg)
    layer27, head27 = layer_bytes_fp32(QWEN36_27B)
    above = st_peak - base
    proj = base + above * layer27 / layer_b
    print(f"{'':28s} {'in-memory':>12s} {'streamed':>12s} {'ratio':>8s}")
    print(f"{'peak RSS (MiB)':28s} {mem_peak / 2**20:12.0f} {st_peak / 2**20:12.0f} {st_peak / mem_peak:8.3f}")
    print(f"{'peak RSS above baseline':28s} {(mem_peak - base) / 2**20:12.0f} {above / 2**20:12.0f} "
          f"{above / (mem_peak - base):8.3f}")
    print(f"{'time per position (ms)':28s} {mem_t * 1e3:12.1f} {st_t * 1e3:12.1f} {st_t / mem_t:8.3f}")
    print(f"{'CPU time per position (ms)':28s} {mem_c * 1e3:12.1f} {st_c * 1e3:12.1f} {st_c / mem_c:8.3f}")
    print(f"baseline RSS after imports: {base / 2**20:.0f} MiB; positions {positions}; "
          f"{mem['torch_threads']} torch threads; logits bit-identical: {identical} "
          f"(max |diff| {max_diff:.3g}, argmax identical: {argmax_same})")
    print(f"streamed: largest layer {st['stats']['largest_layer_bytes'] / 2**20:.1f} MiB fp32, "
          f"head chunk {st['stats']['head_chunk_rows']} rows x {st['stats']['head_chunks']}, "
          f"load {st['stats']['load_seconds']:.1f}s compute {st['stats']['compute_seconds']:.1f}s")
    print(f"27B shape: largest layer {layer27 / 2**30:.2f} GiB fp32 (here {layer_b / 2**20:.1f} MiB, x{layer27 / layer_b:.1f}); "
          f"projected streamed peak RSS {proj / 2**30:.1f} GiB "
          f"(in-memory fp32 would hold {(64 * layer27 + 2 * head27) / 2**30:.0f} GiB of weights)")
    figures = {"fp32_bytes": fp32_bytes, "positions": positions, "baseline_rss": base,
               "memory_peak_rss": mem_peak, "stream_peak_rss": st_peak, "rss_ratio": st_peak / mem_peak,
               "rss_above_baseline_ratio": above / (mem_peak - base),
               "memory_s_per_position": mem_t, "stream_s_per_position": st_t, "time_ratio": st_t / mem_t,
               "memory_cpu_s_per_position": mem_c, "stream_cpu_s_per_position": st_c, "cpu_time_ratio": st_c / mem_c,
               "bit_identical": identical, "max_abs_diff": max_diff, "layer_bytes": layer_b,
               "layer_bytes_27b": layer27, "projected_27b_peak_rss": proj, "runs": results}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
