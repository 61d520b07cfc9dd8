"""Token text is untrusted: make it visible, then escape it for the medium it is shown in.

A token can be `<script>`, a quote, a pipe, a newline, an ANSI escape, an RTL override, a zero-width
joiner or half of a UTF-8 sequence. Every renderer shows it through `visible()` first, so a reader
sees exactly what the token holds and the page or terminal is never steered by it:

    "\\n" "\\t" "\\r"            for newline, tab, carriage return
    ⟨0x1b⟩                    for other C0/C1 control bytes and DEL
    ⟨U+202E⟩                  for bidi controls, zero-width and other invisible format characters
    ⟨0x80⟩                    for a byte that was not valid UTF-8 (a surrogate-escaped str)
    ⟨U+D800⟩                  for any other lone surrogate

`⟨` itself is shown as ⟨U+27E8⟩ so that the notation cannot be forged. Inside a single token
(`token()`), spaces are shown as `␣`, because " the" and "the" are different tokens.
"""

from __future__ import annotations

import html
import re
import unicodedata

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}
_MARK = "\u27e8"
SPACE = "\u2423"


def _char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    o = ord(ch)
    if o < 0x20 or 0x7F <= o < 0xA0:
        return f"\u27e8{o:#04x}\u27e9"
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: the raw byte that failed to decode
        return f"\u27e8{o - 0xDC00:#04x}\u27e9"
    if 0xD800 <= o <= 0xDFFF or ch == _MARK:
        return f"\u27e8U+{o:04X}\u27e9"
    cat = unicodedata.category(ch)
    # Cf: bidi marks and overrides, zero-width (non)joiners, BOM; Zl/Zp: line/paragraph separators.
    if cat in ("Cf", "Zl", "Zp", "Co", "Cn") or ch in "\u00a0\u2028\u2029":
        return f"\u27e8U+{o:04X}\u27e9"
    return ch


def visible(text: object) -> str:
    """Text with every control, invisible or malformed character spelled out (see module doc)."""
    if text is None:
        return ""
    return "".join(_char(c) for c in str(text))


def token(text: object) -> str:
    """One token's text made visible, spaces as ␣ (a literal ␣ as ⟨U+2423⟩)."""
    if text is None:
        return ""
    return "".join(SPACE if c == " " else f"\u27e8U+{ord(c):04X}\u27e9" if c == SPACE else _char(c)
                   for c in str(text))


def context(text: object, width: int = 40) -> str:
    """The last `width` characters of the text before a position, made visible, '…' if cut."""
    if text is None:
        return ""
    s = str(text)
    cut = len(s) > width
    return ("…" if cut else "") + visible(s[-width:] if cut else s)


def html_text(s: str) -> str:
    """Already-visible text for HTML element content or an attribute value."""
    return html.escape(s, quote=True)


# Characters that mean something anywhere in a line (code, emphasis, links, cells, strikethrough,
# math, mentions); `-+#=.` etc. only matter at the start of a line and are escaped only there.
_MD_INLINE = set("\\`*_[]|~$@")
_MD_LINE_START = set("-+#=!")


def md_text(s: str) -> str:
    """Already-visible text for a Markdown table cell or paragraph.

    Inline Markdown punctuation is backslash-escaped (so `|` cannot end a cell and `*` cannot start
    emphasis); `<`, `>` and `&` become entities, because many renderers pass raw HTML through.
    """
    out = []
    for i, c in enumerate(s):
        if c == "<":
            out.append("&lt;")
        elif c == ">":
            out.append("&gt;")
        elif c == "&":
            out.append("&amp;")
        elif c in _MD_INLINE or (i == 0 and c in _MD_LINE_START):
            out.append("\\" + c)
        elif c == "." and s[:i].isdigit() and s[i + 1:i + 2] in ("", " "):  # "1. " starts a list
            out.append("\\.")
        else:
            out.append(c)
    return "".join(out)


# What may not reach a terminal raw: C0 controls but tab, newline, carriage return and backspace
# (layout, which progress bars use; data fields go through `visible()`, which spells those out
# too), DEL and the C1 controls (ESC and CSI start the sequences that recolour, retitle, move the
# cursor or write the clipboard), bidi and zero-width format characters (they reorder or hide what
# is shown) and lone surrogates (not encodable: the print itself would crash).
_TERMINAL_UNSAFE = re.compile("[\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e"
                              "\u2060-\u2069\ufeff\ud800-\udfff]")


def terminal(text: object) -> str:
    """Text for a terminal line: every character that could steer the terminal spelled out as in
    `visible()`; the rest — backslashes, newlines, ⟨ — left alone, so already-visible text is unchanged.

    The flipgate CLI passes everything it writes to standard output and standard error through
    this (harness.cli), whatever printed it: a case id, a prompt, a path or an exception message.
    """
    return _TERMINAL_UNSAFE.sub(lambda m: _char(m.group()), str(text))
