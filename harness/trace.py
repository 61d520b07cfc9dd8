"""The trace file, `flipgate.trace/1` (see DESIGN.md, "Trace file").

One safetensors file per (runner, variant, case set). For each case id C: `C/input_ids` (int64,
[N]) and `C/logits` ([R, vocab_size], F32/F16/BF16); row k is the prediction of x[P+k], P = N - R.

The file is read and written here directly (the safetensors layout is an 8-byte header length, a
JSON header, then the raw buffer) rather than through a framework, so that:
  - the gate engine stays torch-free, bfloat16 included (numpy dtype from `ml_dtypes`);
  - every rule can be checked before any data is read, with a message naming file, case and rule;
  - cases are read one at a time, so memory does not grow with the trace.
tests/harness/test_trace.py checks that the `safetensors` library itself reads what is written here.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, NamedTuple

import ml_dtypes
import numpy as np

from . import safejson
from .cases import case_id_problem
from .caseset import case_set_sha256
from .errors import TraceError
from .fileio import atomic_path, note_input

FORMAT = "flipgate.trace/1"
REQUIRED_KEYS = ("format", "runner", "variant", "vocab_size", "cases")

_ST_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "U16": np.dtype(np.uint16),
    "U32": np.dtype(np.uint32),
    "U64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
}
_NP_TO_ST = {v: k for k, v in _ST_DTYPES.items()}
_INT_DTYPES = {k for k, v in _ST_DTYPES.items() if v.kind in "iu"}
LOGITS_DTYPES = ("F32", "F16", "BF16")
# Limits on what a file may claim, checked before anything is allocated (a sparse file can claim any size).
MAX_VOCAB = 1 << 22    # 4,194,304: 16 times the largest vocabularies in use (~256k)
MAX_TOKENS = 1 << 22   # tokens per case: 16 times Qwen3.6's native context of 262,144
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
_MAX_HEADER_DEPTH = 8
# a case takes 6 arrays/objects and ~14 values in the header: these allow ~170,000 cases and bound
# what parsing a hostile header can build to a few hundred MB
_MAX_HEADER_CONTAINERS = 1 << 20
_MAX_HEADER_VALUES = 1 << 22
_INT64_MAX = (1 << 63) - 1
_IDS_CHUNK = 1 << 20   # token ids read per slice
_IDS_GROUP_BYTES = 1 << 23  # short cases' ids are read together up to this span of the file...
_IDS_GAP_BYTES = 1 << 16    # ...when the logits between them are this small
_DECIMAL = re.compile(r"[0-9]{1,12}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_COPY_CHUNK = 1 << 24


@dataclass(frozen=True)
class CaseTrace:
    """One case of a trace: the whole token sequence and the R scored rows of logits."""

    case_id: str
    input_ids: np.ndarray
    logits: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.logits.shape[0])

    @property
    def prompt_len(self) -> int:
        return int(self.input_ids.shape[0]) - self.rows

    @property
    def targets(self) -> np.ndarray:
        """x[P..N-1]: the token each row predicts."""
        return self.input_ids[self.prompt_len:]

    def position(self, row: int) -> int:
        """Index in input_ids of the token that `row` predicts."""
        return self.prompt_len + row


class _Entry(NamedTuple):  # a tuple: cheap to build 120,000 times for 60,000 cases
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass
class Trace:
    """A validated trace file, opened for reading. Case data is read on demand, one case at a time."""

    path: Path
    metadata: dict[str, str]
    case_ids: list[str]
    vocab_size: int
    _entries: dict[str, _Entry] = field(repr=False)
    _data_start: int = field(repr=False)
    max_token_id: int = -1  # the largest id in any case's input_ids (set by open_trace's check)

    @property
    def runner(self) -> str:
        return self.metadata["runner"]

    @property
    def variant(self) -> str:
        return self.metadata["variant"]

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.metadata.get("tokenizer_sha256") or None

    def logits_dtype(self, case_id: str) -> str:
        return self._entry(case_id, "logits").dtype

    def rows(self, case_id: str) -> int:
        return self._entry(case_id, "logits").shape[0]

    def tokens(self, case_id: str) -> int:
        """N, the length of a case's sequence, without reading it."""
        return self._entry(case_id, "input_ids").shape[0]

    def input_ids(self, case_id: str) -> np.ndarray:
        return self.input_ids_slice(case_id, 0, self.tokens(case_id))

    def input_ids_slice(self, case_id: str, start: int, stop: int) -> np.ndarray:
        """input_ids[start:stop] (int64), reading only those bytes."""
        n = self.tokens(case_id)
        start, stop = max(0, min(n, start)), max(0, min(n, stop))
        with open(self.path, "rb") as f:
            # open_trace checked every id lies in [0, vocab_size): the cast cannot wrap
            return self._read_ids(f, case_id, start, max(start, stop)).astype(np.int64, copy=False)

    def _read_ids(self, f, case_id: str, start: int, stop: int) -> np.ndarray:
        e = self._entry(case_id, "input_ids")
        dt = _ST_DTYPES[e.dtype]
        f.seek(self._data_start + e.start + start * dt.itemsize)
        want = (stop - start) * dt.itemsize
        buf = f.read(want)
        if len(buf) != want:
            raise TraceError(self.path, "input_ids: file ended before the tensor's data did", case=case_id)
        return np.frombuffer(buf, dtype=dt)  # in the stored integer type

    def case(self, case_id: str) -> CaseTrace:
        return CaseTrace(case_id, self.input_ids(case_id), self.logits_rows(case_id, 0, self.rows(case_id)))

    def logits_rows(self, case_id: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a case's logits, reading only those bytes (bounded memory for long cases)."""
        e = self._entry(case_id, "logits")
        rows, width = e.shape
        start, stop = max(0, start), min(rows, stop)
        if stop <= start:
            return np.empty((0, width), dtype=_ST_DTYPES[e.dtype])
        dt = _ST_DTYPES[e.dtype]
        row_bytes = width * dt.itemsize
        with open(self.path, "rb") as f:
            f.seek(self._data_start + e.start + start * row_bytes)
            buf = f.read((stop - start) * row_bytes)
        if len(buf) != (stop - start) * row_bytes:
            raise TraceError(self.path, "logits: file ended before the tensor's data did", case=case_id)
        return np.frombuffer(buf, dtype=dt).reshape(stop - start, width)

    def __iter__(self) -> Iterator[CaseTrace]:
        for cid in self.case_ids:
            yield self.case(cid)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __contains__(self, case_id: object) -> bool:
        return isinstance(case_id, str) and f"{case_id}/logits" in self._entries

    def tensor_span(self, case_id: str, kind: str) -> tuple[str, tuple[int, ...], int, int]:
        """(safetensors dtype, shape, offset in the file, byte count) of `case_id/kind`, as validated."""
        e = self._entry(case_id, kind)
        return e.dtype, e.shape, self._data_start + e.start, e.end - e.start

    def _entry(self, case_id: str, kind: str) -> _Entry:
        try:
            return self._entries[f"{case_id}/{kind}"]
        except KeyError:
            some = ", ".join(self.case_ids[:10]) + (f", ... ({len(self.case_ids)} in all)"
                                                    if len(self.case_ids) > 10 else "")
            raise TraceError(self.path, f"no such case in this trace (cases: {some})", case=case_id) from None


def open_trace(path: str | os.PathLike) -> Trace:
    """Open and validate a trace; raise TraceError naming the file, case and rule on any breach.

    Every size the file claims (header length, shapes, offsets, vocab_size, sequence lengths) is
    checked against the file's real size and the limits above before anything is allocated, and the
    token ids are read a slice at a time to check that each lies in [0, vocab_size).
    """
    p = Path(path)
    if not p.is_file():
        raise TraceError(p, "no such file" if not p.exists() else "not a regular file")
    size = p.stat().st_size
    note_input(p)  # this run must not overwrite it (harness.fileio)
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TraceError(p, "not a safetensors file (shorter than its 8-byte header length)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen == 0 or hlen > _MAX_HEADER or 8 + hlen > size:
            raise TraceError(p, "not a safetensors file (header length out of range; truncated or another format)")
        raw = f.read(hlen)
    header = _parse_header(p, raw)
    del raw
    meta = header.pop("__metadata__", None)
    if meta is None:
        raise TraceError(p, f"no __metadata__: a trace must carry format = {FORMAT!r}")
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise TraceError(p, "__metadata__ must map strings to strings")
    fmt = meta.get("format")
    if fmt is None:
        raise TraceError(p, f"__metadata__ has no 'format' key (expected {FORMAT!r})")
    if fmt != FORMAT:
        raise TraceError(p, f"unknown format {fmt!r} (this flipgate reads {FORMAT!r})")
    for key in REQUIRED_KEYS:
        if key not in meta:
            raise TraceError(p, f"__metadata__ has no {key!r} key")
    if not _DECIMAL.fullmatch(meta["vocab_size"]) or int(meta["vocab_size"]) <= 0:
        raise TraceError(p, f"vocab_size {meta['vocab_size']!r} is not a positive integer")
    vocab = int(meta["vocab_size"])
    if vocab > MAX_VOCAB:
        raise TraceError(p, f"vocab_size {vocab} is beyond the largest this flipgate reads ({MAX_VOCAB})")
    try:
        cases = safejson.loads(meta["cases"], max_depth=1)
    except ValueError as e:
        raise TraceError(p, f"'cases' is not a JSON array of case ids ({e})") from None
    if not isinstance(cases, list) or not all(isinstance(c, str) for c in cases):
        raise TraceError(p, "'cases' is not a JSON array of strings")
    for cid in cases:
        problem = case_id_problem(cid)
        if problem:
            raise TraceError(p, f"'cases' lists a bad case id: {problem}", case=cid)
    if len(set(cases)) != len(cases):  # a set, not list.count per id: linear in the number of cases
        seen: set[str] = set()
        dup = next(c for c in cases if c in seen or seen.add(c))
        raise TraceError(p, "case id listed twice in 'cases'", case=dup)

    data_start = 8 + hlen
    buffer_len = size - data_start
    entries: dict[str, _Entry] = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or {"dtype", "shape", "data_offsets"} - info.keys():
            raise TraceError(p, f"tensor {name!r}: header entry lacks dtype/shape/data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
            raise TraceError(p, f"tensor {name!r}: unsupported dtype {dtype!r}")
        if not _are_sizes(shape, 8) or not _are_sizes(offs, 2) or len(offs) != 2:
            raise TraceError(p, f"tensor {name!r}: malformed shape or data_offsets (non-negative int64 integers)")
        start, end = offs
        if end - start != math.prod(shape) * _ST_DTYPES[dtype].itemsize:
            raise TraceError(p, f"tensor {name!r}: data_offsets do not match shape {shape} and dtype {dtype}")
        if end > buffer_len:
            raise TraceError(p, f"truncated: tensor {name!r} ends at byte {end} of the data buffer, "
                                f"but the file holds only {buffer_len}")
        entries[name] = _Entry(dtype, tuple(shape), start, end)
        spans.append((start, end, name))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise TraceError(p, f"tensor {name!r}: data is not contiguous with the previous tensor "
                                f"(starts at {start}, expected {pos})")
        pos = end
    if pos != buffer_len:
        raise TraceError(p, f"data buffer holds {buffer_len} bytes but the tensors cover {pos}")

    listed = set(cases)
    for name in entries:
        cid, sep, kind = name.rpartition("/")
        if not sep or kind not in ("input_ids", "logits"):
            raise TraceError(p, f"tensor {name!r} is not '<case>/input_ids' or '<case>/logits'")
        if cid not in listed:
            raise TraceError(p, "tensors for a case that metadata 'cases' does not list", case=cid)
    for cid in cases:
        ids = entries.get(f"{cid}/input_ids")
        lg = entries.get(f"{cid}/logits")
        if ids is None or lg is None:
            missing = "input_ids" if ids is None else "logits"
            raise TraceError(p, f"listed in 'cases' but has no {cid}/{missing} tensor", case=cid)
        if ids.dtype not in _INT_DTYPES:
            raise TraceError(p, f"input_ids must be integers (int64), found {ids.dtype}", case=cid)
        if len(ids.shape) != 1 or ids.shape[0] < 2:
            raise TraceError(p, f"input_ids must be 1-D with at least 2 tokens, shape {list(ids.shape)}", case=cid)
        if ids.shape[0] > MAX_TOKENS:
            raise TraceError(p, f"input_ids claim {ids.shape[0]} tokens, beyond the longest sequence this "
                                f"flipgate reads ({MAX_TOKENS})", case=cid)
        if lg.dtype not in LOGITS_DTYPES:
            raise TraceError(p, f"logits dtype {lg.dtype} not one of {', '.join(LOGITS_DTYPES)}", case=cid)
        if len(lg.shape) != 2:
            raise TraceError(p, f"logits must be 2-D [rows, vocab_size], shape {list(lg.shape)}", case=cid)
        n, (r, v) = ids.shape[0], lg.shape
        if v != vocab:
            raise TraceError(p, f"logits width {v} differs from vocab_size {vocab}", case=cid)
        if r < 1:
            raise TraceError(p, "logits have no rows (nothing to score)", case=cid)
        if r > n - 1:
            raise TraceError(p, f"{r} logits rows exceed the sequence length: {n} tokens give at most "
                                f"{n - 1} predictions", case=cid)
    trace = Trace(p, dict(meta), list(cases), vocab, entries, data_start)
    trace.max_token_id = _check_token_ids(trace)
    return trace


def _are_sizes(v: object, most: int) -> bool:
    """A shape or data_offsets: a list of at most `most` JSON integers (not bools) in [0, int64 max]."""
    if type(v) is not list or len(v) > most:
        return False
    for d in v:  # a plain loop: this runs twice per tensor, 120,000 times for 60,000 cases
        if type(d) is not int or d < 0 or d > _INT64_MAX:
            return False
    return True


def _parse_header(p: Path, raw: bytes) -> dict:
    """The header's JSON object, refused (TraceError) if it is not UTF-8, too deep or too big to parse,
    holds integers beyond int64 digits, or strings that are not Unicode text (lone surrogates)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(p, f"not a safetensors file (header is not UTF-8: byte {e.start})") from None
    deepest, containers, separators = safejson.measure(raw)
    if deepest > _MAX_HEADER_DEPTH:
        raise TraceError(p, f"header JSON nested {deepest} deep (a trace header is 3 deep; at most "
                            f"{_MAX_HEADER_DEPTH} is read)")
    if containers > _MAX_HEADER_CONTAINERS or separators > _MAX_HEADER_VALUES:
        raise TraceError(p, f"header JSON holds {containers} arrays/objects and {separators} values, beyond "
                            f"what {_MAX_HEADER_CONTAINERS // 6} cases need")
    # Parsed JSON holds no reference cycles, and the cyclic collector, run again and again over the
    # growing graph while ~6 containers a case are built, nearly doubled the parse at 60,000 cases
    # (1.2 s against 0.65 s): it is paused for the parse.
    collecting = gc.isenabled()
    gc.disable()
    try:
        header = json.loads(text)
    except ValueError as e:  # JSONDecodeError, or an integer of thousands of digits
        raise TraceError(p, f"not a safetensors file (header is not JSON: {str(e).splitlines()[0]})") from None
    finally:
        if collecting:
            gc.enable()
    if not isinstance(header, dict):
        raise TraceError(p, "not a safetensors file (header is not a JSON object)")
    if _SURROGATE_ESCAPE.search(raw):  # "\ud800" is valid JSON but not Unicode text: refuse it here, not on print
        meta = header.get("__metadata__")
        texts = list(header) + (list(meta) + list(meta.values()) if isinstance(meta, dict) else [])
        for s in texts:
            if isinstance(s, str) and not _is_unicode(s):
                raise TraceError(p, f"header string {ascii(s)[:60]} holds a lone surrogate: not Unicode text")
    return header


def _is_unicode(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_token_ids(trace: Trace) -> int:
    """Check every token id lies in [0, vocab_size); return the largest (-1 if none).

    Reads a slice at a time (memory stays flat however long a case), and reads the ids of many
    small cases that lie close together in the file with one read (time stays linear in the cases).
    """
    vocab = trace.vocab_size
    top = -1
    spans = sorted((trace._entries[f"{c}/input_ids"].start, c) for c in trace.case_ids)
    with open(trace.path, "rb") as f:
        i = 0
        while i < len(spans):
            start, cid = spans[i]
            e = trace._entries[f"{cid}/input_ids"]
            if e.end - e.start > _IDS_GROUP_BYTES:  # a long sequence: alone, a slice at a time
                n = e.shape[0]
                for a in range(0, n, _IDS_CHUNK):
                    top = max(top, _check_ids(trace, cid, trace._read_ids(f, cid, a, min(n, a + _IDS_CHUNK)), a))
                i += 1
                continue
            # short sequences close together: one read, one check, and a per-case look only on failure
            group = [cid]
            end = e.end
            j = i + 1
            while j < len(spans):
                nxt = trace._entries[f"{spans[j][1]}/input_ids"]
                if nxt.start - end > _IDS_GAP_BYTES or nxt.end - start > _IDS_GROUP_BYTES:
                    break
                group.append(spans[j][1])
                end = nxt.end
                j += 1
            f.seek(trace._data_start + start)
            buf = f.read(end - start)
            if len(buf) != end - start:
                raise TraceError(trace.path, "input_ids: file ended before the tensor's data did", case=cid)
            by_dtype: dict[str, list[np.ndarray]] = {}
            parts = []
            for c in group:
                ce = trace._entries[f"{c}/input_ids"]
                a = np.frombuffer(buf, _ST_DTYPES[ce.dtype], ce.shape[0], ce.start - start)
                parts.append((c, a))
                by_dtype.setdefault(ce.dtype, []).append(a)
            for arrays in by_dtype.values():
                flat = np.concatenate(arrays)
                if flat.size and (flat.min() < 0 or flat.max() >= vocab):
                    for c, a in parts:
                        _check_ids(trace, c, a, 0)
                top = max(top, int(flat.max()) if flat.size else -1)
            i = j
    return top


def _check_ids(trace: Trace, cid: str, a: np.ndarray, first: int) -> int:
    """Raise TraceError at the first id of `a` (input_ids[first:...]) outside [0, vocab_size); return the largest."""
    vocab = trace.vocab_size
    if a.size and (a.min() < 0 or a.max() >= vocab):
        j = int(np.flatnonzero((a < 0) | (a >= vocab))[0])
        raise TraceError(trace.path, f"input_ids hold token id {int(a[j])} at position {first + j}, "
                                     f"outside the vocabulary [0, {vocab})", case=cid)
    return int(a.max()) if a.size else -1


def _as_logits(a: np.ndarray, path, cid: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float16, np.dtype(ml_dtypes.bfloat16)):
        raise TraceError(path, f"logits dtype {a.dtype} cannot be written (float32, float16 or bfloat16)", case=cid)
    return a


def base_metadata(*, runner: str, variant: str, vocab_size: int, model: str = "",
                  tokenizer_sha256: str = "", **extra: str) -> dict[str, str]:
    """The required and conventional metadata keys, with harness_version and created_at filled in."""
    from . import __version__

    meta = {
        "format": FORMAT,
        "runner": runner,
        "variant": variant,
        "vocab_size": str(int(vocab_size)),
        "model": model,
        "tokenizer_sha256": tokenizer_sha256,
        "harness_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update({k: str(v) for k, v in extra.items()})
    from .evidence import evidence_of

    meta["evidence"] = evidence_of(meta)  # DESIGN.md: what kind of evidence the rows are
    return meta


def write_trace(path: str | os.PathLike, metadata: Mapping[str, str], cases: Iterable[CaseTrace]) -> Path:
    """Write a trace atomically. `cases` may hold memory-mapped or lazily read arrays.

    `metadata` must carry runner, variant and vocab_size (see base_metadata); format, the case
    list and `case_set_sha256` (the hash of the cases written) are set here. The written file is
    re-opened and validated before it is renamed into place.
    """
    dest = Path(path)
    cases = list(cases)
    meta = {k: str(v) for k, v in metadata.items()}
    meta["format"] = FORMAT
    meta["cases"] = json.dumps([c.case_id for c in cases])
    for key in ("runner", "variant", "vocab_size"):
        if key not in meta:
            raise ValueError(f"write_trace: metadata lacks {key!r}")
    try:
        vocab = int(meta["vocab_size"])
    except ValueError:
        raise ValueError(f"write_trace: vocab_size {meta['vocab_size']!r} is not an integer") from None
    header: dict[str, object] = {"__metadata__": meta}
    tensors: list[np.ndarray] = []
    offset = 0
    seen = set()
    for c in cases:
        problem = case_id_problem(c.case_id)
        if problem:
            raise TraceError(dest, problem, case=c.case_id)
        if c.case_id in seen:
            raise TraceError(dest, "case ids must be unique: this one is given twice", case=c.case_id)
        seen.add(c.case_id)
        ids = np.asarray(c.input_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TraceError(dest, f"input_ids must be integers, got {ids.dtype}", case=c.case_id)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            bad = ids[(ids < 0) | (ids >= vocab)][0]
            raise TraceError(dest, f"input_ids hold token id {int(bad)}, outside the vocabulary [0, {vocab})",
                             case=c.case_id)
        ids = ids.astype(np.int64, copy=False)
        lg = _as_logits(c.logits, dest, c.case_id)
        for kind, arr in (("input_ids", ids), ("logits", lg)):
            nbytes = arr.size * arr.dtype.itemsize
            header[f"{c.case_id}/{kind}"] = {
                "dtype": _NP_TO_ST[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            tensors.append(arr)
    # the case set these rows belong to, from the rows' own sequences (harness/caseset.py)
    meta["case_set_sha256"] = case_set_sha256((c.case_id, np.asarray(c.input_ids)) for c in cases)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the buffer to 8 bytes
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for arr in tensors:
                flat = np.ascontiguousarray(arr).reshape(-1)
                step = max(1, _COPY_CHUNK // max(1, flat.dtype.itemsize))
                for i in range(0, flat.size, step):
                    f.write(flat[i:i + step].astype(flat.dtype.newbyteorder("<"), copy=False).tobytes())
        open_trace(tmp)  # never rename a file that its own reader rejects
    return dest


_SPOOL_CHUNK = 1 << 20  # the spool is copied after the header in pieces this big


def _copy_file(src, dst) -> None:
    """Append the rest of open file `src` to open file `dst`: in the kernel where it can
    (copy_file_range, no user-space buffer), else in _SPOOL_CHUNK pieces."""
    import shutil

    dst.flush()
    if hasattr(os, "copy_file_range"):
        try:
            while os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30):
                pass
            return
        except OSError:
            pass  # e.g. across file systems on old kernels: fall back to reading
    shutil.copyfileobj(src, dst, _SPOOL_CHUNK)


class TraceWriter:
    """Write a trace one case at a time: memory holds the case being added, never the whole trace.

        with TraceWriter(out) as w:
            for case in cases:          # e.g. a runner's cases as it yields them
                w.add(case)
            w.commit(metadata)          # metadata may depend on the run (peak memory, dtypes seen)

    The safetensors header comes first in the file but needs every case's shape, so each added case's
    bytes go to a spool file beside `path`; `commit` writes the header, copies the spool after it in
    chunks, re-opens the result with the reader and renames it into place. Leaving the block without
    `commit` (an error) removes the spool and writes nothing.
    """

    def __init__(self, path: str | os.PathLike):
        import tempfile

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, spool = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".spool", dir=self.path.parent)
        self._spool = Path(spool)
        self._f = os.fdopen(fd, "wb")
        self._tensors: dict[str, dict] = {}
        self._case_ids: list[str] = []
        self._seen: set[str] = set()
        self._sequences: list[tuple[str, list[int]]] = []
        self._offset = 0
        self.committed = False

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._discard()

    @property
    def case_ids(self) -> list[str]:
        return list(self._case_ids)

    def add(self, case: CaseTrace) -> None:
        """Append one case's input_ids and logits (checked as write_trace checks them)."""
        if self._f is None:
            raise ValueError("TraceWriter: add after commit or close")
        cid = case.case_id
        problem = case_id_problem(cid)
        if problem:
            raise TraceError(self.path, problem, case=cid)
        if cid in self._seen:
            raise TraceError(self.path, "case ids must be unique: this one is given twice", case=cid)
        ids = np.asarray(case.input_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TraceError(self.path, f"input_ids must be integers, got {ids.dtype}", case=cid)
        ids = ids.astype(np.int64, copy=False)
        lg = _as_logits(case.logits, self.path, cid)
        self._seen.add(cid)
        self._case_ids.append(cid)
        self._sequences.append((cid, ids.tolist()))  # token ids only: the case set hash at commit
        for kind, arr in (("input_ids", ids), ("logits", lg)):
            nbytes = arr.size * arr.dtype.itemsize
            self._tensors[f"{cid}/{kind}"] = {"dtype": _NP_TO_ST[arr.dtype], "shape": list(arr.shape),
                                              "data_offsets": [self._offset, self._offset + nbytes]}
            self._offset += nbytes
            # written from the array's own buffer: no copy unless it is strided or big-endian
            flat = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(-1)
            self._f.write(flat.view(np.uint8).data)

    def commit(self, metadata: Mapping[str, str]) -> Path:
        """Write the trace under its name (format and the case list set here) and return its path."""
        if self._f is None:
            raise ValueError("TraceWriter: commit after commit or close")
        meta = {k: str(v) for k, v in metadata.items()}
        for key in ("runner", "variant", "vocab_size"):
            if key not in meta:
                raise ValueError(f"TraceWriter: metadata lacks {key!r}")
        meta["format"] = FORMAT
        meta["cases"] = json.dumps(self._case_ids)
        try:
            vocab = int(meta["vocab_size"])
        except ValueError:
            raise ValueError(f"TraceWriter: vocab_size {meta['vocab_size']!r} is not an integer") from None
        for cid, ids in self._sequences:
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise TraceError(self.path, f"input_ids hold token id {bad[0]}, outside the vocabulary [0, {vocab})",
                                 case=cid)
        # the case set these rows belong to, from the rows' own sequences, as write_trace stamps it
        meta["case_set_sha256"] = case_set_sha256(self._sequences)
        raw = json.dumps({"__metadata__": meta, **self._tensors}, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # safetensors aligns the buffer to 8 bytes
        self._f.close()
        self._f = None
        try:
            with atomic_path(self.path) as tmp:
                with open(tmp, "wb") as out, open(self._spool, "rb") as src:
                    out.write(struct.pack("<Q", len(raw)))
                    out.write(raw)
                    _copy_file(src, out)
                open_trace(tmp)  # never rename a file that its own reader rejects
        finally:
            self._discard()
        self.committed = True
        return self.path

    def _discard(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        try:
            self._spool.unlink()
        except FileNotFoundError:
            pass
