"""What coreai-core's in-package CPU runtime (`coreai-python:` on Linux) is evidence of: its rounding.

    python benchmarks/bench_reference_runtime.py                 # both parts, about 3-5 minutes on 1 core
    python benchmarks/bench_reference_runtime.py --matmul-only   # part 1 only (about a minute)
    python benchmarks/bench_reference_runtime.py --speed-out speed.json   # + a flipgate.speed/1 record

1. **fp16 matmul error against the width K.** One fp16 linear layer y = W x (64 outputs, K inputs,
   x and W uniform in [0, 1) so no output is near zero and relative error means something) converted
   by coreai-torch and run by coreai-core's runtime, against torch on the same fp16 operands: fp16
   matmul (`x.half() @ W.half().T`, CPU) and fp32 matmul; all measured against the float64 product.
   Reported: the worst relative error |y - ref| / |ref| over the outputs, per K.
2. **Argmax against emulation on a model.** The bundled fixture's int8hu variant built as a real
   LanguageBundle (coreai-opt finalize -> coreai-torch) and stepped S=1 by the `coreai-python`
   candidate, against the emulated int8hu candidate (the same recipe in torch, fp16, S=1), over the
   fixture's cases teacher-forced on the bf16 oracle's continuation. Reported: positions where the
   two argmaxes differ, all positions and near-tie positions (emulation's own top-1 minus top-2
   probability below 0.1), and the runtime's decode speed (S=1 steps per second) beside the
   emulation's, in the same run, with the machine load.

The runtime's rows say nothing about the device's numerics (the OS framework specializes the asset
for CPU, GPU or Neural Engine with its own kernels); the figures say how far a Linux CI run of the
real asset can drift from the emulation, so that a card labels it as what it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDTHS = (256, 512, 1024, 2048, 4096)
OUTPUTS = 64


def _run_asset(asset: Path, inputs: dict) -> dict:
    from coreai.authoring.asset import AIModelAsset
    from coreai.runtime import NDArray

    async def go():
        async with AIModelAsset.load(asset).executable() as model:
            fn = model.load_function("main")
            out = await fn({k: NDArray(v) for k, v in inputs.items()})
            return {k: np.array(out[k].numpy()) for k in fn.desc.output_names}

    return asyncio.run(go())


def matmul_errors(folder: Path, seed: int = 0) -> list[dict]:
    import coreai_torch
    import torch

    rng = np.random.default_rng(seed)
    rows = []
    for k in WIDTHS:
        w = rng.random((OUTPUTS, k)).astype(np.float16)
        x = rng.random((1, k)).astype(np.float16)
        lin = torch.nn.Linear(k, OUTPUTS, bias=False).half()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
        program = torch.export.export(lin, (torch.from_numpy(x),)).run_decompositions(coreai_torch.get_decomp_table())
        conv = coreai_torch.TorchConverter(mode=coreai_torch.TorchConverter.Mode.RELEASE)
        conv.add_exported_program(program, input_names=["x"], output_names=["y"])
        asset = folder / f"matmul-{k}.aimodel"
        conv.to_coreai().save_asset(asset)
        y_rt = _run_asset(asset, {"x": x})["y"].astype(np.float64).reshape(-1)
        ref = (x.astype(np.float64) @ w.astype(np.float64).T).reshape(-1)
        y16 = (torch.from_numpy(x) @ torch.from_numpy(w).T).double().numpy().reshape(-1)
        y32 = (torch.from_numpy(x).float() @ torch.from_numpy(w).float().T).double().numpy().reshape(-1)

        def worst(y):
            return float(np.max(np.abs(y - ref) / np.abs(ref)))

        rows.append({"K": k, "coreai_runtime": worst(y_rt), "torch_fp16": worst(y16), "torch_fp32": worst(y32)})
    return rows


def _prob_margin(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def argmax_agreement(folder: Path, near_tie: float = 0.1, cases: int | None = None) -> dict:
    import importlib.util

    from harness.candidates import resolve
    from harness.candidates.base import sequences_from_trace
    from harness.candidates.emulated import emulated_candidate
    from harness.models import fixture_model_path
    from harness.trace import open_trace
    from oracles.hf import run_oracle

    spec = importlib.util.spec_from_file_location("bench_coreai", ROOT / "benchmarks/bench_coreai.py")
    bench_coreai = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_coreai)
    t0 = time.perf_counter()
    bundle = bench_coreai.build_fixture_bundle(folder)
    built = time.perf_counter() - t0
    oracle = open_trace(run_oracle(out=folder / "oracle.safetensors", quiet=True))
    seqs = sequences_from_trace(oracle)[:cases]
    steps = sum(len(s.input_ids) - 1 for s in seqs)
    model = fixture_model_path()
    emulated = emulated_candidate("int8hu", model=str(model))
    python = resolve(f"coreai-python:{bundle}", model=str(model), audit=False)
    list(emulated.run(seqs[:1]))  # load and quantize outside the timing
    timings, rows = {}, {}
    for name, cand in (("emulated", emulated), ("coreai-python", python)):
        t = time.perf_counter()
        rows[name] = {c.case_id: np.asarray(c.logits, dtype=np.float32) for c in cand.run(seqs)}
        timings[name] = time.perf_counter() - t
    emu = np.concatenate([rows["emulated"][s.case_id] for s in seqs])
    rt = np.concatenate([rows["coreai-python"][s.case_id] for s in seqs])
    differ = emu.argmax(axis=1) != rt.argmax(axis=1)
    tie = _prob_margin(emu) < near_tie
    return {"built_s": built, "positions": int(len(emu)), "differ": int(differ.sum()),
            "near_tie": int(tie.sum()), "differ_near_tie": int((differ & tie).sum()),
            "differ_confident": int((differ & ~tie).sum()), "steps": steps,
            "emulated_s": timings["emulated"], "coreai_python_s": timings["coreai-python"],
            "runtime": python.metadata()["coreai_runtime"], "bundle": str(bundle)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matmul-only", action="store_true")
    ap.add_argument("--cases", type=int, help="part 2 on the first N fixture cases only (default: all 11)")
    ap.add_argument("--speed-out", type=Path, help="write the runtime's decode speed as a flipgate.speed/1 record")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        print("1. worst relative error of y = W x (fp16 operands, uniform [0,1)), against float64:")
        print(f"   {'K':>5}  {'coreai-core runtime':>20}  {'torch fp16':>11}  {'torch fp32':>11}  runtime/torch fp16")
        for r in matmul_errors(Path(tmp)):
            print(f"   {r['K']:>5}  {r['coreai_runtime']:>20.2e}  {r['torch_fp16']:>11.2e}  {r['torch_fp32']:>11.2e}  "
                  f"{r['coreai_runtime'] / r['torch_fp16']:.0f}x")
        print(f"   ({time.perf_counter() - t0:.0f} s)")
        if args.matmul_only:
            return 0
        a = argmax_agreement(Path(tmp), cases=args.cases)
        print(f"2. fixture int8hu bundle (built in {a['built_s']:.0f} s) on {a['runtime']}, against emulated int8hu:")
        print(f"   argmax differs at {a['differ']} of {a['positions']} scored positions: {a['differ_near_tie']} of "
              f"{a['near_tie']} near-tie positions (emulation's prob margin < 0.1), {a['differ_confident']} of "
              f"{a['positions'] - a['near_tie']} others")
        rt_tok_s = a["steps"] / a["coreai_python_s"]
        emu_tok_s = a["steps"] / a["emulated_s"]
        print(f"   S=1 decode over {a['steps']} steps: coreai-python {rt_tok_s:.1f} tok/s, emulated {emu_tok_s:.1f} tok/s "
              f"(ratio {emu_tok_s / rt_tok_s:.1f}x)")
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        if args.speed_out:
            from harness.fileio import write_text_atomic

            write_text_atomic(args.speed_out, json.dumps({
                "schema": "flipgate.speed/1", "runner": "coreai-python", "coreai_runtime": a["runtime"],
                "model": "fixture int8hu (bench_reference_runtime.py)", "decode_tok_s": round(rt_tok_s, 3),
                "steps": a["steps"], "seconds": round(a["coreai_python_s"], 3)}, indent=2) + "\n")
            print(f"wrote {args.speed_out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
