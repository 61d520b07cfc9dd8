"""Which trace may play which part in a gate (DESIGN.md, "Gate rule": the control must be the trace
the policy names; an oracle is never a candidate or a control).

A control that is the candidate itself turns every defect into an oracle-artifact, and an oracle
judged against itself matches everywhere: both would be a pass nobody earned. So, before and
after the engine's pass over the rows:

  - the candidate and the control are not oracle traces (evidence `oracle`, or an HF reference
    run in bf16/fp32), nor the oracle's own file;
  - the control is not the candidate's file (the same path, another name for it, a hard or
    symbolic link) and holds none of the candidate's cases row for row (compared by value,
    `SameRows`, so a copy in another dtype is caught too);
  - the control is what the policy's `control` names: its variant (`fp16`), its file
    (`trace:FILE`), its runner, bundle and variant (`coreai:DIR?variant=V`); and where both
    traces record the weights they were made from, the same weights as the candidate.

Each refusal is an InputError (exit 2) naming the traces. The control's identity — path, runner,
variant, evidence, weights, a hash of its logits (`RowsDigest`) — goes into the verdict's provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from harness.errors import InputError
from harness.evidence import evidence_of
from harness.trace import Trace

ORACLE_RUNNERS = ("hf", "hf-stream")
ORACLE_VARIANTS = ("bf16", "fp32")
# spec prefix -> the runner its traces record (harness.candidates)
BUNDLE_RUNNERS = {"coreai": "coreai-llm-runner", "coreai-python": "coreai-python"}


def is_oracle_trace(t: Trace) -> bool:
    """Whether a trace's metadata says it is an oracle's (a reference run, not a candidate's)."""
    meta = t.metadata
    return meta.get("evidence") == "oracle" or (t.runner in ORACLE_RUNNERS and t.variant in ORACLE_VARIANTS)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same file under any name: equal paths, a symlink to it, or a hard link (same inode)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_candidate(oracle: Trace, candidate: Trace) -> None:
    if same_file(oracle.path, candidate.path):
        raise InputError(f"candidate trace {candidate.path} is the oracle's own file ({oracle.path}): "
                         "an oracle judged against itself passes on nothing")
    if is_oracle_trace(candidate):
        raise InputError(f"candidate trace {candidate.path} is an oracle trace ({_label(candidate)}): "
                         "give the quantized bundle's trace")


def check_not_the_oracle(oracle: Trace, t: Trace, role: str) -> None:
    """For a gate judged against the fp32 oracle: the bf16 oracle is no candidate or control either."""
    if same_file(oracle.path, t.path):
        raise InputError(f"{role} trace {t.path} is the oracle's own file ({oracle.path})")


def check_control(oracle: Trace, candidate: Trace, control: Trace, spec: str | None) -> None:
    """Refuse a control that is not an independent trace of what the policy's `control` names."""
    where = f"control trace {control.path}"
    if same_file(control.path, candidate.path):
        raise InputError(f"{where} is the candidate's own file ({candidate.path}): a control must come from "
                         "another run, or every defect reads as an oracle-artifact")
    if same_file(control.path, oracle.path):
        raise InputError(f"{where} is the oracle's own file ({oracle.path}): give the control's trace "
                         f"({spec or 'the gate names none'})")
    if is_oracle_trace(control):
        raise InputError(f"{where} is an oracle trace ({_label(control)}), not the gate's control "
                         f"{spec!r}")
    if spec:
        problem = _spec_mismatch(control, spec)
        if problem:
            raise InputError(f"{where} is not the gate's control {spec!r}: {problem}")
    mine, theirs = weights_identity(control), weights_identity(candidate)
    if mine is not None and theirs is not None and mine != theirs:
        raise InputError(f"{where} was made from other weights than the candidate {candidate.path} "
                         "(their 'model' sha256 differ): a control must be the same model at another precision")


def _label(t: Trace) -> str:
    ev = t.metadata.get("evidence")
    return f"runner {t.runner}, variant {t.variant}" + (f", evidence {ev}" if ev else "")


def _spec_mismatch(t: Trace, spec: str) -> str | None:
    """Why trace `t` is not what candidate spec `spec` names, or None if it is."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "trace":
        return None if same_file(t.path, rest) or _copy_of(t, rest) else f"it is not the file {rest}"
    if sep and prefix in BUNDLE_RUNNERS:
        folder, _, query = rest.partition("?")
        if t.runner != BUNDLE_RUNNERS[prefix]:
            return f"its runner is {t.runner!r}, not {BUNDLE_RUNNERS[prefix]!r}"
        bundle = t.metadata.get("bundle")
        if bundle and folder and not same_file(bundle, folder):
            return f"it was captured from bundle {bundle}, not {folder}"
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key == "variant" and value and t.variant != value:
                return f"its variant is {t.variant!r}, not {value!r}"
        return None
    # a variant or recipe name (the emulated runner's spec): the trace's variant is that name
    return None if t.variant == spec else f"its variant is {t.variant!r}"


def _copy_of(t: Trace, path: str) -> bool:
    """Whether `t` is the pipeline's cached copy of the trace at `path` (a `trace:FILE` spec is captured
    into the cache): every key the source's metadata fills in, `t` holds with the same value (the copy
    fills in what the source left empty, e.g. `model`)."""
    from harness.errors import FlipgateError
    from harness.trace import open_trace

    try:
        src = open_trace(path)
    except FlipgateError:
        return False
    fresh = ("format", "cases", "harness_version")
    return all(t.metadata.get(k) == v for k, v in src.metadata.items() if v and k not in fresh)


def weights_identity(t: Trace) -> str | None:
    """The weight hashes a trace's `model` metadata records (`{"path", "sha256"}`), or None."""
    try:
        model = json.loads(t.metadata.get("model", ""))
    except ValueError:
        return None
    sha = model.get("sha256") if isinstance(model, dict) else None
    return json.dumps(sha, sort_keys=True) if sha else None


class RowsDigest:
    """sha256 of a trace's logits as stored (each case's dtype and bytes, in case order): the content
    hash the verdict's provenance records for a control. Raw bytes, not widened values: the hash
    identifies the file's rows; `SameRows` is what compares a control with its candidate."""

    def __init__(self):
        self._h = hashlib.sha256()
        # hashlib releases the GIL on large buffers: one block hashes beside the engine's arithmetic
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: Future | None = None

    def update(self, case_id: str, rows: np.ndarray, first: bool) -> None:
        self._wait()  # one block in flight at most: memory stays bounded, order is kept
        if first:
            self._h.update(json.dumps([case_id, rows.dtype.str]).encode("utf-8"))
        self._pending = self._pool.submit(self._h.update, np.ascontiguousarray(rows))

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown()

    @property
    def sha256(self) -> str:
        self.close()
        return self._h.hexdigest()


class SameRows:
    """Whether a control holds the candidate's exact rows, case by case, compared by value (so a copy
    widened to another dtype is caught; -0.0 equals 0.0). A case stops being compared at its first
    differing block, so a genuine control costs one block comparison per case."""

    def __init__(self):
        self.cases: dict[str, bool] = {}

    def update(self, case_id: str, cand_rows: np.ndarray, ctrl_rows: np.ndarray) -> None:
        if self.cases.get(case_id, True) and len(cand_rows):
            self.cases[case_id] = bool(np.array_equal(cand_rows, ctrl_rows))

    def check(self, candidate: Trace, control: Trace) -> None:
        same = [cid for cid, eq in self.cases.items() if eq]
        if same:
            what = "every case" if len(same) == len(self.cases) else f"case {same[0]!r}"
            raise InputError(f"control trace {control.path} holds the candidate's exact rows ({what} of "
                             f"{candidate.path}): a control must come from another run")


def identity(t: Trace, rows: RowsDigest | None) -> dict:
    """What the verdict's provenance records of a trace's identity."""
    out = {"path": str(t.path), "runner": t.runner, "variant": t.variant,
           "evidence": evidence_of(t.metadata), "weights": weights_identity(t) or ""}
    if rows is not None:
        out["logits_sha256"] = rows.sha256
    return out
