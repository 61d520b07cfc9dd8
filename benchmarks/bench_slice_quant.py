"""The fast path against coreai-opt eager on the 27B's real weight widths (the slice's own weights).

    python benchmarks/bench_slice_quant.py --model /data/slice27b [--head-rows 32768]

A whole coreai-opt eager capture of the slice fake-quantizes ~4 G weights on every S=1 step (hours
on 2 cores), so the bit identity is checked where it is decided: the dequantized weights. For each
recipe's specs, the slice's layer-0 MLP (`gate_proj` 17408 x 5120, `down_proj` 5120 x 17408, blocks
of 32 along 5120 and 17408 inputs), its GatedDeltaNet `in_proj_qkv`, and the first `--head-rows`
rows of the 248320 x 5120 head (rows are independent: a block never spans two) are quantized by
`harness.quants` (the fast path) and by coreai-opt's Quantizer in eager mode; every fp16 bit must
agree. Prints one line per (recipe, module) and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _load(model: Path, name: str, rows: int | None):
    import torch
    from safetensors import safe_open

    index = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
    key = f"{name}.weight"
    with safe_open(str(model / index[key]), framework="pt") as f:
        t = f.get_slice(key)
        w = t[:rows] if rows else t[:]
    return w.to(torch.float16).contiguous()


class _One(__import__("torch").nn.Module):
    """A module holding one Linear, with the interface prepare_coreai_opt traces (input ids in)."""

    def __init__(self, weight):
        import torch

        super().__init__()
        out, inp = weight.shape
        self.embed = torch.nn.Embedding(4, inp, dtype=torch.float16)
        self.proj = torch.nn.Linear(inp, out, bias=False, dtype=torch.float16)
        with torch.no_grad():
            self.proj.weight.copy_(weight)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids):
        return self.proj(self.embed(input_ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--head-rows", type=int, default=32768)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from harness.candidates.emulated import apply_plan, prepare_coreai_opt
    from harness.recipe import get_recipe

    from transformers import Qwen3_5ForCausalLM
    from transformers.models.qwen3_5 import Qwen3_5TextConfig

    cfg = json.loads((a.model / "config.json").read_text())
    with torch.device("meta"):  # the slice's modules without weights: what the recipes plan against
        skeleton = Qwen3_5ForCausalLM(Qwen3_5TextConfig(
            **{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "dtype")}))
    modules = {"model.layers.0.mlp.gate_proj": None, "model.layers.0.mlp.down_proj": None,
               "model.layers.0.linear_attn.in_proj_qkv": None, "lm_head": a.head_rows}
    failed = 0
    for variant in ("int8hu", "int4lin", "mixed"):
        plan = get_recipe(variant).plan(skeleton)
        for name, rows in modules.items():
            w = _load(a.model, name, rows)
            probe = _One(w)
            spec = plan[name]
            if spec is None:
                print(f"{variant:8} {name:42} kept fp16 by the recipe")
                continue
            t0 = time.perf_counter()
            fast = _One(w)
            apply_plan(fast, {"proj": spec}, keep_codes=False)
            t_fast = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, ref = prepare_coreai_opt(probe, {"proj": spec})
            with torch.no_grad():
                eager = ref.get_submodule("proj").weight.detach().numpy()
            t_eager = time.perf_counter() - t0
            same = np.array_equal(fast.proj.weight.detach().numpy().view(np.uint16), eager.view(np.uint16))
            failed += not same
            print(f"{variant:8} {name:42} {tuple(w.shape)} {spec.dtype} {spec.qscheme:24} "
                  f"{'bit-identical' if same else 'DIFFERS'} (fast {t_fast:.1f} s, coreai-opt {t_eager:.1f} s)",
                  flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
