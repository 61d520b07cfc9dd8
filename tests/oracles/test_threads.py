"""The oracle's torch thread count: chosen by model size (one for the fixture), recorded, rows unchanged.

On a busy machine every parallel kernel of a small model waits for a descheduled OpenMP thread
(benchmarks/README.md: the fixture's oracle ran 10x slower on torch's default of 2 threads), so
the oracle picks its threads as the captures do; the tests here run torch at 2 threads in the
process to check that the choice is the oracle's own and does not leak out.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from harness.cli import main
from harness.errors import InputError
from harness.trace import open_trace
from oracles.hf import HFOracle, run_oracle


@contextlib.contextmanager
def process_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rows(path):
    t = open_trace(path)
    return {c.case_id: (c.input_ids, c.logits) for c in t}


def _bitwise_equal(a, b):
    assert list(a) == list(b)
    for cid in a:
        assert np.array_equal(a[cid][0], b[cid][0]), cid
        assert a[cid][1].dtype == b[cid][1].dtype, cid
        assert a[cid][1].tobytes() == b[cid][1].tobytes(), f"{cid}: rows differ in their bits"


@pytest.mark.parametrize("stepwise", [False, True], ids=["one-pass", "stepwise"])
def test_default_threads_are_one_on_the_fixture_and_rows_equal_one_thread_bitwise(given_cases, tmp_path, stepwise):
    import torch

    with process_threads(2):
        chosen = run_oracle(cases=given_cases, out=tmp_path / "chosen.safetensors", quiet=True, stepwise=stepwise)
        assert torch.get_num_threads() == 2, "the oracle's thread choice leaked into the caller"
        two = run_oracle(cases=given_cases, out=tmp_path / "two.safetensors", quiet=True, stepwise=stepwise,
                         threads=2)
    with process_threads(1):
        one = run_oracle(cases=given_cases, out=tmp_path / "one.safetensors", quiet=True, stepwise=stepwise)
    assert open_trace(chosen).metadata["torch_threads"] == "1"
    assert open_trace(two).metadata["torch_threads"] == "2"
    assert open_trace(one).metadata["torch_threads"] == "1"
    _bitwise_equal(_rows(chosen), _rows(one))
    # the fixture's bf16 rows do not depend on the thread count here: the choice is a speed choice
    _bitwise_equal(_rows(two), _rows(one))


def test_a_wide_model_keeps_torch_s_thread_count(fixture_model):
    oracle = HFOracle(fixture_model)  # config and tokenizer only: the weights load on first use
    assert oracle.hidden_size is not None and oracle.hidden_size <= 1024
    with process_threads(2):
        assert oracle.torch_threads() == 1
        oracle.hidden_size = 5120  # the 27B's width: big kernels gain from every core
        assert oracle.torch_threads() == 2
        oracle.threads = 1
        assert oracle.torch_threads() == 1


@pytest.mark.parametrize("bad", [0, -2, True, 1.5])
def test_bad_thread_counts_are_refused(fixture_model, bad):
    with pytest.raises(InputError, match="--threads"):
        HFOracle(fixture_model, threads=bad)


def test_cli_threads_flag(given_cases, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    assert main(["oracle", "--cases", str(given_cases), "--threads", "0", "--out", str(out), "--quiet"]) == 2
    assert "--threads" in capsys.readouterr().err and not out.exists()
    with process_threads(1):
        assert main(["oracle", "--cases", str(given_cases), "--threads", "2", "--out", str(out), "--quiet"]) == 0
    assert open_trace(out).metadata["torch_threads"] == "2"


def test_resume_refuses_parts_made_with_another_thread_count(given_cases, tmp_path, monkeypatch):
    import oracles.hf as hf

    out = tmp_path / "o.safetensors"
    real_write, written = hf.write_trace, []

    def crash_after_two(path, meta, cases):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        return real_write(path, meta, cases)

    monkeypatch.setattr(hf, "write_trace", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_oracle(cases=given_cases, out=out, quiet=True)
    monkeypatch.setattr(hf, "write_trace", real_write)
    with pytest.raises(InputError, match="another torch_threads"):
        run_oracle(cases=given_cases, out=out, quiet=True, resume=True, threads=2)
    run_oracle(cases=given_cases, out=out, quiet=True, resume=True)
    assert open_trace(out).metadata["torch_threads"] == "1"


def test_streamed_oracle_records_and_restores_its_threads(fixture_model, default_trace, tmp_path):
    import torch

    from oracles.stream import run_streamed_oracle

    with process_threads(2):
        out = run_streamed_oracle(sequences=default_trace, out=tmp_path / "s.safetensors", quiet=True)
        assert torch.get_num_threads() == 2
        two = run_streamed_oracle(sequences=default_trace, out=tmp_path / "s2.safetensors", quiet=True, threads=2)
    assert open_trace(out).metadata["torch_threads"] == "1"
    assert open_trace(two).metadata["torch_threads"] == "2"
    _bitwise_equal(_rows(out), _rows(two))
