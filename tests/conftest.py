"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

# One intra-op thread for torch here and in every subprocess a test starts (read at torch import):
# the fixture is tiny, and idle spinning threads made fp16 forwards 10-100x slower on a busy
# 2-core machine. Set before any test module imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from harness.trace import base_metadata, write_trace


@pytest.fixture
def trace_factory(tmp_path):
    """make(name, cases, vocab=32, **meta) -> path of a valid trace in tmp_path."""
    def make(name: str, cases, vocab: int = 32, **meta):
        md = base_metadata(runner=meta.pop("runner", "test"), variant=meta.pop("variant", "bf16"),
                           vocab_size=vocab, **meta)
        return write_trace(tmp_path / name, md, cases)
    return make
