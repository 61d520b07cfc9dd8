"""Emulated Core AI candidates: Apple's quantizer applied to the fp16 model, decoded S=1.

The numbers a Core AI bundle produces come from `coreai-opt` applied to the fp16 model and a
decode engine that consumes one token per step. This runner makes those numbers on any machine:

  - `mode="coreai-opt"` (the reference): the recipe's plan handed to
    `coreai_opt.quantization.Quantizer` in eager mode; its fake quantizers recompute every weight
    on every forward.
  - `mode="fast"` (the default): each weight quantized once with `harness.quants` (codes + fp16
    scales), the dequantized fp16 weight stored in the model, plain fp16 forwards. Bit-identical
    logits to the reference (tests/harness/test_emulated.py), several times faster per step
    (benchmarks/bench_emulated.py).

Decoding (`EmulatedCandidate.run`) feeds each case's reference tokens one at a time through the
Hugging Face model's own cache (GatedDeltaNet conv and recurrent states, attention KV cache) in
fp16, as the device does, and keeps rows only for the scored positions; `full=True` computes the
rows in one causal pass instead (faster, less faithful: the chunked GatedDeltaNet path and
batched attention round differently from the S=1 recurrent path).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import InputError
from ..models import hidden_size_of, model_provenance, read_config, resolve_model_dir, tokenizer_sha256, torch_threads
from ..quants import QuantizedWeight
from ..recipe import QuantSpec, Recipe, get_recipe
from ..trace import CaseTrace
from .base import Sequence

MODES = ("fast", "coreai-opt")
DEVICES = ("cpu", "cuda", "mps", "auto")
RUNNER = "emulated"
COMPUTE_DTYPE = "float16"


def resolve_device(device: str | None) -> str:
    """`--device` -> the torch device type the emulation runs on: auto picks CUDA, then MPS, then the CPU.

    Rows computed on a GPU are not bit-identical to CPU rows (other kernels, other summation order);
    the trace records the device so the two are never mistaken for each other.
    """
    import torch

    device = device or "cpu"
    if device not in DEVICES:
        raise InputError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device cuda: torch {torch.__version__} sees no CUDA device (use --device cpu or auto)")
    if device == "mps" and not mps_ok:
        raise InputError("--device mps: the MPS backend is not available here (use --device cpu or auto)")
    return device


def device_metadata(device: str) -> dict[str, str]:
    """The trace's record of where the rows were computed."""
    import torch

    meta = {"device": device}
    if device == "cuda":
        meta["device_name"] = torch.cuda.get_device_name()
    return meta


def coreai_opt_version() -> str:
    try:
        return version("coreai-opt")
    except PackageNotFoundError:
        return "not installed"


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")


def _as_recipe(recipe: Recipe | str, recipes_path: str | os.PathLike | None = None) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else get_recipe(recipe, recipes_path)


def _restrict(plan: dict[str, QuantSpec | None], only: Iterable[str] | None) -> dict[str, QuantSpec]:
    """The plan's quantized entries, limited to `only` (module names) when given."""
    active = {n: s for n, s in plan.items() if s is not None}
    if only is None:
        return active
    only = set(only)
    unknown = sorted(only - set(plan))
    if unknown:
        raise InputError(f"only={unknown[0]!r}: not a Linear module of this model "
                         f"(e.g. {', '.join(list(plan)[:4])})")
    return {n: s for n, s in active.items() if n in only}


# -- the fast path ---------------------------------------------------------------------------------

def apply_plan(model, plan: dict[str, QuantSpec | None], *, only: Iterable[str] | None = None,
               keep_codes: bool = True, in_place: bool = True) -> dict[str, QuantizedWeight]:
    """Quantize the planned Linear weights of an fp16 `model` in place: each weight becomes its
    dequantized fp16 value (a weight tied to another module gets a new Parameter, so it is untied
    rather than changed under it; `in_place=False` gives every weight a new Parameter, leaving the
    old one to whoever holds it: flip localisation keeps both). Returns the codes and scales per module name (an empty dict
    with `keep_codes=False`: the codes of a 27B's head alone are 1.2 GB).

    `only` restricts the plan to a subset of module names (flip localisation restores groups by
    quantizing all but them). Each weight is quantized in row chunks (`quants.quantize_rows`): the
    same values as the whole weight at once, without its float32 transients.
    """
    import torch

    from ..quants import quantize_rows

    out: dict[str, QuantizedWeight] = {}
    # storage shared by two parameters (a tied head): such a weight gets a new tensor, never a change
    # under the other module; every other CPU weight is quantized in place (no second copy of a
    # 2.4 GB head while its dequantized value is built)
    owners: dict[int, int] = {}
    for _, prm in model.named_parameters(remove_duplicate=False):
        owners[prm.data_ptr()] = owners.get(prm.data_ptr(), 0) + 1
    for name, spec in _restrict(plan, only).items():
        module = model.get_submodule(name)
        w = module.weight.detach()
        if w.dtype != torch.float16:
            raise InputError(f"{name}: weight is {w.dtype}; the emulated candidates quantize the fp16 model")
        here = in_place and w.device.type == "cpu" and owners.get(w.data_ptr(), 0) == 1 and w.is_contiguous()
        src = w.numpy() if here else w.cpu().numpy()
        deq, qw = quantize_rows(spec.scheme(), src, keep_codes=keep_codes, out=src if here else None)
        if not here:
            module.weight = torch.nn.Parameter(torch.from_numpy(deq).to(w.device), requires_grad=False)
        if keep_codes:
            out[name] = qw
    return out


# -- the reference path: coreai-opt itself -----------------------------------------------------------

def coreai_opt_config(plan: dict[str, QuantSpec | None], *, only: Iterable[str] | None = None):
    """The plan as a coreai-opt `QuantizerConfig` (eager, weight-only, one exact-name entry per
    planned module, everything else unquantized)."""
    import re

    from coreai_opt.quantization import ModuleQuantizerConfig, QuantizerConfig

    per_spec: dict[QuantSpec, object] = {}
    names: dict[str, object] = {}
    for name, spec in _restrict(plan, only).items():
        if spec not in per_spec:
            per_spec[spec] = ModuleQuantizerConfig(op_input_spec=None, op_output_spec=None,
                                                   op_state_spec={"weight": spec.coreai_opt_spec()})
        names[re.escape(name)] = per_spec[spec]
    return QuantizerConfig(global_config=None, module_name_configs=names, execution_mode="eager")


def prepare_coreai_opt(model, plan: dict[str, QuantSpec | None], *, only: Iterable[str] | None = None):
    """Apply the plan with coreai-opt's `Quantizer` in eager mode -> (quantizer, prepared model).

    The prepared model fake-quantizes on every forward; `quantizer.finalize(...)` turns it into
    the backend's representation (Core AI custom ops by default) for conversion with coreai-torch.
    """
    import torch
    from coreai_opt.quantization import Quantizer
    from torch.nn.utils import parametrize

    active = _restrict(plan, only)
    quantizer = Quantizer(model, coreai_opt_config(plan, only=only))
    # Eager mode inserts its fake quantizers while tracing one forward; two tokens reach every Linear.
    example = torch.zeros((1, 2), dtype=torch.long, device=model.get_input_embeddings().weight.device)
    with torch.no_grad():
        prepared = quantizer.prepare((example,))
    missed = [n for n in active if not parametrize.is_parametrized(prepared.get_submodule(n), "weight")]
    if missed:
        raise InputError(f"coreai-opt left {len(missed)} planned module(s) unquantized, e.g. {missed[0]} "
                         f"(see its warnings above)")
    return quantizer, prepared


# -- loading ------------------------------------------------------------------------------------------

def load_fp16(model_dir: str | os.PathLike | None):
    """The checkpoint loaded with transformers in fp16 (the precision the bundle computes in)."""
    from ..models import load_causal_lm

    model = load_causal_lm(resolve_model_dir(model_dir), "float16")
    model.requires_grad_(False)
    return model


def quantized_model(model_dir: str | os.PathLike | None, recipe: Recipe | str, *, mode: str = "fast",
                    only: Iterable[str] | None = None, recipes_path: str | os.PathLike | None = None):
    """The fp16 model with the recipe applied (`mode="fast"`: materialized weights;
    `mode="coreai-opt"`: coreai-opt's eager fake quantization). `only` limits the recipe to those
    module names; `recipe` is a Recipe or a recipe name (bundled, or in `recipes_path`)."""
    _check_mode(mode)
    recipe = _as_recipe(recipe, recipes_path)
    model = load_fp16(model_dir)
    plan = recipe.plan(model)
    if mode == "fast":
        apply_plan(model, plan, only=only, keep_codes=False)
        return model
    if not _restrict(plan, only):
        return model  # nothing to quantize (the fp16 control): coreai-opt has nothing to do
    return prepare_coreai_opt(model, plan, only=only)[1]


# -- the candidate ---------------------------------------------------------------------------------------

def _cache_keyword(model) -> str:
    # transformers 5.x renames past_key_values to cache; accept either spelling
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class EmulatedCandidate:
    """A recipe applied to a Hugging Face checkpoint, decoded in fp16 as the device decodes."""

    recipe: Recipe
    model_dir: Path
    mode: str = "fast"
    full: bool = False
    threads: int | None = None  # torch threads; None: one for a small model (harness.models.torch_threads)
    device: str = "cpu"  # cpu, cuda, mps or auto (resolved in __post_init__)
    runner: str = RUNNER
    variant: str = ""
    quantize_seconds: float | None = None
    _model: object = field(default=None, repr=False)
    _vocab: int | None = field(default=None, repr=False)

    def __post_init__(self):
        _check_mode(self.mode)
        self.device = resolve_device(self.device)
        self.model_dir = resolve_model_dir(self.model_dir)
        self.variant = self.recipe.name
        cfg = read_config(self.model_dir)
        text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
        vocab = text_cfg.get("vocab_size")
        if not isinstance(vocab, int) or vocab <= 0:
            raise InputError(f"{self.model_dir}/config.json: no positive 'vocab_size'")
        self._vocab = vocab

    @property
    def vocab_size(self) -> int:
        return int(self._vocab)

    @property
    def model(self):
        if self._model is None:
            import time

            t0 = time.perf_counter()
            model = quantized_model(self.model_dir, self.recipe, mode=self.mode)
            self._model = model if self.device == "cpu" else model.to(self.device)
            self.quantize_seconds = time.perf_counter() - t0
        return self._model

    def metadata(self) -> dict[str, str]:
        import torch
        import transformers

        return {
            "model": model_provenance(self.model_dir),
            "tokenizer_sha256": tokenizer_sha256(self.model_dir),
            "recipe": self.recipe.text,
            "recipe_source": self.recipe.source,
            "quantizer": "coreai-opt",
            "coreai_opt_version": coreai_opt_version(),
            "mode": self.mode,
            "decode": "full" if self.full else "stepwise",
            "dtype": COMPUTE_DTYPE,
            **device_metadata(self.device),
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
        }

    def run(self, sequences: Iterable[Sequence]) -> Iterator[CaseTrace]:
        with torch_threads(self.threads, hidden_size_of(self.model)):
            yield from self._run(sequences)

    def check_sequence(self, s: Sequence) -> np.ndarray:
        """The sequence's token ids, refused (InputError naming the case) if its rows or ids do not fit."""
        ids = np.asarray(s.input_ids, dtype=np.int64)
        if ids.ndim != 1 or not 1 <= s.rows <= len(ids) - 1:
            raise InputError(f"case {s.case_id!r}: {s.rows} rows do not fit a sequence of {len(ids)} tokens")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise InputError(f"case {s.case_id!r}: token id {int(bad[0])} is outside the model's "
                             f"vocabulary of {self.vocab_size}")
        return ids

    def _run(self, sequences: Iterable[Sequence]) -> Iterator[CaseTrace]:
        for s in sequences:
            ids = self.check_sequence(s)
            logits = self.rows_full(ids, s.rows) if self.full else self.rows_stepwise(ids, s.rows)
            yield CaseTrace(s.case_id, ids, logits)

    def rows_stepwise(self, ids: np.ndarray, n_rows: int) -> np.ndarray:
        return rows_stepwise(self.model, ids, n_rows)

    def rows_full(self, ids: np.ndarray, n_rows: int) -> np.ndarray:
        return rows_full(self.model, ids, n_rows)


def rows_stepwise(model, ids: np.ndarray, n_rows: int) -> np.ndarray:
    """S=1 through the model's own HF cache: feed x[t] for t = 0..N-2, one token a step, and keep
    the output after x[P+k-1] as row k (k = 0..n_rows-1). float16 [n_rows, vocab]."""
    import torch
    from transformers import DynamicCache

    decoder = model.get_decoder()
    cache = DynamicCache(config=model.config)
    kw = {_cache_keyword(model): cache, "use_cache": True}
    decoder_kw = {_cache_keyword(decoder): cache, "use_cache": True}
    x = torch.tensor(ids, device=model.get_input_embeddings().weight.device)[None]
    first_row = len(ids) - 1 - n_rows  # the step whose output is row 0 (= P - 1)
    rows = []
    with torch.inference_mode():
        for t in range(len(ids) - 1):
            tok = x[:, t:t + 1]
            if t < first_row:
                decoder(input_ids=tok, **decoder_kw)  # prompt steps: the head's logits are not scored
            else:
                rows.append(model(input_ids=tok, **kw).logits[0, -1])
    return torch.stack(rows).to(torch.float16).cpu().numpy()


def rows_full(model, ids: np.ndarray, n_rows: int) -> np.ndarray:
    """The same rows from one causal pass over the whole sequence (faster, less like the device)."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor(ids, device=model.get_input_embeddings().weight.device)[None]).logits[0]
    return logits[len(ids) - 1 - n_rows:len(ids) - 1].to(torch.float16).cpu().numpy()


def emulated_candidate(variant: str, *, model: str | os.PathLike | None = None,
                       recipes: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                       mode: str = "fast", full: bool = False, vocab_size: int | None = None,
                       threads: int | None = None, device: str = "cpu", stream: bool = False,
                       max_memory: str | int | None = None, log=None, **_other) -> EmulatedCandidate:
    """The default runner of `harness.candidates.resolve`: `variant` names a recipe (bundled, or in
    the recipe file `recipes` / `config`); `model` is the checkpoint folder (default: the fixture);
    `vocab_size`, when given, is the oracle's, which the model's head must match. `stream=True`
    runs it layer by layer from the memory-mapped checkpoint (harness.candidates.streamed), within
    `max_memory` (bytes or '8GiB')."""
    _check_mode(mode)
    recipe = get_recipe(variant, recipes or config)
    if stream:
        from .streamed import StreamedCandidate

        if mode != "fast":
            raise InputError(f"--stream with --mode {mode}: a streamed capture quantizes each layer as it is "
                             f"read (the fast path, bit-identical to coreai-opt); use --mode fast")
        if full:
            raise InputError("--stream with --full: a streamed capture decodes S=1 only")
        candidate = StreamedCandidate(recipe, resolve_model_dir(model), threads=threads, device=device,
                                      max_memory=max_memory, log=log)
    else:
        if max_memory is not None:
            raise InputError("--max-memory applies to --stream (the in-memory capture holds the whole model)")
        candidate = EmulatedCandidate(recipe, resolve_model_dir(model), mode=mode, full=bool(full), threads=threads,
                                      device=device)
    if vocab_size is not None and int(vocab_size) != candidate.vocab_size:
        raise InputError(f"{candidate.model_dir}: vocab_size {candidate.vocab_size} differs from the oracle's "
                         f"{int(vocab_size)}: not the oracle's model")
    return candidate


__all__ = ["EmulatedCandidate", "emulated_candidate", "quantized_model", "apply_plan", "prepare_coreai_opt",
           "coreai_opt_config", "load_fp16", "rows_stepwise", "rows_full", "resolve_device", "MODES", "DEVICES"]
