"""Case sets that can prove something: pinned by a hash, built from a corpus, sized for a claim.

**The case set hash** (`case_set_sha256`, DESIGN.md "Trace file"): sha256 over the case ids and
their whole token sequences (prompt + continuation), taken in order of case id, so it names the
set and not the order a runner wrote it in:

    sha256( "flipgate.case_set/1\\n" + for each case, sorted by id: json([id, [token, ...]]) + "\\n" )

(compact JSON, ASCII). Every trace flipgate writes carries the hash of the cases it holds
(`harness.trace.write_trace` and `harness.merge.join_cases` stamp it), so a trace can be checked
against its own contents (`trace_case_set_sha256`), and `gate`, `merge` and `compare` refuse to put
two case sets together, naming both hashes. A case file whose every case pins its token sequence
(`prompt_ids` or a tokenizer for `prompt`, plus `continuation`/`continuation_ids`) has the same hash
before any oracle runs: `flipgate cases hash` prints it.

**Building a case set** (`build_case_set`, `flipgate cases build`): prompts cut from a corpus, run
through the bf16 oracle (`oracles.hf.HFOracle`, as `flipgate oracle` runs it), kept until the
target number of confident positions is reached, near-duplicates dropped, every continuation
pinned; see that function.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from .errors import InputError, TraceError
from .fileio import sha256_file, write_text_atomic

if TYPE_CHECKING:
    from .trace import Trace

HASH_FORMAT = "flipgate.case_set/1"
KEY = "case_set_sha256"
SHORT = 16  # hex digits of a hash shown in messages


# ---------------------------------------------------------------------------------------------
# the hash


def case_set_sha256(sequences: Iterable[tuple[str, Sequence[int]]]) -> str:
    """The hash of a case set: (case id, token sequence) pairs, in any order (see module doc)."""
    items: dict[str, list[int]] = {}
    for cid, ids in sequences:
        cid = str(cid)
        if cid in items:
            raise ValueError(f"case id {cid!r} given twice")
        items[cid] = [int(t) for t in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    h = hashlib.sha256(HASH_FORMAT.encode("ascii") + b"\n")
    for cid in sorted(items):
        h.update(json.dumps([cid, items[cid]], separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n")
    return h.hexdigest()


def short(h: str | None) -> str:
    return "(none)" if not h else h[:SHORT]


def trace_case_set_sha256(trace: "Trace") -> str:
    """The case set hash of a trace's own cases and token sequences. If the trace records one
    (`case_set_sha256` in its metadata) it must be this: a trace whose label disagrees with its
    contents was edited or made by something that does not follow the format, and is refused."""
    computed = case_set_sha256((cid, trace.input_ids(cid)) for cid in trace.case_ids)
    recorded = trace.metadata.get(KEY)
    if recorded and recorded != computed:
        raise TraceError(trace.path, f"metadata {KEY} {short(recorded)}… is not the hash of the trace's own "
                                     f"cases and token sequences ({short(computed)}…): edited, or written by a "
                                     "flipgate that did not hash case sets yet; re-make it")
    return computed


def check_same_case_set(oracle: "Trace", other: "Trace", where: str, role: str = "other") -> str:
    """Raise InputError unless `other` holds the oracle's case set (same ids, same token sequences),
    naming the first difference and both hashes. Returns the hash."""
    mine, theirs = trace_case_set_sha256(oracle), trace_case_set_sha256(other)
    if mine != theirs:
        raise InputError(f"{where}: {_first_difference(oracle, other, role)}: case set {short(theirs)}… is not "
                         f"the oracle's {short(mine)}… (traces of different case sets are never judged together)")
    return mine


def _first_difference(a: "Trace", b: "Trace", role: str) -> str:
    ours, theirs = set(a.case_ids), set(b.case_ids)
    missing = [c for c in a.case_ids if c not in theirs]
    if missing:
        return f"case {missing[0]!r} of the oracle is missing"
    extra = [c for c in b.case_ids if c not in ours]
    if extra:
        return f"case {extra[0]!r} is not in the oracle ({a.path})"
    for cid in a.case_ids:
        x, y = a.input_ids(cid), b.input_ids(cid)
        n = min(len(x), len(y))
        diff = [i for i in range(n) if int(x[i]) != int(y[i])]
        if diff:
            i = diff[0]
            return f"case {cid!r}: input_ids differ from the oracle's at token {i} (oracle {int(x[i])}, {role} {int(y[i])})"
        if len(x) != len(y):
            return f"case {cid!r}: {len(y)} input_ids, the oracle has {len(x)} (they differ from token {n} on)"
    return "the same sequences"  # unreachable: equal sequences hash equal


def check_verdicts_one_case_set(verdicts: Sequence) -> str | None:
    """Verdicts shown side by side must come from one case set: InputError naming both gates and
    both hashes otherwise. Verdicts that record no hash (made before it existed) are not compared.
    Returns the common hash, or None when none records one."""
    first: tuple[str, str] | None = None
    for v in verdicts:
        prov = v.provenance if hasattr(v, "provenance") else (v.get("provenance") or {})
        gate = v.gate if hasattr(v, "gate") else v.get("gate")
        h = prov.get(KEY) if isinstance(prov, Mapping) else None
        if not h:
            continue
        if first is None:
            first = (str(gate), h)
        elif h != first[1]:
            raise InputError(f"gate {gate!r} was judged on case set {short(h)}…, gate {first[0]!r} on "
                             f"{short(first[1])}…: verdicts of different case sets cannot be compared")
    return first[1] if first else None


def case_file_sha256(path: str | os.PathLike | None, tokenizer=None) -> str:
    """The case set hash of a case file whose every case pins its whole token sequence (ids, or
    text with `tokenizer`); InputError naming the first case that leaves its continuation to the oracle."""
    from .cases import load_cases, tokenize_case

    cs = load_cases(path)
    seqs = []
    for spec in cs.specs:
        if not spec.has_continuation:
            raise InputError(f"{cs.path}:{spec.line}: case {spec.id!r} gives no continuation, so its tokens are "
                             "the oracle's greedy output: hash the oracle's trace instead")
        if tokenizer is None and (spec.prompt is not None or spec.continuation is not None):
            raise InputError(f"{cs.path}:{spec.line}: case {spec.id!r} is text: give --model (its tokenizer) to hash it")
        case = tokenize_case(spec, tokenizer)
        seqs.append((case.id, case.input_ids))
    return case_set_sha256(seqs)


# ---------------------------------------------------------------------------------------------
# corpora


DOC_SEPARATOR = "<|endoftext|>"


@dataclass(frozen=True)
class Unit:
    """A piece of corpus text a prompt may be cut from (a paragraph or a document)."""

    id: str
    text: str


def _slug(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.:-]+", "-", s).strip("-")
    return s[:60] or "doc"


def read_corpus(path: str | os.PathLike, unit: str | None = None) -> list[Unit]:
    """Units of a corpus, in file order.

    Plain text: documents are separated by a line holding only `<|endoftext|>`; JSONL (`.jsonl`,
    `.ndjson`): one document a line, an object with a string `text` (and optionally `id`) or a bare
    string. `unit` is `paragraph` (blocks between blank lines; the default for plain text) or
    `document` (the default for JSONL).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such corpus file")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    jsonl = p.suffix.lower() in (".jsonl", ".ndjson")
    unit = unit or ("document" if jsonl else "paragraph")
    if unit not in ("paragraph", "document"):
        raise InputError(f"--unit {unit!r}: expected paragraph or document")
    docs: list[tuple[str, str]] = []
    if jsonl:
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if isinstance(obj, str):
                docs.append((f"d{lineno}", obj))
            elif isinstance(obj, dict) and isinstance(obj.get("text"), str):
                did = obj.get("id", f"d{lineno}")
                if not isinstance(did, (str, int)):
                    raise InputError(f"{p}:{lineno}: 'id' must be a string")
                docs.append((_slug(str(did)), obj["text"]))
            else:
                raise InputError(f"{p}:{lineno}: a corpus line must be a JSON string or an object with a string 'text'")
    else:
        blocks = re.split(r"^[ \t]*" + re.escape(DOC_SEPARATOR) + r"[ \t]*$", raw, flags=re.M)
        docs = [(f"d{i}", b) for i, b in enumerate(blocks)]
    units: list[Unit] = []
    for did, text in docs:
        if unit == "document":
            if text.strip():
                units.append(Unit(did, text.strip()))
            continue
        paras = [x.strip() for x in re.split(r"\n[ \t]*\n", text) if x.strip()]
        for j, para in enumerate(paras):
            units.append(Unit(f"{did}-p{j}", para))
    seen: dict[str, int] = {}
    out = []
    for u in units:  # ids must be unique case ids
        n = seen.get(u.id, 0)
        seen[u.id] = n + 1
        out.append(u if n == 0 else Unit(f"{u.id}-{n}", u.text))
    if not out:
        raise InputError(f"{p}: the corpus holds no text")
    return out


# ---------------------------------------------------------------------------------------------
# near-duplicates


def shingles(text: str, n: int = 3) -> frozenset:
    """Word n-grams of the lower-cased text (whole words when there are fewer than n)."""
    words = text.lower().split()
    if len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# ---------------------------------------------------------------------------------------------
# building


MARGIN_EDGES = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
SUMMARY_FORMAT = "flipgate.cases-summary/1"


@dataclass
class BuiltCase:
    id: str                  # the corpus unit's id
    prompt: str
    prompt_tokens: int
    continuation_ids: list[int]
    margins: list[float]
    confident: int

    @property
    def tie_fraction(self) -> float:
        return 1.0 - self.confident / len(self.margins) if self.margins else 0.0


@dataclass
class BuildResult:
    cases: list[BuiltCase]
    case_set_sha256: str
    summary: dict
    lines: list[str] = field(default_factory=list)  # the case file, one line each

    @property
    def confident(self) -> int:
        return sum(c.confident for c in self.cases)


def margin_histogram(margins: Iterable[float], edges: Sequence[float] = MARGIN_EDGES) -> list[int]:
    """Counts per [edges[i], edges[i+1]) bin, the last bin closed."""
    counts = [0] * (len(edges) - 1)
    for m in margins:
        for i in range(len(counts)):
            if m < edges[i + 1] or i == len(counts) - 1:
                counts[i] += 1
                break
    return counts


def _cut_prompt(tokenizer, text: str, n_tokens: int, min_tokens: int) -> str:
    """The text of about the first `n_tokens` tokens, ending at a word boundary as a user's prompt
    does: cut back to the last whitespace, or, if that leaves fewer than `min_tokens` tokens,
    forward to the next one."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= n_tokens:
        return text.rstrip()
    head = tokenizer.decode(ids[:n_tokens], clean_up_tokenization_spaces=False)
    if not text.startswith(head):  # a tokenizer that normalises: its own text is the prompt
        return head.rstrip()
    if len(text) == len(head) or text[len(head)].isspace():
        return head.rstrip()
    back = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    if back > 0:
        cut = head[:back].rstrip()
        if len(tokenizer.encode(cut, add_special_tokens=False)) >= min_tokens:
            return cut
    m = re.search(r"\s", text[len(head):])
    return (text[:len(head) + m.start()] if m else text).rstrip()


def build_case_set(*, corpus: str | os.PathLike, target_confident: int, model: str | os.PathLike | None = None,
                   seed: int = 0, min_margin: float = 0.1, prompt_tokens: tuple[int, int] = (16, 64),
                   new_tokens: int = 16, max_similarity: float = 0.5, unit: str | None = None,
                   device: str = "cpu", max_cases: int | None = None,
                   log: Callable[[str], None] | None = None) -> BuildResult:
    """Cut prompts from `corpus`, run the bf16 oracle on each, keep cases until `target_confident`
    confident positions (probability margin >= `min_margin`, the gate's rule) are reached.

    Units (paragraphs or documents) are visited in an order shuffled by `seed`; each gives one
    prompt of a length drawn from `prompt_tokens` (inclusive, in tokens, moved to a word boundary:
    see `_cut_prompt`; units shorter than the minimum are skipped). A prompt whose word 3-gram Jaccard
    similarity with a kept prompt is >= `max_similarity` is dropped as a near-duplicate. The oracle
    makes each continuation (greedy, `new_tokens`) and its rows (one causal pass), case by case,
    exactly as `flipgate oracle` does, so the built file's confident count is the oracle trace's
    (on CPU, bf16 rows can change with the torch thread count: build where the oracle will run).
    Raises InputError when the corpus runs out first (nothing is returned, nothing is written).
    """
    import numpy as np

    from oracles.hf import HFOracle, _loading_bar, prob_margins

    from .cases import Case

    say = log or (lambda m: None)
    if not isinstance(target_confident, int) or target_confident < 1:
        raise InputError(f"--target-confident {target_confident!r}: expected a positive integer")
    lo, hi = prompt_tokens
    if not 1 <= lo <= hi:
        raise InputError(f"--prompt-tokens {lo}-{hi}: expected 1 <= MIN <= MAX")
    if new_tokens < 1:
        raise InputError(f"--new-tokens {new_tokens}: expected a positive integer")
    if not (isinstance(min_margin, (int, float)) and math.isfinite(min_margin) and 0 <= min_margin <= 1):
        raise InputError(f"--min-margin {min_margin!r}: expected a probability gap in [0, 1]")
    if not 0 < max_similarity <= 1:
        raise InputError(f"--max-similarity {max_similarity!r}: expected a value in (0, 1]")
    units = read_corpus(corpus, unit)
    oracle = HFOracle(model, dtype="bfloat16", device=device)
    with _loading_bar(False):
        oracle.model  # load now: a checkpoint that cannot load fails before any work
    tok = oracle.tokenizer
    rng = random.Random(seed)
    order = list(range(len(units)))
    rng.shuffle(order)

    kept: list[BuiltCase] = []
    kept_shingles: list[frozenset] = []
    seen_prompts: set[str] = set()
    stats = {"units": len(units), "visited": 0, "too_short": 0, "near_duplicates": 0}
    total_confident = 0
    for idx in order:
        if total_confident >= target_confident or (max_cases is not None and len(kept) >= max_cases):
            break
        u = units[idx]
        stats["visited"] += 1
        length = rng.randint(lo, hi)  # drawn for every unit visited, so the draws do not depend on the oracle
        prompt = _cut_prompt(tok, u.text, length, lo)
        n_prompt = len(tok.encode(prompt, add_special_tokens=False)) if prompt else 0
        if n_prompt < lo:
            stats["too_short"] += 1
            continue
        sh = shingles(prompt)
        if prompt in seen_prompts or any(jaccard(sh, k) >= max_similarity for k in kept_shingles):
            stats["near_duplicates"] += 1
            continue
        case = Case(u.id, tuple(int(t) for t in tok.encode(prompt, add_special_tokens=False)), None, new_tokens)
        oracle.check_case(case)
        case = oracle.complete([case])[0]
        rows = oracle.rows_batch(np.array([case.input_ids], dtype=np.int64), new_tokens)[0]
        margins = [float(m) for m in prob_margins(rows)]
        confident = sum(m >= min_margin for m in margins)
        kept.append(BuiltCase(u.id, prompt, n_prompt, list(case.continuation_ids), margins, confident))
        kept_shingles.append(sh)
        seen_prompts.add(prompt)
        total_confident += confident
        say(f"{u.id[:40]:<40} {n_prompt:>4} prompt tokens  {confident:>3}/{len(margins)} confident  "
            f"(total {total_confident}/{target_confident})")
    if total_confident < target_confident:
        raise InputError(f"{corpus}: the corpus gave {len(kept)} cases with {total_confident} confident positions "
                         f"(margin >= {min_margin:g}), short of --target-confident {target_confident} "
                         f"({stats['too_short']} units too short, {stats['near_duplicates']} near-duplicates); "
                         "nothing written")

    sequences = [(c.id, [*tok.encode(c.prompt, add_special_tokens=False), *c.continuation_ids]) for c in kept]
    digest = case_set_sha256(sequences)
    meta = oracle.metadata()
    weights = _weights_only(meta["model"])  # no local path: the file must not depend on where it was built

    all_margins = [m for c in kept for m in c.margins]
    summary = {
        "format": SUMMARY_FORMAT,
        KEY: digest,
        "corpus": Path(corpus).name,
        "corpus_sha256": sha256_file(corpus),
        "model_sha256": weights,
        "tokenizer_sha256": meta["tokenizer_sha256"],
        "dtype": "bfloat16",
        "seed": seed,
        "target_confident": target_confident,
        "min_margin": min_margin,
        "margin_space": "prob",
        "prompt_tokens": [lo, hi],
        "new_tokens": new_tokens,
        "max_similarity": max_similarity,
        "unit": unit or ("document" if Path(corpus).suffix.lower() in (".jsonl", ".ndjson") else "paragraph"),
        "cases": len(kept),
        "positions": len(all_margins),
        "confident": total_confident,
        "ties": len(all_margins) - total_confident,
        "margin_histogram": {"edges": list(MARGIN_EDGES), "counts": margin_histogram(all_margins)},
        "corpus_units": stats["units"],
        "units_visited": stats["visited"],
        "skipped_too_short": stats["too_short"],
        "dropped_near_duplicates": stats["near_duplicates"],
        "per_case": [{"id": c.id, "prompt_tokens": c.prompt_tokens, "positions": len(c.margins),
                      "confident": c.confident, "tie_fraction": round(c.tie_fraction, 6),
                      "lowest_margin": round(min(c.margins), 6)} for c in kept],
    }
    header = (f"# flipgate cases build: {len(kept)} cases, {total_confident} of {len(all_margins)} positions confident "
              f"(prob margin >= {min_margin:g}, bf16 oracle); {KEY} {digest}; corpus {summary['corpus']} "
              f"sha256 {summary['corpus_sha256'][:SHORT]}; seed {seed}; model weights "
              + ", ".join(f"{k} {v[:SHORT]}" for k, v in sorted(weights.items())))
    lines = [header] + [json.dumps({"id": c.id, "prompt": c.prompt, "continuation_ids": c.continuation_ids},
                                   ensure_ascii=False) for c in kept]
    return BuildResult(kept, digest, summary, lines)


def _weights_only(model: str) -> dict[str, str]:
    """The weight files' sha256 from a model provenance string (`{"path": ..., "sha256": {...}}`)."""
    try:
        got = json.loads(model).get("sha256")
    except (ValueError, AttributeError):
        got = None
    return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {"model": model}


def summary_path(out: str | os.PathLike) -> Path:
    """The sidecar of a built case file: `cases.jsonl` -> `cases.summary.json`."""
    p = Path(out)
    return p.with_name((p.stem if p.suffix else p.name) + ".summary.json")


def write_case_set(result: BuildResult, out: str | os.PathLike) -> tuple[Path, Path]:
    """The case file and its summary sidecar, each written atomically; same inputs, same bytes."""
    out = Path(out)
    side = summary_path(out)
    write_text_atomic(out, "\n".join(result.lines) + "\n")
    write_text_atomic(side, json.dumps(result.summary, indent=1, sort_keys=False) + "\n")
    return out, side


def format_summary(summary: Mapping) -> list[str]:
    """The summary as lines for a terminal."""
    edges, counts = summary["margin_histogram"]["edges"], summary["margin_histogram"]["counts"]
    n = max(1, summary["positions"])
    out = [f"{summary['cases']} cases, {summary['confident']} of {summary['positions']} positions confident "
           f"(prob margin >= {summary['min_margin']:g}; target {summary['target_confident']}), "
           f"{summary['ties']} below the margin",
           f"{summary['corpus_units']} corpus units, {summary['units_visited']} visited: "
           f"{summary['skipped_too_short']} too short, {summary['dropped_near_duplicates']} near-duplicates dropped",
           "margin histogram (prob):"]
    width = 40
    top = max(counts) or 1
    for i, c in enumerate(counts):
        right = "]" if i == len(counts) - 1 else ")"
        out.append(f"  [{edges[i]:.2f}, {edges[i + 1]:.2f}{right} {c:>6}  {c / n:6.1%}  {'#' * round(width * c / top)}")
    ties = [c for c in summary["per_case"] if c["tie_fraction"] > 0]
    out.append(f"tie fraction per case: {len(ties)} of {summary['cases']} cases have positions below the margin"
               + (": " + ", ".join(f"{c['id']} {c['tie_fraction']:.0%}" for c in
                                   sorted(ties, key=lambda c: -c["tie_fraction"])[:8]) if ties else ""))
    out.append(f"{KEY} {summary[KEY]}")
    return out
