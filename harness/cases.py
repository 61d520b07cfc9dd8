"""Case sets: JSONL files of prompts (DESIGN.md, "Teacher forcing").

One JSON object a line:

    {"id": "greeting", "prompt": "Hello, my name is"}                 # continuation: oracle greedy, 16 tokens
    {"id": "ids", "prompt_ids": [12, 7, 99], "new_tokens": 8}         # token ids, 8 greedy tokens
    {"id": "fixed", "prompt": "2 + 2 =", "continuation": " 4"}        # given continuation (scored as is)
    {"id": "fixed-ids", "prompt_ids": [5, 6], "continuation_ids": [7, 8, 9]}

`id` defaults to `line-N`. Blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from . import safejson
from .errors import InputError
from .fileio import sha256_file

DEFAULT_NEW_TOKENS = 16
_KEYS = {"id", "prompt", "prompt_ids", "continuation", "continuation_ids", "new_tokens"}
_INT64_MAX = (1 << 63) - 1
_MAX_LINE_DEPTH = 4  # a case is an object holding lists of ids: 2 deep
MAX_CASE_ID_BYTES = 200  # a file name is at most 255 bytes; leave room for a suffix
# control, format (bidi overrides, zero-width), surrogate, private-use and unassigned code points,
# line and paragraph separators: none belongs in a name that is printed, logged and made a file name
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def bundled_cases_path() -> Path:
    """The case set shipped for the bundled fixture model."""
    return Path(str(resources.files("harness") / "data" / "cases" / "fixture.jsonl"))


@dataclass(frozen=True)
class CaseSpec:
    """A case as written in the file: text or ids, before tokenization."""

    id: str
    prompt: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    continuation: str | None = None
    continuation_ids: tuple[int, ...] | None = None
    new_tokens: int = DEFAULT_NEW_TOKENS
    line: int = 0

    @property
    def has_continuation(self) -> bool:
        return self.continuation is not None or self.continuation_ids is not None


@dataclass(frozen=True)
class Case:
    """A tokenized case. `continuation_ids` is None until the oracle makes it (greedy)."""

    id: str
    prompt_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...] | None
    new_tokens: int

    @property
    def input_ids(self) -> tuple[int, ...]:
        if self.continuation_ids is None:
            raise ValueError(f"case {self.id!r} has no continuation yet")
        return self.prompt_ids + self.continuation_ids


@dataclass(frozen=True)
class CaseSet:
    path: Path
    sha256: str
    specs: tuple[CaseSpec, ...]

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self):
        return iter(self.specs)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.specs]


def case_id_problem(cid: object) -> str | None:
    """Why `cid` cannot be a case id, or None if it can: the one case-id rule of every reader and writer.

    A case id names tensors (`C/input_ids`), lines of reports and terminal output, and files
    (`import --emit-raw-tokens DIR` writes DIR/C...), so it must be a single safe path component:
    a non-empty string of at most MAX_CASE_ID_BYTES UTF-8 bytes, without '/' or '\\', not '.' or
    '..', without surrounding white space, and without control, format, surrogate, private-use or
    unassigned characters or line separators.
    """
    if not isinstance(cid, str):
        return f"a case id must be a string, not {type(cid).__name__}"
    if not cid:
        return "a case id must not be empty"
    for ch in ("" if cid.isascii() and cid.isprintable() else cid):  # the common case without a loop
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            return f"a case id must not hold control or invisible characters (U+{ord(ch):04X})"
    if "/" in cid or "\\" in cid:
        return "a case id must not hold '/' or '\\' (it names tensors and files)"
    if cid in (".", ".."):
        return f"a case id must not be {cid!r} (it names files)"
    if cid != cid.strip():
        return "a case id must not start or end with white space"
    if len(cid.encode("utf-8")) > MAX_CASE_ID_BYTES:
        return f"a case id must be at most {MAX_CASE_ID_BYTES} bytes of UTF-8"
    return None


def _int_list(path: Path, lineno: int, key: str, value: Any) -> tuple[int, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= _INT64_MAX for t in value)):
        raise InputError(f"{path}:{lineno}: {key!r} must be a non-empty list of non-negative int64 integers")
    return tuple(value)


def parse_case(obj: Any, path: Path, lineno: int) -> CaseSpec:
    if not isinstance(obj, dict):
        raise InputError(f"{path}:{lineno}: a case must be a JSON object")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise InputError(f"{path}:{lineno}: unknown key {unknown[0]!r} (valid: {', '.join(sorted(_KEYS))})")
    cid = obj.get("id", f"line-{lineno}")
    problem = case_id_problem(cid)
    if problem:
        raise InputError(f"{path}:{lineno}: 'id' {cid!r} is refused: {problem}")
    if ("prompt" in obj) == ("prompt_ids" in obj):
        raise InputError(f"{path}:{lineno}: case {cid!r} needs exactly one of 'prompt' or 'prompt_ids'")
    if "continuation" in obj and "continuation_ids" in obj:
        raise InputError(f"{path}:{lineno}: case {cid!r} gives both 'continuation' and 'continuation_ids'")
    prompt = obj.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise InputError(f"{path}:{lineno}: case {cid!r}: 'prompt' must be a non-empty string")
    cont = obj.get("continuation")
    if cont is not None and (not isinstance(cont, str) or not cont):
        raise InputError(f"{path}:{lineno}: case {cid!r}: 'continuation' must be a non-empty string")
    nt = obj.get("new_tokens", DEFAULT_NEW_TOKENS)
    if not isinstance(nt, int) or isinstance(nt, bool) or nt < 1:
        raise InputError(f"{path}:{lineno}: case {cid!r}: 'new_tokens' must be a positive integer")
    return CaseSpec(
        id=cid,
        prompt=prompt,
        prompt_ids=_int_list(path, lineno, "prompt_ids", obj["prompt_ids"]) if "prompt_ids" in obj else None,
        continuation=cont,
        continuation_ids=(_int_list(path, lineno, "continuation_ids", obj["continuation_ids"])
                          if "continuation_ids" in obj else None),
        new_tokens=nt,
        line=lineno,
    )


def load_cases(path: str | os.PathLike | None = None) -> CaseSet:
    """Read and validate a JSONL case file (default: the bundled fixture set)."""
    p = Path(path) if path is not None else bundled_cases_path()
    if not p.is_file():
        raise InputError(f"{p}: no such case file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    specs: list[CaseSpec] = []
    seen: dict[str, int] = {}
    # lines end at '\n' only: str.splitlines would also split at U+2028 and friends, which JSON allows raw in strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            obj = safejson.loads(s, max_depth=_MAX_LINE_DEPTH)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        except ValueError as e:  # nested too deep, or an integer of thousands of digits
            raise InputError(f"{p}:{lineno}: refused JSON ({str(e).splitlines()[0]})") from None
        spec = parse_case(obj, p, lineno)
        if spec.id in seen:
            raise InputError(f"{p}:{lineno}: duplicate case id {spec.id!r} (first on line {seen[spec.id]})")
        seen[spec.id] = lineno
        specs.append(spec)
    if not specs:
        raise InputError(f"{p}: the case file holds no cases")
    return CaseSet(p, sha256_file(p), tuple(specs))


def tokenize_case(spec: CaseSpec, tokenizer, vocab_size: int | None = None) -> Case:
    """Turn a CaseSpec into token ids with a Hugging Face tokenizer (no special tokens added)."""
    def enc(text: str) -> tuple[int, ...]:
        return tuple(int(t) for t in tokenizer.encode(text, add_special_tokens=False))

    prompt = spec.prompt_ids if spec.prompt_ids is not None else enc(spec.prompt or "")
    if not prompt:
        raise InputError(f"case {spec.id!r} (line {spec.line}): prompt encodes to no tokens")
    cont: tuple[int, ...] | None
    if spec.continuation_ids is not None:
        cont = spec.continuation_ids
    elif spec.continuation is not None:
        cont = enc(spec.continuation)
    else:
        cont = None
    if vocab_size is not None:
        for t in prompt + (cont or ()):
            if t >= vocab_size:
                raise InputError(f"case {spec.id!r} (line {spec.line}): token id {t} is outside the "
                                 f"model's vocabulary of {vocab_size}")
    return Case(spec.id, prompt, cont, len(cont) if cont is not None else spec.new_tokens)


def select_shard(items: Sequence, shard: str | None) -> list:
    """`i/n`: every n-th item starting at i (0-based)."""
    if shard is None:
        return list(items)
    try:
        i_s, n_s = shard.split("/")
        i, n = int(i_s), int(n_s)
        if n < 1 or not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise InputError(f"--shard {shard!r}: expected i/n with 0 <= i < n, e.g. 0/4") from None
    return list(items[i::n])
