"""What coreai-core's in-package CPU runtime (`coreai-python:` on Linux) is evidence of: its rounding.

    python benchmarks/bench_reference_runtime.py                 # all three parts, a few minutes on a quiet core
    python benchmarks/bench_reference_runtime.py --matmul-only   # part 1 only (seconds)
    python benchmarks/bench_reference_runtime.py --generated-only  # parts 1 and 3
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
3. **The same on a generated, wider model**: the fixture's architecture at 4x its width (hidden 512,
   MLP 2048, two layers, random weights, seed 0, head scaled so the logits spread), 96 positions of
   random tokens: where the runtime's rounding is larger, near-tie argmaxes move.

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


GENERATED = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 2,
             "layer_types": ["linear_attention", "full_attention"], "head_dim": 64, "num_attention_heads": 8,
             "num_key_value_heads": 2, "linear_key_head_dim": 64, "linear_num_key_heads": 4,
             "linear_num_value_heads": 8, "linear_value_head_dim": 64}
HEAD_SCALE = 8.0  # random init gives logits of std ~0.5 (every position a tie); this spreads them to ~4


def generated_agreement(folder: Path, sequences: int = 3, length: int = 33, near_tie: float = 0.1) -> dict:
    """Part 2 on a generated model (the fixture's architecture at 4x its width, MLP K = 2048, random
    weights, seed 0): the same comparison where the runtime's rounding is larger."""
    import importlib.util
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.candidates import resolve
    from harness.candidates.base import Sequence
    from harness.candidates.emulated import emulated_candidate, load_fp16, prepare_coreai_opt
    from harness.models import fixture_model_path
    from harness.recipe import get_recipe

    fixture = fixture_model_path()
    model_dir = folder / "generated-model"
    cfg = AutoConfig.from_pretrained(fixture)
    for k, v in GENERATED.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        lm.lm_head.weight.mul_(HEAD_SCALE)
    lm.save_pretrained(model_dir)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(fixture / f, model_dir / f)
    params = sum(p.numel() for p in lm.parameters())

    spec = importlib.util.spec_from_file_location("coreai_conftest", ROOT / "tests/harness/coreai/conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    model = load_fp16(model_dir)
    quantizer, prepared = prepare_coreai_opt(model, get_recipe("int8hu").plan(model))
    bundle = conftest.build_bundle(quantizer.finalize(prepared), model_dir, folder / "Generated-int8hu",
                                   name="generated-int8hu-bench")
    rng = np.random.default_rng(0)
    seqs = [Sequence(f"g{i}", rng.integers(0, cfg.vocab_size, size=length).astype(np.int64), length - 1)
            for i in range(sequences)]
    emulated = emulated_candidate("int8hu", model=str(model_dir))
    python = resolve(f"coreai-python:{bundle}", model=str(model_dir), audit=False)
    emu = np.concatenate([np.asarray(c.logits, dtype=np.float32) for c in emulated.run(seqs)])
    rt = np.concatenate([np.asarray(c.logits, dtype=np.float32) for c in python.run(seqs)])
    differ = emu.argmax(axis=1) != rt.argmax(axis=1)
    tie = _prob_margin(emu) < near_tie
    return {"params": params, "positions": int(len(emu)), "differ": int(differ.sum()), "near_tie": int(tie.sum()),
            "differ_near_tie": int((differ & tie).sum()), "differ_confident": int((differ & ~tie).sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matmul-only", action="store_true")
    ap.add_argument("--no-generated", action="store_true", help="skip part 3 (the generated, wider model)")
    ap.add_argument("--generated-only", action="store_true", help="part 3 only")
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
        if args.generated_only:
            g = generated_agreement(Path(tmp))
            print(f"3. generated model ({g['params'] / 1e6:.1f} M parameters): argmax differs at {g['differ']} of "
                  f"{g['positions']}: {g['differ_near_tie']} of {g['near_tie']} near-tie, {g['differ_confident']} of "
                  f"{g['positions'] - g['near_tie']} others")
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
        if not args.no_generated:
            t0 = time.perf_counter()
            g = generated_agreement(Path(tmp))
            print(f"3. generated model ({g['params'] / 1e6:.1f} M parameters, hidden 512, MLP 2048, random weights), "
                  f"int8hu bundle on the same runtime against emulated int8hu ({time.perf_counter() - t0:.0f} s):")
            print(f"   argmax differs at {g['differ']} of {g['positions']} positions: {g['differ_near_tie']} of "
                  f"{g['near_tie']} near-tie positions (emulation's prob margin < 0.1), {g['differ_confident']} of "
                  f"{g['positions'] - g['near_tie']} others")
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
