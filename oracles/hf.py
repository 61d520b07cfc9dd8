"""The Hugging Face oracle: teacher-forced rows from the full-precision checkpoint (DESIGN.md).

For each case the oracle first makes the continuation when the case does not give one (greedy,
`new_tokens` tokens, through the model's cache as `generate` would), then records the R scored
rows: row k is the next-token logits after x[0 .. P+k-1]. Rows come from one causal forward pass
over the whole sequence; `stepwise=True` feeds the same tokens one at a time through the model's
cache (S=1, as the device does) instead.

Batching is opt-in (`batch_size`), and only cases of the same length share a batch: right-padding
changes the GatedDeltaNet chunking and so the rounding of the real positions. Even unpadded, a
backend may pick other kernels for another batch shape (on CPU, bf16 rows already change with the
torch thread count, recorded as `torch_threads`), and an oracle whose rows depend on which cases
shared its batch, or which shard it ran in, is not a reference: by default each case runs alone.

`run_oracle` is the runner behind `flipgate oracle`: each case's rows go to a one-case trace in
`<out>.parts/` as soon as they are computed (memory does not grow with the case count, and an
interrupted run resumes from them), then the parts are joined into the trace by a streaming copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import ml_dtypes
import numpy as np

from harness.cases import Case, load_cases, select_shard, tokenize_case
from harness.errors import InputError, TraceError
from harness.models import (DTYPES, load_causal_lm, load_tokenizer, model_provenance, read_config,
                            resolve_model_dir, tokenizer_sha256, torch_threads, weight_files)
from harness.trace import CaseTrace, base_metadata, open_trace, write_trace
from reports.escape import visible

RUNNER = "hf"
DEVICES = ("cpu", "cuda", "mps", "auto")
VARIANTS = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}
DEFAULT_MIN_MARGIN = 0.1
DEFAULT_BATCH_SIZE = 1  # see the module doc: batching is opt-in
_CAUSAL_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
_MANIFEST = "run.json"
_CHECKSUMS = "part_sha256"  # run.json key: part file name -> sha256 of its bytes, for --resume


# ---------------------------------------------------------------------------------------------
# margins


def prob_margins(rows: np.ndarray) -> np.ndarray:
    """Per row: softmax-probability gap between the two best tokens (float64), as the gate computes it."""
    x = np.asarray(rows, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    top2 = np.partition(p, -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def low_margin_count(rows: np.ndarray, min_margin: float = DEFAULT_MIN_MARGIN) -> int:
    """Rows whose oracle is not confident (probability margin below `min_margin`)."""
    return int((prob_margins(rows) < min_margin).sum())


# ---------------------------------------------------------------------------------------------
# options


def parse_max_memory(spec: str | dict | None) -> dict | None:
    """`0=20GiB,cpu=60GiB` -> {0: "20GiB", "cpu": "60GiB"} (accelerate's max_memory)."""
    if spec is None or isinstance(spec, dict):
        return spec
    out: dict = {}
    for item in (s.strip() for s in str(spec).split(",")):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise InputError(f"--max-memory {spec!r}: expected DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=60GiB")
        if key.isdigit():
            dev: int | str = int(key)
        elif key in ("cpu", "mps", "disk") or key.startswith(("cuda:", "xpu:", "npu:")):
            dev = key
        else:
            raise InputError(f"--max-memory {spec!r}: unknown device {key!r} (a GPU index, cpu, mps or disk)")
        if not (value[0].isdigit()):
            raise InputError(f"--max-memory {spec!r}: size {value!r} for {key!r} is not a size like 20GiB")
        out[dev] = value
    return out


def _check_choice(flag: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InputError(f"{flag} {value!r}: expected one of {', '.join(choices)}")


def _text_config(cfg: dict) -> dict:
    """The decoder's config: multimodal checkpoints of this family nest it under text_config."""
    tc = cfg.get("text_config")
    return tc if isinstance(tc, dict) else cfg


# ---------------------------------------------------------------------------------------------
# the oracle


def _computing(method):
    """Run an HFOracle method on the oracle's torch threads (HFOracle.threads), restoring the caller's."""
    @functools.wraps(method)
    def on_oracle_threads(self, *args, **kwargs):
        with self._threads():
            return method(self, *args, **kwargs)
    return on_oracle_threads


class HFOracle:
    """A Hugging Face causal LM as the teacher-forced reference.

    The config and tokenizer load at once (so bad checkpoints and cases fail before the weights
    are read); the weights load on first use of `.model`.
    """

    runner = RUNNER

    def __init__(self, model_dir: str | os.PathLike | None = None, dtype: str = "bfloat16",
                 device: str = "cpu", trust_remote_code: bool = False, max_memory=None,
                 threads: int | None = None):
        _check_choice("--dtype", dtype, DTYPES)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"--threads {threads!r}: expected a positive number of threads")
        # torch CPU threads while computing: None picks one for a small model (harness.models.torch_threads:
        # on a busy machine every parallel kernel of a small model waits for a descheduled thread)
        self.threads = threads
        _check_choice("--device", device, DEVICES)
        self.max_memory = parse_max_memory(max_memory)
        if self.max_memory is not None and device != "auto":
            raise InputError(f"--max-memory applies to --device auto (got --device {device})")
        self.model_arg = None if model_dir is None else str(model_dir)
        self.model_dir = resolve_model_dir(model_dir)
        self.dtype = dtype
        self.device = device
        self.trust_remote_code = trust_remote_code
        cfg = read_config(self.model_dir)
        weight_files(self.model_dir)
        archs = cfg.get("architectures") or []
        if archs and not any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
            raise InputError(f"{self.model_dir}: {', '.join(archs)} is not a causal language model")
        tcfg = _text_config(cfg)
        vocab = tcfg.get("vocab_size")
        if not isinstance(vocab, int) or vocab <= 0:
            raise InputError(f"{self.model_dir}/config.json: no positive 'vocab_size' (not a causal language model?)")
        self.vocab_size = vocab
        hidden = tcfg.get("hidden_size")
        self.hidden_size: int | None = hidden if isinstance(hidden, int) and hidden > 0 else None
        ctx = tcfg.get("max_position_embeddings")
        self.max_positions: int | None = ctx if isinstance(ctx, int) and ctx > 0 else None
        self.tokenizer = load_tokenizer(self.model_dir)
        tok_vocab = len(self.tokenizer)
        if tok_vocab > vocab:
            raise InputError(f"{self.model_dir}: the tokenizer has {tok_vocab} tokens but the model's head has "
                             f"only {vocab} rows (vocab_size): tokenizer and weights do not belong together")
        self._model = None
        self._weights_sha: str | None = None

    # -- loading --------------------------------------------------------------------------

    @property
    def model(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self):
        import inspect

        import torch

        device_map = None
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"--device cuda: torch {torch.__version__} sees no CUDA device "
                                 "(use --device cpu, or auto)")
            device_map = {"": "cuda"}
        elif self.device == "mps":
            if not torch.backends.mps.is_available():
                raise InputError("--device mps: the MPS backend is not available here (use --device cpu)")
            device_map = {"": "mps"}
        elif self.device == "auto":
            device_map = "auto"  # accelerate: GPU(s), then CPU, then disk (safetensors read in place)
        model = load_causal_lm(self.model_dir, self.dtype, device_map=device_map, max_memory=self.max_memory,
                               trust_remote_code=self.trust_remote_code)
        head = model.get_output_embeddings()
        width = getattr(head, "out_features", None) or getattr(getattr(head, "weight", None), "shape", [None])[0]
        if width is not None and int(width) != self.vocab_size:
            raise InputError(f"{self.model_dir}: config vocab_size {self.vocab_size} but the loaded head has "
                             f"{int(width)} rows")
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renames past_key_values to cache; accept either spelling
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keeps_logits = "logits_to_keep" in params
        emb = model.get_input_embeddings().weight
        # offloaded embeddings live on "meta": accelerate's hooks move the inputs then
        self._input_device = emb.device if emb.device.type != "meta" else torch.device("cpu")
        return model

    # -- forward --------------------------------------------------------------------------

    def _forward(self, ids, *, cache=None, use_cache: bool = False, keep: int = 0):
        """ids [B, S] -> (logits [B, S or keep, V], cache)."""
        import torch

        model = self.model
        if not isinstance(ids, torch.Tensor):
            ids = torch.from_numpy(np.array(ids, dtype=np.int64))  # a copy: trace arrays are read-only
        kw = {"input_ids": ids.to(self._input_device), "use_cache": use_cache}
        if cache is not None:
            kw[self._cache_kw] = cache
        if keep and self._keeps_logits:
            kw["logits_to_keep"] = keep
        with torch.inference_mode():
            out = model(**kw)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        logits = out.logits
        if keep:
            logits = logits[:, -keep:]
        return logits, new_cache

    @_computing
    def greedy(self, prompts: np.ndarray, new_tokens: int, on_tokens: Callable[[int], None] | None = None) -> np.ndarray:
        """Greedy continuations for a batch of equal-length prompts [B, P] -> [B, new_tokens].

        Prefill, then S=1 steps through the cache: what `generate` does, with no logits
        processors and no stop at end-of-text, so the continuation is always `new_tokens` long.
        """
        import torch

        prompts = np.asarray(prompts, dtype=np.int64)
        self._check_fits(prompts.shape[1] + new_tokens, "prompt + continuation")
        logits, cache = self._forward(prompts, use_cache=True, keep=1)
        if on_tokens:
            on_tokens(prompts.size)
        out = []
        for i in range(new_tokens):
            nxt = torch.argmax(logits[:, -1].float(), dim=-1)
            out.append(nxt.cpu())
            if i + 1 < new_tokens:
                logits, cache = self._forward(nxt[:, None], cache=cache, use_cache=True)
            if on_tokens:
                on_tokens(len(prompts))
        return torch.stack(out, dim=1).numpy().astype(np.int64)

    def complete(self, cases: Sequence[Case], batch_size: int = DEFAULT_BATCH_SIZE,
                 on_tokens: Callable[[int], None] | None = None) -> list[Case]:
        """The cases with the oracle's greedy continuation filled in where the case gave none."""
        done = list(cases)
        todo = [i for i, c in enumerate(done) if c.continuation_ids is None]
        for group in _groups(todo, key=lambda i: (len(done[i].prompt_ids), done[i].new_tokens), size=batch_size):
            first = done[group[0]]
            cont = self.greedy(np.array([done[i].prompt_ids for i in group]), first.new_tokens, on_tokens)
            for i, row in zip(group, cont):
                done[i] = dataclasses.replace(done[i], continuation_ids=tuple(int(t) for t in row))
        return done

    def rows(self, input_ids, n_rows: int, stepwise: bool = False) -> np.ndarray:
        """The last `n_rows` teacher-forced rows [n_rows, vocab] of one sequence."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError("rows(): input_ids must be 1-D")
        return self.rows_batch(ids[None], n_rows, stepwise=stepwise)[0]

    @_computing
    def rows_batch(self, input_ids: np.ndarray, n_rows: int, stepwise: bool = False,
                   on_tokens: Callable[[int], None] | None = None) -> np.ndarray:
        """[B, N] equal-length sequences -> [B, n_rows, vocab] rows, in the logits' own dtype
        (bf16 rows of a bf16 model are stored as they are: nothing is rounded twice)."""
        import torch

        ids = np.asarray(input_ids, dtype=np.int64)
        b, n = ids.shape
        if not 1 <= n_rows <= n - 1:
            raise ValueError(f"rows(): {n_rows} rows need 1..{n - 1} (a sequence of {n} tokens)")
        self._check_fits(n, "sequence")
        if stepwise:
            cache, rows = None, []
            for t in range(n - 1):  # the last token predicts nothing that is scored
                logits, cache = self._forward(ids[:, t:t + 1], cache=cache, use_cache=True)
                if t >= n - 1 - n_rows:
                    rows.append(logits[:, -1])
                if on_tokens:
                    on_tokens(b)
            out = torch.stack(rows, dim=1)
        else:
            logits, _ = self._forward(ids, keep=n_rows + 1)
            out = logits[:, -(n_rows + 1):-1]
            if on_tokens:
                on_tokens(ids.size)
        return _to_numpy(out)

    def _threads(self):
        """The torch thread count the rows are computed with (see `threads`; recorded as `torch_threads`)."""
        return torch_threads(self.threads, self.hidden_size)

    def torch_threads(self) -> int:
        """The number of torch threads the rows are (or will be) computed with."""
        import torch

        with self._threads():
            return torch.get_num_threads()

    def _check_fits(self, n: int, what: str) -> None:
        if self.max_positions is not None and n > self.max_positions:
            raise InputError(f"{what} of {n} tokens exceeds the model's context of {self.max_positions} "
                             f"positions (max_position_embeddings, {self.model_dir}/config.json)")

    def check_case(self, case: Case) -> None:
        """A case must fit the model's context (checked before any weight is read)."""
        cont = len(case.continuation_ids) if case.continuation_ids is not None else case.new_tokens
        n = len(case.prompt_ids) + cont
        if self.max_positions is not None and n > self.max_positions:
            raise InputError(f"case {case.id!r}: {n} tokens ({len(case.prompt_ids)} prompt + {cont} continuation) "
                             f"exceed the model's context of {self.max_positions} positions "
                             f"(max_position_embeddings, {self.model_dir}/config.json)")

    # -- provenance -----------------------------------------------------------------------

    def weights_provenance(self) -> str:
        if self._weights_sha is None:
            self._weights_sha = model_provenance(self.model_dir)
        return self._weights_sha

    def metadata(self) -> dict[str, str]:
        """Provenance for the trace metadata: model, weight and tokenizer hashes, dtype, device, versions."""
        import torch
        import transformers

        from harness import __version__

        meta = {
            "model": self.weights_provenance(),
            "model_id": self.model_arg or str(self.model_dir),
            "tokenizer_sha256": tokenizer_sha256(self.model_dir),
            "dtype": self.dtype,
            "device": self.device,
            "torch_version": torch.__version__,
            "torch_threads": str(self.torch_threads()),  # CPU bf16 kernels may round differently per thread count
            "transformers_version": transformers.__version__,
            "harness_version": __version__,
            "trust_remote_code": str(bool(self.trust_remote_code)).lower(),
        }
        if self._model is not None:
            meta["architecture"] = type(self._model).__name__
            dmap = getattr(self._model, "hf_device_map", None)
            if self.device == "auto" and dmap:
                meta["device_map"] = json.dumps(sorted({str(v) for v in dmap.values()}))
        if self.max_memory:
            meta["max_memory"] = json.dumps({str(k): v for k, v in self.max_memory.items()})
        return meta


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().to("cpu").contiguous().clone()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _groups(indices: Iterable[int], key: Callable[[int], object], size: int) -> list[list[int]]:
    """Batches of at most `size` indices sharing `key`, in order of first appearance."""
    by_key: dict[object, list[int]] = {}
    for i in indices:
        by_key.setdefault(key(i), []).append(i)
    out = []
    for members in by_key.values():
        out.extend(members[j:j + size] for j in range(0, len(members), size))
    out.sort(key=lambda g: g[0])
    return out


# ---------------------------------------------------------------------------------------------
# the run: parts on disk, resume, assembly


class _Parts:
    """`<out>.parts/`: one-case traces written as computed, plus run.json naming the run they belong to
    and the sha256 of every part written whole. --resume reuses a part only if its bytes still have
    that checksum: a part truncated, corrupted or left half-written is computed again, never used."""

    def __init__(self, out: Path, identity: dict[str, str], resume: bool):
        self.dir = out.with_name(out.name + ".parts")
        self.identity = identity
        self.checksums: dict[str, str] = {}
        manifest = self.dir / _MANIFEST
        if self.dir.exists() and not self.dir.is_dir():
            raise InputError(f"{self.dir}: exists and is not a folder (the oracle keeps its work there)")
        if resume and manifest.is_file():
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                old = None
            if not isinstance(old, dict):
                raise InputError(f"{manifest}: unreadable; delete {self.dir} to start afresh")
            sums = old.pop(_CHECKSUMS, None)
            if isinstance(sums, dict):
                self.checksums = {k: v for k, v in sums.items() if isinstance(k, str) and isinstance(v, str)}
            for key in sorted(set(old) | set(identity)):
                if old.get(key) != identity.get(key):
                    raise InputError(f"--resume: the parts in {self.dir} were made with another {key} "
                                     f"({old.get(key)!r}, now {identity.get(key)!r}); delete the folder "
                                     "or run without --resume")
        elif self.dir.exists():
            self._clear()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_manifest()

    def _write_manifest(self) -> None:
        from harness.fileio import write_text_atomic

        write_text_atomic(self.dir / _MANIFEST,
                          json.dumps({**self.identity, _CHECKSUMS: self.checksums}, indent=1, sort_keys=True) + "\n")

    def record(self, index: int) -> None:
        """The part for case `index` is written whole: remember its checksum (the manifest is rewritten
        atomically, so a part is either listed with the sha256 of its full bytes or not listed)."""
        from harness.fileio import sha256_file

        p = self.path(index)
        self.checksums[p.name] = sha256_file(p)
        self._write_manifest()

    def _clear(self) -> None:
        # only what an oracle run puts here
        for p in self.dir.glob("case-*.safetensors"):
            p.unlink()
        for p in self.dir.glob(".case-*.part"):
            p.unlink()
        (self.dir / _MANIFEST).unlink(missing_ok=True)

    def path(self, index: int) -> Path:
        return self.dir / f"case-{index:06d}.safetensors"

    def load(self, index: int, case: Case):
        """A part already written for this case, or None (missing, unreadable, or another sequence)."""
        from harness.fileio import forget_input, sha256_file

        p = self.path(index)
        if not p.is_file():
            return None
        want_sum = self.checksums.pop(p.name, None)
        if want_sum is None or sha256_file(p) != want_sum:
            return None  # not known whole: computed again
        self.checksums[p.name] = want_sum
        try:
            t = open_trace(p)
        except TraceError:
            return None
        if t.case_ids != [case.id]:
            forget_input(p)  # opened, but it is to be computed again and replaced
            del self.checksums[p.name]
            return None
        ids = t.input_ids(case.id)
        want = case.prompt_ids + (case.continuation_ids or ())
        if tuple(int(x) for x in ids[:len(want)]) != want or (
                case.continuation_ids is None and len(ids) != len(case.prompt_ids) + case.new_tokens):
            forget_input(p)
            del self.checksums[p.name]
            return None
        return t

    def remove(self) -> None:
        self._clear()
        try:
            self.dir.rmdir()
        except OSError:
            pass  # something else lives there: leave it


@contextlib.contextmanager
def _loading_bar(show: bool):
    """transformers' weight-loading bar only where a progress bar belongs (a terminal, not --quiet)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not show:
            hf_logging.enable_progress_bar()


def _progress(quiet: bool, total_cases: int, total_rows: int):
    """A rich progress bar on a terminal, or None."""
    if quiet or not sys.stderr.isatty():
        return None
    from rich.console import Console

    from harness.cli import unescaped
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    console=Console(file=unescaped(sys.stderr)), transient=False)
    prog.start()
    prog.cases = prog.add_task("cases", total=total_cases, rate="")
    prog.rows = prog.add_task("positions", total=total_rows, rate="")
    return prog


def run_oracle(*, model: str | os.PathLike | None = None, cases: str | os.PathLike | None = None,
               dtype: str = "bfloat16", device: str = "cpu", out: str | os.PathLike,
               stepwise: bool = False, shard: str | None = None, resume: bool = False,
               min_confident_fraction: float | None = None, min_margin: float = DEFAULT_MIN_MARGIN,
               quiet: bool = False, max_memory=None, trust_remote_code: bool = False,
               batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None,
               log: Callable[[str], None] | None = None, keep_parts: bool = False) -> Path:
    """Compute an oracle trace for a case set and write it atomically to `out`.

    `keep_parts` keeps `OUT.parts/` after the trace is written (a launched rank's share: until rank 0
    has joined every share, --resume must still find this one's rows).

    Raises InputError (nothing written under `out`) for bad input, and when the share of
    confident positions is below `min_confident_fraction` (the computed parts are kept for --resume).
    """
    out = Path(out)
    say = (lambda msg: None) if quiet else (log or print)
    if not (isinstance(min_margin, (int, float)) and math.isfinite(min_margin) and min_margin >= 0):
        raise InputError(f"--min-margin {min_margin!r}: expected a number >= 0")
    if min_confident_fraction is not None and not (0.0 <= min_confident_fraction <= 1.0):
        raise InputError(f"--min-confident-fraction {min_confident_fraction!r}: expected a fraction in [0, 1]")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected a positive integer")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; --out names the trace file to write")

    case_set = load_cases(cases)
    specs = select_shard(case_set.specs, shard)
    index_of = {s.id: i for i, s in enumerate(case_set.specs)}
    if not specs:
        raise InputError(f"--shard {shard}: selects none of the {len(case_set)} cases in {case_set.path}")
    oracle = HFOracle(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                      max_memory=max_memory, threads=threads)
    tokenized = [tokenize_case(s, oracle.tokenizer, oracle.vocab_size) for s in specs]
    for c in tokenized:
        oracle.check_case(c)
    with _loading_bar(not quiet and sys.stderr.isatty()):
        oracle.model  # load now: a checkpoint that cannot load fails before anything is written
    meta = oracle.metadata()
    mode = "stepwise" if stepwise else "one-pass"
    identity = {"model": meta["model"], "tokenizer_sha256": meta["tokenizer_sha256"], "dtype": dtype,
                "device": device, "mode": mode, "cases_file_sha256": case_set.sha256, "shard": shard or "",
                "harness_version": meta["harness_version"], "torch_threads": meta["torch_threads"]}
    parts = _Parts(out, identity, resume)

    pending: list[Case] = []
    reused = 0
    for c in tokenized:
        if resume and parts.load(index_of[c.id], c) is not None:
            reused += 1
        else:
            pending.append(c)
    if resume:
        say(f"resume: {reused} of {len(tokenized)} cases already in {parts.dir}")

    total_rows = sum(len(c.continuation_ids) if c.continuation_ids is not None else c.new_tokens for c in pending)
    prog = _progress(quiet, len(pending), total_rows)
    t0, tokens = time.perf_counter(), 0

    def on_tokens(n: int) -> None:
        nonlocal tokens
        tokens += n
        if prog is not None:
            prog.update(prog.rows, rate=f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s")

    try:
        groups = _groups(range(len(pending)), size=batch_size,
                         key=lambda i: (len(pending[i].prompt_ids), len(pending[i].continuation_ids)
                                        if pending[i].continuation_ids is not None else pending[i].new_tokens))
        for group in groups:
            batch = oracle.complete([pending[i] for i in group], batch_size=batch_size, on_tokens=on_tokens)
            ids = np.array([c.input_ids for c in batch], dtype=np.int64)
            n_rows = len(batch[0].continuation_ids)
            rows = oracle.rows_batch(ids, n_rows, stepwise=stepwise, on_tokens=on_tokens)
            for case, src, case_ids, case_rows in zip(batch, (pending[i] for i in group), ids, rows):
                if not np.isfinite(case_rows.astype(np.float32)).all():
                    raise InputError(f"case {case.id!r}: the oracle's logits hold NaN or Inf in {dtype} "
                                     f"({oracle.model_dir}); try --dtype bfloat16 or float32")
                given = src.continuation_ids is not None
                part_meta = base_metadata(runner=RUNNER, variant=VARIANTS[dtype], vocab_size=oracle.vocab_size,
                                          model=meta["model"], tokenizer_sha256=meta["tokenizer_sha256"],
                                          low_margin=str(low_margin_count(case_rows, min_margin)),
                                          continuation="given" if given else "oracle-greedy")
                write_trace(parts.path(index_of[case.id]), part_meta, [CaseTrace(case.id, case_ids, case_rows)])
                parts.record(index_of[case.id])
                if prog is not None:
                    prog.advance(prog.cases)
                    prog.advance(prog.rows, n_rows)
            del rows
    finally:
        if prog is not None:
            prog.stop()

    # per-case statistics, read back from the parts (resumed ones included)
    from harness.merge import join_cases

    low: dict[str, int] = {}
    sources = []
    total = 0
    say(f"{'case':<24} {'rows':>5} {'low-margin':>10}  continuation")
    for c in tokenized:
        p = parts.path(index_of[c.id])
        t = open_trace(p)
        n_low = int(t.metadata.get("low_margin", "0"))
        low[c.id] = n_low
        total += t.rows(c.id)
        sources.append((p, c.id))
        say(f"{visible(c.id):<24} {t.rows(c.id):>5} {n_low:>10}  {t.metadata.get('continuation', '')}")
    n_low = sum(low.values())
    confident = total - n_low
    frac = confident / total if total else 0.0
    say(f"{confident}/{total} scored positions confident (probability margin >= {min_margin:g}), "
        f"{n_low} under the floor ({frac:.1%} confident)")
    if min_confident_fraction is not None and frac < min_confident_fraction:
        raise InputError(f"{case_set.path}: only {frac:.1%} of {total} scored positions are confident "
                         f"(margin >= {min_margin:g}), below --min-confident-fraction {min_confident_fraction:g}: "
                         f"a gate on near-ties proves nothing (computed rows kept in {parts.dir} for --resume)")

    metadata = base_metadata(
        runner=RUNNER, variant=VARIANTS[dtype], vocab_size=oracle.vocab_size,
        **{k: v for k, v in meta.items() if k != "harness_version"},
        mode=mode, min_margin=f"{min_margin:g}", margin_space="prob",
        low_margin=json.dumps(low), confident_fraction=f"{frac:.6f}",
        case_set=json.dumps(case_set.ids), cases_file_sha256=case_set.sha256, cases_file=str(case_set.path),
        shard=shard or "", batch_size=str(batch_size),
    )
    join_cases(out, metadata, sources)
    if not keep_parts:
        parts.remove()
    say(f"wrote {out} ({len(tokenized)} cases, {total} rows, {mode}, {dtype} on {device})")
    return out
