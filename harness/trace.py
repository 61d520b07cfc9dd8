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
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np

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
LOGITS_DTYPES = ("F32", "F16", "BF16")
_MAX_HEADER = 100 * 1024 * 1024
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


@dataclass(frozen=True)
class _Entry:
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

    def input_ids(self, case_id: str) -> np.ndarray:
        return self._read(case_id, "input_ids").astype(np.int64, copy=False)

    def case(self, case_id: str) -> CaseTrace:
        return CaseTrace(case_id, self.input_ids(case_id), self._read(case_id, "logits"))

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

    def _entry(self, case_id: str, kind: str) -> _Entry:
        try:
            return self._entries[f"{case_id}/{kind}"]
        except KeyError:
            raise TraceError(self.path, f"no such case in this trace (cases: {', '.join(self.case_ids)})",
                             case=case_id) from None

    def _read(self, case_id: str, kind: str) -> np.ndarray:
        e = self._entry(case_id, kind)
        dt = _ST_DTYPES[e.dtype]
        count = math.prod(e.shape)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + e.start)
            buf = f.read(e.end - e.start)
        if len(buf) != e.end - e.start:
            raise TraceError(self.path, f"{kind}: file ended before the tensor's data did", case=case_id)
        return np.frombuffer(buf, dtype=dt, count=count).reshape(e.shape)


def open_trace(path: str | os.PathLike) -> Trace:
    """Open and validate a trace; raise TraceError naming the file, case and rule on any breach."""
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
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TraceError(p, f"not a safetensors file (header is not JSON: {e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise TraceError(p, "not a safetensors file (header is not a JSON object)")
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
    try:
        vocab = int(meta["vocab_size"])
        if vocab <= 0:
            raise ValueError
    except ValueError:
        raise TraceError(p, f"vocab_size {meta['vocab_size']!r} is not a positive integer") from None
    try:
        cases = json.loads(meta["cases"])
    except json.JSONDecodeError:
        raise TraceError(p, "'cases' is not a JSON array of case ids") from None
    if not isinstance(cases, list) or not all(isinstance(c, str) and c for c in cases):
        raise TraceError(p, "'cases' is not a JSON array of non-empty strings")
    dup = sorted({c for c in cases if cases.count(c) > 1})
    if dup:
        raise TraceError(p, "case id listed twice in 'cases'", case=dup[0])

    data_start = 8 + hlen
    buffer_len = size - data_start
    entries: dict[str, _Entry] = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or {"dtype", "shape", "data_offsets"} - info.keys():
            raise TraceError(p, f"tensor {name!r}: header entry lacks dtype/shape/data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _ST_DTYPES:
            raise TraceError(p, f"tensor {name!r}: unsupported dtype {dtype!r}")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)):
            raise TraceError(p, f"tensor {name!r}: malformed shape or data_offsets")
        start, end = offs
        if end - start != math.prod(shape) * _ST_DTYPES[dtype].itemsize or start < 0:
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
        if not np.issubdtype(_ST_DTYPES[ids.dtype], np.integer):
            raise TraceError(p, f"input_ids must be integers (int64), found {ids.dtype}", case=cid)
        if len(ids.shape) != 1 or ids.shape[0] < 2:
            raise TraceError(p, f"input_ids must be 1-D with at least 2 tokens, shape {list(ids.shape)}", case=cid)
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
    return Trace(p, dict(meta), list(cases), vocab, entries, data_start)


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
    return meta


def write_trace(path: str | os.PathLike, metadata: Mapping[str, str], cases: Iterable[CaseTrace]) -> Path:
    """Write a trace atomically. `cases` may hold memory-mapped or lazily read arrays.

    `metadata` must carry runner, variant and vocab_size (see base_metadata); format and the case
    list are set here. The written file is re-opened and validated before it is renamed into place.
    """
    dest = Path(path)
    cases = list(cases)
    meta = {k: str(v) for k, v in metadata.items()}
    meta["format"] = FORMAT
    meta["cases"] = json.dumps([c.case_id for c in cases])
    for key in ("runner", "variant", "vocab_size"):
        if key not in meta:
            raise ValueError(f"write_trace: metadata lacks {key!r}")
    header: dict[str, object] = {"__metadata__": meta}
    tensors: list[np.ndarray] = []
    offset = 0
    seen = set()
    for c in cases:
        if c.case_id in seen or not c.case_id or "/" in c.case_id:
            raise TraceError(dest, "case ids must be unique, non-empty and free of '/'", case=c.case_id)
        seen.add(c.case_id)
        ids = np.asarray(c.input_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TraceError(dest, f"input_ids must be integers, got {ids.dtype}", case=c.case_id)
        ids = ids.astype(np.int64, copy=False)
        lg = _as_logits(c.logits, dest, c.case_id)
        for kind, arr in (("input_ids", ids), ("logits", lg)):
            nbytes = arr.size * arr.dtype.itemsize
            header[f"{c.case_id}/{kind}"] = {
                "dtype": _NP_TO_ST[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            tensors.append(arr)
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
