"""Token text is untrusted: every renderer's escaping, checked on hostile strings and at random."""

from __future__ import annotations

import html
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from reports.escape import context, html_text, md_text, token, visible


def test_controls_are_spelled_out():
    assert visible("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert visible("\x1b[31m") == "⟨0x1b⟩[31m"
    assert visible("\x00\x7f\x85") == "⟨0x00⟩⟨0x7f⟩⟨0x85⟩"


def test_backslash_and_the_marker_itself_cannot_forge_an_escape():
    # A token that literally reads `\n` or `⟨0x1b⟩` must not look like a newline or an ESC byte.
    assert visible("\\n") == "\\\\n" != visible("\n")
    assert visible("⟨0x1b⟩") == "⟨U+27E8⟩0x1b⟩" != visible("\x1b")


def test_bidi_zero_width_and_separators_are_visible():
    assert visible("a\u202eb") == "a⟨U+202E⟩b"
    assert visible("\u200b\u200d\u2066\u2069\ufeff") == "⟨U+200B⟩⟨U+200D⟩⟨U+2066⟩⟨U+2069⟩⟨U+FEFF⟩"
    assert visible("x\u2028y") == "x⟨U+2028⟩y"


def test_invalid_utf8_fragments():
    raw = b"ok\xe2\x82"  # half of the euro sign
    assert visible(raw.decode("utf-8", "surrogateescape")) == "ok⟨0xe2⟩⟨0x82⟩"
    assert visible("\ud800") == "⟨U+D800⟩"
    assert visible(raw.decode("utf-8", "replace")) == "ok\ufffd"  # the replacement char is visible as is


def test_token_shows_spaces_and_keeps_letters():
    assert token(" the") == "␣the"
    assert token("␣") == "⟨U+2423⟩" and token(" ") == "␣"
    assert token("日本語") == "日本語"
    assert token(None) == ""


def test_context_keeps_the_tail():
    assert context("x" * 50 + "END", 10) == "…" + "x" * 7 + "END"
    assert context("short\n", 40) == "short\\n"


def test_html_text_escapes_markup_and_quotes():
    s = html_text(visible("<script>alert('x')</script>\"&"))
    assert "<" not in s and ">" not in s and '"' not in s and "'" not in s
    assert html.unescape(s) == "<script>alert('x')</script>\"&"


def test_markdown_cannot_end_a_cell_or_open_markup():
    s = md_text("a|b`c*d_e[f](g)<b>&$x$~~y~~@you")
    assert "\\|" in s and "\\`" in s and "\\*" in s and "\\_" in s and "\\[" in s and "\\$" in s and "\\@" in s
    assert "<" not in s and ">" not in s and "&lt;b&gt;" in s and "&amp;" in s
    assert md_text("# title") == "\\# title" and md_text("1. item") == "1\\. item"
    assert md_text("0.5") == "0.5"  # numbers inside a line stay readable


_UNESCAPED_PIPE = re.compile(r"(?<!\\)(?:\\\\)*\|")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40))
def test_any_text_is_inert_everywhere(s):
    v = visible(s)
    # Nothing invisible or controlling survives.
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) <= 0xDFFF for c in v)
    assert "\u202e" not in v and "\u200b" not in v
    v.encode("utf-8")  # always writable
    h = html_text(v)
    assert "<" not in h and ">" not in h and '"' not in h
    m = md_text(v)
    assert "<" not in m and ">" not in m
    # Every pipe in a Markdown cell is escaped by an odd number of backslashes.
    assert not _UNESCAPED_PIPE.search(m)
