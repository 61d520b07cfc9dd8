"""flipgate.trace/1: round trip in every logits dtype, and every rejection the format demands."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors.torch import load_file

from harness.errors import TraceError
from harness.trace import FORMAT, CaseTrace, base_metadata, open_trace, write_trace

from helpers import BF16, make_case


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["float32", "float16", "bfloat16"])
def test_round_trip_is_exact(trace_factory, dtype):
    cases = [make_case("a", seed=1, dtype=dtype), make_case("b", n=7, rows=6, seed=2, dtype=dtype)]
    path = trace_factory("t.safetensors", cases, tokenizer_sha256="ab" * 32, extra_key="kept")
    t = open_trace(path)
    assert t.case_ids == ["a", "b"]
    assert t.vocab_size == 32 and t.metadata["format"] == FORMAT and t.metadata["extra_key"] == "kept"
    assert t.tokenizer_sha256 == "ab" * 32
    for want in cases:
        got = t.case(want.case_id)
        assert got.input_ids.dtype == np.int64
        np.testing.assert_array_equal(got.input_ids, want.input_ids)
        assert got.logits.dtype == np.dtype(dtype)
        # bit-exact, NaN-safe comparison
        assert got.logits.tobytes() == np.asarray(want.logits).tobytes()
    assert t.case("b").prompt_len == 1 and t.case("b").position(0) == 1
    np.testing.assert_array_equal(t.case("a").targets, cases[0].input_ids[-4:])


def test_the_safetensors_library_reads_what_we_write(trace_factory):
    cases = [make_case("a", dtype=BF16), make_case("c", seed=3, dtype=np.float16)]
    path = trace_factory("t.safetensors", cases)
    tensors = load_file(str(path))
    assert tensors["a/logits"].dtype == torch.bfloat16
    ref = torch.from_numpy(np.asarray(cases[0].logits).astype(np.float32)).to(torch.bfloat16)
    assert torch.equal(tensors["a/logits"], ref)
    assert tensors["a/input_ids"].dtype == torch.int64
    np.testing.assert_array_equal(safetensors.numpy.load_file(str(path))["c/logits"], cases[1].logits)


def test_reads_a_trace_written_by_the_safetensors_library(tmp_path):
    # Another runtime's writer: the format is the contract, not our writer.
    path = tmp_path / "foreign.safetensors"
    logits = np.arange(3 * 8, dtype=np.float32).reshape(3, 8)
    safetensors.numpy.save_file(
        {"x/input_ids": np.arange(5, dtype=np.int64), "x/logits": logits}, str(path),
        metadata={"format": FORMAT, "runner": "import", "variant": "int8hu", "vocab_size": "8",
                  "cases": json.dumps(["x"])})
    t = open_trace(path)
    np.testing.assert_array_equal(t.case("x").logits, logits)
    assert t.case("x").prompt_len == 2


def _raw_trace(path, meta, tensors):
    """Write a safetensors file with arbitrary (possibly invalid) content."""
    safetensors.numpy.save_file(tensors, str(path), metadata=meta)
    return path


def _meta(**over):
    m = {"format": FORMAT, "runner": "hf", "variant": "bf16", "vocab_size": "8", "cases": json.dumps(["x"])}
    m.update(over)
    return {k: v for k, v in m.items() if v is not None}


GOOD = {"x/input_ids": np.arange(5, dtype=np.int64), "x/logits": np.zeros((3, 8), np.float32)}


@pytest.mark.parametrize("meta,tensors,case,needle", [
    (_meta(format=None), GOOD, None, "no 'format' key"),
    (_meta(format="flipgate.trace/0"), GOOD, None, "unknown format 'flipgate.trace/0'"),
    (_meta(cases=json.dumps(["x", "y"])), GOOD, "y", "has no y/input_ids"),
    (_meta(), {**GOOD, "z/input_ids": np.arange(3), "z/logits": np.zeros((1, 8), np.float32)}, "z",
     "does not list"),
    (_meta(), {**GOOD, "x/logits": np.zeros((5, 8), np.float32)}, "x", "exceed the sequence length"),
    (_meta(), {**GOOD, "x/logits": np.zeros((3, 9), np.float32)}, "x", "width 9 differs from vocab_size 8"),
    (_meta(), {**GOOD, "x/input_ids": np.arange(5, dtype=np.float32)}, "x", "input_ids must be integers"),
    (_meta(vocab_size="eight"), GOOD, None, "not a positive integer"),
    (_meta(runner=None), GOOD, None, "no 'runner' key"),
    (_meta(), {**GOOD, "x/logits": np.zeros((3, 8), np.int32)}, "x", "logits dtype I32"),
    (_meta(), {"x/input_ids": np.arange(5, dtype=np.int64)}, "x", "has no x/logits"),
])
def test_rejections_name_file_case_and_rule(tmp_path, meta, tensors, case, needle):
    path = _raw_trace(tmp_path / "bad.safetensors", meta, tensors)
    with pytest.raises(TraceError) as e:
        open_trace(path)
    msg = str(e.value)
    assert str(path) in msg and needle in msg
    assert e.value.case == case
    if case is not None:
        assert repr(case) in msg


def test_missing_metadata(tmp_path):
    path = tmp_path / "nometa.safetensors"
    safetensors.numpy.save_file(GOOD, str(path))
    with pytest.raises(TraceError, match="no __metadata__"):
        open_trace(path)


def test_truncated_file(tmp_path, trace_factory):
    path = trace_factory("t.safetensors", [make_case("a")])
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-5])
    with pytest.raises(TraceError, match="truncated"):
        open_trace(cut)


@pytest.mark.parametrize("content", [b"", b"abc", b"PK\x03\x04" + b"\0" * 64, b"\x80\x04\x95" + b"\0" * 40,
                                     struct.pack("<Q", 4) + b"[1] "])
def test_not_safetensors(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(TraceError, match="not a safetensors file") as e:
        open_trace(path)
    assert str(path) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        open_trace(tmp_path / "nope.safetensors")


def test_writer_is_atomic_and_refuses_bad_cases(tmp_path):
    dest = tmp_path / "out.safetensors"
    md = base_metadata(runner="t", variant="v", vocab_size=32)
    bad = CaseTrace("x", np.arange(3), np.zeros((5, 32), np.float32))  # 5 rows for 3 tokens
    with pytest.raises(TraceError):
        write_trace(dest, md, [bad])
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temp file left
    with pytest.raises(TraceError, match="unique"):
        write_trace(dest, md, [make_case("x"), make_case("x")])
    with pytest.raises(TraceError, match="input_ids must be integers"):
        write_trace(dest, md, [CaseTrace("x", np.arange(5.0), np.zeros((2, 32), np.float32))])
    assert list(tmp_path.iterdir()) == []


def test_nan_and_inf_survive_the_round_trip(trace_factory):
    c = make_case("a", dtype=np.float16)
    lg = np.array(c.logits)
    lg[0, 0], lg[1, 1], lg[2, 2] = np.nan, np.inf, -np.inf
    t = open_trace(trace_factory("t.safetensors", [CaseTrace("a", c.input_ids, lg)]))
    got = t.case("a").logits
    assert np.isnan(got[0, 0]) and got[1, 1] == np.inf and got[2, 2] == -np.inf
