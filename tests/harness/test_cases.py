"""Case files: every accepted form, and one-line errors that name the file and line."""

from __future__ import annotations

import json

import pytest

from harness.cases import (DEFAULT_NEW_TOKENS, bundled_cases_path, case_id_problem, load_cases, select_shard,
                           tokenize_case)
from harness.errors import InputError


def write(tmp_path, lines):
    p = tmp_path / "cases.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_bundled_case_set_has_at_least_eight_prompts():
    cs = load_cases()
    assert cs.path == bundled_cases_path()
    assert len(cs) >= 8 and len(set(cs.ids)) == len(cs)
    assert all(s.prompt and not s.has_continuation and s.new_tokens == DEFAULT_NEW_TOKENS for s in cs)


def test_all_forms(tmp_path):
    p = write(tmp_path, [
        '{"id": "a", "prompt": "Hello"}',
        "# a comment",
        "",
        '{"prompt_ids": [1, 2, 3], "new_tokens": 4}',
        '{"id": "c", "prompt": "x", "continuation": " y"}',
        '{"id": "d", "prompt_ids": [5], "continuation_ids": [6, 7]}',
    ])
    cs = load_cases(p)
    assert cs.ids == ["a", "line-4", "c", "d"]
    assert cs.specs[1].prompt_ids == (1, 2, 3) and cs.specs[1].new_tokens == 4
    assert cs.specs[2].continuation == " y" and cs.specs[3].continuation_ids == (6, 7)
    assert len(cs.sha256) == 64


class FakeTokenizer:
    """Stands in for a tokenizer's encode only; the real tokenizer is exercised in test_fixture."""

    def encode(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return [ord(ch) for ch in text]


def test_tokenize_case(tmp_path):
    cs = load_cases(write(tmp_path, ['{"id": "a", "prompt": "AB", "continuation": "C"}',
                                     '{"id": "b", "prompt_ids": [1, 2], "new_tokens": 3}']))
    a = tokenize_case(cs.specs[0], FakeTokenizer())
    assert a.prompt_ids == (65, 66) and a.continuation_ids == (67,) and a.input_ids == (65, 66, 67)
    b = tokenize_case(cs.specs[1], FakeTokenizer())
    assert b.continuation_ids is None and b.new_tokens == 3
    with pytest.raises(ValueError):
        b.input_ids
    with pytest.raises(InputError, match=r"case 'a' \(line 1\): token id 66 is outside"):
        tokenize_case(cs.specs[0], FakeTokenizer(), vocab_size=66)


@pytest.mark.parametrize("line,needle", [
    ('{"id": "a", "prompt": "x"', "malformed JSON"),
    ('[1, 2]', "must be a JSON object"),
    ('{"id": "a"}', "exactly one of 'prompt' or 'prompt_ids'"),
    ('{"id": "a", "prompt": "x", "prompt_ids": [1]}', "exactly one of"),
    ('{"id": "a", "prompt": "x", "colour": 1}', "unknown key 'colour'"),
    ('{"id": "a/b", "prompt": "x"}', "'id' 'a/b' is refused: a case id must not hold '/'"),
    ('{"id": "a", "prompt_ids": [1, -2]}', "'prompt_ids' must be a non-empty list"),
    ('{"id": "a", "prompt_ids": [1, ' + str(2**70) + ']}', "non-negative int64 integers"),
    ('{"id": "a", "prompt_ids": [1, 2.5]}', "'prompt_ids' must be"),
    ('{"id": "a", "prompt": "x", "new_tokens": 0}', "'new_tokens' must be a positive integer"),
    ('{"id": "a", "prompt": "x", "continuation": "y", "continuation_ids": [1]}', "both"),
    ('{"id": "a", "prompt": ""}', "'prompt' must be a non-empty string"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, needle):
    p = write(tmp_path, ['{"id": "ok", "prompt": "fine"}', line])
    with pytest.raises(InputError) as e:
        load_cases(p)
    assert f"{p}:2:" in str(e.value) and needle in str(e.value)
    assert "\n" not in str(e.value)


def test_duplicate_ids_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="duplicate case id 'a' \\(first on line 1\\)"):
        load_cases(write(tmp_path, ['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}']))
    with pytest.raises(InputError, match="holds no cases"):
        load_cases(write(tmp_path, ["# nothing", ""]))
    with pytest.raises(InputError, match="no such case file"):
        load_cases(tmp_path / "missing.jsonl")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        load_cases(bad)


def test_select_shard():
    items = list(range(10))
    assert select_shard(items, None) == items
    assert select_shard(items, "1/3") == [1, 4, 7]
    parts = [select_shard(items, f"{i}/4") for i in range(4)]
    assert sorted(sum(parts, [])) == items
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(InputError, match="--shard"):
            select_shard(items, bad)


def test_a_raw_line_separator_inside_a_string_is_text_not_a_line_break(tmp_path):
    # U+2028/U+2029/U+0085 are valid raw inside JSON strings; str.splitlines would break the line there
    p = write(tmp_path, ['{"id": "a", "prompt": "one\u2028two\u2029three\x85four"}',
                         '{"id": "b", "prompt": "next"}', '{"id": "b", "prompt": "again"}'])
    with pytest.raises(InputError, match=r":3: duplicate case id 'b' \(first on line 2\)"):
        load_cases(p)  # line numbers count '\n' only, as an editor does
    p = write(tmp_path, ['{"id": "a", "prompt": "one\u2028two\u2029three\x85four"}'])
    assert load_cases(p).specs[0].prompt == "one\u2028two\u2029three\x85four"


@pytest.mark.parametrize("cid", ["..", ".", "a\\b", "nul\x00", "\x1b]0;title\x07", "rtl\u202e", "sep\u2028",
                                 "x" * 201, "\ud800"])
def test_the_loader_applies_the_one_case_id_rule(tmp_path, cid):
    p = tmp_path / "cases.jsonl"
    p.write_text(json.dumps({"id": cid, "prompt": "x"}) + "\n", encoding="utf-8")  # JSON escapes keep it one line
    with pytest.raises(InputError) as e:
        load_cases(p)
    assert f"{p}:1:" in str(e.value) and case_id_problem(cid) in str(e.value)


def test_case_ids_that_are_safe_are_kept():
    for cid in ("greeting", "a b", "café", "a..b", "x" * 200, "日本語", "line-4"):
        assert case_id_problem(cid) is None, cid


@pytest.mark.parametrize("line,needle", [
    ("[" * 200_000 + "]" * 200_000, "nested 200000 deep"),
    ('{"id": "a", "prompt_ids": [' + "9" * 5000 + "]}", "refused JSON"),
], ids=["200000-deep", "5000-digit-id"])
def test_a_hostile_line_is_one_clear_error(tmp_path, line, needle):
    p = write(tmp_path, ['{"id": "ok", "prompt": "fine"}', line])
    with pytest.raises(InputError, match=needle) as e:
        load_cases(p)
    assert f"{p}:2:" in str(e.value)
