"""Gate engine throughput at the real head width, against a plain numpy pass over the same bytes.

    python benchmarks/bench_gate.py                      # vocab 248320, 1024 positions, fp16 traces
    python benchmarks/bench_gate.py --positions 256      # quicker

An oracle, a control and three candidates, stored as float16, are written once to --workdir (about
0.5 GB each at the default size; reused by later runs). Then, alternately, each in a fresh process:

  baseline  read every case's logits of the five traces with the trace reader and sum them with numpy
            (`logits.sum()`: one plain pass over the same bytes, nothing else);
  engine    `gates.engine.evaluate_many`: the three gates (candidate + control + oracle) in one
            streamed pass, float64 throughout, verdicts built.

  read      a plain page-cache read of the same bytes (each trace file read whole in 8 MiB chunks,
            nothing computed): the physical limit of any engine on this machine;
  engine    also with a baseline tree's code (--baseline-tree, default /work/main: the engine as landed,
            threads taking single rows), side by side in the same run.

Reported: each side's wall time (median and minimum of --repeats), the engine's throughput in GB/s of
logits read, the ratio baseline time / engine time (goal >= 0.6 by default), and peak memory (goal
<= 512 MB whatever the number of positions): the parent's peak RSS and, sampled every 0.1 s, the
whole process tree's proportional set size (worker processes share the parent's pages). The page
cache is warmed first, so every side reads from memory, not disk. OMP_NUM_THREADS is unset in the
runs: the user's environment, not the tests'.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROLES = ("oracle", "control", "cand-a", "cand-b", "cand-c")


def _paths(workdir: Path, positions: int, rows: int, vocab: int) -> dict[str, Path]:
    tag = f"v{vocab}-p{positions}-r{rows}"
    return {role: workdir / f"{role}-{tag}.safetensors" for role in ROLES}


def make_traces(workdir: Path, positions: int, rows: int, vocab: int, seed: int = 0) -> dict[str, Path]:
    from harness.trace import CaseTrace, base_metadata, write_trace

    paths = _paths(workdir, positions, rows, vocab)
    if all(p.exists() for p in paths.values()):
        return paths
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = positions // rows
    # realistic-looking logits: a broad body, a confident top-1 most of the time
    noise_pool = rng.standard_normal((rows + 64, vocab), dtype=np.float32)
    oracle = []
    for c in range(cases):
        x = rng.standard_normal((rows, vocab), dtype=np.float32) * 2.5
        top = rng.integers(0, vocab, size=rows)
        x[np.arange(rows), top] += rng.uniform(6, 16, size=rows).astype(np.float32)
        ids = np.concatenate([rng.integers(0, vocab, size=32), top]).astype(np.int64)
        oracle.append(CaseTrace(f"case{c:04d}", ids, x.astype(np.float16)))
    scales = {"oracle": 0.0, "control": 0.01, "cand-a": 0.02, "cand-b": 0.05, "cand-c": 0.2}
    for role, path in paths.items():
        out = []
        for i, case in enumerate(oracle):
            off = (i * 7) % 64
            x = case.logits.astype(np.float32) + scales[role] * noise_pool[off:off + rows]
            out.append(CaseTrace(case.case_id, case.input_ids, x.astype(np.float16)))
        meta = base_metadata(runner="bench", variant=role, vocab_size=vocab, tokenizer_sha256="be" * 32)
        write_trace(path, meta, out)
        print(f"  wrote {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    return paths


def _logit_bytes(paths: dict[str, Path]) -> int:
    from harness.trace import open_trace

    total = 0
    for p in paths.values():
        t = open_trace(p)
        total += sum(t.rows(c) for c in t.case_ids) * t.vocab_size * 2
    return total


def _peak_rss() -> int:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across fork+exec, so a child would report the trace generator's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _tree_pss_sampler():
    """Start sampling this process tree's PSS (psutil); returns a function giving the peak seen."""
    import threading

    try:
        import psutil
    except ImportError:
        return lambda: None
    me = psutil.Process()
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except (psutil.Error, OSError):
                    pass
            peak[0] = max(peak[0], total)
            stop.wait(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()

    def done():
        stop.set()
        t.join()
        return peak[0]
    return done


def worker(mode: str, paths: dict[str, Path], workers: int | None = None) -> dict:
    from harness.trace import open_trace

    pss_peak = _tree_pss_sampler()
    t0 = time.perf_counter()
    if mode == "read":
        n = 0
        buf = bytearray(8 << 20)
        for p in paths.values():
            with open(p, "rb", buffering=0) as f:
                while True:
                    got = f.readinto(buf)
                    if not got:
                        break
                    n += got
        extra = {"bytes": n}
    elif mode == "baseline":
        acc = 0.0
        for p in paths.values():
            t = open_trace(p)
            for cid in t.case_ids:
                acc += float(t.case(cid).logits.sum())
        extra = {"checksum": acc}
    else:
        from gates.engine import GateJob, evaluate_many
        from gates.policy import GatePolicy

        oracle = open_trace(paths["oracle"])
        control = open_trace(paths["control"])
        jobs = [GateJob(GatePolicy(name=r, candidate=r, control="control", min_cosine=0.9), open_trace(paths[r]),
                        control) for r in ("cand-a", "cand-b", "cand-c")]
        verdicts = evaluate_many(oracle, jobs, workers=workers)
        for v in verdicts:
            v.to_json()
        import hashlib

        judged = json.dumps([[v.positions, v.summary] for v in verdicts], sort_keys=True, default=str)
        extra = {"verdicts": [v.one_line() for v in verdicts],
                 "judged_sha256": hashlib.sha256(judged.encode()).hexdigest()}
    wall = time.perf_counter() - t0
    peak = _peak_rss()
    return {"mode": mode, "wall_s": wall, "peak_bytes": peak, "tree_pss_peak_bytes": pss_peak(),
            "load": os.getloadavg()[0], **extra}


def _spawn(mode: str, paths: dict[str, Path], workers: int | None = None, tree: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--paths", json.dumps({k: str(v) for k, v in paths.items()})]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    root = tree or Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env["PYTHONPATH"] = str(root)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=16, help="scored rows per case")
    ap.add_argument("--vocab", type=int, default=248320)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp") + "/flipgate-bench-gate")
    ap.add_argument("--workers", type=int, help="engine workers (default: the engine's own choice)")
    ap.add_argument("--baseline-tree", default="/work/main",
                    help="also run this tree's engine (default /work/main; '' to skip)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        paths = {k: Path(v) for k, v in json.loads(args.paths).items()}
        print(json.dumps(worker(args.worker, paths, args.workers)))
        return 0

    print(f"traces: vocab {args.vocab}, {args.positions} positions ({args.rows} rows a case), float16, "
          f"oracle + control + 3 candidates in {args.workdir}", flush=True)
    paths = make_traces(Path(args.workdir), args.positions, args.rows, args.vocab)
    nbytes = _logit_bytes(paths)
    _spawn("baseline", paths)  # warm the page cache
    from gates.engine import default_workers

    n_default = args.workers or default_workers(True, nbytes)
    here = Path(__file__).resolve().parents[1]
    sides = {"baseline (read + sum)": ("baseline", None, None), "page-cache read": ("read", None, None),
             "engine, in-process (1)": ("engine", 1, None),
             f"engine, default ({n_default} processes)": ("engine", args.workers, None)}
    if args.baseline_tree and Path(args.baseline_tree).resolve() != here:
        sides |= {"main: engine, 1 thread": ("engine", 1, Path(args.baseline_tree)),
                  "main: engine, default threads": ("engine", None, Path(args.baseline_tree))}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for rep in range(args.repeats):
        order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
        for label in order:
            mode, workers, tree = sides[label]
            runs[label].append(_spawn(mode, paths, workers, tree))
            print(f"  {label}: {runs[label][-1]['wall_s']:.2f}s (load {runs[label][-1]['load']:.1f})", flush=True)
    wall = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
    peak = {k: max(r["peak_bytes"] for r in v) for k, v in runs.items()}
    pss = {k: max((r.get("tree_pss_peak_bytes") or 0) for r in v) for k, v in runs.items()}
    base, read = wall["baseline (read + sum)"], wall["page-cache read"]
    loads = [r["load"] for v in runs.values() for r in v]
    print(f"logits read per pass: {nbytes / 1e9:.3f} GB (5 traces, float16); median (min) of {args.repeats} runs; "
          f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    print(f"{'':36s}{'wall':>9s}{'min':>9s}{'GB/s':>8s}{'x floor':>8s}{'x read':>8s}{'peak RSS':>10s}{'tree PSS':>10s}")
    for k in runs:
        print(f"{k:36s}{wall[k]:8.2f}s{best[k]:8.2f}s{nbytes / wall[k] / 1e9:8.3f}{base / wall[k]:8.2f}"
              f"{read / wall[k]:8.3f}{peak[k] / 2**20:7.0f} MB{pss[k] / 2**20:7.0f} MB")
    print("x floor = baseline (read + sum) time / time (goal >= 0.6 by default); x read = page-cache read time / "
          "time; engine peak memory goal <= 512 MB")
    engines = [k for k in sides if sides[k][0] == "engine"]
    digests = {r["judged_sha256"] for k in engines for r in runs[k]}
    print("verdicts (positions + summary, sha256): " + ("identical on every engine side and run" if len(digests) == 1
                                                        else "DIFFER between sides"))
    for line in runs[engines[0]][-1]["verdicts"]:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
