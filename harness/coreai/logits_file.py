"""The `llm-runner --save-logits FILE --save-logits-length full` format, read and written.

apple/coreai-models' `LogitsWriter` writes one JSON object:

    {"tokens": [{"token_id": 17, "incremental_text": " the", "logits_base64": "..."}, ...]}

one entry per generation step: the token of that step and the base64 of the raw little-endian
logits the step produced (float16 from the sequential engine; the writer is generic over the float
type, so float32 rows are read too when the vocabulary size tells them apart). With
`--raw-tokens F.json` (`{"tokens": [x0, x1, ...]}`) and the sequential engine the run is teacher
forced: x0 is context, and step j consumes x[j] and records the logits that predict x[j+1], with
`token_id` = x[j+1]. So N raw tokens give N - 1 rows, and DESIGN.md's trace row k (the prediction of
x[P+k]) is file row P + k - 1.

Every error names the file and the token index (the row) at fault; rows are decoded exactly (no
float round trip), so NaN and Inf bit patterns survive and are judged `invalid` by the gate.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..fileio import atomic_path

ROW_KEYS = ("token_id", "incremental_text", "logits_base64")
_B64_ALPHABET = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")
_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


class LogitsFileError(InputError):
    """A `--save-logits` file that cannot be read; the message names the file and the row."""

    def __init__(self, path, rule: str, row: int | None = None):
        self.path = str(path)
        self.row = row
        where = self.path + (f": token index {row}" if row is not None else "")
        super().__init__(f"{where}: {rule}")


@dataclass(frozen=True)
class LogitsDump:
    """One `--save-logits` file: row j holds the logits of step j and the token that step names."""

    path: Path
    token_ids: np.ndarray   # int64 [rows]
    texts: tuple[str, ...]
    logits: np.ndarray      # [rows, width], float16 (or float32), exactly as written

    @property
    def rows(self) -> int:
        return int(self.logits.shape[0])

    @property
    def width(self) -> int:
        return int(self.logits.shape[1])


def _b64decode(text: str, path, row: int) -> bytes:
    raw = text.strip().encode("ascii", errors="replace")
    body = raw.rstrip(b"=")
    # Padding is optional on read (some encoders drop it); anything else outside the alphabet is an error.
    if not _B64_ALPHABET.match(raw) or b"=" in body:
        bad = next((chr(c) for c in body if not (chr(c).isalnum() or chr(c) in "+/")), "=")
        raise LogitsFileError(path, f"logits_base64 is not base64 (character {bad!r})", row)
    if len(body) % 4 == 1:
        raise LogitsFileError(path, f"logits_base64 is truncated ({len(body)} base64 characters cannot "
                                    f"end a whole byte)", row)
    try:
        return base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    except binascii.Error as e:
        raise LogitsFileError(path, f"logits_base64 is not base64 ({e})", row) from None


def _element_dtype(nbytes: int, dtype: str, vocab_size: int | None) -> np.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if vocab_size and nbytes == 4 * vocab_size:
        return _DTYPES["float32"]
    return _DTYPES["float16"]


def read_logits_file(path: str | os.PathLike, *, dtype: str = "auto", vocab_size: int | None = None) -> LogitsDump:
    """Read and validate a `--save-logits ... --save-logits-length full` file.

    `dtype`: "float16" (the sequential engine's), "float32", or "auto": float16 unless `vocab_size`
    is given and the rows are exactly 4 bytes per vocabulary entry. Rows must all be as wide as the
    first; a row that is not is reported by its token index (a truncated or corrupted row).
    """
    p = Path(path)
    if dtype not in (*_DTYPES, "auto"):
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, auto")
    if not p.is_file():
        raise LogitsFileError(p, "no such logits file" if not p.exists() else "not a regular file")
    data = p.read_bytes()
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as e:
        raise LogitsFileError(p, f"not UTF-8 JSON ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        # A file cut short (the runner killed mid-write, a partial copy) no longer ends its object.
        what = "truncated" if data.strip()[-1:] not in (b"}", b"]") else "malformed"
        raise LogitsFileError(p, f"{what} JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(doc, dict) or "tokens" not in doc:
        raise LogitsFileError(p, 'not an llm-runner logits file (expected {"tokens": [...]})')
    rows = doc["tokens"]
    if not isinstance(rows, list):
        raise LogitsFileError(p, "'tokens' is not a list")
    if not rows:
        raise LogitsFileError(p, "'tokens' is empty: the runner recorded no logits")
    ids: list[int] = []
    texts: list[str] = []
    data: list[bytes] = []
    for j, row in enumerate(rows):
        if not isinstance(row, dict):
            raise LogitsFileError(p, "entry is not a JSON object", j)
        if "logits_base64" not in row:
            hint = " (a top-K file: rerun with --save-logits-length full)" if "top_logits" in row else ""
            raise LogitsFileError(p, f"entry has no 'logits_base64'{hint}", j)
        tid = row.get("token_id")
        if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
            raise LogitsFileError(p, f"'token_id' must be a non-negative integer, found {tid!r}", j)
        text = row.get("incremental_text", "")
        if not isinstance(text, str):
            raise LogitsFileError(p, "'incremental_text' is not a string", j)
        b64 = row["logits_base64"]
        if not isinstance(b64, str):
            raise LogitsFileError(p, "'logits_base64' is not a string", j)
        raw = _b64decode(b64, p, j)
        if not raw:
            raise LogitsFileError(p, "logits_base64 is empty", j)
        ids.append(tid)
        texts.append(text)
        data.append(raw)
    dt = _element_dtype(len(data[0]), dtype, vocab_size)
    nbytes = len(data[0])
    if nbytes % dt.itemsize:
        raise LogitsFileError(p, f"row holds {nbytes} bytes, not a whole number of {dt.name} values "
                                 f"(truncated?)", 0)
    for j, raw in enumerate(data):
        if len(raw) != nbytes:
            short = "shorter" if len(raw) < nbytes else "longer"
            raise LogitsFileError(p, f"row holds {len(raw) // dt.itemsize} {dt.name} values "
                                     f"({len(raw)} bytes), {short} than row 0's {nbytes // dt.itemsize} "
                                     f"(truncated or corrupted row)", j)
    logits = np.frombuffer(b"".join(data), dtype=dt).reshape(len(data), nbytes // dt.itemsize)
    return LogitsDump(p, np.asarray(ids, dtype=np.int64), tuple(texts), logits.astype(dt.newbyteorder("="), copy=False))


def encode_row(logits: np.ndarray) -> str:
    """base64 of one row's raw little-endian bytes (float16 or float32), as LogitsWriter writes it."""
    a = np.asarray(logits)
    if a.dtype not in (np.float16, np.float32):
        raise ValueError(f"logits rows are float16 or float32, not {a.dtype}")
    return base64.b64encode(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def write_logits_file(path: str | os.PathLike, token_ids: Sequence[int], logits: np.ndarray,
                      texts: Iterable[str] | None = None) -> Path:
    """Write rows in LogitsWriter's format (pretty-printed, sorted keys), atomically."""
    lg = np.asarray(logits)
    if lg.ndim != 2 or lg.shape[0] != len(token_ids):
        raise ValueError(f"logits must be [rows={len(token_ids)}, vocab], got {list(lg.shape)}")
    texts = list(texts) if texts is not None else [""] * len(token_ids)
    doc = {"tokens": [{"incremental_text": t, "logits_base64": encode_row(row), "token_id": int(tid)}
                      for tid, t, row in zip(token_ids, texts, lg)]}
    dest = Path(path)
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    return dest


def write_raw_tokens(path: str | os.PathLike, token_ids: Sequence[int]) -> Path:
    """The `--raw-tokens` input: {"tokens": [x0, x1, ...]}."""
    dest = Path(path)
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps({"tokens": [int(t) for t in token_ids]}), encoding="utf-8")
    return dest


def read_raw_tokens(path: str | os.PathLike) -> list[int]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: cannot read raw tokens ({e.__class__.__name__}: {e})") from None
    toks = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in toks):
        raise InputError(f'{p}: raw tokens must be {{"tokens": [non-negative integers]}}')
    return toks


def scored_rows(dump: LogitsDump, input_ids: np.ndarray, rows: int, *, case: str,
                vocab_size: int | None = None) -> np.ndarray:
    """The trace rows of a case from a teacher-forced dump (DESIGN.md, "Teacher forcing").

    Checks, naming the file, the case and the token index: one row per token after the first
    (N - 1 rows; off by one either way is reported as such), each row's echoed token id equal to
    the case's token it predicts, and the row width equal to the oracle's vocabulary.
    Returns the last `rows` rows: row k predicts x[P + k].
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    n = int(ids.shape[0])
    where = f"case {case!r}"
    if dump.rows != n - 1:
        if dump.rows == n:
            why = ("one row more than the case's tokens after the first: was the first token scored too, "
                   "or a token appended?")
        elif dump.rows == n - 2:
            why = "one row short: the runner stopped before the last token"
        else:
            why = "the dump was made from another token sequence"
        raise LogitsFileError(dump.path, f"{where}: {dump.rows} rows for {n} raw tokens, expected {n - 1} "
                                         f"(one per token after the first); {why}")
    if vocab_size is not None and dump.width != vocab_size:
        raise LogitsFileError(dump.path, f"{where}: rows are {dump.width} logits wide, but the oracle's "
                                         f"vocabulary has {vocab_size} entries (another model or tokenizer?)")
    bad = np.flatnonzero(dump.token_ids != ids[1:])
    if bad.size:
        j = int(bad[0])
        raise LogitsFileError(dump.path, f"{where}: the runner echoed token {int(dump.token_ids[j])} where the "
                                         f"case has {int(ids[j + 1])} (position {j + 1}; {bad.size} of "
                                         f"{dump.rows} rows differ): the dump was made from another sequence", j)
    if not 1 <= rows <= n - 1:
        raise ValueError(f"{where}: {rows} scored rows do not fit {n} tokens")
    return dump.logits[n - 1 - rows:]
