"""`flipgate oracle` on the bundled fixture: its default thread choice against each thread count and
against a baseline tree's code (default /work/main, where the oracle ran on torch's default threads).

    python benchmarks/bench_oracle_threads.py                  # 2 runs a side, one-pass
    python benchmarks/bench_oracle_threads.py --repeats 3 --stepwise

Each run is a fresh `python -m harness.cli oracle` process (model load, greedy continuations, rows,
trace written) with OMP_NUM_THREADS unset, the sides alternating. Prints the median and minimum wall
time of each side, the ratio of the default to the best thread count (goal <= 1.2), the speed-up
over the baseline tree, the load average around each run, and checks that every side wrote
bit-identical rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_oracle(tree: Path, out: Path, threads: int | None, stepwise: bool, timeout: float) -> tuple[float, float, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, "-m", "harness.cli", "oracle", "--out", str(out), "--quiet"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if stepwise:
        cmd.append("--stepwise")
    l0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return float("inf"), l0, os.getloadavg()[0]  # reported as "> timeout": a lower bound
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{tree} {cmd[3:]}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return wall, l0, os.getloadavg()[0]


def rows_digest(path: Path) -> tuple[str, str]:
    """(sha256 over every case's ids and logits bytes, torch_threads recorded)."""
    import hashlib

    from harness.trace import open_trace

    t = open_trace(path)
    h = hashlib.sha256()
    for c in t:
        h.update(c.case_id.encode())
        h.update(c.input_ids.tobytes())
        h.update(c.logits.tobytes())
    return h.hexdigest(), t.metadata.get("torch_threads", "?")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="/work/main", help="tree of the baseline code ('' to skip)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stepwise", action="store_true", help="rows token by token (--stepwise) instead of one pass")
    ap.add_argument("--threads", default="1,2", help="thread counts to time (default 1,2)")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    counts = [int(x) for x in args.threads.split(",") if x]
    sides: dict[str, tuple[Path, int | None]] = {"default": (ROOT, None)}
    sides |= {f"--threads {n}": (ROOT, n) for n in counts}
    if args.baseline and Path(args.baseline).resolve() != ROOT:
        sides["baseline tree (torch's threads)"] = (Path(args.baseline).resolve(), None)
    work = Path(tempfile.mkdtemp(prefix="bench-oracle-threads-"))
    times: dict[str, list[float]] = {k: [] for k in sides}
    loads: list[float] = []
    digests: dict[str, tuple[str, str]] = {}
    timed_out: set[str] = set()  # sides with a run over --timeout: their figures are lower bounds
    try:
        for rep in range(args.repeats):
            order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
            for label in order:
                tree, threads = sides[label]
                out = work / f"o-{list(sides).index(label)}-{rep}.safetensors"
                wall, l0, l1 = run_oracle(tree, out, threads, args.stepwise, args.timeout)
                loads += [l0, l1]
                if wall == float("inf"):
                    times[label].append(args.timeout)
                    timed_out.add(label)
                    print(f"{label:<34} > {args.timeout:.0f} s (timed out)  load {l0:.1f} -> {l1:.1f}", flush=True)
                    continue
                times[label].append(wall)
                digests[label] = rows_digest(out)
                out.unlink()
                print(f"{label:<34} {wall:7.2f} s  load {l0:.1f} -> {l1:.1f}  torch_threads={digests[label][1]}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min((med[f"--threads {n}"], n) for n in counts)
    print(f"\n{'side':<34} {'median':>8} {'min':>8}")
    for k in sides:
        flag = "  (a run timed out: at least this)" if k in timed_out else ""
        print(f"{k:<34} {med[k]:7.2f}s {min(times[k]):7.2f}s{flag}")
    print(f"default / best thread count (--threads {best[1]}): {med['default'] / best[0]:.2f} (goal <= 1.2)")
    base = "baseline tree (torch's threads)"
    if base in med:
        print(f"speed-up of the default over the baseline tree: {med[base] / med['default']:.2f}x by median, "
              f"{min(times[base]) / min(times['default']):.2f}x by minimum")
    same = len({d for d, _ in digests.values()}) == 1
    print("rows: " + ("bit-identical on every side that finished" if same else "DIFFER between sides")
          + (f" ({', '.join(sorted(timed_out))}: timed out)" if timed_out else ""))
    print(f"mode: {'stepwise' if args.stepwise else 'one-pass'}; load average (1 min) {min(loads):.1f}-{max(loads):.1f} "
          f"on {os.cpu_count()} CPUs")
    return 0 if same else 3


if __name__ == "__main__":
    sys.exit(main())
