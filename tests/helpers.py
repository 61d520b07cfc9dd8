"""Helpers shared by the tests (importable as `helpers`: pyproject puts tests/ on pythonpath)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from harness.trace import CaseTrace

BF16 = np.dtype(ml_dtypes.bfloat16)


def make_case(case_id: str, n: int = 10, rows: int = 4, vocab: int = 32, seed: int = 0,
              dtype=np.float32) -> CaseTrace:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=n, dtype=np.int64)
    logits = rng.normal(size=(rows, vocab)).astype(np.float32).astype(dtype)
    return CaseTrace(case_id, ids, logits)


# --- The published Qwen3.6-27B gate result, rebuilt as small synthetic traces (gates, plugin, reports) ---
# One case of 16 scored positions, vocab 256, probabilities designed row by row (logits = log p):
#   row QWEN36_ARTIFACT_ROW: oracle margin 0.50; fp16, int8hu and int4lin all pick the oracle's runner-up;
#   row QWEN36_TIE_ROW:      oracle margin 0.04; int8hu alone picks the runner-up (a tie-flip);
#   row QWEN36_DEFECT_ROW:   oracle margin 0.69; int4lin alone picks the runner-up (a defect).
# Expected: int8hu (control fp16) passes, exact 14/16, rule 15/16, 1 oracle-artifact, 1 tie-flip, 0 defects;
# fp16 judged without a control fails on the margin-0.50 row; int4lin fails with exactly one defect.
QWEN36_ARTIFACT_ROW = 3
QWEN36_TIE_ROW = 9
QWEN36_DEFECT_ROW = 12
QWEN36_CASE = "qwen36"
QWEN36_TOKENIZER = "5e" * 32


def qwen36_oracle_logits(rows: int = 16, vocab: int = 256, seed: int = 36):
    """(prompt ids, logits [rows, vocab] float64, top1 [rows], top2 [rows]) of the synthetic oracle."""
    rng = np.random.default_rng(seed)
    design = {QWEN36_ARTIFACT_ROW: (0.70, 0.20), QWEN36_TIE_ROW: (0.40, 0.36), QWEN36_DEFECT_ROW: (0.80, 0.11)}
    logits = np.empty((rows, vocab))
    top1 = np.empty(rows, np.int64)
    top2 = np.empty(rows, np.int64)
    for r in range(rows):
        p1, p2 = design.get(r, (0.90, 0.05))
        t1, t2 = rng.choice(vocab, size=2, replace=False)
        p = np.full(vocab, (1.0 - p1 - p2) / (vocab - 2))
        p[t1], p[t2] = p1, p2
        logits[r] = np.log(p)
        top1[r], top2[r] = t1, t2
    prompt = rng.integers(0, vocab, size=12, dtype=np.int64)
    return prompt, logits, top1, top2


def make_qwen36_scenario(tmp_path) -> dict:
    """Write the oracle (bf16), fp16 control, int8hu and int4lin traces; return {name: path}."""
    from harness.trace import base_metadata, write_trace

    prompt, logits, top1, top2 = qwen36_oracle_logits()
    ids = np.concatenate([prompt, top1])  # the continuation is the oracle's own greedy output
    rng = np.random.default_rng(27)

    def flipped(rows, noise):
        c = logits + rng.uniform(-noise, noise, size=logits.shape)
        for r in rows:
            c[r, top1[r]], c[r, top2[r]] = logits[r, top2[r]], logits[r, top1[r]]
        return c

    arrays = {
        "oracle": (logits, BF16, "hf", "bf16"),
        "fp16": (flipped([QWEN36_ARTIFACT_ROW], 0.01), np.float16, "emulated", "fp16"),
        "int8hu": (flipped([QWEN36_ARTIFACT_ROW, QWEN36_TIE_ROW], 0.02), np.float16, "emulated", "int8hu"),
        "int4lin": (flipped([QWEN36_ARTIFACT_ROW, QWEN36_DEFECT_ROW], 0.03), np.float16, "emulated", "int4lin"),
    }
    paths = {}
    for name, (values, dtype, runner, variant) in arrays.items():
        meta = base_metadata(runner=runner, variant=variant, vocab_size=values.shape[1],
                             model="synthetic Qwen3.6-27B gate scenario", tokenizer_sha256=QWEN36_TOKENIZER)
        case = CaseTrace(QWEN36_CASE, ids, values.astype(np.float32).astype(dtype))
        paths[name] = write_trace(tmp_path / f"qwen36-{name}.safetensors", meta, [case])
    return paths
