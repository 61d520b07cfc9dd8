"""What `pytest --gate` costs on top of the gate itself: one test item per scored position.

    python benchmarks/bench_pytest_gate.py                    # 2048 positions (128 cases x 16), vocab 4096
    python benchmarks/bench_pytest_gate.py --cases 16         # quicker

Synthetic oracle, candidate and control traces (a few flips of each class) are written once to
--workdir. Then, alternately, each a fresh `pytest -q --junitxml=...` process in an empty folder:

  baseline  one ordinary test that calls `harness.pipeline.run_gates` on the given traces and writes
            the same report folder (`harness.pytest_plugin.write_gate_report`): pytest start-up,
            the gate and its report, nothing else;
  plugin    `pytest --gate int8hu --gate-oracle=...`: the same gate and report, plus one item per
            position and bound, their terminal lines and JUnit XML test cases.

Reported: each side's wall time (median of --repeats), the ratio plugin / baseline, and the
plugin's cost per item in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_traces(workdir: Path, cases: int, rows: int, vocab: int) -> dict[str, Path]:
    from harness.trace import CaseTrace, base_metadata, write_trace

    tag = f"c{cases}-r{rows}-v{vocab}-2"  # -2: the control labelled fp16
    paths = {role: workdir / f"{role}-{tag}.safetensors" for role in ("oracle", "cand", "ctrl")}
    if all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(0)
    out: dict[str, list] = {role: [] for role in paths}
    for c in range(cases):
        ids = rng.integers(0, vocab, size=24 + rows)
        o = rng.normal(size=(rows, vocab)) * 2
        o[np.arange(rows), rng.integers(0, vocab, size=rows)] += 6  # mostly confident
        cand = o + rng.normal(size=o.shape) * 0.05
        ctrl = o + rng.normal(size=o.shape) * 0.02
        if c % 4 == 1:  # a confident flip the control shares (oracle-artifact)
            t = int(np.argsort(o[0])[-2])
            cand[0, t] = ctrl[0, t] = o[0].max() + 1
        for role, lg, dtype in (("oracle", o, np.float32), ("cand", cand, np.float16), ("ctrl", ctrl, np.float16)):
            out[role].append(CaseTrace(f"case{c:04d}", ids, lg.astype(dtype)))
    for role, path in paths.items():
        # the control is the variant the int8hu gate names (fp16): the gate refuses any other
        variant = {"oracle": "bf16", "cand": "int8hu", "ctrl": "fp16"}[role]
        write_trace(path, base_metadata(runner="bench", variant=variant, vocab_size=vocab), out[role])
    return paths


BASELINE = """
from pathlib import Path
from harness.pipeline import run_gates
from harness.pytest_plugin import write_gate_report


def test_gate():
    run = run_gates(["int8hu"], oracle={o!r}, candidate={c!r}, control={k!r}, log=lambda m: None)
    write_gate_report(run, Path({out!r}), title="bench")
    assert run.verdicts["int8hu"].summary["positions"] == {n}
"""


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{cmd[:4]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=128)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "flipgate-bench-pytest")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = make_traces(args.workdir, args.cases, args.rows, args.vocab)
    items = args.cases * args.rows + 3  # positions, min_cosine, max_defects, min_confident
    walls: dict[str, list[float]] = {"baseline": [], "plugin": []}
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cwd = {name: tmp / f"cwd-{name}" for name in walls}
            for d in cwd.values():
                d.mkdir()
            (cwd["baseline"] / "test_gate.py").write_text(BASELINE.format(
                o=str(paths["oracle"]), c=str(paths["cand"]), k=str(paths["ctrl"]), out=str(tmp / "base-reports"),
                n=args.cases * args.rows), encoding="utf-8")
            cmds = {"baseline": pytest + [f"--junitxml={tmp / 'base.xml'}"],
                    "plugin": pytest + [f"--junitxml={tmp / 'gate.xml'}", "--gate", "int8hu",
                                        f"--gate-oracle={paths['oracle']}", f"--gate-candidate={paths['cand']}",
                                        f"--gate-control={paths['ctrl']}", f"--gate-report-dir={tmp / 'reports'}"]}
            for name in (("baseline", "plugin") if i % 2 == 0 else ("plugin", "baseline")):
                walls[name].append(timed(cmds[name], cwd[name]))
    b, p = statistics.median(walls["baseline"]), statistics.median(walls["plugin"])
    print(f"{args.cases} cases x {args.rows} rows, vocab {args.vocab}: {items} items, median of {args.repeats}")
    print(f"  baseline: one test, run_gates + report  {b:7.2f} s   {[round(w, 2) for w in walls['baseline']]}")
    print(f"  plugin:   pytest --gate                 {p:7.2f} s   {[round(w, 2) for w in walls['plugin']]}")
    print(f"  ratio plugin / baseline                 {p / b:7.2f}x")
    print(f"  plugin cost per item                    {(p - b) / items * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
