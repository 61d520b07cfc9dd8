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
