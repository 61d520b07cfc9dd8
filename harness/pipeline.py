"""Run what a set of gates needs — oracle, candidates, controls — through a content-addressed trace
cache, and judge each gate. `flipgate compare`, `flipgate signoff` and `pytest --gate` call this.

Cache layout (default `.flipgate/` in the working directory):

    .flipgate/traces/oracle-<key>.safetensors      key = model weights + tokenizer + case set + dtype
    .flipgate/traces/<spec>-<key>.safetensors      key = oracle key + candidate spec + recipe text + mode

Every trace is written to a temporary file and renamed, so two runs at once never corrupt the
cache: at worst both compute the same trace and the last rename wins with identical content.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import __version__
from .errors import InputError

DEFAULT_CACHE = ".flipgate"


def _key(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _safe(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)[:48]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"flipgate": __version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "coreai-opt", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


@dataclass
class GateRun:
    """What `run_gates` produced: verdicts in the order asked, the traces used, and provenance."""

    verdicts: dict = field(default_factory=dict)
    traces: dict[str, Path] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(bool(v) for v in self.verdicts.values())


@dataclass
class Workspace:
    """The model, case set and cache that a run works in."""

    model_dir: Path
    cases_path: Path
    cache_dir: Path
    dtype: str = "bfloat16"
    refresh: bool = False
    quiet: bool = False
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)

    @property
    def traces_dir(self) -> Path:
        return self.cache_dir / "traces"

    def say(self, msg: str) -> None:
        if not self.quiet:
            self.log(msg)

    def oracle_key(self) -> str:
        from .cases import load_cases
        from .models import tokenizer_sha256, weights_sha256

        cases = load_cases(self.cases_path)
        return _key("oracle", weights_sha256(self.model_dir), tokenizer_sha256(self.model_dir),
                    cases.sha256, self.dtype, __version__)

    def oracle_trace(self) -> Path:
        from oracles.hf import run_oracle

        path = self.traces_dir / f"oracle-{self.dtype}-{self.oracle_key()}.safetensors"
        if path.exists() and not self.refresh:
            self.say(f"oracle: cached {path}")
            return path
        self.say(f"oracle: computing {path}")
        return run_oracle(model=str(self.model_dir), cases=str(self.cases_path), dtype=self.dtype,
                          out=str(path), quiet=self.quiet)

    def candidate_trace(self, spec: str, oracle_path: Path, recipes_path: str | None = None) -> Path:
        from .candidates import capture_to_trace, resolve, sequences_from_trace
        from .models import model_provenance, tokenizer_sha256
        from .trace import open_trace

        options = {"model": str(self.model_dir)}
        if recipes_path:
            options["recipes"] = recipes_path
        candidate = resolve(spec, **options)
        meta = candidate.metadata()
        key = _key("candidate", oracle_path.name, spec, meta.get("recipe", ""), meta.get("mode", ""), __version__)
        path = self.traces_dir / f"{_safe(spec)}-{key}.safetensors"
        if path.exists() and not self.refresh:
            self.say(f"{spec}: cached {path}")
            return path
        self.say(f"{spec}: capturing {path}")
        oracle = open_trace(oracle_path)
        return capture_to_trace(candidate, sequences_from_trace(oracle), path, vocab_size=oracle.vocab_size,
                                model=model_provenance(self.model_dir),
                                tokenizer_sha256=tokenizer_sha256(self.model_dir))


def workspace(*, model: str | None = None, cases: str | None = None, cache_dir: str | None = None,
              dtype: str = "bfloat16", refresh: bool = False, quiet: bool = False) -> Workspace:
    from .cases import bundled_cases_path
    from .models import resolve_model_dir

    return Workspace(
        model_dir=resolve_model_dir(model),
        cases_path=Path(cases) if cases else bundled_cases_path(),
        cache_dir=Path(cache_dir or os.environ.get("FLIPGATE_CACHE", DEFAULT_CACHE)),
        dtype=dtype, refresh=refresh, quiet=quiet)


def _decoder(model_dir: Path):
    from .models import load_tokenizer

    tok = load_tokenizer(model_dir)
    return lambda ids: tok.decode(list(ids), clean_up_tokenization_spaces=False)


def run_gates(gate_names: Iterable[str] | None = None, *, config: str | None = None, model: str | None = None,
              cases: str | None = None, cache_dir: str | None = None, refresh: bool = False,
              quiet: bool = False, oracle: str | None = None, candidate: str | None = None,
              control: str | None = None) -> GateRun:
    """Judge the named gates (default: every defined gate) on the model and case set.

    `oracle`/`candidate`/`control` given as trace paths judge those traces instead of running models
    (one gate at a time then, since one candidate trace answers one gate).
    """
    from gates.engine import evaluate
    from gates.policy import load_gates

    from .trace import open_trace

    policies = load_gates(config)
    names = list(gate_names) if gate_names else list(policies)
    if names == ["all"]:
        names = list(policies)
    unknown = [n for n in names if n not in policies]
    if unknown:
        raise InputError(f"unknown gate {unknown[0]!r} (defined: {', '.join(policies)})")
    ws = workspace(model=model, cases=cases, cache_dir=cache_dir, refresh=refresh, quiet=quiet)
    recipes = config if config and _has_recipes(config) else None
    run = GateRun()
    if candidate is not None and len(names) != 1:
        raise InputError("a given candidate trace answers one gate: name exactly one with --gate")

    oracle_path = Path(oracle) if oracle else ws.oracle_trace()
    run.traces["oracle"] = oracle_path
    oracle_trace = open_trace(oracle_path)
    decode = _decoder(ws.model_dir) if oracle is None or ws.model_dir.exists() else None
    for name in names:
        pol = policies[name]
        if candidate is not None:
            cand_path = Path(candidate)
        else:
            cand_path = run.traces.get(pol.candidate) or ws.candidate_trace(pol.candidate, oracle_path, recipes)
        run.traces.setdefault(pol.candidate, cand_path)
        ctrl_trace = None
        if control is not None:
            ctrl_trace = open_trace(control)
        elif pol.control and candidate is None:
            ctrl_path = run.traces.get(pol.control) or ws.candidate_trace(pol.control, oracle_path, recipes)
            run.traces.setdefault(pol.control, ctrl_path)
            ctrl_trace = open_trace(ctrl_path)
        verdict = evaluate(oracle_trace, open_trace(cand_path), ctrl_trace, policy=pol, decode=decode,
                           provenance=None)
        run.verdicts[name] = verdict
    run.provenance = provenance(ws, run, config)
    for v in run.verdicts.values():
        v.provenance.update(run.provenance)
    return run


def _has_recipes(config: str) -> bool:
    try:
        import tomllib

        with open(config, "rb") as f:
            return "recipes" in tomllib.load(f)
    except (OSError, ValueError):
        return False


def provenance(ws: Workspace, run: GateRun, config: str | None) -> dict:
    from .fileio import sha256_file
    from .models import tokenizer_sha256, weights_sha256
    from .trace import open_trace

    recipes = {}
    for spec, path in run.traces.items():
        meta = open_trace(path).metadata
        if "recipe" in meta:
            recipes[spec] = meta["recipe"]
    return {
        "model": str(ws.model_dir),
        "model_sha256": weights_sha256(ws.model_dir) if ws.model_dir.exists() else {},
        "tokenizer_sha256": tokenizer_sha256(ws.model_dir) if ws.model_dir.exists() else "",
        "cases": str(ws.cases_path),
        "cases_sha256": sha256_file(ws.cases_path) if ws.cases_path.exists() else "",
        "config": str(config) if config else "",
        "config_sha256": sha256_file(config) if config else "",
        "traces": {k: str(v) for k, v in run.traces.items()},
        "trace_sha256": {k: sha256_file(v) for k, v in run.traces.items()},
        "recipes": recipes,
        "versions": _versions(),
        "machine": f"{platform.node()} {platform.system()} {platform.release()} {platform.machine()}",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
