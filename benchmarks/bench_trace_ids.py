"""Opening a trace with many cases: the reader of this tree against the reader before issue 13.

    python benchmarks/bench_trace_ids.py                   # 5,000 and 60,000 cases
    python benchmarks/bench_trace_ids.py --cases 5000 20000 --repeats 1

The baseline is `harness/trace.py` as it was at --baseline (git), loaded beside the current one, so
both run in one process on the same files, alternately. Its duplicate-id check was
`{c for c in cases if cases.count(c) > 1}`: quadratic in the number of cases. The current reader
checks more (the case-id rule, token ids against the vocabulary, header depth and size), linearly.

Each file holds N cases of 8 tokens and 4 rows over a 32-token vocabulary, written once to
--workdir. Reported per N: each reader's time to open and validate it (median of --repeats; the
baseline is run once at N > 20,000, where one run takes a minute), the ratio, and the load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REV = "64e64f4"  # main when issue 13 was taken up


def load_baseline(rev: str):
    """harness/trace.py at `rev`, as module harness._trace_baseline (its relative imports resolve in harness)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:harness/trace.py"], check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("harness._trace_baseline", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "harness"
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:harness/trace.py", "exec"), module.__dict__)
    return module


def make_trace(path: Path, cases: int) -> Path:
    from harness.trace import CaseTrace, base_metadata, write_trace

    if path.exists():
        return path
    rng = np.random.default_rng(cases)
    ids = rng.integers(0, 32, size=(cases, 8))
    logits = rng.standard_normal((cases, 4, 32)).astype(np.float16)
    write_trace(path, base_metadata(runner="bench", variant="bf16", vocab_size=32),
                (CaseTrace(f"case-{i:06d}", ids[i], logits[i]) for i in range(cases)))
    return path


def timed(open_trace, path: Path) -> float:
    t0 = time.perf_counter()
    t = open_trace(path)
    elapsed = time.perf_counter() - t0
    assert len(t.case_ids) > 0
    return elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, nargs="+", default=[5_000, 60_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", default=BASELINE_REV, help="git revision of the baseline reader")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "flipgate-bench-trace-ids")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from harness.trace import open_trace

    baseline = load_baseline(args.baseline)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"baseline {args.baseline}, {os.cpu_count()} CPUs, load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| cases | baseline | this tree | speed-up | load average (1 min) |")
    print("|---|---|---|---|---|")
    for n in args.cases:
        path = make_trace(args.workdir / f"ids-{n}.safetensors", n)
        base_runs = 1 if n > 20_000 else args.repeats
        base, new = [], []
        for i in range(max(base_runs, args.repeats)):  # alternately, so both see the same load
            if i < base_runs:
                base.append(timed(baseline.open_trace, path))
            new.append(timed(open_trace, path))
        b, c = statistics.median(base), statistics.median(new)
        print(f"| {n:,} | {b:.2f} s | {c:.2f} s | {b / c:.1f}x | {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
