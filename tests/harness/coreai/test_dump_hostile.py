"""The llm-runner dump reader against hostile files: integers beyond int64, deep nesting, wrong types, rows
that claim more than the file holds, and random mutations of real dumps. Each either reads correctly or is
refused with the project's InputError (exit 2, one line naming the file): never another exception, never
memory beyond a small multiple of the file."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.coreai.logits_file import read_logits_file, read_raw_tokens, scored_rows, write_logits_file
from harness.errors import InputError
from harness.trace import open_trace

HUGE = 2**70


@pytest.fixture(scope="module")
def real_dumps(emulated_all_rows, tmp_path_factory):
    """The emulated int8hu logits of one case as llm-runner writes them, in both layouts (as the stand-in
    llm-runner serves them: every position after the first)."""
    t = open_trace(emulated_all_rows)
    cid = t.case_ids[0]
    ids = t.input_ids(cid)
    logits = t.case(cid).logits[-6:]                     # the last 6 rows keep the fuzzing quick
    folder = tmp_path_factory.mktemp("dumps")
    n = len(ids)
    tokens = write_logits_file(folder / "tokens.json", ids[n - 6:].tolist(), logits)
    positions = write_logits_file(folder / "positions.json", ids[n - 6:].tolist(), logits, layout="positions",
                                  context_ids=ids[: n - 6].tolist())
    # the sequence each dump is of: the generation layout's row 0 predicts x[1], the evaluation's x[len(context)]
    return {"tokens": tokens, "positions": positions, "case": cid,
            "ids": {"tokens": ids[n - 7:], "positions": ids}}


@pytest.mark.parametrize("layout, mutate, key", [
    ("tokens", lambda d: d["tokens"][2].__setitem__("token_id", HUGE), "'token_id'"),
    ("positions", lambda d: d["positions"][1].__setitem__("target_token", HUGE), "'target_token'"),
    ("positions", lambda d: d.__setitem__("context_tokens", [HUGE]), "'context_tokens'"),
    ("positions", lambda d: d.__setitem__("continuation_tokens", [-HUGE]), "'continuation_tokens'"),
    ("positions", lambda d: d["positions"][0].__setitem__("index", True), "'index'"),
    ("tokens", lambda d: d["tokens"][0].__setitem__("logits_base64", ["AAA="]), "'logits_base64'"),
    ("tokens", lambda d: d["tokens"][1].__setitem__("incremental_text", {"a": 1}), "'incremental_text'"),
])
def test_out_of_range_and_mistyped_values_name_the_file_and_key(real_dumps, tmp_path, capsys, layout, mutate, key):
    doc = json.loads(real_dumps[layout].read_text(encoding="utf-8"))
    mutate(doc)
    bad = tmp_path / f"{real_dumps['case']}.logits.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match=key) as exc:
        read_logits_file(bad, vocab_size=2048)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    assert len(str(exc.value)) < 400                      # 2**70 is not printed digit by digit anywhere


def test_import_of_a_huge_token_id_exits_2_on_one_line(real_dumps, coreai_oracle, tmp_path, capsys):
    doc = json.loads(real_dumps["tokens"].read_text(encoding="utf-8"))
    doc["tokens"][0]["token_id"] = HUGE
    bad = tmp_path / f"{real_dumps['case']}.logits.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    assert main(["import", str(bad), "--oracle", str(coreai_oracle), "--out", str(tmp_path / "t.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "'token_id'" in err and "token index 0" in err
    assert not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize("text", [
    "[" * 200_000 + "]" * 200_000,
    '{"tokens": ' + "[" * 200_000 + "]" * 200_000 + "}",
    '{"tokens": [{"token_id": 1' + "0" * 5000 + ', "logits_base64": "AAA="}]}',   # beyond int() digit limits
], ids=["nested-200000", "nested-rows-200000", "5001-digit-id"])
def test_deep_nesting_and_giant_literals(tmp_path, text):
    p = tmp_path / "d.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=str(p)):
        read_logits_file(p)
    with pytest.raises(InputError, match=str(p)):
        read_raw_tokens(p)


def test_raw_tokens_beyond_int64(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"tokens": [1, HUGE]}), encoding="utf-8")
    with pytest.raises(InputError, match="non-negative 64-bit"):
        read_raw_tokens(p)


def test_rows_claiming_more_than_the_file_holds_allocate_nothing_big(tmp_path):
    """Row 0 is 1.5 MB of logits, then 200,000 rows of one value: the reader must not size its array from
    row 0 times the row count (300 GB), but stop at row 1."""
    big = "A" * 2**21                                       # 1.5 MB of float16 zeros
    rows = [{"token_id": 1, "logits_base64": big}] + [{"token_id": 1, "logits_base64": "AAA="}] * 200_000
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"tokens": rows}), encoding="utf-8")
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="token index 1: row holds"):
            read_logits_file(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * p.stat().st_size


# -- fuzzing ------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.integers() | st.sampled_from([HUGE, -HUGE, 2**63, 2**63 - 1, -1, 0, 2047, 2048]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _paths(doc, prefix=()):
    """Every place in a JSON document a value can be replaced (the logits strings' contents excluded)."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            yield from _paths(v, prefix + (i,))


def _replace(doc, path, value):
    if not path:
        return value
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    return doc


def _judge(path, dumps, layout):
    """Read a mutated dump: it reads (and then is consistent), or raises InputError; memory stays bounded."""
    size = path.stat().st_size
    tracemalloc.start()
    try:
        try:
            dump = read_logits_file(path, vocab_size=2048)
        except InputError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            return
        assert dump.logits.shape[0] == dump.token_ids.shape[0] == len(dump.texts)
        try:
            scored_rows(dump, dumps["ids"][layout], 6, case=dumps["case"], vocab_size=2048)
        except InputError as e:
            assert str(path) in str(e)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * size + (1 << 20), (peak, size)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(["tokens", "positions"]), data=st.data())
def test_structural_mutations_of_real_dumps(real_dumps, tmp_path_factory, layout, data):
    doc = json.loads(real_dumps[layout].read_text(encoding="utf-8"))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(list(_paths(doc))))
        doc = _replace(doc, where, data.draw(JSON_VALUES))
    p = tmp_path_factory.mktemp("fuzz") / "d.json"
    p.write_text(json.dumps(doc), encoding="utf-8")
    _judge(p, real_dumps, layout)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(["tokens", "positions"]), data=st.data())
def test_byte_mutations_of_real_dumps(real_dumps, tmp_path_factory, layout, data):
    raw = bytearray(real_dumps[layout].read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "truncate", "nest"]))
        i = data.draw(st.integers(0, len(raw)))
        if op == "flip" and i < len(raw):
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[i:i + data.draw(st.integers(1, 64))]
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del raw[i:]
        else:  # a value replaced by deep nesting
            raw[i:i] = b"[" * 50_000 + b"]" * 50_000
    p = tmp_path_factory.mktemp("fuzz") / "d.json"
    p.write_bytes(bytes(raw))
    _judge(p, real_dumps, layout)


def test_unmutated_real_dumps_read_back_exactly(real_dumps, emulated_all_rows):
    t = open_trace(emulated_all_rows)
    want = t.case(real_dumps["case"]).logits[-6:]
    for layout in ("tokens", "positions"):
        dump = read_logits_file(real_dumps[layout], vocab_size=2048)
        assert np.array_equal(dump.logits.view(np.uint16), want.view(np.uint16))
        assert np.array_equal(scored_rows(dump, real_dumps["ids"][layout], 6, case=real_dumps["case"],
                                          vocab_size=2048)
                              .view(np.uint16), want.view(np.uint16))
