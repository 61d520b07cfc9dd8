"""`flipgate compare` on the bundled fixture, cold (empty trace cache) and warm (every trace cached),
this tree against a baseline tree (default: /work/main, the landed code), side by side in one run.

    python benchmarks/bench_compare.py                       # 2 cold + 5 warm runs a side
    python benchmarks/bench_compare.py --cold 1 --warm 3 --baseline /path/to/other/checkout
    python benchmarks/bench_compare.py --cache .flipgate --warm 5  # warm only, on a filled cache

Each run is a fresh `python -m harness.cli compare` process with PYTHONPATH set to the tree, in an
empty folder, OMP_NUM_THREADS unset (the user's environment, not the tests'), the two sides
alternating. A side's warm runs reuse the cache its own last cold run filled. Prints wall times,
medians, minima and their ratios, the load average around each run, and checks that both sides
reach the same verdicts (gate, passed, summary) from the same cases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load() -> float:
    return os.getloadavg()[0]


def run_compare(tree: Path, cache: Path, reports: Path, timeout: float) -> tuple[float, float, float, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(PYTHONPATH=str(tree), FLIPGATE_CACHE=str(cache))
    before = _load()
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "compare", "--report-dir", str(reports)],
                          cwd=reports, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise SystemExit(f"{tree}: compare exited {done.returncode}\n{done.stderr[-3000:]}")
    return wall, before, _load(), f"exit {done.returncode}; stderr tail:\n{done.stderr[-2000:]}"


def verdict_summary(reports: Path, log: str) -> list:
    """(gate, passed, summary without notes) per gate of the newest comparison in `reports`."""
    folders = list(reports.glob("compare-*"))
    if not folders:
        raise SystemExit(f"{reports}: the run wrote no comparison folder ({log})")
    newest = max(folders, key=lambda p: p.stat().st_mtime)
    data = json.loads((newest / "comparison.json").read_text(encoding="utf-8"))
    verdicts = data if isinstance(data, list) else data.get("verdicts", data)
    out = []
    for v in verdicts:
        summary = {k: v["summary"][k] for k in sorted(v["summary"]) if k not in ("notes",)}
        out.append((v["gate"], v["passed"], summary))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="/work/main", help="tree of the baseline code (default: /work/main)")
    ap.add_argument("--cold", type=int, default=2, help="cold runs a side (default 2)")
    ap.add_argument("--warm", type=int, default=5, help="warm runs a side (default 5)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run before giving up")
    ap.add_argument("--cache", metavar="DIR", help="warm runs only, both sides on this filled trace cache "
                    "(the two trees key traces alike); no cold runs")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = ap.parse_args()
    sides = {"baseline": Path(args.baseline).resolve(), "this tree": ROOT}
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    results: dict = {s: {"cold": [], "warm": [], "load": []} for s in sides}
    verdicts = {}
    try:
        caches = {s: work / f"cache-{i}" for i, s in enumerate(sides)}
        if args.cache:
            caches = {s: Path(args.cache).resolve() for s in sides}
            args.cold = 0
        for phase, n in (("cold", args.cold), ("warm", args.warm)):
            for rep in range(n):
                order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
                for side in order:
                    if phase == "cold":
                        shutil.rmtree(caches[side], ignore_errors=True)
                    reports = work / f"reports-{side.replace(' ', '-')}"
                    reports.mkdir(exist_ok=True)
                    wall, l0, l1, log = run_compare(sides[side], caches[side], reports, args.timeout)
                    results[side][phase].append(wall)
                    results[side]["load"].append((l0, l1))
                    print(f"{phase} {side:<9} {wall:7.2f} s  load {l0:.1f} -> {l1:.1f}", flush=True)
                    verdicts[side] = verdict_summary(reports, log)
        if verdicts["baseline"] != verdicts["this tree"]:
            print("VERDICTS DIFFER between the two sides", file=sys.stderr)
            return 3
        print("verdicts: identical on both sides "
              f"({', '.join(g + (' PASS' if p else ' FAIL') for g, p, _ in verdicts['this tree'])})")
        for phase in ("cold", "warm"):
            b, t = results["baseline"][phase], results["this tree"][phase]
            if not b:
                continue
            mb, mt = statistics.median(b), statistics.median(t)
            print(f"{phase}: baseline median {mb:.2f} s (min {min(b):.2f}), this tree median {mt:.2f} s "
                  f"(min {min(t):.2f}); speed-up {mb / mt:.2f}x by median, {min(b) / min(t):.2f}x by minimum")
        loads = [x for s in results.values() for pair in s["load"] for x in pair]
        print(f"load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
