"""Can this machine convert the 27B slice to a Core AI bundle (coreai-opt + coreai-torch) for `inspect`?

    python benchmarks/bench_slice_bundle.py --model /data/slice27b --out /data/slice27b-int8hu [--limit-gib 20]

The conversion the tests run on the fixture (tests/harness/coreai/conftest.py: coreai-opt's
eager Quantizer + finalize, torch.export of the S=1 step with its states, coreai-torch to an
.aimodel), applied to the slice, in a child process whose address space is capped (`--limit-gib`,
so that it fails with a MemoryError instead of the kernel's OOM killer taking the machine), with
its peak RSS and each phase's time printed as it goes; then `flipgate inspect` on the result if
one was written. Prints what happened either way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import resource, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
import importlib.util
from pathlib import Path
t0 = time.perf_counter()
def say(what):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{time.perf_counter() - t0:7.1f} s  peak {peak:6.2f} GiB  {what}", flush=True)
from harness.candidates.emulated import load_fp16, prepare_coreai_opt
from harness.recipe import get_recipe
spec = importlib.util.spec_from_file_location("coreai_conftest", sys.argv[1] + "/tests/harness/coreai/conftest.py")
conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conftest)
model = load_fp16(sys.argv[2]); say("fp16 model loaded")
plan = get_recipe("int8hu").plan(model)
quantizer, prepared = prepare_coreai_opt(model, plan); say("coreai-opt prepared")
model = quantizer.finalize(prepared); say("coreai-opt finalized")
conftest.build_bundle(model, Path(sys.argv[2]), Path(sys.argv[3]), name="slice-int8hu"); say("bundle written")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--limit-gib", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=1800.0)
    a = ap.parse_args()
    limit = int(a.limit_gib * 2**30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(a.model), str(a.out)], env=env,
                           preexec_fn=cap, capture_output=True, text=True, timeout=a.timeout)
        out, code = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out, code = (e.stdout or b"").decode() + (e.stderr or b"").decode(), "timeout"
    took = time.perf_counter() - t0
    lines = [ln for ln in out.splitlines() if " peak " in ln or "Error" in ln][-12:]
    print(json.dumps({"exit": code, "wall_s": round(took, 1), "address_space_limit_gib": a.limit_gib,
                      "log": lines}, indent=1))
    if code == 0:
        r = subprocess.run([sys.executable, "-m", "harness.cli", "inspect", str(a.out), "--model", str(a.model),
                            "--variant", "int8hu"], env=env, capture_output=True, text=True)
        print(r.stdout[-2000:] + r.stderr[-2000:])


if __name__ == "__main__":
    main()
