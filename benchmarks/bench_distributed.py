"""Many machines: 2 ranks x 1 thread under torchrun vs 1 process x 1 thread, same job, same run.

    python benchmarks/bench_distributed.py            # figures for benchmarks/README.md
    python benchmarks/bench_distributed.py --repeats 5 --cases 44

Jobs: `flipgate oracle` (bf16, one pass) and `flipgate capture int8hu` (S=1 emulated) on the
bundled fixture model, over the bundled cases repeated to `--cases` (distinct ids), so each rank
has a few seconds of work beyond the start-up that both layouts pay. Each measurement is the
whole command's wall time, in a fresh process (torchrun's start-up and rank 0's join included),
the two layouts interleaved and repeated; medians and their ratio, with the load average. The
rows of the two layouts are checked byte for byte before any figure is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    e.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return e


def _timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return took


def _same_rows(a: Path, b: Path) -> bool:
    sys.path.insert(0, str(ROOT))
    from harness.trace import open_trace

    ta, tb = open_trace(a), open_trace(b)
    return ta.case_ids == tb.case_ids and all(
        ta.case(c).logits.tobytes() == tb.case(c).logits.tobytes() for c in ta.case_ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", type=int, default=44, help="cases in the job (the bundled 11, repeated)")
    args = ap.parse_args()
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        sys.exit("torchrun is not on PATH")
    sys.path.insert(0, str(ROOT))
    from harness.cases import bundled_cases_path

    work = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    base = [json.loads(x) for x in bundled_cases_path().read_text().splitlines() if x.strip()]
    cases = work / "cases.jsonl"
    cases.write_text("".join(json.dumps({**base[i % len(base)], "id": f"c{i:03d}"}) + "\n"
                             for i in range(args.cases)))
    cli = [sys.executable, "-m", "harness.cli"]
    # the capture's sequences: the oracle trace, made once, untimed
    subprocess.run(cli + ["oracle", "--cases", str(cases), "--out", "seq.safetensors", "--quiet"],
                   cwd=work, env=_env(), check=True)
    jobs = {
        "oracle": ["oracle", "--cases", str(cases), "--quiet"],
        "capture int8hu": ["capture", "int8hu", "--oracle", str(work / "seq.safetensors"), "--quiet"],
    }
    load = [os.getloadavg()[0]]
    results = {}
    for name, job in jobs.items():
        times: dict[str, list[float]] = {"1 process": [], "2 ranks": []}
        for i in range(args.repeats):
            times["1 process"].append(_timed(cli + job + ["--out", f"one-{i}.safetensors"], work))
            times["2 ranks"].append(_timed([torchrun, "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                                            "--master-port", str(_port()), "-m", "harness.cli", *job,
                                            "--out", f"two-{i}.safetensors"], work))
            load.append(os.getloadavg()[0])
            if not _same_rows(work / f"one-{i}.safetensors", work / f"two-{i}.safetensors"):
                sys.exit(f"{name}: the two layouts' rows differ")
        med = {k: statistics.median(v) for k, v in times.items()}
        results[name] = {"median_s": med, "all_s": times, "ratio": med["2 ranks"] / med["1 process"]}
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cases": args.cases, "repeats": args.repeats, "load_1min": [round(x, 2) for x in load],
                      "results": results}, indent=1))
    print()
    print("| job | 1 process x 1 thread | 2 ranks x 1 thread | 2 ranks / 1 process |")
    print("|---|---|---|---|")
    for name, r in results.items():
        m = r["median_s"]
        print(f"| {name} ({args.cases} cases) | {m['1 process']:.1f} s | {m['2 ranks']:.1f} s | **{r['ratio']:.2f}x** |")


if __name__ == "__main__":
    main()
