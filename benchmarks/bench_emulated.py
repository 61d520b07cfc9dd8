"""Emulated candidates: per-step S=1 decode time of the fast path (materialized weights) against
coreai-opt's eager fake quantization, side by side in one process, plus the one-off quantization.

    python benchmarks/bench_emulated.py                      # fixture + generated ~107M model, int8hu
    python benchmarks/bench_emulated.py --steps 16 --threads 2 --repeat 5 --variant int4lin
    python benchmarks/bench_emulated.py --skip-large         # the fixture only (seconds)

Two models: the bundled fixture (2.4M parameters) and a Qwen3.5-architecture model of >= 100M
parameters generated here with random weights (no download). Each run also checks that both paths
give bit-identical logits on the timed steps. Figures go to benchmarks/README.md ("Emulated
candidates").
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import time

import numpy as np
import torch

from harness.candidates.emulated import apply_plan, load_fp16, prepare_coreai_opt, rows_stepwise
from harness.recipe import get_recipe

# The 27B's structure (3 GatedDeltaNet : 1 gated attention, GQA 6:1, GDN 3:1 value:key heads,
# partial rotary, untied head) at a width that gives ~107M parameters.
LARGE = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
    layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 2,
    num_attention_heads=6, num_key_value_heads=1, head_dim=128,
    linear_num_key_heads=2, linear_num_value_heads=6, linear_key_head_dim=128, linear_value_head_dim=128,
    linear_conv_kernel_dim=4, max_position_embeddings=1024, tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
)


def large_model():
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(0)
    model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**LARGE))
    return model.to(torch.float16).eval().requires_grad_(False)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(name: str, base, variant: str, steps: int, repeat: int, rng) -> dict:
    params = sum(p.numel() for p in base.parameters())
    plan = get_recipe(variant).plan(base)
    ids = rng.integers(0, base.config.vocab_size, size=steps + 1)
    warm = ids[:3]

    fast, ref = copy.deepcopy(base), copy.deepcopy(base)
    _, q_fast = timed(lambda: apply_plan(fast, plan))
    (_, ref), q_ref = timed(lambda: prepare_coreai_opt(ref, plan))

    for m in (fast, ref):
        rows_stepwise(m, warm, 2)  # first-call costs (kernels, caches) out of the timing
    times_fast, times_ref, identical = [], [], True
    for _ in range(repeat):  # interleaved, so a burst of load on the shared machine hits both
        rows_fast, t = timed(lambda: rows_stepwise(fast, ids, steps))
        times_fast.append(t)
        rows_ref, t = timed(lambda: rows_stepwise(ref, ids, steps))
        times_ref.append(t)
        identical &= np.array_equal(rows_fast.view(np.uint16), rows_ref.view(np.uint16))
    t_fast, t_ref = float(np.median(times_fast)), float(np.median(times_ref))
    del fast, ref
    gc.collect()
    return dict(model=name, params=params, variant=variant, steps=steps, q_fast=q_fast, q_ref=q_ref,
                t_fast=t_fast, t_ref=t_ref, identical=identical)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="int8hu")
    ap.add_argument("--steps", type=int, default=16, help="S=1 steps timed per path (default 16)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per path, interleaved; the median is shown")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine a second OpenMP thread spin-waits)")
    ap.add_argument("--skip-large", action="store_true", help="only the fixture")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    results = [bench("fixture", load_fp16(None), args.variant, args.steps, args.repeat, rng)]
    if not args.skip_large:
        results.append(bench("generated", large_model(), args.variant, args.steps, args.repeat, rng))
    print()
    print(f"median of {args.repeat} interleaved runs per path")
    print(f"| model | parameters | variant | steps | coreai-opt eager | fast path | per step (eager / fast) "
          f"| speed-up | quantize once (eager prepare / fast) | logits identical |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['variant']} | {r['steps']} | {r['t_ref']:.2f} s "
              f"| {r['t_fast']:.2f} s | {r['t_ref'] / r['steps'] * 1e3:.0f} ms / {r['t_fast'] / r['steps'] * 1e3:.0f} ms "
              f"| {r['t_ref'] / r['t_fast']:.1f}x | {r['q_ref']:.2f} s / {r['q_fast']:.2f} s "
              f"| {'yes' if r['identical'] else 'NO'} |")
    if not all(r["identical"] for r in results):
        raise SystemExit("the fast path's logits differ from coreai-opt's")


if __name__ == "__main__":
    main()
