"""The gate engine: oracle, candidate and (optional) control traces in, a `Verdict` out.

Pure numpy. The traces are first checked to hold the same sequences (nothing is compared until
they agree), then streamed case by case, a few rows at a time, so memory stays bounded whatever
the number of positions: each block of rows is read once from each trace and widened to float64.

Classes per scored position (DESIGN.md, "Gate rule"), in this order of precedence:
  invalid          the candidate row, or the control row, holds a NaN or an Inf;
  match            the candidate's argmax is the oracle's top-1;
  tie-flip         differs, and the oracle's margin < min_margin (not confident);
  oracle-artifact  differs, confident, and the control's argmax equals the candidate's;
  defect           differs, confident, and the control does not explain it.
Argmax ties go to the lowest token id, in every trace (numpy's argmax rule).
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from harness.caseset import check_same_case_set, trace_case_set_sha256
from harness.errors import FlipgateError, InputError
from harness.evidence import evidence_of
from harness.trace import Trace, open_trace

from . import metrics, roles, sweep
from .policy import GatePolicy
from .verdict import Verdict

CONTEXT_TOKENS = 48  # context_text holds at most this many tokens before the target
MAX_WORKERS = 4  # worker processes at most (each holds one read block: 8 MiB a trace)
PROCESS_MIN_BYTES = 256 << 20  # less logits than this are judged in-process: forking costs more than it saves
READ_BYTES = 8 << 20  # per trace and read: big enough to amortise the read, small enough to bound memory
IDS_SLICE = 1 << 20   # token ids compared per read

Decode = Callable[[list[int]], str]


def _open(t: Trace | str | os.PathLike | None) -> Trace | None:
    if t is None or isinstance(t, Trace):
        return t
    return open_trace(t)


def check_agreement(oracle: Trace, other: Trace, role: str) -> None:
    """Raise InputError unless `other` holds exactly the oracle's sequences, vocabulary and tokenizer."""
    where = f"{role} trace {other.path}"
    if other.vocab_size != oracle.vocab_size:
        raise InputError(f"{where}: vocab_size {other.vocab_size} differs from the oracle's {oracle.vocab_size} "
                         f"({oracle.path})")
    if oracle.tokenizer_sha256 and other.tokenizer_sha256 and oracle.tokenizer_sha256 != other.tokenizer_sha256:
        raise InputError(f"{where}: tokenizer_sha256 {other.tokenizer_sha256[:12]}… differs from the oracle's "
                         f"{oracle.tokenizer_sha256[:12]}…: the token ids mean different things")
    check_same_case_set(oracle, other, where, role)  # names both case set hashes and the first difference
    theirs = set(other.case_ids)
    for cid in oracle.case_ids:
        if cid not in theirs:
            raise InputError(f"{where}: case {cid!r} of the oracle is missing")
    ours = set(oracle.case_ids)
    for cid in other.case_ids:
        if cid not in ours:
            raise InputError(f"{where}: case {cid!r} is not in the oracle ({oracle.path})")
    for cid in oracle.case_ids:
        na, nb = oracle.tokens(cid), other.tokens(cid)
        n = min(na, nb)
        for start in range(0, n, IDS_SLICE):  # a slice at a time: memory does not grow with N
            a = oracle.input_ids_slice(cid, start, min(n, start + IDS_SLICE))
            b = other.input_ids_slice(cid, start, min(n, start + IDS_SLICE))
            diff = np.flatnonzero(a != b)
            if diff.size:
                i = int(diff[0])
                raise InputError(f"{where}: case {cid!r}: input_ids differ from the oracle's at token {start + i} "
                                 f"(oracle {int(a[i])}, {role} {int(b[i])})")
        if na != nb:
            raise InputError(f"{where}: case {cid!r}: {nb} input_ids, the oracle has {na} "
                             f"(they differ from token {n} on)")
        if other.rows(cid) != oracle.rows(cid):
            raise InputError(f"{where}: case {cid!r}: {other.rows(cid)} logits rows, the oracle has "
                             f"{oracle.rows(cid)}")


def _trace_info(t: Trace) -> dict:
    meta = t.metadata
    dtypes = sorted({t.logits_dtype(c) for c in t.case_ids})
    return {"path": str(t.path), "runner": t.runner, "variant": t.variant, "model": meta.get("model", ""),
            "tokenizer_sha256": meta.get("tokenizer_sha256", ""), "harness_version": meta.get("harness_version", ""),
            "created_at": meta.get("created_at", ""), "logits_dtype": ",".join(dtypes), "cases": len(t.case_ids),
            "evidence": evidence_of(meta)}


class _Texts:
    """Memoised decoding of token ids for the text fields."""

    def __init__(self, decode: Decode):
        self.decode = decode
        self.tokens: dict[int, str] = {}

    def token(self, t: int | None) -> str | None:
        if t is None:
            return None
        if t not in self.tokens:
            self.tokens[t] = self.decode([t])
        return self.tokens[t]

    def context(self, ids: "_Ids", position: int) -> str:
        return self.decode(ids.before(position, CONTEXT_TOKENS))


def _classify(finite: bool, cand: int, top1: int, confident: bool, control: int | None) -> str:
    if not finite:
        return "invalid"
    if cand == top1:
        return "match"
    if not confident:
        return "tie-flip"
    if control is not None and control == cand:
        return "oracle-artifact"
    return "defect"


def _nan_to_none_int(v: int) -> int | None:
    return None if v < 0 else int(v)


@dataclass
class GateJob:
    """One gate to judge in a shared pass over the oracle (`evaluate_many`)."""

    policy: GatePolicy
    candidate: Trace | str | os.PathLike
    control: Trace | str | os.PathLike | None = None


@dataclass
class _Prepared:
    policy: GatePolicy
    candidate: str           # key of the candidate trace
    control: str | None      # key of the control trace
    notes: list[str]
    positions: list[dict] = field(default_factory=list)
    cosine: list[np.ndarray] = field(default_factory=list)
    kl: list[np.ndarray] = field(default_factory=list)


def _effective(policy: GatePolicy, cand_t: Trace, ctrl_t: Trace | None) -> tuple[GatePolicy, list[str]]:
    notes: list[str] = []
    if ctrl_t is None and policy.control:
        notes.append(f"gate names control {policy.control!r} but no control trace was given: "
                     "judged without one (every confident flip counts as a defect)")
        policy = replace(policy, control=None)
    elif ctrl_t is not None and not policy.control:
        notes.append(f"control {ctrl_t.path} used although gate {policy.name!r} names none")
        policy = replace(policy, control=f"trace:{ctrl_t.path}")
    if policy.margin_space not in ("prob", "logit"):
        raise InputError(f"gate {policy.name!r}: margin_space {policy.margin_space!r} is not prob or logit")
    spec = policy.candidate
    if ":" not in spec and cand_t.variant and cand_t.variant != spec:
        notes.append(f"candidate trace variant {cand_t.variant!r} is not the gate's candidate {spec!r}")
    return policy, notes


def evaluate(oracle: Trace | str | os.PathLike, candidate: Trace | str | os.PathLike,
             control: Trace | str | os.PathLike | None = None, *, policy: GatePolicy,
             decode: Decode | None = None, provenance: dict | None = None,
             oracle_fp32: Trace | str | os.PathLike | None = None) -> Verdict:
    """Judge `candidate` against `oracle` under `policy`, with `control` separating oracle artifacts.

    The verdict records the effective policy: where a policy names a control but none is given,
    the gate runs without one (stricter: every confident flip is then a defect) and says so in
    `summary["notes"]`; a control given to a policy that names none is used and recorded as
    `trace:PATH`. `oracle_fp32` (or the policy's `oracle_fp32`) is a float32 oracle trace of the same
    sequences: every position then records its `fp32_top1`, every confident flip whether the fp32
    oracle picks the candidate's token (`fp32_confirms`), and an oracle-artifact's `class_text` says
    "oracle-artifact (confirmed by fp32)" or "(not confirmed by fp32)". A policy with
    `reference = "fp32"` is judged against the fp32 oracle outright.
    """
    return evaluate_many(oracle, [GateJob(policy, candidate, control)], decode=decode, provenance=provenance,
                         oracle_fp32=oracle_fp32)[0]


def evaluate_many(oracle: Trace | str | os.PathLike, jobs: list[GateJob], *, decode: Decode | None = None,
                  provenance: dict | None = None, workers: int | None = None,
                  oracle_fp32: Trace | str | os.PathLike | None = None) -> list[Verdict]:
    """Judge several gates in one pass: the oracle and every distinct trace are read once per case,
    and each trace's comparison with the oracle is computed once however many gates use it.

    `workers` processes take whole blocks of rows side by side (see `default_workers`, the default);
    1 judges in this process. The figures do not depend on it.
    `oracle_fp32` (else each policy's own) adds the fp32 confirmation; see `evaluate`."""
    oracle_t = _open(oracle)
    # one pass per (fp32 oracle, reference): gates that share them still share the pass
    passes: dict[tuple[str | None, str], list[int]] = {}
    fp32_traces: dict[str, Trace] = {}
    for i, job in enumerate(jobs):
        fp32 = oracle_fp32 if oracle_fp32 is not None else getattr(job.policy, "oracle_fp32", None)
        reference = getattr(job.policy, "reference", "oracle")
        key = None
        if fp32 is not None:
            t = _open(fp32)
            key = str(Path(t.path).resolve())
            if key not in fp32_traces:
                check_agreement(oracle_t, t, "fp32 oracle")
                fp32_traces[key] = t
        elif reference == "fp32":
            raise InputError(f"gate {job.policy.name!r} is judged against the fp32 oracle (reference = \"fp32\"): "
                             "give its trace (oracle_fp32 in the gate config, or --oracle-fp32 TRACE)")
        if reference == "fp32":  # judged against the fp32 oracle: the bf16 one is no candidate or control
            for given, role in ((job.candidate, "candidate"), (job.control, "control")):
                if given is not None:
                    roles.check_not_the_oracle(oracle_t, _open(given), role)
        passes.setdefault((key, reference), []).append(i)
    if list(passes) == [(None, "oracle")]:
        return _evaluate_pass(oracle_t, jobs, decode=decode, provenance=provenance, workers=workers)
    verdicts: list[Verdict | None] = [None] * len(jobs)
    for (key, reference), idx in passes.items():
        fp32_t = fp32_traces.get(key) if key else None
        if reference == "fp32":
            got = _evaluate_pass(fp32_t, [jobs[i] for i in idx], decode=decode, provenance=provenance,
                                 workers=workers)
            for v in got:
                v.summary["notes"].append(f"judged against the fp32 oracle {fp32_t.path} (reference = \"fp32\"), "
                                          f"not {oracle_t.path}")
                v.provenance["bf16_oracle"] = _trace_info(oracle_t)
        else:
            got = _evaluate_pass(oracle_t, [jobs[i] for i in idx], decode=decode, provenance=provenance,
                                 workers=workers, fp32=fp32_t)
        for i, v in zip(idx, got):
            verdicts[i] = v
    return verdicts


# ---------------------------------------------------------------------------------------------
# the per-row statistics, and the worker processes that compute them


def default_workers(fused: bool, nbytes: int) -> int:
    """Worker processes for a pass: one per CPU this process may run on, up to MAX_WORKERS, for a
    head-sized vocabulary with at least PROCESS_MIN_BYTES of logits to read; else 1 (in-process).

    Processes, not threads: the fused sweep is a Python loop of numpy calls on 8192-token blocks,
    and threads taking rows spent their time handing the interpreter lock back and forth (two
    threads were slower than one on this project's 2-core machine: benchmarks/README.md). Fork is Linux-only here (macOS's frameworks are not
    fork-safe, and spawn would re-run an unguarded __main__), so elsewhere the pass runs in-process.
    """
    if not fused or nbytes < PROCESS_MIN_BYTES or not _can_fork():
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def _can_fork() -> bool:
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


@dataclass
class _PassWork:
    """What a block of rows needs: the traces (read by path, each read opens the file) and their roles."""

    oracle: Trace
    traces: dict[str, Trace]
    cand_keys: list[str]
    ctrl_only: list[str]
    fused: bool
    unit: int

    def nbytes(self) -> int:
        """Bytes of the traces read in the pass (their file sizes: logits are nearly all of a trace)."""
        return sum(os.path.getsize(t.path) for t in {id(t): t for t in [self.oracle, *self.traces.values()]}.values())

    def block(self, cid: str, r0: int, r1: int) -> list[tuple]:
        """(OracleRows, {trace key: CandidateRows or ControlRows}) for each unit of rows [r0, r1) of a case."""
        o_block = self.oracle.logits_rows(cid, r0, r1)
        blocks = {k: self.traces[k].logits_rows(cid, r0, r1) for k in self.cand_keys + self.ctrl_only}
        return [self.unit_stats(o_block[a:a + self.unit], {k: v[a:a + self.unit] for k, v in blocks.items()},
                                (cid, r0 + a))
                for a in range(0, r1 - r0, self.unit)]

    def unit_stats(self, o_rows: np.ndarray, blocks: dict[str, np.ndarray], where: tuple[str, int]):
        got = None
        if self.fused:
            try:
                got = sweep.sweep(o_rows, [blocks[k] for k in self.cand_keys], [blocks[k] for k in self.ctrl_only])
            except ValueError as e:
                _oracle_not_finite(self.oracle, where[0], where[1] + int(e.args[0]))
        if got is not None:
            orc, cands, ctrls = got
            return orc, dict(zip(self.cand_keys, cands)) | dict(zip(self.ctrl_only, ctrls))
        o = metrics.to_float64(o_rows)
        sumsq = metrics.row_sumsq(o)
        bad = np.flatnonzero(~np.isfinite(sumsq))
        if bad.size:
            _oracle_not_finite(self.oracle, where[0], where[1] + int(bad[0]))
        orc = metrics.oracle_rows(o, sumsq)
        stats = {}
        for k in self.cand_keys + self.ctrl_only:
            x = metrics.to_float64(blocks[k])
            stats[k] = metrics.candidate_rows(x, o, orc) if k in self.cand_keys else metrics.control_rows(x)
        return orc, stats


_WORK: _PassWork | None = None  # a worker process's pass, inherited through fork


def _init_worker(work: _PassWork) -> None:
    global _WORK
    _WORK = work
    _reuse_read_buffers()


def _reuse_read_buffers() -> None:
    """In a worker (never the caller's process): have glibc serve the multi-MB read blocks from its
    heap instead of fresh mappings, so each block reuses the last one's pages. Otherwise every read
    faults its pages in anew: 1.3 s of system time in a 5 s pass at V=248320, against 0.5 s."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: blocks up to 64 MiB come from the heap
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep up to 128 MiB of freed heap for the next block
    except (OSError, AttributeError):  # not glibc: the defaults are only slower
        pass


def _worker_block(task: tuple[str, int, int]):
    """In a worker: one block's statistics, or the one-line message of a bad input (exit 2 in the parent)."""
    try:
        return True, _WORK.block(*task)
    except FlipgateError as e:
        return False, str(e)


@contextlib.contextmanager
def _block_results(work: _PassWork, tasks: list[tuple[str, int, int]], workers: int):
    """The statistics of each task's block of rows, in task order: computed here, or by `workers`
    forked processes that each take whole blocks (a block is read by the process that sweeps it).
    The numbers are the same either way: each row is swept by the same code on the same bytes."""
    if workers <= 1 or len(tasks) < 2:
        yield (work.block(*t) for t in tasks)
        return
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(min(workers, len(tasks)), initializer=_init_worker,
                                                    initargs=(work,))
    try:
        def results():
            for ok, got in pool.imap(_worker_block, tasks):
                if not ok:
                    raise InputError(got)
                yield got
        yield results()
    finally:
        pool.terminate()
        pool.join()


def _control_checks(oracle_t: Trace, prepared: list, traces: dict[str, Trace],
                    read_rows: int) -> tuple[dict, dict]:
    """({control key: RowsDigest}, {(candidate key, control key): SameRows}) over every case's rows."""
    digests = {k: roles.RowsDigest() for k in dict.fromkeys(p.control for p in prepared if p.control)}
    same_rows = {(p.candidate, p.control): roles.SameRows() for p in prepared if p.control}
    try:
        for cid in oracle_t.case_ids:
            rows = oracle_t.rows(cid)
            for r0 in range(0, rows, read_rows):
                r1 = min(rows, r0 + read_rows)
                blocks = {k: traces[k].logits_rows(cid, r0, r1) for k in digests}
                for k, d in digests.items():
                    d.update(cid, blocks[k], first=r0 == 0)
                for (c, k), same in same_rows.items():
                    if same.cases.get(cid, True):  # a case stops being compared at its first difference
                        same.update(cid, traces[c].logits_rows(cid, r0, r1), blocks[k])
    finally:
        for d in digests.values():
            d.close()
    return digests, same_rows


def _evaluate_pass(oracle_t: Trace, jobs: list[GateJob], *, decode: Decode | None, provenance: dict | None,
                   workers: int | None, fp32: Trace | None = None) -> list[Verdict]:
    if oracle_t.vocab_size < 2:
        raise InputError(f"{oracle_t.path}: vocab_size {oracle_t.vocab_size}: a margin needs at least 2 tokens")
    traces: dict[str, Trace] = {}

    def intern(t, role: str) -> str | None:
        if t is None:
            return None
        t = _open(t)
        key = str(Path(t.path).resolve())
        if key not in traces:
            check_agreement(oracle_t, t, role)
            traces[key] = t
        return key

    prepared = []
    for job in jobs:
        cand_key = intern(job.candidate, "candidate")
        ctrl_key = intern(job.control, "control")
        policy, notes = _effective(job.policy, traces[cand_key], traces[ctrl_key] if ctrl_key else None)
        roles.check_candidate(oracle_t, traces[cand_key])
        if ctrl_key:
            roles.check_control(oracle_t, traces[cand_key], traces[ctrl_key], policy.control)
        prepared.append(_Prepared(policy, cand_key, ctrl_key, notes))
    cand_keys = list(dict.fromkeys(p.candidate for p in prepared))
    ctrl_only = [k for k in dict.fromkeys(p.control for p in prepared if p.control) if k not in cand_keys]

    texts = _Texts(decode) if decode is not None else None
    vocab = oracle_t.vocab_size
    fused = vocab >= sweep.MIN_VOCAB
    # rows per unit of work: one row on the fused path, about 1 MiB of float64 on the reference path
    unit = 1 if fused else metrics.chunk_rows(vocab)
    read_rows = max(unit, (READ_BYTES // (vocab * 4)) // unit * unit)
    work = _PassWork(oracle_t, traces, cand_keys, ctrl_only, fused, unit)
    tasks = [(cid, r0, min(oracle_t.rows(cid), r0 + read_rows))
             for cid in oracle_t.case_ids for r0 in range(0, oracle_t.rows(cid), read_rows)]
    if workers is None:
        workers = default_workers(fused, work.nbytes())
    # the controls' content hash (provenance) and whether a control holds its candidate's rows (refused):
    # read on a thread beside the pass, started once the workers are forked (no thread crosses a fork)
    checks = ThreadPoolExecutor(max_workers=1)
    ids = prompt = None
    try:
        with _block_results(work, tasks, workers) as results:
            control_checks = checks.submit(_control_checks, oracle_t, prepared, traces, read_rows)
            for (cid, r0, r1), block in zip(tasks, results):
                if r0 == 0:
                    prompt = oracle_t.tokens(cid) - oracle_t.rows(cid)
                    # only the scored tokens and the context before them are used: read just those
                    first = max(0, prompt - CONTEXT_TOKENS)
                    ids = _Ids(oracle_t.input_ids_slice(cid, first, prompt + oracle_t.rows(cid)), first)
                fp32_top1 = _fp32_top1(fp32, cid, r0, r1) if fp32 is not None else None
                for a, (orc, stats) in zip(range(0, r1 - r0, unit), block):
                    cand = {k: stats[k] for k in cand_keys}
                    ctrl = {k: metrics.ControlRows(c.finite, c.top1, c.top1_prob) for k, c in cand.items()}
                    ctrl.update({k: stats[k] for k in ctrl_only})
                    for job in prepared:
                        _records(job, cid, ids, prompt, r0 + a, orc, cand[job.candidate],
                                 ctrl[job.control] if job.control else None, texts,
                                 None if fp32_top1 is None else fp32_top1[a:a + unit])
            digests, same_rows = control_checks.result()
    finally:
        checks.shutdown(wait=True)

    case_set = trace_case_set_sha256(oracle_t)  # the verdict names the case set it was judged on
    for (c, k), same in same_rows.items():
        same.check(traces[c], traces[k])
    verdicts = []
    for job in prepared:
        summary = summarise(job.positions, np.concatenate(job.cosine) if job.cosine else np.empty(0),
                            np.concatenate(job.kl) if job.kl else np.empty(0), job.policy, job.notes)
        summary["cases"] = len(oracle_t.case_ids)
        prov = {"oracle": _trace_info(oracle_t),
                "candidate": _trace_info(traces[job.candidate]) | roles.identity(traces[job.candidate], None),
                "control": (_trace_info(traces[job.control]) | roles.identity(traces[job.control],
                                                                               digests[job.control])
                            if job.control else None),
                "engine": {"flipgate": _version(), "numpy": np.__version__},
                "case_set_sha256": case_set}
        if fp32 is not None:
            arts = [p for p in job.positions if p["class"] == "oracle-artifact"]
            summary["oracle_artifacts_confirmed"] = sum(bool(p["fp32_confirms"]) for p in arts)
            summary["oracle_artifacts_unconfirmed"] = len(arts) - summary["oracle_artifacts_confirmed"]
            summary["fp32_confirmed_flips"] = sum(bool(p.get("fp32_confirms")) for p in job.positions)
            prov["oracle_fp32"] = _trace_info(fp32)
        prov.update(provenance or {})
        verdicts.append(Verdict(gate=job.policy.name, passed=not summary["reasons"], policy=job.policy.to_dict(),
                                summary=summary, positions=job.positions, provenance=prov))
    return verdicts


def _fp32_top1(fp32: Trace, cid: str, r0: int, r1: int) -> np.ndarray:
    rows = fp32.logits_rows(cid, r0, r1)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=-1))
    if bad.size:
        _oracle_not_finite(fp32, cid, r0 + int(bad[0]))
    return np.argmax(rows, axis=-1)  # first maximum, as every argmax here


class _Ids:
    """input_ids[first:] of a case, indexed by position in the whole sequence."""

    def __init__(self, tail: np.ndarray, first: int):
        self.tail, self.first = tail, first

    def __getitem__(self, pos: int) -> int:
        return int(self.tail[pos - self.first])

    def before(self, pos: int, count: int) -> list[int]:
        return [int(x) for x in self.tail[max(0, pos - self.first - count):pos - self.first]]


def _records(job: _Prepared, cid: str, ids: _Ids, prompt: int, first_row: int, orc: metrics.OracleRows,
             cr: metrics.CandidateRows, kr: metrics.ControlRows | None, texts: _Texts | None,
             fp32_top1: np.ndarray | None = None) -> None:
    policy = job.policy
    margins = orc.margin_logit if policy.margin_space == "logit" else orc.margin_prob
    job.cosine.append(cr.cosine)
    job.kl.append(cr.kl)
    for i in range(len(margins)):
        row = first_row + i
        pos = prompt + row
        top1, top2 = int(orc.top_idx[i, 0]), int(orc.top_idx[i, 1])
        margin = float(margins[i])
        confident = margin >= policy.min_margin
        cand_ok = bool(cr.finite[i])
        ctrl_ok = kr is None or bool(kr.finite[i])
        cand_top1 = _nan_to_none_int(cr.top1[i])
        ctrl_top1 = None if kr is None else _nan_to_none_int(kr.top1[i])
        cls = _classify(cand_ok and ctrl_ok, cand_top1, top1, confident, ctrl_top1)
        nonfinite = "+".join(r for r, ok in (("candidate", cand_ok), ("control", ctrl_ok)) if not ok)
        rec = {
            "case": cid, "row": row, "position": pos, "target_token": int(ids[pos]),
            "oracle_top1": top1, "oracle_top2": top2, "margin": margin,
            "candidate_top1": cand_top1, "control_top1": ctrl_top1, "class": cls,
            "cosine": float(cr.cosine[i]), "kl": float(cr.kl[i]),
            "oracle_rank_in_candidate": int(cr.oracle_rank[i]) if cand_ok else None,
            "top5_overlap": int(cr.top5_overlap[i]) if cand_ok else None,
            "confident": bool(confident),
            "margin_prob": float(orc.margin_prob[i]), "margin_logit": float(orc.margin_logit[i]),
            "oracle_top1_prob": float(orc.top1_prob[i]), "oracle_top2_prob": float(orc.top2_prob[i]),
            "candidate_top1_prob": float(cr.top1_prob[i]),
            "control_top1_prob": None if kr is None else float(kr.top1_prob[i]),
            "nonfinite": nonfinite or None,
        }
        if fp32_top1 is not None:
            rec["fp32_top1"] = int(fp32_top1[i])
            # a confident flip: does the fp32 oracle pick what the candidate picked?
            flip = cls in ("oracle-artifact", "defect")
            rec["fp32_confirms"] = bool(rec["fp32_top1"] == cand_top1) if flip else None
            if cls == "oracle-artifact":
                rec["class_text"] = ("oracle-artifact (confirmed by fp32)" if rec["fp32_confirms"]
                                     else "oracle-artifact (not confirmed by fp32)")
        if texts is not None:
            rec["context_text"] = texts.context(ids, pos)
            rec["target_text"] = texts.token(int(ids[pos]))
            rec["oracle_top1_text"] = texts.token(top1)
            rec["oracle_top2_text"] = texts.token(top2)
            rec["candidate_top1_text"] = texts.token(cand_top1)
            rec["control_top1_text"] = texts.token(ctrl_top1)
        job.positions.append(rec)


def _oracle_not_finite(oracle: Trace, cid: str, row: int):
    raise InputError(f"{oracle.path}: case {cid!r} row {row}: oracle logits hold NaN or Inf (an oracle must be finite)")


def _version() -> str:
    from harness import __version__

    return __version__


def summarise(positions: list[dict], cosine: np.ndarray, kl: np.ndarray, policy: GatePolicy,
              notes: list[str] | None = None) -> dict:
    """Counts per class, both scores, the metric extremes, the flip rate, and why the gate fails."""
    counts = {c: 0 for c in ("match", "tie-flip", "oracle-artifact", "defect", "invalid")}
    confident = confident_judged = 0
    for p in positions:
        counts[p["class"]] += 1
        if p["confident"]:
            confident += 1
            if p["class"] in ("match", "oracle-artifact", "defect"):
                confident_judged += 1
    n = len(positions)
    flips = counts["oracle-artifact"] + counts["defect"]
    # np.min/np.mean propagate NaN: one unusable row makes the extreme NaN, which fails its bound
    min_cos = float(np.min(cosine)) if cosine.size else math.nan
    mean_cos = float(np.mean(cosine)) if cosine.size else math.nan
    mean_kl = float(np.mean(kl)) if kl.size else math.nan
    max_kl = float(np.max(kl)) if kl.size else math.nan
    lo, hi = metrics.wilson_interval(flips, confident_judged)

    reasons = []
    if n == 0:
        reasons.append("no scored positions")
    if counts["invalid"]:
        reasons.append(f"{counts['invalid']} invalid position(s): NaN or Inf in the candidate or control")
    if counts["defect"] > policy.max_defects:
        reasons.append(f"{counts['defect']} defect(s), max_defects {policy.max_defects}")
    if not (min_cos >= policy.min_cosine):  # written so that NaN fails
        reasons.append(f"min cosine {min_cos:.6g} below min_cosine {policy.min_cosine}")
    if policy.max_kl is not None and not (max_kl <= policy.max_kl):
        reasons.append(f"max KL {max_kl:.6g} above max_kl {policy.max_kl}")
    if confident < policy.min_confident:
        reasons.append(f"{confident} confident position(s), min_confident {policy.min_confident}: "
                       "too little evidence for a pass")
    return {
        "positions": n,
        "exact": counts["match"],
        "rule": counts["match"] + counts["tie-flip"],
        "confident": confident,
        "tie_flips": counts["tie-flip"],
        "oracle_artifacts": counts["oracle-artifact"],
        "defects": counts["defect"],
        "invalid": counts["invalid"],
        "min_cosine": min_cos,
        "mean_cosine": mean_cos,
        "mean_kl": mean_kl,
        "max_kl": max_kl,
        "margin_space": policy.margin_space,
        "min_margin": policy.min_margin,
        "confident_flips": flips,
        "confident_judged": confident_judged,
        "confident_flip_rate": flips / confident_judged if confident_judged else None,
        "confident_flip_rate_ci95": [lo, hi],
        # what the defect count proves: one-sided exact bound on defects per confident position judged
        "defect_rate_upper_95": metrics.defect_rate_upper(counts["defect"], confident_judged),
        "reasons": reasons,
        "notes": list(notes or []),
    }
