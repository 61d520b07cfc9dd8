"""Flip localisation on the fixture: trials per second and total time, against the naive cost.

    python benchmarks/bench_localise.py [--gate int4lin] [--safe fp16] [--cache DIR]

In one process, on the bundled fixture model and case set (the oracle, candidate and control
traces come from the pipeline's cache, computed first if missing and not timed):

  naive      one full capture of the candidate recipe over every case (S=1, every row) per trial:
             what localising by re-running the gate for each restoration would cost. Measured
             (median of 2 captures) and multiplied by the number of restorations tried.
  no prefix  `flipgate localise` with the layer-prefix replay off: only the defect cases, only up
             to the last defect, the head only at defect rows, every answer kept.
  localise   the same with the layer prefix replayed from earlier trials (the default).

Both localisations must find the same culprits (the replay is bit-identical). The suggested
recipe's verification (full captures, then defects it leaves localised on top of it) runs in both
and is timed apart: it is not a trial.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gate", default="int4lin")
    ap.add_argument("--safe", default="fp16")
    ap.add_argument("--cache", default=os.environ.get("FLIPGATE_CACHE") or "/tmp/flipgate-bench-localise")
    args = ap.parse_args()

    from gates.policy import get_gate
    from harness.candidates.base import sequences_from_trace
    from harness.candidates.emulated import EmulatedCandidate
    from harness.localise import localise_traces, torch_threads
    from harness.models import read_config
    from harness.pipeline import _decoder, workspace
    from harness.recipe import get_recipe
    from harness.trace import open_trace

    policy = get_gate(args.gate)
    ws = workspace(cache_dir=args.cache, quiet=False)
    hidden = read_config(ws.model_dir).get("hidden_size")
    with torch_threads(None, hidden):
        oracle_path = ws.oracle_trace()
        cand_path = ws.candidate_trace(policy.candidate, oracle_path)
        ctrl_path = ws.candidate_trace(policy.control, oracle_path) if policy.control else None
        oracle = open_trace(oracle_path)
        sequences = sequences_from_trace(oracle)
        recipe, safe = get_recipe(policy.candidate), get_recipe(args.safe)

        captures = []
        for _ in range(2):
            cand = EmulatedCandidate(recipe, ws.model_dir)
            t0 = time.perf_counter()
            for _case in cand.run(sequences):
                pass
            captures.append(time.perf_counter() - t0)
        capture = statistics.median(captures)

        runs = {}
        for label, reuse in (("no prefix", False), ("localise", True)):
            t0 = time.perf_counter()
            loc = localise_traces(policy, oracle=oracle, candidate_trace=cand_path, control=ctrl_path,
                                  candidate=recipe, safe=safe, model_dir=ws.model_dir, verify=True,
                                  prefix_reuse=reuse, decode=_decoder(ws.model_dir))
            runs[label] = (loc, time.perf_counter() - t0)

    base, full = runs["no prefix"][0], runs["localise"][0]
    same = ([[g.label for g in p.culprits] for p in base.positions]
            == [[g.label for g in p.culprits] for p in full.positions] and base.stats["trials"] == full.stats["trials"])
    st = full.stats
    trials = st["trials"]
    naive = trials * capture
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; gate {args.gate}, safe {args.safe}; "
          f"{len(sequences)} cases, {sum(s.rows for s in sequences)} scored rows")
    print(f"one full capture of {recipe.name}: {capture:.2f} s (median of {', '.join(f'{c:.2f}' for c in captures)})")
    print(f"defects: {full.baseline['defects']} from the gate, {len(full.positions)} localised in all "
          f"(verification rounds: {len(full.verifications)}); culprits identical with and without the prefix: {same}")
    print(f"suggested: {full.suggested_name}: {full.verification['one_line'] if full.verification else 'not verified'}")
    print()
    print("| run | restorations tried | case runs | layer-steps computed | search time | trials/s | case runs/s "
          "| ratio to naive |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| naive: one full capture per trial | {trials} | {trials * len(sequences)} | "
          f"{trials * 8 * sum(len(s.input_ids) - 1 for s in sequences)} | {naive:.1f} s (measured {capture:.2f} s × "
          f"{trials}) | {trials / naive:.3f} | {trials * len(sequences) / naive:.2f} | 1.00 |")
    for label in ("no prefix", "localise"):
        loc, wall = runs[label]
        s = loc.stats
        n = s["trials"]
        secs = s["search_seconds"]
        print(f"| {label} | {n} | {s['case_runs']} | {s['layer_steps']} of {s['layer_steps_without_prefix']} | "
              f"{secs:.1f} s | {n / secs:.3f} | {s['case_runs'] / secs:.2f} | **{n * capture / secs:.1f}×** |")
    print(f"\nverification of the suggested recipe ({len(full.verifications)} full capture(s) and gates): "
          f"{st['verify_seconds']:.1f} s; whole `localise` run: {runs['localise'][1]:.1f} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
