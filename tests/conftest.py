"""Shared fixtures."""

from __future__ import annotations

import pytest

from harness.trace import base_metadata, write_trace


@pytest.fixture
def trace_factory(tmp_path):
    """make(name, cases, vocab=32, **meta) -> path of a valid trace in tmp_path."""
    def make(name: str, cases, vocab: int = 32, **meta):
        md = base_metadata(runner=meta.pop("runner", "test"), variant=meta.pop("variant", "bf16"),
                           vocab_size=vocab, **meta)
        return write_trace(tmp_path / name, md, cases)
    return make
