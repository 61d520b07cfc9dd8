"""Logit dumps made on another machine: raw tokens out to a Mac, `--save-logits` files back in.

The workflow for a lab Mac and Linux CI:

    Linux:  flipgate oracle --out oracle.safetensors
            flipgate import --emit-raw-tokens dumps/ --oracle oracle.safetensors
    Mac:    sh dumps/run-llm-runner.sh /path/to/Bundle          (writes dumps/CASE.logits.json)
    Linux:  flipgate import dumps/*.logits.json --oracle oracle.safetensors --variant int8hu \
                --out int8hu-coreai.safetensors

A dump is tied to its case by `--case` or by its file name (`CASE.logits.json`). The token sequence
comes from the oracle trace, or from the case file: the prompt tokenized with the oracle's tokenizer,
followed by the case's continuation, or (a case without one) by the tokens the dump itself echoes,
which the gate then checks against the oracle's sequence.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..fileio import atomic_path, sha256_file
from .logits_file import LogitsDump, case_file, read_logits_file, scored_rows, write_raw_tokens

RUNNER = "import"
SOURCE_RUNNER = "coreai-llm-runner"
SCRIPT = "run-llm-runner.sh"


@dataclass(frozen=True)
class CaseSequence:
    case_id: str
    input_ids: np.ndarray | None   # None: prompt only; the continuation comes from the dump
    prompt_ids: np.ndarray
    rows: int | None


class SequenceSource:
    """Token sequences by case id, from an oracle trace or a case file (+ the oracle's tokenizer)."""

    def __init__(self, *, oracle: str | None = None, cases: str | None = None, model: str | None = None):
        if oracle is None and cases is None:
            raise InputError("give --oracle TRACE (the sequences the oracle scored) or --cases FILE")
        self.oracle = None
        self.specs = None
        self.model_dir = None
        self._tok = None
        self.vocab_size: int | None = None
        self.tokenizer_sha256 = ""
        self.model = ""
        if oracle is not None:
            from ..trace import open_trace

            self.oracle = open_trace(oracle)
            self.vocab_size = self.oracle.vocab_size
            self.tokenizer_sha256 = self.oracle.tokenizer_sha256 or ""
            self.model = self.oracle.metadata.get("model", "")
        if cases is not None:
            from ..cases import load_cases
            from ..models import model_provenance, read_config, resolve_model_dir, tokenizer_sha256

            self.specs = {s.id: s for s in load_cases(cases)}
            self.cases_path = str(cases)
            self.model_dir = resolve_model_dir(model)
            if self.oracle is None:
                cfg = read_config(self.model_dir)
                vocab = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
                self.vocab_size = int(vocab) if vocab else None
                self.tokenizer_sha256 = tokenizer_sha256(self.model_dir)
                self.model = model_provenance(self.model_dir)

    @property
    def case_ids(self) -> list[str]:
        return list(self.oracle.case_ids) if self.oracle is not None else list(self.specs)

    def _tokenizer(self):
        if self._tok is None:
            from ..models import load_tokenizer

            self._tok = load_tokenizer(self.model_dir)
        return self._tok

    def get(self, case_id: str) -> CaseSequence:
        if self.oracle is not None:
            if case_id not in self.oracle.case_ids:
                raise InputError(f"{self.oracle.path}: no case {case_id!r} in the oracle trace "
                                 f"(cases: {', '.join(self.oracle.case_ids)})")
            ids = self.oracle.input_ids(case_id)
            rows = self.oracle.rows(case_id)
            seq = CaseSequence(case_id, ids, ids[: len(ids) - rows], rows)
            if self.specs is not None and case_id in self.specs:
                self._check_prompt(seq)
            return seq
        if case_id not in self.specs:
            raise InputError(f"{self.cases_path}: no case {case_id!r} (cases: {', '.join(self.specs)})")
        from ..cases import tokenize_case

        case = tokenize_case(self.specs[case_id], self._tokenizer(), self.vocab_size)
        prompt = np.asarray(case.prompt_ids, dtype=np.int64)
        if case.continuation_ids is None:
            return CaseSequence(case_id, None, prompt, None)
        return CaseSequence(case_id, np.asarray(case.input_ids, dtype=np.int64), prompt, len(case.continuation_ids))

    def _check_prompt(self, seq: CaseSequence) -> None:
        from ..cases import tokenize_case

        prompt = tokenize_case(self.specs[seq.case_id], self._tokenizer()).prompt_ids
        if tuple(int(t) for t in seq.prompt_ids) != tuple(prompt):
            raise InputError(f"{self.oracle.path}: case {seq.case_id!r}: the oracle's prompt tokens are not the "
                             f"case file's prompt ({self.cases_path}): another case file or tokenizer?")


def case_for_file(path: Path, known: Sequence[str]) -> str:
    """`CASE.logits.json`, `CASE.json` -> CASE, when CASE is a known case id."""
    name = path.name
    for suffix in (".logits.json", ".json"):
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    raise InputError(f"{path}: name its case with --case (the file name names no case of "
                     f"{', '.join(list(known)[:8])}{', ...' if len(known) > 8 else ''})")


def dump_rows(dump: LogitsDump, seq: CaseSequence, vocab_size: int | None):
    """(input_ids, scored logits) of one case from its dump."""
    if seq.input_ids is not None:
        logits = scored_rows(dump, seq.input_ids, seq.rows, case=seq.case_id, vocab_size=vocab_size)
        return seq.input_ids, logits
    # No continuation in the case file: it is the one the dump was made from, echoed row by row.
    p, first = len(seq.prompt_ids), dump.first
    head = dump.context_ids if dump.context_ids is not None else seq.prompt_ids[:first]
    ids = np.concatenate([head, dump.token_ids]).astype(np.int64)
    if len(ids) <= p:
        raise InputError(f"{dump.path}: case {seq.case_id!r}: {dump.rows} rows cannot hold a {p}-token prompt "
                         f"and a continuation")
    if not np.array_equal(ids[:p], seq.prompt_ids):
        j = int(np.flatnonzero(ids[:p] != seq.prompt_ids)[0])
        raise InputError(f"{dump.path}: token index {max(j - first, 0)}: case {seq.case_id!r}: the dump's prompt is "
                         f"not the case's (token {int(ids[j])} at position {j} where the prompt has "
                         f"{int(seq.prompt_ids[j])})")
    return ids, scored_rows(dump, ids, len(ids) - p, case=seq.case_id, vocab_size=vocab_size)


def import_dumps(files: Sequence[str | os.PathLike], case_ids: Sequence[str] | None, out: str | os.PathLike, *,
                 oracle: str | None = None, cases: str | None = None, model: str | None = None,
                 variant: str = "coreai", source_runner: str = SOURCE_RUNNER) -> Path:
    """Turn `--save-logits` files (one per case) into one trace; nothing is written on any error.

    Each dump is read, checked and written before the next is read (TraceWriter), so memory holds
    one dump, not the case set (~24 MiB a case at the 27B's width of 248320).
    """
    from ..trace import CaseTrace, TraceWriter, base_metadata

    if not files:
        raise InputError("give at least one logits file")
    src = SequenceSource(oracle=oracle, cases=cases, model=model)
    paths = [Path(f) for f in files]
    if case_ids:
        if len(case_ids) != len(paths):
            raise InputError(f"{len(paths)} logits files but {len(case_ids)} --case ids: give one --case per "
                             f"file, in the same order")
        ids_for = list(case_ids)
    else:
        ids_for = [case_for_file(p, src.case_ids) for p in paths]
    dup = sorted({c for c in ids_for if ids_for.count(c) > 1})
    if dup:
        raise InputError(f"case {dup[0]!r} is given twice")
    sources = {}
    width = logits_dtype = None
    with TraceWriter(out) as writer:
        for path, cid in zip(paths, ids_for):
            dump = read_logits_file(path, vocab_size=src.vocab_size)
            if width is not None and dump.width != width:
                raise InputError(f"{path}: rows are {dump.width} wide, other files' {width}: dumps of different "
                                 f"models")
            width = dump.width
            input_ids, logits = dump_rows(dump, src.get(cid), src.vocab_size)
            del dump
            writer.add(CaseTrace(cid, input_ids, logits))
            logits_dtype = logits_dtype or str(np.asarray(logits).dtype)
            del logits
            sources[path.name] = sha256_file(path)
        meta = base_metadata(runner=RUNNER, variant=variant, vocab_size=src.vocab_size or width, model=src.model,
                             tokenizer_sha256=src.tokenizer_sha256, source_runner=source_runner,
                             source_files=json.dumps(sources, sort_keys=True), logits_dtype=logits_dtype)
        return writer.commit(meta)


def emit_raw_tokens(folder: str | os.PathLike, *, oracle: str | None = None, cases: str | None = None,
                    model: str | None = None, case_ids: Sequence[str] | None = None) -> list[Path]:
    """Write `CASE.tokens.json` per case and a script running llm-runner on each (bundle as $1)."""
    src = SequenceSource(oracle=oracle, cases=cases, model=model)
    out = Path(folder)
    written = []
    lines = ["#!/bin/sh", "# Run on a Mac: sh run-llm-runner.sh /path/to/Bundle [llm-runner]",
             "# then: flipgate import DIR/*.logits.json --oracle ORACLE.safetensors --variant NAME --out TRACE",
             "set -eu", 'BUNDLE="$1"', 'RUNNER="${2:-llm-runner}"', 'cd "$(dirname "$0")"']
    # every case is checked before anything is written: a file per case id, each inside the folder
    todo = []
    for cid in case_ids or src.case_ids:
        target = case_file(out, cid, ".tokens.json")
        seq = src.get(cid)
        if seq.input_ids is None:
            raise InputError(f"case {cid!r} has no continuation in the case file: its continuation is the "
                             f"oracle's greedy output, so give --oracle TRACE")
        todo.append((cid, target, seq))
    for cid, target, seq in todo:
        written.append(write_raw_tokens(target, seq.input_ids.tolist()))
        q = shlex.quote
        lines.append(f'"$RUNNER" --model "$BUNDLE" --raw-tokens {q(cid + ".tokens.json")} '
                     f'--save-logits {q(cid + ".logits.json")} --save-logits-length full '
                     f'--inference-engine-variant coreai-sequential')
    script = out / SCRIPT
    with atomic_path(script) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
    return [*written, script]
