"""Oracle benchmark: one causal pass vs --stepwise, and peak memory with 1 vs 64 cases.

    python benchmarks/bench_oracle.py                 # both parts, figures for benchmarks/README.md
    python benchmarks/bench_oracle.py --part speed    # or memory

Speed: the same 8 bundled cases x 16 scored positions (continuations made once, untimed), rows
computed by one forward pass per case and token by token through the cache (S=1), interleaved,
repeated; median times and their ratio. Memory: `run_oracle` in a fresh process per run (so each
peak RSS is its own; Linux only), on the bundled fixture and on a wide-vocabulary model of the same
architecture (random weights, vocab 131072) where a per-case leak of rows would be megabytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES, ROWS = 8, 16
WIDE_VOCAB = 131072


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def speed(repeats: int) -> dict:
    import numpy as np

    from harness.cases import load_cases, tokenize_case
    from oracles.hf import HFOracle

    oracle = HFOracle(dtype="bfloat16")
    specs = load_cases().specs[:CASES]
    cases = oracle.complete([tokenize_case(s, oracle.tokenizer, oracle.vocab_size) for s in specs])
    seqs = [np.array(c.input_ids) for c in cases]
    oracle.rows(seqs[0], ROWS)  # warm up both paths
    oracle.rows(seqs[0][:8], 2, stepwise=True)
    times: dict[str, list[float]] = {"one-pass": [], "stepwise": []}
    for _ in range(repeats):
        for mode in times:
            t0 = time.perf_counter()
            for ids in seqs:
                oracle.rows(ids, ROWS, stepwise=(mode == "stepwise"))
            times[mode].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in times.items()}
    tokens = sum(len(s) for s in seqs)
    return {"cases": len(seqs), "rows_per_case": ROWS, "tokens": tokens, "repeats": repeats,
            "seconds": med, "all_seconds": times, "speedup": med["stepwise"] / med["one-pass"]}


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _child(model: str, n_cases: int, cases_file: str, out: str) -> dict:
    """One oracle run in this (fresh) process: its peak RSS, and the RSS it started from.

    Importing torch and transformers peaks above what a small model's run uses, so the peak is
    reset (Linux: 5 > /proc/self/clear_refs resets VmHWM) once they are imported.
    """
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from oracles.hf import run_oracle

    Path("/proc/self/clear_refs").write_text("5")
    start = _kib("VmRSS")
    t0 = time.perf_counter()
    run_oracle(model=model or None, cases=cases_file, out=out, quiet=True)
    return {"cases": n_cases, "seconds": time.perf_counter() - t0, "start_rss_mib": start / 1024,
            "peak_rss_mib": _kib("VmHWM") / 1024}


def _case_file(path: Path, n: int, vocab: int) -> None:
    """n cases of a fixed length (prompt 24 + continuation 16 given, so no greedy step is timed)."""
    import numpy as np

    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            ids = rng.integers(1, min(vocab, 2048), size=40).tolist()
            f.write(json.dumps({"id": f"c{i:03d}", "prompt_ids": ids[:24], "continuation_ids": ids[24:]}) + "\n")


def _wide_model(dest: Path) -> None:
    import shutil

    import torch
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    from harness.models import fixture_model_path, read_config

    src = fixture_model_path()
    cfg = {k: v for k, v in read_config(src).items()
           if k not in ("architectures", "transformers_version", "dtype", "torch_dtype", "model_type")}
    cfg["vocab_size"] = WIDE_VOCAB
    torch.manual_seed(0)
    Qwen3_5ForCausalLM(Qwen3_5TextConfig(**cfg)).to(torch.bfloat16).save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dest / name)


def memory(threads: int) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wide = tmp / "wide-model"
        _wide_model(wide)
        for label, model, vocab in (("fixture (vocab 2048)", "", 2048), (f"wide (vocab {WIDE_VOCAB})", str(wide), WIDE_VOCAB)):
            for n in (1, 64):
                cases = tmp / f"cases-{n}.jsonl"
                _case_file(cases, n, vocab)
                cmd = [sys.executable, __file__, "--child", model, str(n), str(cases), str(tmp / f"o-{n}.safetensors"),
                       "--threads", str(threads)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r["model"] = label
                results.append(r)
                print(f"  {label:<22} {n:>3} cases: peak RSS {r['peak_rss_mib']:7.1f} MiB "
                      f"(before the run: {r['start_rss_mib']:7.1f} MiB), {r['seconds']:.1f} s", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("speed", "memory", "both"), default="both")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine spin-waiting threads swamp the timings)")
    ap.add_argument("--child", nargs=4, metavar=("MODEL", "N", "CASES", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _threads(a.threads)
    if a.child:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model, n, cases, out = a.child
        print(json.dumps(_child(model, int(n), cases, out)))
        return 0
    import torch

    print(f"torch {torch.__version__}, {a.threads} thread(s), {os.cpu_count()} CPUs", flush=True)
    if a.part in ("speed", "both"):
        s = speed(a.repeats)
        print(f"speed: {s['cases']} cases x {s['rows_per_case']} scored rows ({s['tokens']} tokens), "
              f"median of {s['repeats']}: one-pass {s['seconds']['one-pass']:.2f} s, "
              f"stepwise {s['seconds']['stepwise']:.2f} s -> one pass {s['speedup']:.1f}x faster", flush=True)
    if a.part in ("memory", "both"):
        print("memory (fresh process per run, peak RSS of the run after torch/transformers are imported):", flush=True)
        res = memory(a.threads)
        for label in dict.fromkeys(r["model"] for r in res):
            one, many = (r for r in res if r["model"] == label)
            print(f"  {label}: 64 cases / 1 case peak RSS = {many['peak_rss_mib'] / one['peak_rss_mib']:.3f} "
                  f"(+{many['peak_rss_mib'] - one['peak_rss_mib']:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
