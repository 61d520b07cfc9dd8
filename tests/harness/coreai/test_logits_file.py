"""The llm-runner `--save-logits ... full` format: exact round trips, and bad rows named by token index."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.coreai.logits_file import (
    LogitsFileError, encode_row, read_logits_file, read_raw_tokens, scored_rows, write_logits_file, write_raw_tokens,
)

# float16 bit patterns the gate must see as they are: +-0, subnormals, max, +-Inf, quiet and signalling NaNs.
SPECIAL_BITS = np.array([0x0000, 0x8000, 0x0001, 0x03FF, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE00, 0x7FFF],
                        dtype=np.uint16)


def _file(tmp_path, rows, name="dump.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"tokens": rows}), encoding="utf-8")
    return p


def test_round_trip_is_bit_exact_including_nan_and_inf(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=8, size=(5, 37)).astype(np.float16)
    logits[2, : SPECIAL_BITS.size] = SPECIAL_BITS.view(np.float16)
    path = write_logits_file(tmp_path / "d.json", [3, 1, 4, 1, 5], logits, texts=["a", "b\n", "é", "", "\t"])
    dump = read_logits_file(path)
    assert dump.logits.dtype == np.float16
    assert np.array_equal(dump.logits.view(np.uint16), logits.view(np.uint16))  # NaN payloads included
    assert dump.token_ids.tolist() == [3, 1, 4, 1, 5]
    assert dump.texts == ("a", "b\n", "é", "", "\t")
    # LogitsWriter's own layout: pretty-printed with sorted keys
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert list(doc["tokens"][0]) == ["incremental_text", "logits_base64", "token_id"]


@settings(max_examples=60, deadline=None)
@given(bits=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=9), strip=st.booleans())
def test_any_float16_row_round_trips_with_or_without_padding(tmp_path_factory, bits, strip):
    row = np.array(bits, dtype=np.uint16).view(np.float16)
    b64 = encode_row(row)
    if strip:
        b64 = b64.rstrip("=")  # some encoders drop the padding
    p = _file(tmp_path_factory.mktemp("h"), [{"token_id": 1, "incremental_text": "", "logits_base64": b64}])
    assert np.array_equal(read_logits_file(p, dtype="float16").logits[0].view(np.uint16), row.view(np.uint16))


def test_odd_base64_padding_decodes(tmp_path):
    row = np.arange(4, dtype=np.float16)  # 8 bytes -> 12 base64 chars, the last one "="
    b64 = encode_row(row)
    assert b64.endswith("=")
    p = _file(tmp_path, [{"token_id": 0, "logits_base64": b64.rstrip("=")},
                         {"token_id": 1, "logits_base64": b64}])
    assert np.array_equal(read_logits_file(p).logits, np.stack([row, row]))


def test_truncated_row_is_named_by_its_token_index(tmp_path):
    full = encode_row(np.ones(16, dtype=np.float16))
    short = encode_row(np.ones(15, dtype=np.float16))
    p = _file(tmp_path, [{"token_id": 0, "logits_base64": full}, {"token_id": 1, "logits_base64": full},
                         {"token_id": 2, "logits_base64": short}])
    with pytest.raises(LogitsFileError, match=r"token index 2: row holds 15 float16 values .* shorter than row 0's 16"):
        read_logits_file(p)


def test_base64_cut_mid_byte_and_bad_characters_are_errors(tmp_path):
    good = encode_row(np.ones(4, dtype=np.float16))  # 12 chars
    p = _file(tmp_path, [{"token_id": 0, "logits_base64": good}, {"token_id": 1, "logits_base64": good[:-3]}])
    with pytest.raises(LogitsFileError, match="token index 1: logits_base64 is truncated"):
        read_logits_file(p)
    p = _file(tmp_path, [{"token_id": 0, "logits_base64": good[:4] + "*" + good[5:]}])
    with pytest.raises(LogitsFileError, match=r"token index 0: logits_base64 is not base64 \(character '\*'\)"):
        read_logits_file(p)


def test_odd_byte_count_cannot_be_float16(tmp_path):
    p = _file(tmp_path, [{"token_id": 0, "logits_base64": base64.b64encode(b"abc").decode()}])
    with pytest.raises(LogitsFileError, match="token index 0: row holds 3 bytes, not a whole number of float16"):
        read_logits_file(p)


@pytest.mark.parametrize("rows, message", [
    ([{"token_id": 1}], "token index 0: entry has no 'logits_base64'"),
    ([{"token_id": 1, "top_logits": []}], "a top-K file: rerun with --save-logits-length full"),
    ([{"token_id": -1, "logits_base64": "AAA="}], "'token_id' must be a non-negative 64-bit integer"),
    ([{"token_id": True, "logits_base64": "AAA="}], "'token_id' must be a non-negative 64-bit integer"),
    ([{"token_id": 1, "logits_base64": ""}], "token index 0: logits_base64 is empty"),
    ([7], "token index 0: entry is not a JSON object"),
    ([], "'tokens' is empty"),
])
def test_malformed_entries(tmp_path, rows, message):
    with pytest.raises(LogitsFileError, match=message):
        read_logits_file(_file(tmp_path, rows))


def test_truncated_or_foreign_json(tmp_path):
    p = write_logits_file(tmp_path / "d.json", [1, 2], np.ones((2, 8), dtype=np.float16))
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(LogitsFileError, match=r"d.json: truncated JSON"):
        read_logits_file(p)
    q = tmp_path / "q.json"
    q.write_text('{"logits": []}')
    with pytest.raises(LogitsFileError, match="not an llm-runner logits file"):
        read_logits_file(q)
    with pytest.raises(LogitsFileError, match="no such logits file"):
        read_logits_file(tmp_path / "missing.json")


def test_float32_rows_are_told_apart_by_the_vocabulary(tmp_path):
    rows = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    p = write_logits_file(tmp_path / "f32.json", [1, 2], rows)
    assert read_logits_file(p).logits.shape == (2, 16)  # without a vocabulary: read as float16
    dump = read_logits_file(p, vocab_size=8)
    assert dump.logits.dtype == np.float32 and np.array_equal(dump.logits, rows)


# -- teacher-forcing row map -----------------------------------------------------------------------

def _dump_for(tmp_path, ids, width=8, extra_rows=0, drop_rows=0):
    n = len(ids)
    rows = n - 1 + extra_rows - drop_rows
    logits = np.arange(rows * width, dtype=np.float16).reshape(rows, width)
    echoed = (list(ids[1:]) + [0] * extra_rows)[:rows]
    return read_logits_file(write_logits_file(tmp_path / "d.json", echoed, logits)), logits


def test_scored_rows_are_the_last_r_rows(tmp_path):
    ids = np.array([5, 6, 7, 8, 9, 10])
    dump, logits = _dump_for(tmp_path, ids)
    got = scored_rows(dump, ids, 2, case="c", vocab_size=8)
    # trace row k predicts x[P + k]; P = 4: file rows 3 and 4 (after consuming x[0..3], x[0..4])
    assert np.array_equal(got, logits[3:5])


@pytest.mark.parametrize("extra, drop, message", [
    (1, 0, r"6 rows for 6 raw tokens, expected 5 .* one row more"),
    (0, 1, r"4 rows for 6 raw tokens, expected 5 .* one row short"),
])
def test_row_count_off_by_one(tmp_path, extra, drop, message):
    ids = np.array([5, 6, 7, 8, 9, 10])
    dump, _ = _dump_for(tmp_path, ids, extra_rows=extra, drop_rows=drop)
    with pytest.raises(LogitsFileError, match=message):
        scored_rows(dump, ids, 2, case="c")


def test_echoed_ids_and_width_are_checked(tmp_path):
    ids = np.array([5, 6, 7, 8, 9, 10])
    dump, _ = _dump_for(tmp_path, ids)
    other = ids.copy()
    other[3] = 99
    with pytest.raises(LogitsFileError, match=r"token index 2: case 'c': the runner echoed token 8 where the case has 99"):
        scored_rows(dump, other, 2, case="c")
    with pytest.raises(LogitsFileError, match="rows are 8 logits wide, but the oracle's vocabulary has 9 entries"):
        scored_rows(dump, ids, 2, case="c", vocab_size=9)


def test_raw_tokens_file(tmp_path):
    p = write_raw_tokens(tmp_path / "t.json", np.array([1, 2, 3]))
    assert json.loads(p.read_text()) == {"tokens": [1, 2, 3]}
    assert read_raw_tokens(p) == [1, 2, 3]


# -- the evaluation layout (what llm-runner writes for --raw-tokens) ------------------------------------

def test_positions_layout_round_trips_and_maps_rows(tmp_path):
    ids = np.array([5, 6, 7, 8, 9, 10])
    logits = np.random.default_rng(3).normal(size=(5, 16)).astype(np.float16)
    logits[1, 2] = np.inf
    p = write_logits_file(tmp_path / "e.json", ids[1:], logits, layout="positions", context_ids=ids[:1])
    doc = json.loads(p.read_text())
    assert doc["context_tokens"] == [5] and doc["continuation_tokens"] == [6, 7, 8, 9, 10]
    assert list(doc["positions"][0]) == ["index", "logits_base64", "target_log_prob", "target_probability",
                                         "target_text", "target_token"]
    dump = read_logits_file(p)
    assert (dump.layout, dump.first, dump.context_ids.tolist()) == ("positions", 1, [5])
    assert np.array_equal(dump.logits.view(np.uint16), logits.view(np.uint16))
    assert np.array_equal(scored_rows(dump, ids, 3, case="c"), logits[2:])


def test_positions_layout_with_a_longer_context(tmp_path):
    ids = np.array([5, 6, 7, 8, 9, 10])
    logits = np.arange(3 * 16, dtype=np.float16).reshape(3, 16)
    dump = read_logits_file(write_logits_file(tmp_path / "e.json", ids[3:], logits, layout="positions",
                                              context_ids=ids[:3]))
    assert dump.first == 3
    assert np.array_equal(scored_rows(dump, ids, 2, case="c"), logits[1:])   # x[4], x[5]
    with pytest.raises(LogitsFileError, match="the dump's rows start at token 3, after the first scored position 2"):
        scored_rows(dump, ids, 4, case="c")
    other = ids.copy()
    other[1] = 60
    with pytest.raises(LogitsFileError, match=r"context tokens \[5, 6, 7\] are not the case's first 3 tokens"):
        scored_rows(dump, other, 2, case="c")


def test_positions_layout_inconsistencies(tmp_path):
    row = encode_row(np.ones(4, dtype=np.float16))
    base = {"context_tokens": [1], "continuation_tokens": [2, 3],
            "positions": [{"index": 0, "target_token": 2, "logits_base64": row},
                          {"index": 1, "target_token": 3, "logits_base64": row}]}
    p = tmp_path / "e.json"
    p.write_text(json.dumps({**base, "continuation_tokens": [2, 4]}))
    with pytest.raises(LogitsFileError, match="'continuation_tokens' are not the positions' target tokens"):
        read_logits_file(p)
    p.write_text(json.dumps({**base, "positions": base["positions"][::-1]}))
    with pytest.raises(LogitsFileError, match=r"token index 0: position 'index' 1 out of order"):
        read_logits_file(p)
    p.write_text(json.dumps({**base, "positions": [{"index": 0, "target_token": 2, "top_k": []}]}))
    with pytest.raises(LogitsFileError, match="a top-K file: rerun with --save-logits-length full"):
        read_logits_file(p)
