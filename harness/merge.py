"""Joining traces without holding them in memory.

`merge_traces` is `flipgate merge`: the shards of one oracle run (`flipgate oracle --shard i/n`,
each on whatever machine a scheduler gave it) become one trace, in the case set's order. It refuses
traces that were not made from the same model, tokenizer, precision and case set.

`join_cases` is the streaming copy under it (also how the oracle assembles its per-case parts):
tensor bytes are copied from the source files in chunks, so memory stays flat however many
cases, and the result is validated by the trace reader before it is renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

from . import safejson
from .cases import case_id_problem
from .caseset import case_set_sha256, short, trace_case_set_sha256
from .errors import InputError
from .fileio import atomic_path
from .trace import FORMAT, Trace, open_trace

_CHUNK = 1 << 22

# Metadata that must be equal in every merged trace: it says what the rows are rows of.
# (Shards hold different cases, so their case_set_sha256 differ by design: they must name the same
# case file, `cases_file_sha256`, and the merged trace gets the hash of the whole set.)
MUST_AGREE = ("runner", "variant", "vocab_size", "model", "tokenizer_sha256", "dtype", "mode",
              "case_set", "cases_file_sha256", "min_margin", "margin_space")
# Recomputed for the merged trace rather than copied.
_RECOMPUTED = ("format", "cases", "created_at", "shard", "low_margin", "confident_fraction", "case_set_sha256")


def join_cases(out: str | os.PathLike, metadata: dict[str, str],
               sources: Iterable[tuple[str | os.PathLike, str]]) -> Path:
    """Write a trace holding the given (trace file, case id) pairs, in that order.

    `metadata` needs runner, variant and vocab_size; format and the case list are set here.
    """
    dest = Path(out)
    opened: dict[Path, Trace] = {}
    sequences = []  # (case id, input_ids): the joined trace's case set hash
    plan: list[tuple[Path, int, int]] = []
    header: dict[str, object] = {}
    case_ids: list[str] = []
    seen: set[str] = set()  # not `cid in case_ids`: linear in the number of cases
    offset = 0
    for src, cid in sources:
        src = Path(src)
        if src not in opened:
            t = open_trace(src)  # validates every rule before a byte is copied
            if str(t.vocab_size) != str(metadata.get("vocab_size")):
                raise InputError(f"{src}: vocab_size {t.vocab_size} differs from {metadata.get('vocab_size')}")
            opened[src] = t
        problem = case_id_problem(cid)
        if problem:
            raise InputError(f"{src}: case {cid!r}: {problem}")
        if cid in seen:
            raise InputError(f"{src}: case {cid!r} given twice")
        seen.add(cid)
        case_ids.append(cid)
        t = opened[src]
        if cid not in t:
            raise InputError(f"{src}: no case {cid!r}")
        sequences.append((cid, t.input_ids(cid)))
        for kind in ("input_ids", "logits"):
            dtype, shape, at, nbytes = t.tensor_span(cid, kind)
            header[f"{cid}/{kind}"] = {"dtype": dtype, "shape": list(shape),
                                       "data_offsets": [offset, offset + nbytes]}
            plan.append((src, at, nbytes))
            offset += nbytes
    meta = {k: str(v) for k, v in metadata.items()}
    for key in ("runner", "variant", "vocab_size"):
        if key not in meta:
            raise ValueError(f"join_cases: metadata lacks {key!r}")
    meta["format"] = FORMAT
    meta["cases"] = json.dumps(case_ids)
    meta["case_set_sha256"] = case_set_sha256(sequences)
    raw = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for src, at, n in plan:
                with open(src, "rb") as s:
                    s.seek(at)
                    while n:
                        chunk = s.read(min(n, _CHUNK))
                        if not chunk:
                            raise InputError(f"{src}: ended while being copied (changed during the merge?)")
                        f.write(chunk)
                        n -= len(chunk)
        open_trace(tmp)
    return dest


def merge_traces(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                 order: Sequence[str] | None = None) -> Path:
    """Join shard traces into one trace (see module doc). Raises InputError naming the file at fault.

    The cases go in the order of the traces' `case_set` metadata, else `order` (every case id, e.g.
    the oracle's order for a candidate's shares), else the order the traces give them."""
    if not paths:
        raise InputError("merge: no traces given")
    out = Path(out)
    resolved = [Path(p).resolve() for p in paths]
    if out.resolve() in resolved:
        raise InputError(f"{out}: the output would overwrite one of the traces being merged")
    traces = [open_trace(p) for p in paths]
    first = traces[0]
    for key in MUST_AGREE:
        for t in traces[1:]:
            a, b = first.metadata.get(key), t.metadata.get(key)
            if a != b:
                raise InputError(f"{t.path}: {key} {_short(b)} differs from {_short(a)} in {first.path}: "
                                 f"traces of another {_what(key)} cannot be merged")
    # every trace's case set hash must be its contents'; an oracle run's trace that is not a shard
    # (`shard` = "") holds a whole case set, so anything merged with it is of another set (or
    # repeats its cases)
    hashes = [trace_case_set_sha256(t) for t in traces]
    for t, h in zip(traces, hashes):
        if t.metadata.get("shard") == "" and len(traces) > 1:
            other = next(((u, g) for u, g in zip(traces, hashes) if g != h), None)
            if other is not None:
                raise InputError(f"{other[0].path}: case set {short(other[1])}… differs from {short(h)}… in {t.path} "
                                 "(not a shard: it holds a whole case set): traces of different case sets cannot "
                                 "be merged")
    owner: dict[str, Path] = {}
    for t in traces:
        for cid in t.case_ids:
            if cid in owner:
                raise InputError(f"{t.path}: case {cid!r} is also in {owner[cid]} (the same shard twice?)")
            owner[cid] = t.path
    given, order = order, list(order) if order is not None else list(owner)
    if given is not None and not first.metadata.get("case_set"):
        if sorted(order) != sorted(owner):
            missing = sorted(set(order) ^ set(owner))
            raise InputError(f"merge: the traces' cases differ from the {len(order)} expected "
                             f"(first: {missing[0]!r}); give every shard")
    if first.metadata.get("case_set"):
        try:
            order = safejson.loads(first.metadata["case_set"], max_depth=1)
            if not isinstance(order, list) or not all(isinstance(c, str) for c in order):
                raise ValueError
        except ValueError:
            raise InputError(f"{first.path}: metadata 'case_set' is not a JSON list of case ids") from None
        for cid in order:
            problem = case_id_problem(cid)
            if problem:
                raise InputError(f"{first.path}: metadata 'case_set' lists case {cid!r}: {problem}")
        in_order = set(order)
        extra = [c for c in owner if c not in in_order]
        if extra:
            raise InputError(f"{owner[extra[0]]}: case {extra[0]!r} is not in the case set the traces name")
        missing = [c for c in order if c not in owner]
        if missing:
            raise InputError(f"merge: {len(missing)} of the case set's {len(order)} cases are in none of the "
                             f"traces (first: {missing[0]!r}); give every shard")

    meta = {k: v for k, v in first.metadata.items() if k not in _RECOMPUTED}
    for key in sorted({k for t in traces for k in t.metadata} - set(MUST_AGREE) - set(_RECOMPUTED)):
        values = list(dict.fromkeys(t.metadata[key] for t in traces if key in t.metadata))
        if len(values) > 1:
            per_case = _per_case(values, set(owner))
            # a per-case table (e.g. each case's continuation) is joined; else say the shards differ
            meta[key] = (json.dumps({c: per_case[c] for c in order if c in per_case}) if per_case is not None
                         else " | ".join(values))  # e.g. shards run on different devices
    meta["shard"] = ""  # the whole case set again
    meta["created_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta["merged_from"] = json.dumps([{"file": str(t.path), "shard": t.metadata.get("shard", ""),
                                       "created_at": t.metadata.get("created_at", "")} for t in traces])
    if all("low_margin" in t.metadata for t in traces):
        low: dict[str, int] = {}
        for t in traces:
            try:
                low.update({str(k): int(v) for k, v in safejson.loads(t.metadata["low_margin"], max_depth=1).items()})
            except (ValueError, AttributeError):
                raise InputError(f"{t.path}: metadata 'low_margin' is not a JSON object of counts") from None
        low = {c: low[c] for c in order if c in low}
        rows = sum(t.rows(c) for t in traces for c in t.case_ids)
        meta["low_margin"] = json.dumps(low)
        meta["confident_fraction"] = f"{(rows - sum(low.values())) / rows:.6f}"
    return join_cases(out, meta, [(owner[c], c) for c in order])


def _per_case(values: list[str], case_ids: set[str]) -> dict | None:
    """The union of JSON objects keyed by case id, or None if the values are not such objects."""
    joined: dict = {}
    for v in values:
        try:
            d = json.loads(v)
        except ValueError:
            return None
        if not isinstance(d, dict) or not d or not set(d) <= case_ids or set(d) & set(joined):
            return None
        joined.update(d)
    return joined


def _short(v: str | None) -> str:
    if v is None:
        return "(absent)"
    return repr(v if len(v) <= 80 else v[:77] + "...")


def _what(key: str) -> str:
    return {"model": "model", "tokenizer_sha256": "tokenizer", "case_set": "case set",
            "cases_file_sha256": "case set", "dtype": "precision", "variant": "variant"}.get(key, "run")
