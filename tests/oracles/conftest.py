"""Shared, session-scoped oracle fixtures: the bundled model loads once, the default trace is made once."""

from __future__ import annotations

import contextlib
import json

import pytest

from harness.models import fixture_model_path


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread. The fixture's matrices are tiny, and on a shared 2-core machine
    OpenMP threads that spin-wait for a busy core make a forward pass 10-20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def single_thread():
    """`one_thread` for fixtures of a wider scope than the autouse one above."""
    return one_thread


@pytest.fixture(scope="session")
def fixture_model():
    path = fixture_model_path()
    if not (path / "model.safetensors").is_file():
        pytest.fail(f"the bundled fixture model is missing: {path} (scripts/make_fixture.py train)")
    return path


@pytest.fixture(scope="session")
def oracle_bf16(fixture_model):
    from oracles.hf import HFOracle

    return HFOracle(dtype="bfloat16")


@pytest.fixture(scope="session")
def oracle_fp32(fixture_model):
    from oracles.hf import HFOracle

    return HFOracle(dtype="float32")


@pytest.fixture(scope="session")
def default_trace(fixture_model, tmp_path_factory):
    """`run_oracle` with every default: the bundled model and case set, bf16, CPU, greedy continuations."""
    from oracles.hf import run_oracle

    out = tmp_path_factory.mktemp("oracle") / "oracle.safetensors"
    with one_thread():
        return run_oracle(out=out, quiet=True)


@pytest.fixture(scope="session")
def given_cases(default_trace, tmp_path_factory):
    """The bundled cases with the oracle's continuations written in: runs on it skip the greedy step."""
    from harness.trace import open_trace

    t = open_trace(default_trace)
    path = tmp_path_factory.mktemp("cases") / "given.jsonl"
    lines = []
    for c in t:
        ids = [int(x) for x in c.input_ids]
        lines.append(json.dumps({"id": c.case_id, "prompt_ids": ids[:c.prompt_len],
                                 "continuation_ids": ids[c.prompt_len:]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
