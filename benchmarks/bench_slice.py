"""The 27B rehearsal: every stage on a slice with Qwen3.6-27B's real layer shapes (scripts/make_slice.py).

    python scripts/make_slice.py --out /data/slice27b                  # 4 layers, 8.1 GB
    python scripts/make_slice.py --out /data/slice27b-1 --layers 1     # for the per-layer figures
    python benchmarks/bench_slice.py --model /data/slice27b --work /data/bench --stages all
    python benchmarks/bench_slice.py --model /data/slice27b-1 --work /data/bench1 --stages oracle,stream,capture-stream

Each stage is the `flipgate` command a user would type, run in a fresh process; its peak memory is
the peak of the sum of RSS over its process tree (sampled every 50 ms, so pytest's model subprocess
counts), with its wall time, the bytes it wrote, and the bytes it must hold (what the stage cannot
do without: the bf16 weights for the in-memory oracle, the fp16 weights for an in-memory capture,
one layer + the head's chunk + the hidden states where it streams), so that the ratio
peak / must-hold is the measure of waste. Results go to WORK/results.json, one entry per stage, and
a Markdown table to stdout. The per-layer cost is (stage on the 4-layer slice − stage on the
1-layer slice) / 3, from two runs of this script; the README's projection uses those.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # short prose/code prompts; the oracle continues each 12 tokens
    {"id": "code", "prompt": "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, x):", "new_tokens": 12},
    {"id": "prose", "prompt": "The quick brown fox jumps over the lazy dog while the farmer watches from the", "new_tokens": 12},
    {"id": "doc", "prompt": "Return the number of items in the container; raise TypeError if", "new_tokens": 12},
    {"id": "list", "prompt": "1. Open the file\n2. Read each line\n3.", "new_tokens": 12},
]


def _tree_rss(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) summed over the process tree. RSS counts the pages of memory-mapped
    checkpoint files too (clean page cache the kernel can drop); anonymous RSS (RSS less the file-backed
    `shared` pages) is the memory a stage really allocates."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0, 0
    total = anon = 0
    for q in procs:
        try:
            m = q.memory_info()
        except psutil.Error:
            continue
        total += m.rss
        anon += m.rss - getattr(m, "shared", 0)
    return total, anon


def run_stage(name: str, args: list[str], work: Path, must_hold: int, outputs: list[str],
              env_extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    cmd = args if args[0] != "flipgate" else [sys.executable, "-m", "harness.cli", *args[1:]]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0, 0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            rss, anon = _tree_rss(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
            done.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    took = time.perf_counter() - t0
    written = 0
    for o in outputs:
        p = work / o
        if p.is_file():
            written += p.stat().st_size
        elif p.is_dir():
            written += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    rec = {"stage": name, "command": " ".join(args), "exit": proc.returncode, "wall_s": round(took, 2),
           "peak_rss": peak[0], "peak_anon": peak[1], "must_hold": must_hold,
           "ratio": round(peak[0] / must_hold, 3) if must_hold else None,
           "anon_ratio": round(peak[1] / must_hold, 3) if must_hold else None,
           "bytes_written": written, "load_1min": round(os.getloadavg()[0], 2), "tail": out[-1500:]}
    print(f"{name}: exit {proc.returncode}, {took:.1f} s, peak {peak[0] / 2**30:.2f} GiB (anonymous {peak[1] / 2**30:.2f})"
          + (f" ({rec['ratio']}x / {rec['anon_ratio']}x of {must_hold / 2**30:.2f} GiB it must hold)" if must_hold else ""),
          flush=True)
    return rec


def sizes(model: Path) -> dict:
    index = json.loads((model / "model.safetensors.index.json").read_text())
    cfg = json.loads((model / "config.json").read_text())
    total = index["metadata"]["total_size"]  # bf16 bytes
    v, h = cfg["vocab_size"], cfg["hidden_size"]
    head = v * h * 2
    embed = v * h * 2
    layers = cfg["num_hidden_layers"]
    per_layer = (total - head - embed - h * 2) / layers
    return {"bf16_total": total, "head_bf16": head, "embed_bf16": embed, "layer_bf16": per_layer,
            "layers": layers, "vocab": v, "hidden": h}


STAGES = ("oracle", "oracle-auto", "stream", "oracle-diff", "capture", "capture-stream", "capture-coreai-opt",
          "gate", "compare", "signoff", "localise", "pytest-gate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--stages", default="all", help=f"comma-separated, or all: {', '.join(STAGES)}")
    ap.add_argument("--auto-budget", default="3GiB", help="--max-memory cpu budget for the offloaded oracle")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    stages = STAGES if a.stages == "all" else tuple(a.stages.split(","))
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CASES))
    s = sizes(a.model)
    m = str(a.model)
    positions = sum(c["new_tokens"] for c in CASES)
    # hidden states kept by a streamed run: every position of every case, fp32 (oracle) / fp16 (capture)
    tokens = 64 * len(CASES)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["sizes"] = s
    results["positions"] = positions
    one_layer_fp32 = s["layer_bf16"] * 2
    plan = {
        "oracle": (["flipgate", "oracle", "--model", m, "--cases", "cases.jsonl", "--out", "oracle.safetensors"],
                   s["bf16_total"], ["oracle.safetensors"], None),
        "oracle-auto": (["flipgate", "oracle", "--model", m, "--cases", "cases.jsonl", "--device", "auto",
                         "--max-memory", f"cpu={a.auto_budget}", "--out", "oracle-auto.safetensors"],
                        None, ["oracle-auto.safetensors"], None),
        "stream": (["flipgate", "oracle", "--stream", "--model", m, "--cases", "cases.jsonl",
                    "--sequences", "oracle.safetensors",
                    "--out", "oracle-fp32.safetensors"],
                   one_layer_fp32 + tokens * s["hidden"] * 4, ["oracle-fp32.safetensors"], None),
        "oracle-diff": (["flipgate", "oracle-diff", "oracle.safetensors", "oracle-fp32.safetensors", "-o", "diff.json"],
                        None, ["diff.json"], None),
        "capture": (["flipgate", "capture", "int8hu", "--model", m, "--oracle", "oracle.safetensors",
                     "--out", "int8hu.safetensors"], s["bf16_total"], ["int8hu.safetensors"], None),
        "capture-stream": (["flipgate", "capture", "int8hu", "--stream", "--model", m, "--oracle", "oracle.safetensors",
                            "--out", "int8hu-stream.safetensors"],
                           s["layer_bf16"] + tokens * s["hidden"] * 2, ["int8hu-stream.safetensors"], None),
        "capture-coreai-opt": (["flipgate", "capture", "int8hu", "--mode", "coreai-opt", "--model", m, "--oracle",
                                "oracle.safetensors", "--out", "int8hu-eager.safetensors"],
                               s["bf16_total"], ["int8hu-eager.safetensors"], None),
        "gate": (["flipgate", "gate", "int8hu", "--oracle", "oracle.safetensors", "--candidate", "int8hu.safetensors",
                  "--control", "fp16-stream.safetensors", "--json", "int8hu.verdict.json"],
                 None, ["int8hu.verdict.json"], None),
        "compare": (["flipgate", "compare", "--model", m, "--cases", "cases.jsonl", "--cache", "cache",
                     "--report-dir", "reports", "--quiet"], s["bf16_total"], ["reports", "cache"], None),
        "signoff": (["flipgate", "signoff", "int8hu", "--model", m, "--cases", "cases.jsonl", "--cache", "cache",
                     "--report-dir", "signoff"], None, ["signoff"], None),
        "localise": (["flipgate", "localise", "int4lin", "--model", m, "--cases", "cases.jsonl", "--cache", "cache",
                      "--budget", "6", "--report-dir", "localise"], s["bf16_total"], ["localise"], None),
        "pytest-gate": ([sys.executable, "-m", "pytest", "--gate", "int8hu", f"--gate-model={m}",
                         "--gate-cases=cases.jsonl", "--gate-cache=cache", "-q", "-p", "no:cacheprovider"],
                        None, [], None),
    }
    for name in stages:
        if name == "gate" and not (work / "fp16-stream.safetensors").exists():
            results["capture-fp16-stream"] = run_stage(
                "capture-fp16-stream", ["flipgate", "capture", "fp16", "--stream", "--model", m, "--oracle",
                                        "oracle.safetensors", "--out", "fp16-stream.safetensors"],
                work, s["layer_bf16"] + tokens * s["hidden"] * 2, ["fp16-stream.safetensors"])
        args, must, outs, env = plan[name]
        results[name] = run_stage(name, args, work, must, outs, env)
        results[name]["positions"] = positions
        results_path.write_text(json.dumps(results, indent=1))
    if "capture" in results and "capture-stream" in results:
        from harness.trace import open_trace

        a_, b_ = open_trace(work / "int8hu.safetensors"), open_trace(work / "int8hu-stream.safetensors")
        results["stream_bit_identical"] = all(a_.case(c).logits.tobytes() == b_.case(c).logits.tobytes()
                                              for c in a_.case_ids)
    if "capture" in results and "capture-coreai-opt" in results and results["capture-coreai-opt"]["exit"] == 0:
        from harness.trace import open_trace

        a_, b_ = open_trace(work / "int8hu.safetensors"), open_trace(work / "int8hu-eager.safetensors")
        results["coreai_opt_bit_identical"] = all(a_.case(c).logits.tobytes() == b_.case(c).logits.tobytes()
                                                  for c in a_.case_ids)
    if (work / "oracle.safetensors").exists():  # the slice's margin distribution (the gate needs confident rows)
        import numpy as np

        from harness.trace import open_trace

        t = open_trace(work / "oracle.safetensors")
        margins = []
        for c in t.case_ids:
            lg = t.case(c).logits.astype(np.float64)
            p = np.exp(lg - lg.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            top = np.sort(p, axis=1)
            margins += list(top[:, -1] - top[:, -2])
        edges = [0, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
        counts, _ = np.histogram(margins, bins=edges)
        results["margin_histogram"] = {f"{a:g}-{b:g}": int(n) for a, b, n in zip(edges, edges[1:], counts)}
        results["confident_fraction"] = float(np.mean(np.array(margins) >= 0.1))
        print("margins:", results["margin_histogram"], f"confident {results['confident_fraction']:.0%}")
    results_path.write_text(json.dumps(results, indent=1))
    print("\n| stage | exit | wall | per position | peak RSS | anonymous | must hold | ratio (anon) | written |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if not isinstance(r, dict) or "stage" not in r:
            continue
        must = f"{r['must_hold'] / 2**30:.2f} GiB" if r["must_hold"] else "–"
        anon = r.get("peak_anon", 0)
        print(f"| {name} | {r['exit']} | {r['wall_s']:.0f} s | {r['wall_s'] / positions:.1f} s | "
              f"{r['peak_rss'] / 2**30:.2f} GiB | {anon / 2**30:.2f} GiB | {must} | {r['ratio'] or '–'} "
              f"({r.get('anon_ratio') or '–'}) | {r['bytes_written'] / 2**20:.1f} MiB |")
    for k in ("stream_bit_identical", "coreai_opt_bit_identical"):
        if k in results:
            print(f"{k}: {results[k]}")


if __name__ == "__main__":
    main()
