"""Core AI candidates: a real LanguageBundle run by Apple's engines, teacher forced, one token a step.

    coreai:BUNDLE          `llm-runner` (apple/coreai-models) as a subprocess, one run per case:
                           --raw-tokens CASE.json --save-logits OUT.json --save-logits-length full
                           --inference-engine-variant coreai-sequential
    coreai-python:BUNDLE   `coreai.runtime` in-process, stepping the bundle's S=1 function with its
                           states (zero at the start of each case)

Both yield DESIGN.md's rows: row k is the logits after consuming x[0 .. P+k-1]. Before anything runs,
the bundle's metadata and tokenizer are checked against the oracle checkpoint, and, when the bundle
is gated as a named variant, the asset's storage against that variant's recipe (`flipgate inspect`
prints the same audit).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..contenthash import tree_sha256
from ..coreai.bundle import (
    AssetAudit, LanguageBundle, VariantCheck, audit_asset, audit_claim, check_functions, check_tokenizer,
    claimed_variant, open_bundle,
)
from ..coreai.logits_file import LogitsFileError, case_file, read_logits_file, scored_rows, write_raw_tokens
from ..coreai.runtime import (
    COMPUTE_UNITS, MACOS_ONLY, RunnerError, backend_description, find_llm_runner, load_runtime,
    uses_os_runtime,
)
from ..errors import InputError, PlatformError
from ..trace import CaseTrace
from .base import Sequence

ENGINE = "coreai-sequential"
STDERR_TAIL_LINES = 3


def _oracle_vocab(model: str | None) -> int | None:
    if not model:
        return None
    from ..models import read_config

    cfg = read_config(Path(model))
    vocab = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    return int(vocab) if vocab else None


def _asset_fingerprint(bundle: LanguageBundle) -> str:
    """The asset's own program hash (`main.hash`, sha256 of its bytecode), cheap even for 27B assets."""
    for h in sorted(bundle.asset_path.glob("*.hash")):
        raw = h.read_bytes()
        if len(raw) == 32:
            return raw.hex()
    return ""


class _BundleCandidate:
    """What both Core AI candidates share: bundle validation, variant audit, provenance."""

    runner = "coreai"

    def __init__(self, bundle_dir: str, *, variant: str | None = None, model: str | None = None,
                 recipes: str | None = None, vocab_size: int | None = None, audit: bool = True, **_ignored):
        if not bundle_dir:
            raise InputError(f"candidate {self.runner}: give a bundle folder, e.g. coreai:/path/to/bundle")
        self.bundle = open_bundle(bundle_dir)
        self.model = str(model) if model else None
        self.vocab_size = int(vocab_size) if vocab_size else (_oracle_vocab(self.model) or self.bundle.metadata.vocab_size)
        if self.bundle.metadata.vocab_size != self.vocab_size:
            raise InputError(f"{self.bundle.metadata.path}: language.vocab_size {self.bundle.metadata.vocab_size} "
                             f"differs from the oracle's vocabulary of {self.vocab_size}")
        if self.model:
            check_tokenizer(self.bundle, self.model)
        # The variant the trace will claim, from the caller or from metadata.json: checked against the
        # asset's storage before anything runs, wherever it came from (a label is never taken on trust).
        self.claim = claimed_variant(self.bundle, variant)
        self.variant = self.claim.variant or "coreai"
        self.audit: AssetAudit | None = None
        self.variant_check: VariantCheck | None = None
        self._audit_note = "not audited"
        if audit:
            self._audit(recipes)
        elif self.claim.variant is not None:
            raise InputError(f"{self.bundle.path}: {self.claim.source} claims variant {self.claim.variant!r}: "
                             f"a claimed variant is always checked against the asset's storage (audit=False refused)")

    def _audit(self, recipes: str | None) -> None:
        try:
            self.audit = audit_asset(self.bundle.asset_path)
        except InputError as e:
            if "needs the coreai-core package" not in str(e):
                raise
            if self.claim.variant is not None:
                raise InputError(f"{self.bundle.path}: {self.claim.source} claims variant {self.claim.variant!r}, "
                                 f"and checking that claim against the asset's storage needs coreai-core "
                                 f"(pip install coreai-core)") from None
            self._audit_note = "skipped: coreai-core is not installed"
            return
        check_functions(self.bundle, self.audit)
        self._audit_note = self.audit.storage_mix()
        if self.claim.variant is None:
            return
        from ..recipe import load_recipes

        self.variant_check = audit_claim(self.bundle, self.audit, self.claim, load_recipes(recipes), self.model)

    def content_sha256(self) -> str:
        """sha256 over every file of the bundle (names and contents): a trace cache key part."""
        return tree_sha256(self.bundle.path)

    def metadata(self) -> dict[str, str]:
        md = self.bundle.metadata
        return {
            "bundle": str(self.bundle.path.resolve()),
            "bundle_name": md.name,
            "bundle_compression": str(md.compression),
            "asset_program_sha256": _asset_fingerprint(self.bundle),
            "storage_mix": self._audit_note,
            "variant_source": self.claim.source if self.claim.variant is not None else "",
            "storage_check": ("" if self.variant_check is None else
                              f"{self.variant} agrees with the asset's storage"
                              + (f" ({self.variant_check.note})" if self.variant_check.note else "")),
        }

    def _check_width(self, case: str, width: int) -> None:
        if width != self.vocab_size:
            raise InputError(f"{self.bundle.path}: case {case!r}: the bundle's logits are {width} wide, "
                             f"but the oracle's vocabulary has {self.vocab_size} entries")


def _output_tail(proc) -> str:
    """The last lines llm-runner said, on one line: stderr's tail, with any error line from stdout
    (the Swift runner prints some errors there) put first."""
    err = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
    out = [ln.strip() for ln in (proc.stdout or "").splitlines() if ln.strip()]
    flagged = [ln for ln in out if ln.lower().startswith(("error", "fatal"))]
    lines = flagged[-1:] + (err or out)[-STDERR_TAIL_LINES:]
    return " | ".join(lines)[-600:] or "no output"


class LlmRunnerCandidate(_BundleCandidate):
    """`llm-runner` per case, teacher forced through `--raw-tokens`, full logits saved."""

    runner = "coreai-llm-runner"

    def __init__(self, bundle_dir: str, *, llm_runner: str | None = None, engine: str = ENGINE,
                 timeout: float | None = None, extra_args: Iterable[str] = (), keep_dumps: str | None = None,
                 **options):
        # The platform check comes first: off macOS, with no runner given, fail before reading anything.
        self.llm_runner = find_llm_runner(llm_runner)
        super().__init__(bundle_dir, **options)
        self.engine = engine
        self.timeout = timeout
        self.extra_args = list(extra_args)
        self.keep_dumps = Path(keep_dumps) if keep_dumps else None

    def argv(self, raw_tokens: Path, logits_out: Path) -> list[str]:
        return [str(self.llm_runner), "--model", str(self.bundle.path), "--raw-tokens", str(raw_tokens),
                "--save-logits", str(logits_out), "--save-logits-length", "full",
                "--inference-engine-variant", self.engine, *self.extra_args]

    def metadata(self) -> dict[str, str]:
        return {**super().metadata(), "llm_runner": str(self.llm_runner), "inference_engine": self.engine}

    def run(self, sequences: Iterable[Sequence]) -> Iterator[CaseTrace]:
        with tempfile.TemporaryDirectory(prefix="flipgate-llm-runner-") as tmp:
            folder = self.keep_dumps or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            for seq in sequences:
                yield self._run_case(seq, folder)

    def _run_case(self, seq: Sequence, folder: Path) -> CaseTrace:
        raw = write_raw_tokens(case_file(folder, seq.case_id, ".tokens.json"), seq.input_ids.tolist())
        out = case_file(folder, seq.case_id, ".logits.json")
        out.unlink(missing_ok=True)
        argv = self.argv(raw, out)
        where = f"case {seq.case_id!r}: llm-runner"
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise RunnerError(f"{where} did not finish within {self.timeout:g} s ({' '.join(argv[:3])} ...)") from None
        except OSError as e:
            raise RunnerError(f"{where} could not start ({self.llm_runner}: {e.strerror or e})") from None
        if proc.returncode != 0:
            raise RunnerError(f"{where} exited with status {proc.returncode}: {_output_tail(proc)}")
        if not out.is_file():
            raise RunnerError(f"{where} exited 0 but wrote no logits file ({out.name}); is it an llm-runner "
                              f"that supports --save-logits-length full?")
        try:
            dump = read_logits_file(out, vocab_size=self.vocab_size)
            logits = scored_rows(dump, seq.input_ids, seq.rows, case=seq.case_id, vocab_size=self.vocab_size)
        except LogitsFileError as e:
            keep = "" if self.keep_dumps else " (pass keep_dumps to keep its files)"
            raise RunnerError(f"{where} output is unusable: {e}{keep}") from None
        return CaseTrace(seq.case_id, np.asarray(seq.input_ids, dtype=np.int64), np.array(logits))


class PythonCandidate(_BundleCandidate):
    """`coreai.runtime` in-process: the bundle's S=1 function stepped over the case with its states.

    The function's contract is the one apple/coreai-models exports for macOS: inputs `input_ids`
    ([1, 1] int32) and `position_ids` (the position of that token: [1, 1], or the positions so far,
    [1, p + 1], when the input is wider), every state zero at the start of a case and carried
    between steps, output `logits` ([1, 1, vocab]).
    """

    runner = "coreai-python"

    def __init__(self, bundle_dir: str, *, compute_units: str | None = None, function: str | None = None,
                 **options):
        self.rt = load_runtime()
        if compute_units is not None:
            if compute_units not in COMPUTE_UNITS:
                raise InputError(f"compute_units {compute_units!r}: expected one of {', '.join(COMPUTE_UNITS)}")
            if not uses_os_runtime(self.rt):
                raise PlatformError(MACOS_ONLY)
        super().__init__(bundle_dir, **options)
        self.compute_units = compute_units
        self.function = function or self.bundle.functions[0]

    def metadata(self) -> dict[str, str]:
        return {**super().metadata(), "coreai_runtime": backend_description(self.rt),
                "compute_units": self.compute_units or "default", "function": self.function}

    def _options(self):
        from coreai.runtime import SpecializationOptions

        if self.compute_units in (None, "all"):
            return SpecializationOptions.default()
        if self.compute_units == "cpu":
            return SpecializationOptions.cpu_only()
        from coreai.runtime import ComputeUnitKind

        wanted = {"gpu": ("gpu", "GPU"), "ane": ("neuralEngine", "ane", "ANE", "neural_engine")}[self.compute_units]
        for name in wanted:
            if hasattr(ComputeUnitKind, name):
                return SpecializationOptions.from_preferred_compute_unit_kind(getattr(ComputeUnitKind, name))
        raise PlatformError(f"{MACOS_ONLY} (this Core AI has no {self.compute_units} compute unit kind)")

    async def _open(self, stack):
        if uses_os_runtime(self.rt):
            from coreai.runtime import AIModel

            return await AIModel.load(self.bundle.asset_path, self._options())
        from coreai.authoring.asset import AIModelAsset

        # Off the OS framework the asset is lowered to its portable form and run by coreai-core itself.
        return await stack.enter_async_context(AIModelAsset.load(self.bundle.asset_path).executable())

    def run(self, sequences: Iterable[Sequence]) -> Iterator[CaseTrace]:
        import contextlib

        loop = asyncio.new_event_loop()
        stack = contextlib.AsyncExitStack()
        try:
            try:
                model = loop.run_until_complete(self._open(stack))
                fn = model.load_function(self.function)
            except (RuntimeError, KeyError) as e:
                first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
                raise RunnerError(f"{self.bundle.asset_path}: Core AI could not load function "
                                  f"{self.function!r} ({first})") from None
            io = _StepIO(fn, self.bundle.asset_path)
            for seq in sequences:
                yield self._run_case(loop, fn, io, seq)
        finally:
            loop.run_until_complete(stack.aclose())
            loop.close()

    def _run_case(self, loop, fn, io: "_StepIO", seq: Sequence) -> CaseTrace:
        from coreai.runtime import NDArray

        ids = np.asarray(seq.input_ids, dtype=np.int64)
        n, first = int(ids.shape[0]), seq.prompt_len - 1
        states = io.fresh_states()
        rows = []
        for p in range(n - 1):
            inputs = {io.ids_name: NDArray(np.array([[ids[p]]], dtype=io.ids_dtype))}
            if io.pos_name is not None:
                pos = np.array([[p]] if io.pos_single else [np.arange(p + 1)], dtype=io.pos_dtype)
                inputs[io.pos_name] = NDArray(pos)
            try:
                out = loop.run_until_complete(fn(inputs, state=states))
            except RuntimeError as e:
                raise RunnerError(f"{self.bundle.asset_path}: case {seq.case_id!r}: step {p} failed "
                                  f"({str(e).splitlines()[0] if str(e) else e.__class__.__name__})") from None
            if p >= first:
                row = out[io.out_name].numpy()
                row = np.array(row.reshape(-1, row.shape[-1])[-1])
                self._check_width(seq.case_id, int(row.shape[-1]))
                rows.append(row if row.dtype in (np.float16, np.float32) else row.astype(np.float32))
        return CaseTrace(seq.case_id, ids, np.stack(rows))


class _StepIO:
    """Names, dtypes and shapes of the S=1 function's inputs, states and output."""

    def __init__(self, fn, where: Path):
        desc = fn.desc
        inputs = list(desc.input_names)
        if "input_ids" not in inputs:
            raise InputError(f"{where}: function {desc.name!r} has no input_ids input (inputs: {', '.join(inputs)})")
        self.ids_name = "input_ids"
        self.ids_dtype = _np_dtype(desc.input_descriptor("input_ids").dtype)
        self.pos_name = "position_ids" if "position_ids" in inputs else None
        if self.pos_name:
            pd = desc.input_descriptor(self.pos_name)
            self.pos_dtype = _np_dtype(pd.dtype)
            self.pos_single = list(pd.shape)[-1:] == [1]
        unknown = [i for i in inputs if i not in ("input_ids", "position_ids")]
        if unknown:
            raise InputError(f"{where}: function {desc.name!r} takes inputs flipgate does not feed: "
                             f"{', '.join(unknown)} (expected input_ids and position_ids)")
        outputs = list(desc.output_names)
        self.out_name = "logits" if "logits" in outputs else (outputs[0] if len(outputs) == 1 else None)
        if self.out_name is None:
            raise InputError(f"{where}: function {desc.name!r} has no logits output (outputs: {', '.join(outputs)})")
        self.state_specs = [(s, tuple(int(d) for d in desc.state_descriptor(s).shape),
                             _np_dtype(desc.state_descriptor(s).dtype)) for s in desc.state_names]

    def fresh_states(self) -> dict:
        from coreai.runtime import NDArray

        # Descriptors allocate uninitialized memory; a case starts from zero state.
        return {name: NDArray(np.zeros(shape, dtype=dt)) for name, shape, dt in self.state_specs}


def _np_dtype(name) -> np.dtype:
    import ml_dtypes

    s = str(name)
    return np.dtype(ml_dtypes.bfloat16) if s == "bfloat16" else np.dtype(s)


def _spec_options(rest: str, allowed: dict[str, type], options: dict) -> tuple[str, dict]:
    """`BUNDLE_DIR?variant=int8hu&llm_runner=/path`: options written into the spec itself, so a gate in
    flipgate.toml (`candidate = "coreai:bundles/X?variant=int8hu"`) can say what a command line would.
    The spec's options win over the caller's."""
    from urllib.parse import parse_qsl

    bundle, sep, query = rest.partition("?")
    if not sep:
        return rest, options
    merged = dict(options)
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in allowed:
            raise InputError(f"candidate option {key!r} in {rest!r}: expected one of {', '.join(allowed)}")
        try:
            merged[key] = allowed[key](value)
        except ValueError:
            raise InputError(f"candidate option {key}={value!r} in {rest!r}: not a {allowed[key].__name__}") from None
    return bundle, merged


_LLM_RUNNER_KEYS = {"variant": str, "llm_runner": str, "engine": str, "timeout": float, "keep_dumps": str}
_PYTHON_KEYS = {"variant": str, "compute_units": str, "function": str}


def llm_runner_candidate(bundle_dir: str, **options) -> LlmRunnerCandidate:
    """`coreai:BUNDLE_DIR[?variant=V&llm_runner=PATH&engine=E&timeout=S&keep_dumps=DIR]`; options also
    model, recipes, vocab_size, extra_args, audit. The runner defaults to $FLIPGATE_LLM_RUNNER, then PATH."""
    bundle_dir, options = _spec_options(bundle_dir, _LLM_RUNNER_KEYS, options)
    if not options.get("llm_runner") and os.environ.get("FLIPGATE_LLM_RUNNER"):
        options["llm_runner"] = os.environ["FLIPGATE_LLM_RUNNER"]
    return LlmRunnerCandidate(bundle_dir, **options)


def python_candidate(bundle_dir: str, **options) -> PythonCandidate:
    """`coreai-python:BUNDLE_DIR[?variant=V&compute_units=cpu|gpu|ane|all&function=F]`; options also
    model, recipes, vocab_size, audit."""
    bundle_dir, options = _spec_options(bundle_dir, _PYTHON_KEYS, options)
    return PythonCandidate(bundle_dir, **options)
