"""The one interface every candidate runner implements (Polygraphy-style runners)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError
from ..trace import CaseTrace, Trace, TraceWriter, base_metadata, open_trace


@dataclass(frozen=True)
class Sequence:
    """A teacher-forced sequence: the runner consumes input_ids and returns the last `rows` predictions."""

    case_id: str
    input_ids: np.ndarray
    rows: int

    @property
    def prompt_len(self) -> int:
        return int(self.input_ids.shape[0]) - self.rows


@runtime_checkable
class Candidate(Protocol):
    runner: str   # trace metadata 'runner', e.g. "emulated", "coreai-llm-runner"
    variant: str  # trace metadata 'variant', e.g. "int8hu"

    def metadata(self) -> dict[str, str]:
        """Provenance for the trace metadata (recipe text, versions, hashes)."""

    def run(self, sequences: Iterable[Sequence]) -> Iterator[CaseTrace]:
        """Yield one CaseTrace per sequence, rows per DESIGN.md's teacher-forcing rule."""


def sequences_from_trace(trace: Trace) -> list[Sequence]:
    return [Sequence(cid, trace.input_ids(cid), trace.rows(cid)) for cid in trace.case_ids]


def capture_to_trace(candidate: Candidate, sequences: Iterable[Sequence], out: str | Path, *,
                     vocab_size: int, model: str = "", tokenizer_sha256: str = "") -> Path:
    """Run a candidate and write its trace atomically (nothing is written if it fails).

    Each case is written as the candidate yields it (TraceWriter), so memory does not grow with the
    case set; the metadata is taken after the run, so it can record what the run measured.
    """
    with TraceWriter(out) as writer:
        for case in candidate.run(sequences):
            writer.add(case)
        extra = dict(candidate.metadata())
        # a runner's own provenance of model and tokenizer wins over the caller's
        meta = base_metadata(runner=candidate.runner, variant=candidate.variant, vocab_size=vocab_size,
                             model=extra.pop("model", None) or model,
                             tokenizer_sha256=extra.pop("tokenizer_sha256", None) or tokenizer_sha256, **extra)
        return writer.commit(meta)


@dataclass
class TraceCandidate:
    """A trace made elsewhere (e.g. `flipgate import` of a Mac's llm-runner dump), used as a candidate."""

    path: Path
    runner: str = "trace"
    variant: str = ""

    def __post_init__(self):
        self._trace = open_trace(self.path)
        self.runner = self._trace.runner
        self.variant = self._trace.variant

    def metadata(self) -> dict[str, str]:
        return {k: v for k, v in self._trace.metadata.items()
                if k not in ("format", "cases", "runner", "variant", "vocab_size")}

    def run(self, sequences: Iterable[Sequence]) -> Iterator[CaseTrace]:
        for s in sequences:
            c = self._trace.case(s.case_id)
            if c.rows != s.rows or not np.array_equal(c.input_ids, s.input_ids):
                raise InputError(f"{self.path}: case {s.case_id!r} holds another sequence than the oracle's")
            yield c


def trace_candidate(rest: str, **_options) -> TraceCandidate:
    return TraceCandidate(Path(rest))
