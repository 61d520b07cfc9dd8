"""Parsing JSON from files that may be hostile: nesting and size are checked before `json.loads`.

`json.loads` recurses once per level of nesting (a header nested 200,000 deep ends in a
RecursionError) and builds a Python object per value, which can take 20 times the bytes of the
text ("[]," is 3 bytes, an empty list 56). `loads` first measures the text with a few vectorised
passes (strings blanked out, then bracket depth and value counts), and refuses what exceeds the
caller's limits with a `JSONLimitError` (a ValueError) saying which limit, before any object is built.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 64
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_CHUNK = 1 << 22


class JSONLimitError(ValueError):
    """The text is beyond a limit (depth, containers, values): refused before it is parsed."""


def measure(raw: bytes | str) -> tuple[int, int, int]:
    """(deepest nesting, containers, separators) of JSON text, counting outside strings only."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    bare = _STRING.sub(b'""', raw)
    depth = deepest = containers = separators = 0
    for i in range(0, len(bare), _CHUNK):
        a = np.frombuffer(bare, np.uint8, count=min(_CHUNK, len(bare) - i), offset=i)
        separators += int(np.count_nonzero(a == 0x2C))
        folded = a & 0xDF  # '[' 0x5B and '{' 0x7B fold to 0x5B; ']' 0x5D and '}' 0x7D to 0x5D
        opens = folded == 0x5B
        idx = np.flatnonzero(opens | (folded == 0x5D))
        if idx.size:  # the running depth over the brackets alone, not over every byte
            step = np.where(opens[idx], 1, -1).astype(np.int32)
            containers += int(np.count_nonzero(step > 0))
            running = depth + np.cumsum(step, dtype=np.int64)
            deepest = max(deepest, int(running.max()))
            depth = int(running[-1])
    return deepest, containers, separators


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH, max_containers: int | None = None,
          max_separators: int | None = None) -> Any:
    """`json.loads` after checking the limits; raises JSONLimitError or json.JSONDecodeError (both ValueError).

    Integers of more than sys.get_int_max_str_digits() digits also raise ValueError (from json itself).
    """
    brackets = (b"[", b"{") if isinstance(raw, bytes) else ("[", "{")
    opens = raw.count(brackets[0]) + raw.count(brackets[1])
    if opens <= min(max_depth, max_containers if max_containers is not None else opens) and max_separators is None:
        return json.loads(raw)  # so few brackets that no limit can be passed: nothing to measure
    deepest, containers, separators = measure(raw)
    if deepest > max_depth:
        raise JSONLimitError(f"nested {deepest} deep (at most {max_depth})")
    if max_containers is not None and containers > max_containers:
        raise JSONLimitError(f"{containers} arrays and objects (at most {max_containers})")
    if max_separators is not None and separators > max_separators:
        raise JSONLimitError(f"{separators} values (at most {max_separators})")
    return json.loads(raw)
