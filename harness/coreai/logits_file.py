"""`llm-runner --save-logits FILE --save-logits-length full` files, read and written.

apple/coreai-models' `LogitsWriter` writes full logits as base64 of the raw little-endian values
(`LogitsScalarType`, float16; the writer is generic, so float32 rows are read too when the
vocabulary size tells them apart), in one of two layouts:

  - generation (`saveFullJSON`):  {"tokens": [{"token_id", "incremental_text", "logits_base64"}, ...]}
    one entry per step: the token of that step and the logits that produced it;
  - evaluation (`saveEvaluationJSON`, what `--raw-tokens` writes in the llm-runner source read for
    this module): {"context_tokens": [...], "continuation_tokens": [...], "positions": [{"index",
    "target_token", "target_text", "target_probability", "target_log_prob", "logits_base64"}, ...],
    "total_log_probability", ...}, one position per continuation token.

Both are read into one `LogitsDump`: row j predicts token x[first + j], where `first` is 1 for the
generation layout (x0 is context, each step consumes x[j] and records the logits that predict
x[j+1], `token_id` = x[j+1]) and len(context_tokens) for the evaluation layout (1 when llm-runner
forces every raw token after the first). So N raw tokens give N - first rows, and DESIGN.md's trace
row k (the prediction of x[P+k]) is dump row P + k - first.

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
MAX_TOKEN_ID = 2**63 - 1  # token ids are int64 everywhere (traces, numpy); JSON integers are unbounded
_B64_CHAR = re.compile(rb"[A-Za-z0-9+/]")
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
    token_ids: np.ndarray   # int64 [rows]: the token each row predicts, as the runner echoed it
    texts: tuple[str, ...]
    logits: np.ndarray      # [rows, width], float16 (or float32), exactly as written
    first: int = 1          # row 0 predicts x[first]
    context_ids: np.ndarray | None = None  # x[0 .. first-1] where the file names them
    layout: str = "tokens"  # "tokens" (generation) or "positions" (evaluation)

    @property
    def rows(self) -> int:
        return int(self.logits.shape[0])

    @property
    def width(self) -> int:
        return int(self.logits.shape[1])


def _b64decode(text: str, path, row: int) -> bytes:
    raw = text.strip().encode("ascii", errors="replace")
    body = raw.rstrip(b"=")
    # Padding is optional on read (some encoders drop it); a body that cannot end a whole byte is cut short.
    if len(body) % 4 == 1:
        raise LogitsFileError(path, f"logits_base64 is truncated ({len(body)} base64 characters cannot "
                                    f"end a whole byte)", row)
    try:
        return base64.b64decode(body + b"=" * (-len(body) % 4) if len(body) % 4 else body, validate=True)
    except binascii.Error:
        bad = next((chr(c) for c in body if not _B64_CHAR.match(bytes([c]))), "=")
        raise LogitsFileError(path, f"logits_base64 is not base64 (character {bad!r})", row) from None


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
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LogitsFileError(p, f"cannot read ({e.strerror or e})") from None
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as e:
        raise LogitsFileError(p, f"not UTF-8 JSON ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        # A file cut short (the runner killed mid-write, a partial copy) no longer ends its object.
        what = "truncated" if data.strip()[-1:] not in (b"}", b"]") else "malformed"
        raise LogitsFileError(p, f"{what} JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise LogitsFileError(p, "JSON nested too deeply (an llm-runner file is two levels deep)") from None
    except ValueError as e:  # e.g. an integer literal of more digits than Python converts
        raise LogitsFileError(p, f"malformed JSON ({str(e).splitlines()[0][:120]})") from None
    del data  # a 27B dump is tens of MB: do not hold the text and the parsed document at once
    if isinstance(doc, dict) and "positions" in doc:
        layout, key, id_key, text_key = "positions", "positions", "target_token", "target_text"
    elif isinstance(doc, dict) and "tokens" in doc:
        layout, key, id_key, text_key = "tokens", "tokens", "token_id", "incremental_text"
    else:
        raise LogitsFileError(p, 'not an llm-runner logits file (expected {"tokens": [...]} or {"positions": [...]})')
    rows = doc[key]
    if not isinstance(rows, list):
        raise LogitsFileError(p, f"{key!r} is not a list")
    if not rows:
        raise LogitsFileError(p, f"{key!r} is empty: the runner recorded no logits")
    # Rows are decoded into one array sized from row 0; it holds only the rows that can be as wide as
    # row 0 (the loop below stops at the first that is not), so its size is bounded by the file's bytes.
    width0 = _b64_length(rows[0])
    storable = next((j for j, row in enumerate(rows) if _b64_length(row) != width0), len(rows))
    ids: list[int] = []
    texts: list[str] = []
    logits = None  # allocated from row 0's width; each row is decoded straight into it
    dt = nbytes = None
    for j, row in enumerate(rows):
        if not isinstance(row, dict):
            raise LogitsFileError(p, "entry is not a JSON object", j)
        if "logits_base64" not in row:
            hint = (" (a top-K file: rerun with --save-logits-length full)"
                    if {"top_logits", "top_k"} & set(row) else "")
            raise LogitsFileError(p, f"entry has no 'logits_base64'{hint}", j)
        index = row.get("index", j)
        if layout == "positions" and (not _is_int(index) or index != j):
            raise LogitsFileError(p, f"position 'index' {_show(index)} out of order (expected {j})", j)
        tid = row.get(id_key)
        if not _is_int(tid) or not 0 <= tid <= MAX_TOKEN_ID:
            raise LogitsFileError(p, f"{id_key!r} must be a non-negative 64-bit integer, found {_show(tid)}", j)
        text = row.get(text_key, "")
        if not isinstance(text, str):
            raise LogitsFileError(p, f"{text_key!r} is not a string", j)
        b64 = row["logits_base64"]
        if not isinstance(b64, str):
            raise LogitsFileError(p, "'logits_base64' is not a string", j)
        raw = _b64decode(b64, p, j)
        if not raw:
            raise LogitsFileError(p, "logits_base64 is empty", j)
        if logits is None:
            dt, nbytes = _element_dtype(len(raw), dtype, vocab_size), len(raw)
            if nbytes % dt.itemsize:
                raise LogitsFileError(p, f"row holds {nbytes} bytes, not a whole number of {dt.name} values "
                                         f"(truncated?)", 0)
            logits = np.empty((storable, nbytes // dt.itemsize), dtype=dt.newbyteorder("="))
        if len(raw) != nbytes:
            short = "shorter" if len(raw) < nbytes else "longer"
            raise LogitsFileError(p, f"row holds {len(raw) // dt.itemsize} {dt.name} values "
                                     f"({len(raw)} bytes), {short} than row 0's {nbytes // dt.itemsize} "
                                     f"(truncated or corrupted row)", j)
        logits[j] = np.frombuffer(raw, dtype=dt)
        ids.append(tid)
        texts.append(text)
    first, context = 1, None
    if layout == "positions":
        context = _id_list(doc.get("context_tokens"), p, "context_tokens")
        cont = doc.get("continuation_tokens")
        if cont is not None and _id_list(cont, p, "continuation_tokens").tolist() != ids:
            raise LogitsFileError(p, "'continuation_tokens' are not the positions' target tokens")
        if context is not None:
            if context.size == 0:
                raise LogitsFileError(p, "'context_tokens' is empty: the first token cannot be predicted")
            first = int(context.size)
    return LogitsDump(p, np.asarray(ids, dtype=np.int64), tuple(texts), logits, first, context, layout)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v) -> str:
    """A value as the message quotes it: short, whatever it is (an int of 10,000 digits, a deep list)."""
    if _is_int(v):
        return str(v) if v.bit_length() <= 64 else f"an integer of {v.bit_length()} bits"
    if isinstance(v, (list, dict)):
        return f"a JSON {'array' if isinstance(v, list) else 'object'}"
    return repr(v)[:60]


def _b64_length(row) -> int | None:
    """The base64 body length of a row's logits (what decides its byte count), None if it has none."""
    b64 = row.get("logits_base64") if isinstance(row, dict) else None
    return len(b64.strip().rstrip("=")) if isinstance(b64, str) else None


def _token_ids(value) -> bool:
    return isinstance(value, list) and all(_is_int(t) and 0 <= t <= MAX_TOKEN_ID for t in value)


def _id_list(value, path, key: str) -> np.ndarray | None:
    if value is None:
        return None
    if not _token_ids(value):
        raise LogitsFileError(path, f"{key!r} must be a list of non-negative 64-bit token ids")
    return np.asarray(value, dtype=np.int64)


def encode_row(logits: np.ndarray) -> str:
    """base64 of one row's raw little-endian bytes (float16 or float32), as LogitsWriter writes it."""
    a = np.asarray(logits)
    if a.dtype not in (np.float16, np.float32):
        raise ValueError(f"logits rows are float16 or float32, not {a.dtype}")
    return base64.b64encode(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def write_logits_file(path: str | os.PathLike, token_ids: Sequence[int], logits: np.ndarray,
                      texts: Iterable[str] | None = None, *, layout: str = "tokens",
                      context_ids: Sequence[int] = ()) -> Path:
    """Write rows as LogitsWriter does (pretty-printed, sorted keys), atomically: `layout="tokens"`
    (generation) or `"positions"` (evaluation, with `context_ids` = the tokens before row 0's target)."""
    lg = np.asarray(logits)
    if lg.ndim != 2 or lg.shape[0] != len(token_ids):
        raise ValueError(f"logits must be [rows={len(token_ids)}, vocab], got {list(lg.shape)}")
    texts = list(texts) if texts is not None else [""] * len(token_ids)
    if layout == "tokens":
        doc: dict = {"tokens": [{"incremental_text": t, "logits_base64": encode_row(row), "token_id": int(tid)}
                                for tid, t, row in zip(token_ids, texts, lg)]}
    elif layout == "positions":
        positions, total = [], 0.0
        for i, (tid, t, row) in enumerate(zip(token_ids, texts, lg)):
            x = row.astype(np.float64)
            m = np.max(x)
            # LogitsWriter logs max(p, 1e-10): keep the summary numbers finite (JSON has no NaN)
            logp = float(x[int(tid)] - m - np.log(np.sum(np.exp(x - m)))) if np.isfinite(x).all() else float(np.log(1e-10))
            total += logp
            positions.append({"index": i, "logits_base64": encode_row(row), "target_log_prob": logp,
                              "target_probability": float(np.exp(logp)), "target_text": t, "target_token": int(tid)})
        n = max(len(positions), 1)
        doc = {"average_log_probability": total / n, "context": f"(raw tokens: {len(context_ids) + len(token_ids)} ids)",
               "context_tokens": [int(t) for t in context_ids], "continuation": f"(forced: {len(token_ids)} ids)",
               "continuation_tokens": [int(t) for t in token_ids], "perplexity": float(np.exp(-total / n)),
               "positions": positions, "total_log_probability": total}
    else:
        raise ValueError(f"layout must be 'tokens' or 'positions', not {layout!r}")
    dest = Path(path)
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    return dest


def case_file(folder: str | os.PathLike, case_id: str, suffix: str) -> Path:
    """FOLDER/CASE<suffix>, refusing a case id that would name a file anywhere else (`../x`, `a/b`, NUL):
    the project's case-id rule (harness/cases.py), then a check that the path stays in its folder."""
    from ..cases import case_id_problem

    problem = case_id_problem(case_id)
    if problem:
        raise InputError(f"case {case_id!r}: {problem}; refusing to name a file after it in {folder}")
    base = Path(os.path.abspath(folder))
    path = base / f"{case_id}{suffix}"
    if Path(os.path.abspath(path)).parent != base:  # never a path from data that leaves its folder
        raise InputError(f"case {case_id!r}: {path} would not be a file of {base}")
    return path


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
    except (OSError, ValueError, RecursionError) as e:  # ValueError: UnicodeDecodeError, JSONDecodeError, ...
        raise InputError(f"{p}: cannot read raw tokens ({e.__class__.__name__}: {str(e)[:120]})") from None
    toks = doc.get("tokens") if isinstance(doc, dict) else None
    if not _token_ids(toks):
        raise InputError(f'{p}: raw tokens must be {{"tokens": [non-negative 64-bit integers]}}')
    return toks


def scored_rows(dump: LogitsDump, input_ids: np.ndarray, rows: int, *, case: str,
                vocab_size: int | None = None) -> np.ndarray:
    """The trace rows of a case from a teacher-forced dump (DESIGN.md, "Teacher forcing").

    Checks, naming the file, the case and the token index: one row per token after the dump's
    context (N - first rows; off by one either way is reported as such), the context and each
    row's echoed token id equal to the case's tokens, and the row width equal to the oracle's
    vocabulary. Returns the last `rows` rows: row k predicts x[P + k].
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    n, first = int(ids.shape[0]), dump.first
    where = f"case {case!r}"
    if dump.context_ids is not None and not np.array_equal(dump.context_ids, ids[:first]):
        raise LogitsFileError(dump.path, f"{where}: the dump's context tokens {dump.context_ids.tolist()[:8]} are not "
                                         f"the case's first {'token' if first == 1 else f'{first} tokens'}: the dump was made from another sequence")
    if dump.rows != n - first:
        if dump.rows == n - first + 1:
            why = ("one row more than the case's tokens after the first: was the first token scored too, "
                   "or a token appended?")
        elif dump.rows == n - first - 1:
            why = "one row short: the runner stopped before the last token"
        else:
            why = "the dump was made from another token sequence"
        raise LogitsFileError(dump.path, f"{where}: {dump.rows} rows for {n} raw tokens, expected {n - first} "
                                         f"(one per token after the first{'' if first == 1 else f' {first}'}); {why}")
    if vocab_size is not None and dump.width != vocab_size:
        raise LogitsFileError(dump.path, f"{where}: rows are {dump.width} logits wide, but the oracle's "
                                         f"vocabulary has {vocab_size} entries (another model or tokenizer?)")
    bad = np.flatnonzero(dump.token_ids != ids[first:])
    if bad.size:
        j = int(bad[0])
        raise LogitsFileError(dump.path, f"{where}: the runner echoed token {int(dump.token_ids[j])} where the "
                                         f"case has {int(ids[first + j])} (position {first + j}; {bad.size} of "
                                         f"{dump.rows} rows differ): the dump was made from another sequence", j)
    if not 1 <= rows <= n - 1:
        raise ValueError(f"{where}: {rows} scored rows do not fit {n} tokens")
    if n - rows < first:
        raise LogitsFileError(dump.path, f"{where}: the dump's rows start at token {first}, after the first scored "
                                         f"position {n - rows}: rerun with a shorter context")
    return dump.logits[n - first - rows:]
