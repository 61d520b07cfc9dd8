"""Markdown code fences that the text inside cannot close (shared by every Markdown renderer)."""

from __future__ import annotations

from typing import Iterable


def longest_backticks(text: str) -> int:
    """The longest run of backticks in `text`."""
    best = run = 0
    for c in text:
        run = run + 1 if c == "`" else 0
        best = max(best, run)
    return best


def fence_for(lines: Iterable[str]) -> str:
    """A backtick fence longer than any backtick run in the lines (at least three)."""
    return "`" * max(3, max(map(longest_backticks, lines), default=0) + 1)
