"""TraceWriter: a trace written one case at a time (harness/trace.py)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from harness.errors import TraceError
from harness.trace import CaseTrace, TraceWriter, base_metadata, open_trace, write_trace


def cases():
    rng = np.random.default_rng(1)
    return [CaseTrace("a", np.arange(6), rng.normal(size=(3, 40)).astype(np.float16)),
            CaseTrace("b.c", np.array([4, 5, 6], dtype=np.int32), rng.normal(size=(2, 40)).astype(np.float32)),
            CaseTrace("d", np.arange(9), rng.normal(size=(8, 40)).astype(ml_dtypes.bfloat16)[:, :]),
            CaseTrace("strided", np.arange(5), rng.normal(size=(40, 4)).astype(np.float32).T)]


def test_same_bytes_as_write_trace(tmp_path):
    meta = base_metadata(runner="emulated", variant="int8hu", vocab_size=40)
    whole = write_trace(tmp_path / "whole.safetensors", meta, cases())
    with TraceWriter(tmp_path / "streamed.safetensors") as w:
        for c in cases():
            w.add(c)
        assert w.case_ids == ["a", "b.c", "d", "strided"]
        out = w.commit(meta)
    assert out.read_bytes() == whole.read_bytes()
    t = open_trace(out)
    for c in cases():
        assert np.array_equal(t.case(c.case_id).logits, c.logits) and t.logits_dtype(c.case_id) in ("F16", "F32", "BF16")
        assert t.input_ids(c.case_id).tolist() == c.input_ids.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.safetensors", "whole.safetensors"]


def test_the_safetensors_library_reads_it(tmp_path):
    from safetensors.numpy import load_file

    with TraceWriter(tmp_path / "t.safetensors") as w:
        w.add(cases()[0])
        w.commit(base_metadata(runner="r", variant="v", vocab_size=40))
    got = load_file(str(tmp_path / "t.safetensors"))
    assert np.array_equal(got["a/logits"], cases()[0].logits)


def test_an_error_inside_the_block_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="runner died"):
        with TraceWriter(tmp_path / "t.safetensors") as w:
            w.add(cases()[0])
            raise RuntimeError("runner died")
    assert list(tmp_path.iterdir()) == []


def test_leaving_without_commit_writes_nothing(tmp_path):
    with TraceWriter(tmp_path / "t.safetensors") as w:
        w.add(cases()[0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad, rule", [
    (CaseTrace("a", np.arange(4), np.zeros((1, 40), np.float16)), "unique"),
    (CaseTrace("x/y", np.arange(4), np.zeros((1, 40), np.float16)), "must not hold '/'"),
    (CaseTrace("f", np.arange(4.0), np.zeros((1, 40), np.float16)), "input_ids must be integers"),
    (CaseTrace("g", np.arange(4), np.zeros((1, 40), np.float64)), "cannot be written"),
])
def test_bad_cases_are_refused_by_name(tmp_path, bad, rule):
    with TraceWriter(tmp_path / "t.safetensors") as w:
        w.add(cases()[0])
        with pytest.raises(TraceError, match=rule):
            w.add(bad)
    assert list(tmp_path.iterdir()) == []


def test_a_case_the_reader_rejects_is_never_renamed_into_place(tmp_path):
    # 7 rows for 4 tokens: write_trace's rule, checked by re-opening before the rename
    with TraceWriter(tmp_path / "t.safetensors") as w:
        w.add(CaseTrace("a", np.arange(4), np.zeros((7, 40), np.float16)))
        with pytest.raises(TraceError, match="exceed the sequence length"):
            w.commit(base_metadata(runner="r", variant="v", vocab_size=40))
    assert list(tmp_path.iterdir()) == []


def test_metadata_needs_the_required_keys_and_commit_happens_once(tmp_path):
    with TraceWriter(tmp_path / "t.safetensors") as w:
        w.add(cases()[0])
        with pytest.raises(ValueError, match="lacks 'variant'"):
            w.commit({"runner": "r", "vocab_size": "40"})
        w.commit(base_metadata(runner="r", variant="v", vocab_size=40))
        with pytest.raises(ValueError, match="after commit"):
            w.add(cases()[1])
