"""`flipgate import`: peak memory against the number of dumps, streamed writer vs holding every case.

    python benchmarks/bench_import.py                     # 4 and 32 dumps at width 248320
    python benchmarks/bench_import.py --counts 4 16 64 --rows 16

llm-runner `--save-logits` dumps (float16 rows, width 248320: the 27B's vocabulary) and their
oracle trace are written to a temporary folder. Each import runs in a fresh subprocess whose peak
RSS (VmHWM) is reset after the imports, so the figure is the import's own high-water mark above the
interpreter. Streamed = `import_dumps` (each case written as it is read, `TraceWriter`); baseline =
the pre-streaming import: every dump read and checked into a list, then `write_trace`. Both write
the same trace (compared byte for byte, created_at aside).
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

WIDTH = 248320

CHILD = """
import json, sys, time
import numpy as np
from harness.coreai import dumps as D
from harness.coreai.logits_file import read_logits_file
from harness.trace import CaseTrace, base_metadata, write_trace
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
mode, files, oracle, out = json.loads(sys.argv[1])
base = rss("VmRSS:")
t0 = time.perf_counter()
if mode == "streamed":
    D.import_dumps(files, None, out, oracle=oracle, variant="int8hu")
else:  # the import as it was: every case held, then one write
    src = D.SequenceSource(oracle=oracle)
    traces = []
    for path in files:
        from pathlib import Path
        cid = D.case_for_file(Path(path), src.case_ids)
        dump = read_logits_file(path, vocab_size=src.vocab_size)
        ids, logits = D.dump_rows(dump, src.get(cid), src.vocab_size)
        traces.append(CaseTrace(cid, ids, np.array(logits)))
    write_trace(out, base_metadata(runner="import", variant="int8hu", vocab_size=src.vocab_size), traces)
print(json.dumps({"peak_above_base": rss("VmHWM:") - base, "wall_s": time.perf_counter() - t0}))
"""


def make(folder: Path, n: int, tokens: int, rows: int) -> tuple[list[str], Path]:
    import numpy as np

    from harness.coreai.logits_file import write_logits_file
    from harness.trace import CaseTrace, base_metadata, write_trace

    rng = np.random.default_rng(n)
    cases, files = [], []
    for i in range(n):
        ids = rng.integers(0, WIDTH, size=tokens).astype(np.int64)
        lg = rng.normal(size=(tokens - 1, WIDTH)).astype(np.float16)
        files.append(str(write_logits_file(folder / f"case{i:04d}.logits.json", ids[1:].tolist(), lg)))
        cases.append(CaseTrace(f"case{i:04d}", ids, lg[-rows:]))
    oracle = write_trace(folder / "oracle.safetensors", base_metadata(runner="hf", variant="bf16", vocab_size=WIDTH),
                         cases)
    return files, oracle


def run(mode: str, files, oracle, out) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps([mode, files, str(oracle), str(out)])],
                         capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"{mode} import failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[4, 32], help="numbers of dumps (default 4 32)")
    p.add_argument("--rows", type=int, default=8, help="scored rows per case (default 8: 3.8 MiB of float16)")
    p.add_argument("--prompt", type=int, default=4, help="prompt tokens per case (default 4)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flipgate-bench-import-"))
    load = [Path("/proc/loadavg").read_text().split()[0]]
    rows = []
    try:
        for n in args.counts:
            folder = tmp / f"n{n}"
            folder.mkdir()
            t0 = time.perf_counter()
            files, oracle = make(folder, n, args.prompt + args.rows, args.rows)
            disk = sum(Path(f).stat().st_size for f in files)
            print(f"{n} dumps, {disk / 2**20:.0f} MiB of JSON ({time.perf_counter() - t0:.0f}s to write)", flush=True)
            got = {mode: run(mode, files, oracle, folder / f"{mode}.safetensors") for mode in ("held", "streamed")}
            from harness.trace import open_trace

            a, b = open_trace(folder / "held.safetensors"), open_trace(folder / "streamed.safetensors")
            same = a.case_ids == b.case_ids and all(
                (a.case(c).logits.view("u2") == b.case(c).logits.view("u2")).all() for c in a.case_ids)
            rows.append((n, got, same))
            shutil.rmtree(folder)
            load.append(Path("/proc/loadavg").read_text().split()[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    case_mib = args.rows * WIDTH * 2 / 2**20
    print(f"\nwidth {WIDTH}, {args.rows} scored rows a case ({case_mib:.1f} MiB float16), load average {', '.join(load)}")
    print(f"{'dumps':>6s} {'held: peak above base':>22s} {'streamed: peak above base':>26s} {'ratio':>6s} "
          f"{'held wall':>10s} {'streamed wall':>14s} {'same rows':>10s}")
    for n, got, same in rows:
        h, s = got["held"], got["streamed"]
        print(f"{n:6d} {h['peak_above_base'] / 2**20:19.0f} MiB {s['peak_above_base'] / 2**20:23.0f} MiB "
              f"{s['peak_above_base'] / h['peak_above_base']:6.3f} {h['wall_s']:9.1f}s {s['wall_s']:13.1f}s {str(same):>10s}")
    first, last = rows[0], rows[-1]
    grow = (last[1]["streamed"]["peak_above_base"] - first[1]["streamed"]["peak_above_base"]) / 2**20
    grow_held = (last[1]["held"]["peak_above_base"] - first[1]["held"]["peak_above_base"]) / 2**20
    print(f"from {first[0]} to {last[0]} dumps: streamed peak +{grow:.1f} MiB, held +{grow_held:.1f} MiB")
    return 0 if all(same for _, _, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
