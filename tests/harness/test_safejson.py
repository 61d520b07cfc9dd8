"""harness.safejson: limits are measured outside strings, before any object is built."""

from __future__ import annotations

import pytest

from harness import safejson


def test_brackets_inside_strings_do_not_count():
    text = '{"a": "[[[[{{{{", "b\\"[[": ["]]]]", "\\\\"], "c": {"d": [1, 2]}}'
    assert safejson.measure(text) == (3, 4, 4)  # depth, containers, commas
    assert safejson.loads(text, max_depth=3)["b\"[["] == ["]]]]", "\\"]


@pytest.mark.parametrize("text,kw,needle", [
    ("[" * 200_000 + "]" * 200_000, {}, "nested 200000 deep"),
    ('{"a": ' * 70 + "1" + "}" * 70, {}, "nested 70 deep"),
    ("[" + "[]," * 99 + "[]]", {"max_containers": 50}, "101 arrays and objects"),
    ("[" + "1," * 99 + "1]", {"max_separators": 50}, "99 values"),
])
def test_limits_are_refused_with_a_value_error(text, kw, needle):
    with pytest.raises(safejson.JSONLimitError, match=needle):
        safejson.loads(text, **kw)
    with pytest.raises(ValueError):
        safejson.loads(text.encode(), **kw)


def test_a_text_within_the_limits_parses_as_json_does():
    assert safejson.loads("[" * 64 + "]" * 64) == eval("[" * 63 + "[]" + "]" * 63)
    assert safejson.loads(b'{"x": [1, 2.5, null, true, "\\u00e9"]}') == {"x": [1, 2.5, None, True, "é"]}
