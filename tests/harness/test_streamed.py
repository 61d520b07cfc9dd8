"""The layer-streamed S=1 capture (`flipgate capture VARIANT --stream`) against the in-memory one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.candidates.base import Sequence, capture_to_trace
from harness.candidates.emulated import emulated_candidate, resolve_device
from harness.candidates.streamed import StreamedCandidate, fake_quantize_rows
from harness.cli import main
from harness.errors import InputError
from harness.models import fixture_model_path
from harness.recipe import QuantSpec, get_recipe
from harness.trace import CaseTrace, base_metadata, open_trace, write_trace

FIXTURE = fixture_model_path()
RECIPES = ("fp16", "int8lin", "int8hu", "int4lin", "mixed", "mixed-edge")
pytestmark = pytest.mark.slow  # runs the fixture model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sequences():
    """Cases of different lengths and row counts; one whose prompt is a single token (row 0 is the
    output of step 0, when every cache is still empty)."""
    rng = np.random.default_rng(7)
    shapes = [("long", 23, 6), ("short", 5, 4), ("one-token-prompt", 9, 8), ("mid", 14, 3)]
    return [Sequence(cid, rng.integers(0, 2048, size=n).astype(np.int64), r) for cid, n, r in shapes]


@pytest.fixture(scope="module")
def in_memory_rows():
    rows = {}
    for name in RECIPES:
        cand = emulated_candidate(name)
        rows[name] = {c.case_id: c.logits for c in cand.run(sequences())}
    return rows


@pytest.mark.parametrize("variant", RECIPES)
def test_streamed_rows_bit_identical_to_in_memory(variant, in_memory_rows):
    # head in chunks of 384 rows: 2048 is not a multiple, so the last chunk is short
    cand = StreamedCandidate(get_recipe(variant), FIXTURE, head_chunk_rows=384)
    got = list(cand.run(sequences()))
    assert [c.case_id for c in got] == [s.case_id for s in sequences()]
    for c in got:
        want = in_memory_rows[variant][c.case_id]
        assert c.logits.dtype == np.float16 and c.logits.shape == want.shape
        assert np.array_equal(c.logits.view(np.uint16), want.view(np.uint16)), (variant, c.case_id)
    assert cand.stats.head_chunks == 6 and cand.stats.layers == 8


def test_quantized_variants_differ_from_fp16(in_memory_rows):
    # the identity above must not be the identity of an unquantized model with itself
    for variant in ("int8hu", "int4lin", "mixed"):
        assert not np.array_equal(in_memory_rows[variant]["long"], in_memory_rows["fp16"]["long"])


def test_logits_blocks_re_read_the_head_and_keep_the_rows(in_memory_rows):
    cand = StreamedCandidate(get_recipe("int8hu"), FIXTURE, max_memory="40MiB")
    cand.plan_memory(sequences(), get_recipe("int8hu").plan(cand.checkpoint.model))
    # force one case per head pass: each block re-reads and re-quantizes the head
    cand.plan_memory = _with_block(cand.plan_memory, 1)
    got = {c.case_id: c.logits for c in cand.run(sequences())}
    assert cand.stats.head_passes == 4
    for cid, rows in got.items():
        assert np.array_equal(rows, in_memory_rows["int8hu"][cid])


def _with_block(plan_memory, nbytes):
    def planned(*a, **k):
        st = plan_memory(*a, **k)
        st.logits_block_bytes = nbytes
        return st
    return planned


def test_fake_quantize_rows_in_chunks_equals_the_whole_weight():
    rng = np.random.default_rng(3)
    w = torch.from_numpy((rng.normal(size=(37, 96)) * 0.05).astype(np.float16))
    for spec in (QuantSpec("int8", "symmetric_with_clipping", "per_block", 32, 1),
                 QuantSpec("int4", "asymmetric", "per_block", 32, 1),
                 QuantSpec("int8", "symmetric", "per_channel", None, 0)):
        q = spec.scheme()
        whole = q.dequantize(q.quantize(w.numpy()))
        for chunk in (1, 96 * 5, 10**6):  # one row at a time, 5 rows, everything
            assert np.array_equal(fake_quantize_rows(spec, w, chunk).numpy(), whole)
        assert not np.array_equal(whole, w.numpy())


def test_max_memory_refuses_up_front_naming_the_need():
    cand = StreamedCandidate(get_recipe("int8hu"), FIXTURE, max_memory="2MiB")
    with pytest.raises(InputError, match=r"--max-memory 2\.00 MiB is below the planned need of .* largest layer "
                                         r"model\.layers\.\d+ .* hidden states of 47 positions"):
        next(iter(cand.run(sequences())))
    assert cand.stats.peak_rss_bytes == 0  # refused before any weight was read


def test_need_grows_with_the_positions_not_the_layers():
    recipe = get_recipe("int8lin")
    cand = StreamedCandidate(recipe, FIXTURE)
    plan = recipe.plan(cand.checkpoint.model)
    one = cand.plan_memory(sequences()[:1], plan).need_bytes
    many = cand.plan_memory(sequences() * 8, plan).hidden_bytes
    assert many > cand.plan_memory(sequences()[:1], plan).hidden_bytes
    weights = sum(p.numel() * 2 for p in cand.checkpoint.model.parameters())
    assert one < weights + 20 * 2**20  # one layer + transients, not the model


def test_stream_refuses_what_it_cannot_do():
    with pytest.raises(InputError, match="--mode fast"):
        emulated_candidate("int8hu", stream=True, mode="coreai-opt")
    with pytest.raises(InputError, match="S=1 only"):
        emulated_candidate("int8hu", stream=True, full=True)
    with pytest.raises(InputError, match="applies to --stream"):
        emulated_candidate("int8hu", max_memory="8GiB")
    with pytest.raises(InputError, match="expected a size"):
        emulated_candidate("int8hu", stream=True, max_memory="lots")


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(InputError, match="--device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cuda: .* sees no CUDA device"):
            resolve_device("cuda")
        assert resolve_device("auto") != "cuda"


def fake_oracle(path, seqs):
    rng = np.random.default_rng(0)
    meta = base_metadata(runner="hf", variant="bf16", vocab_size=2048)
    return write_trace(path, meta, [CaseTrace(s.case_id, s.input_ids, rng.normal(size=(s.rows, 2048)).astype(np.float32))
                                    for s in seqs])


def test_cli_stream_writes_the_in_memory_rows_and_records_how(tmp_path, capsys):
    oracle = fake_oracle(tmp_path / "oracle.safetensors", sequences())
    streamed, in_memory = tmp_path / "s.safetensors", tmp_path / "m.safetensors"
    assert main(["capture", "mixed", "--stream", "--max-memory", "256MiB", "--oracle", str(oracle),
                 "--out", str(streamed)]) == 0
    assert "S=1 layer-streamed" in capsys.readouterr().err
    assert main(["capture", "mixed", "--device", "cpu", "--oracle", str(oracle), "--out", str(in_memory)]) == 0
    s, m = open_trace(streamed), open_trace(in_memory)
    for cid in s.case_ids:
        assert np.array_equal(s.case(cid).logits, m.case(cid).logits)
    assert s.metadata["execution"] == "layer-streamed" and s.metadata["device"] == "cpu"
    assert m.metadata["device"] == "cpu" and "execution" not in m.metadata
    assert int(s.metadata["peak_rss_bytes"]) > 0 and s.metadata["max_memory"] == str(256 * 2**20)
    assert s.metadata["recipe"] == m.metadata["recipe"] and s.metadata["decode"] == "stepwise"


@pytest.mark.parametrize("argv, message", [
    (["--max-memory", "8GiB"], "--max-memory applies to --stream"),
    (["--stream", "--mode", "coreai-opt"], "use --mode fast"),
    (["--stream", "--max-memory", "1MiB"], "below the planned need"),
])
def test_cli_stream_usage_errors_exit_2(tmp_path, capsys, argv, message):
    oracle = fake_oracle(tmp_path / "oracle.safetensors", sequences()[:1])
    out = tmp_path / "x.safetensors"
    assert main(["capture", "int8hu", "--oracle", str(oracle), "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["oracle.safetensors"]


def test_capture_to_trace_leaves_nothing_when_the_run_fails(tmp_path):
    seqs = sequences()[:2] + [Sequence("bad", np.array([1, 2, 99999]), 1)]
    out = tmp_path / "t.safetensors"
    with pytest.raises(InputError, match="case 'bad': token id 99999"):
        capture_to_trace(StreamedCandidate(get_recipe("fp16"), FIXTURE), seqs, out, vocab_size=2048)
    assert list(tmp_path.iterdir()) == []


def test_a_preamble_that_loses_the_past_length_stops_the_run(monkeypatch):
    # Stand-in for a transformers whose decoder reads the past length from somewhere the recording
    # cache does not advance: positions would all read 0 and every row would be wrong, silently.
    from transformers.cache_utils import DynamicLayer

    monkeypatch.setattr(DynamicLayer, "get_seq_length", lambda self: 0)
    cand = StreamedCandidate(get_recipe("fp16"), FIXTURE)
    with pytest.raises(RuntimeError, match="step 1: the decoder's preamble placed the token at position 0"):
        list(cand.run(sequences()[:1]))
