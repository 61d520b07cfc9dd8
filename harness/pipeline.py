"""Run what a set of gates needs — oracle, candidates, controls — through a content-addressed trace
cache, and judge each gate. `flipgate compare`, `flipgate signoff` and `pytest --gate` call this.

Cache layout (default `.flipgate/` in the working directory, or $FLIPGATE_CACHE):

    .flipgate/traces/oracle-<dtype>-<key>.safetensors  key = model weights + tokenizer + case set + dtype
                                                       + package versions
    .flipgate/traces/<spec>-<key>.safetensors          key = oracle trace's bytes + candidate spec + the
                                                       candidate's whole provenance (recipe text, mode,
                                                       weights sha256, ...) + the bytes of any bundle or
                                                       trace it reads + model weights + package versions

A key is made from the content of everything that produced the trace, never from a path alone: a
bundle rebuilt at the same path, or an oracle trace rewritten under the same name, gets a new key.

Every trace is written to a temporary file and renamed, so a reader never sees half a trace. Each
entry is computed under an exclusive lock (`.flipgate/locks/<entry>.lock`, flock): two runs at once on one cache
compute it once — the second waits, then reuses it — and never share the oracle's `.parts/` folder.

Given traces (`oracle=`, `candidate=`, `control=`) are judged as they are; models run only for
what is not given, and only when the model's tokenizer is the one the given oracle was made with.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import __version__
from .errors import InputError

DEFAULT_CACHE = ".flipgate"
CONFIG_NAME = "flipgate.toml"


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
    for dist in ("torch", "transformers", "coreai-opt", "numpy", "coreai-core", "coreai-torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


@contextlib.contextmanager
def _entry_lock(path: Path):
    """Hold `<cache>/locks/<entry>.lock` exclusively while the cache entry `path` is looked up and computed
    (beside `traces/`, not in it: the traces folder holds traces only)."""
    import fcntl

    locks = path.parent.with_name("locks")
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / (path.name + ".lock"), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_config(folder: str | os.PathLike | None = None) -> Path | None:
    """`flipgate.toml` in `folder` (default: the working directory) if there is one, else None
    (None means the bundled gate definitions)."""
    p = Path(folder or ".") / CONFIG_NAME
    return p if p.is_file() else None


def gate_names(config: str | os.PathLike | None = None) -> list[str]:
    """The gates a config defines, in order (the bundled ones when config is None)."""
    from gates.policy import load_gates

    return list(load_gates(str(config) if config else None))


def select_gates(requested: Iterable[str] | None, defined: Iterable[str]) -> list[str]:
    """Requested names in order, `all` expanded, duplicates dropped; InputError names an unknown one."""
    defined = list(defined)
    names: list[str] = []
    for n in requested or ["all"]:
        for m in (defined if n == "all" else [n]):
            if m not in names:
                names.append(m)
    unknown = [n for n in names if n not in defined]
    if unknown:
        raise InputError(f"unknown gate {unknown[0]!r} (defined: {', '.join(defined) or 'none'})")
    if not names:
        raise InputError("no gates are defined")
    return names


@dataclass
class GateRun:
    """What `run_gates` produced: verdicts in the order asked, the traces used, and provenance."""

    verdicts: dict = field(default_factory=dict)
    traces: dict[str, Path] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(bool(v) for v in self.verdicts.values())

    def __bool__(self) -> bool:
        return self.passed

    def one_lines(self) -> list[str]:
        return [v.one_line() for v in self.verdicts.values()]


@dataclass
class Workspace:
    """The model, case set and cache that a run works in."""

    model_dir: Path
    cases_path: Path
    cache_dir: Path
    dtype: str = "bfloat16"
    refresh: bool = False
    quiet: bool = False
    log: Callable[[str], None] = _stderr

    @property
    def traces_dir(self) -> Path:
        return self.cache_dir / "traces"

    def say(self, msg: str) -> None:
        if not self.quiet:
            self.log(msg)

    def tokenizer_sha256(self) -> str:
        from .models import tokenizer_sha256

        return tokenizer_sha256(self.model_dir) if self.model_dir.is_dir() else ""

    def oracle_key(self) -> str:
        from .cases import load_cases
        from .models import weights_sha256

        cases = load_cases(self.cases_path)
        # "case_set/1": traces cached before they carried the case set hash are not reused
        return _key("oracle", weights_sha256(self.model_dir), self.tokenizer_sha256(),
                    cases.sha256, self.dtype, __version__, "case_set/1", _versions())

    def oracle_path(self) -> Path:
        return self.traces_dir / f"oracle-{self.dtype}-{self.oracle_key()}.safetensors"

    def oracle_trace(self) -> Path:
        path = self.oracle_path()
        with _entry_lock(path):
            return self._oracle_entry(path)

    def _oracle_entry(self, path: Path) -> Path:
        from oracles.hf import run_oracle

        if path.exists() and not self.refresh:
            self.say(f"oracle: cached {path}")
            return path
        self.say(f"oracle: running {self.model_dir.name} ({self.dtype}) on {self.cases_path.name} -> {path}")
        t0 = time.perf_counter()
        out = Path(run_oracle(model=str(self.model_dir), cases=str(self.cases_path), dtype=self.dtype,
                              out=str(path), quiet=self.quiet, log=self.log))
        self.say(f"oracle: done in {time.perf_counter() - t0:.1f} s")
        return out

    def candidate_key(self, spec: str, candidate, oracle_path: Path) -> str:
        """The cache key of a candidate's trace: the content of everything that produces it."""
        from .contenthash import file_sha256
        from .models import weight_files

        # what the candidate reads beyond the model: a Core AI bundle, an imported trace
        reads = candidate.content_sha256() if hasattr(candidate, "content_sha256") else ""
        if not reads and getattr(candidate, "path", None) is not None and Path(candidate.path).is_file():
            reads = file_sha256(candidate.path)
        model = {f.name: file_sha256(f) for f in weight_files(self.model_dir)} if self.model_dir.is_dir() else {}
        return _key("candidate", file_sha256(oracle_path), spec, candidate.runner, candidate.variant,
                    _cache_identity(candidate), reads, model, self.tokenizer_sha256(), _versions(), __version__)

    def candidate_trace(self, spec: str, oracle_path: Path, recipes_path: str | None = None) -> Path:
        from .candidates import resolve

        options = {"model": str(self.model_dir)}
        if recipes_path:
            options["recipes"] = recipes_path
        candidate = resolve(spec, **options)
        key = self.candidate_key(spec, candidate, oracle_path)
        path = self.traces_dir / f"{_safe(spec)}-{key}.safetensors"
        with _entry_lock(path):
            return self._candidate_entry(spec, candidate, path, oracle_path)

    def _candidate_entry(self, spec: str, candidate, path: Path, oracle_path: Path) -> Path:
        from .candidates import capture_to_trace, sequences_from_trace
        from .models import model_provenance
        from .trace import open_trace

        if path.exists() and not self.refresh:
            self.say(f"{spec}: cached {path}")
            return path
        self.say(f"{spec}: running {candidate.runner} {candidate.variant} -> {path}")
        t0 = time.perf_counter()
        oracle = open_trace(oracle_path)
        out = capture_to_trace(candidate, sequences_from_trace(oracle), path, vocab_size=oracle.vocab_size,
                               model=model_provenance(self.model_dir), tokenizer_sha256=self.tokenizer_sha256())
        self.say(f"{spec}: done in {time.perf_counter() - t0:.1f} s")
        return out


def _cache_identity(candidate) -> dict:
    """A candidate's provenance for its cache key. An emulated candidate's comes from its fields (what
    its metadata() records, less the package versions, which `_versions()` keys): metadata() imports
    torch and transformers, which a run served from the cache never needs."""
    from .candidates.emulated import EmulatedCandidate

    if isinstance(candidate, EmulatedCandidate):
        return {"recipe": candidate.recipe.text, "recipe_source": candidate.recipe.source, "mode": candidate.mode,
                "full": candidate.full, "device": candidate.device, "model": str(candidate.model_dir)}
    return candidate.metadata()


def workspace(*, model: str | None = None, cases: str | None = None, cache_dir: str | None = None,
              dtype: str = "bfloat16", refresh: bool = False, quiet: bool = False,
              log: Callable[[str], None] | None = None) -> Workspace:
    from .cases import resolve_cases_path
    from .models import resolve_model_dir

    return Workspace(
        model_dir=resolve_model_dir(model),
        cases_path=resolve_cases_path(cases),  # a path, or a bundled set's name (`big`)
        cache_dir=Path(cache_dir or os.environ.get("FLIPGATE_CACHE") or DEFAULT_CACHE),
        dtype=dtype, refresh=refresh, quiet=quiet, log=log or _stderr)


def _decoder(model_dir: Path):
    """Token ids -> text from the model's tokenizer.json with the `tokenizers` library, as
    `flipgate gate --tokenizer` does: the same text as transformers' fast tokenizer (no clean-up of
    spaces) without importing transformers and torch, which cost a warm compare half its time."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own exception type for a bad file
        raise InputError(f"{path}: cannot load the tokenizer ({e.__class__.__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return lambda ids: tok.decode(list(ids), skip_special_tokens=False)


def run_gates(gate_names: Iterable[str] | None = None, *, config: str | None = None, model: str | None = None,
              cases: str | None = None, cache_dir: str | None = None, refresh: bool = False,
              quiet: bool = False, oracle: str | None = None, candidate: str | None = None,
              control: str | None = None, dtype: str = "bfloat16",
              log: Callable[[str], None] | None = None) -> GateRun:
    """Judge the named gates (default: every defined gate; `all` means the same) on the model and case set.

    `oracle`/`candidate`/`control` given as trace paths are judged instead of running models. A given
    candidate answers one gate, so exactly one gate must be named with it. What is not given is run:
    the candidates and controls on the given oracle's token sequences, with the model (which must
    have the oracle's tokenizer). A given candidate without a given control is judged without one
    (every confident flip is then a defect). `log` receives one progress line per step.
    """
    from gates.engine import evaluate
    from gates.policy import load_gates

    from .trace import open_trace

    policies = load_gates(str(config) if config else None)
    names = select_gates(gate_names, policies)
    if candidate is not None and len(names) != 1:
        raise InputError(f"a given candidate trace answers one gate, but {len(names)} are named "
                         f"({', '.join(names)}): name exactly one")
    ws = workspace(model=model, cases=cases, cache_dir=cache_dir, dtype=dtype, refresh=refresh, quiet=quiet,
                   log=log)
    recipes = str(config) if config and _has_recipes(config) else None
    run = GateRun()

    oracle_path = Path(oracle) if oracle else ws.oracle_trace()
    oracle_trace = open_trace(oracle_path)
    run.traces["oracle"] = oracle_path
    # Token text comes from the model's tokenizer only if the oracle was made with that very tokenizer.
    model_tok = ws.tokenizer_sha256()
    same_tokenizer = bool(model_tok) and (oracle is None or oracle_trace.tokenizer_sha256 == model_tok)
    decode = _decoder(ws.model_dir) if same_tokenizer else None

    def capture(spec: str) -> Path:
        if spec not in run.traces:
            if oracle is not None and not same_tokenizer:
                raise InputError(
                    f"{oracle_path}: this oracle trace was not made with the tokenizer of model {ws.model_dir}, "
                    f"so {spec!r} cannot be run on its sequences: give its trace, or the oracle's model")
            run.traces[spec] = ws.candidate_trace(spec, oracle_path, recipes)
        return run.traces[spec]

    for name in names:
        pol = policies[name]
        if candidate is not None:
            cand_path = Path(candidate)
            run.traces[f"candidate:{name}"] = cand_path
        else:
            cand_path = capture(pol.candidate)
        ctrl_path = None
        if control is not None:
            ctrl_path = Path(control)
            run.traces[f"control:{name}"] = ctrl_path
        elif pol.control and candidate is None:
            ctrl_path = capture(pol.control)
        verdict = evaluate(oracle_trace, open_trace(cand_path), open_trace(ctrl_path) if ctrl_path else None,
                           policy=pol, decode=decode, provenance=None)
        run.verdicts[name] = verdict
    ran_model = oracle is None or any(k != "oracle" and not k.startswith(("candidate:", "control:"))
                                      for k in run.traces)
    run.provenance = provenance(ws, run, config, ran_model=ran_model, ran_oracle=oracle is None)
    for v in run.verdicts.values():
        v.provenance.update(run.provenance)
    return run


def fill_cache(launch, gate_names: Iterable[str] | None = None, *, config: str | None = None,
               model: str | None = None, cases: str | None = None, cache_dir: str | None = None,
               refresh: bool = False, quiet: bool = False, dtype: str = "bfloat16",
               log: Callable[[str], None] | None = None) -> None:
    """Under a launcher: the ranks fill the trace cache that `run_gates` then reads on rank 0.

    First the oracle, its cases split over the ranks (rank 0 joins the shares into the cache), then
    the gates' candidates and controls, whole variants dealt round-robin to the ranks: each variant
    loads its model once, and a variant's trace is the same whichever rank made it. The cache
    folder must be one that every rank sees (a shared filesystem across nodes).
    """
    from gates.policy import load_gates

    from .distributed import Meeting, remove_shares
    from .merge import merge_traces

    policies = load_gates(str(config) if config else None)
    names = select_gates(gate_names, policies)
    ws = workspace(model=model, cases=cases, cache_dir=cache_dir, dtype=dtype, refresh=refresh, quiet=quiet,
                   log=log)
    recipes = str(config) if config and _has_recipes(config) else None
    specs = list(dict.fromkeys(s for n in names for s in (policies[n].candidate, policies[n].control) if s))
    oracle_path = ws.oracle_path()
    shares = launch.share_paths(oracle_path)
    need_oracle = refresh or not oracle_path.exists()

    def oracle_share() -> None:
        from oracles.hf import run_oracle

        if need_oracle:
            ws.say(f"oracle: rank {launch.shard} of the cases -> {shares[launch.rank]}")
            run_oracle(model=str(ws.model_dir), cases=str(ws.cases_path), dtype=ws.dtype,
                       out=str(shares[launch.rank]), shard=launch.shard, quiet=quiet, log=ws.log)

    def oracle_join() -> None:
        if need_oracle:
            with _entry_lock(oracle_path):
                merge_traces(shares, oracle_path)
            remove_shares(shares)

    def my_variants() -> None:
        for spec in launch.select(specs):
            ws.candidate_trace(spec, oracle_path, recipes)

    with Meeting(launch) as meeting:
        meeting.round("oracle", oracle_share, oracle_join)
        meeting.round("candidates", my_variants)


def _has_recipes(config: str | os.PathLike) -> bool:
    try:
        import tomllib

        with open(config, "rb") as f:
            return "recipes" in tomllib.load(f)
    except (OSError, ValueError):
        return False


def provenance(ws: Workspace, run: GateRun, config: str | os.PathLike | None, *, ran_model: bool = True,
               ran_oracle: bool = True) -> dict:
    """Where every input came from: model, tokenizer, cases, config, traces, recipes, versions, machine."""
    from .fileio import sha256_file
    from .models import weights_sha256
    from .trace import open_trace

    recipes = {}
    for spec, path in run.traces.items():
        meta = open_trace(path).metadata
        if "recipe" in meta:
            recipes[spec] = meta["recipe"]
    if ran_model:
        model = {"model": str(ws.model_dir), "model_sha256": weights_sha256(ws.model_dir),
                 "tokenizer_sha256": ws.tokenizer_sha256()}
    else:  # judged given traces only: the model is whatever the oracle trace says
        meta = open_trace(run.traces["oracle"]).metadata
        model = {"model": meta.get("model", ""), "model_sha256": {},
                 "tokenizer_sha256": meta.get("tokenizer_sha256", "")}
    return {
        **model,
        "cases": str(ws.cases_path) if ran_oracle else "",
        "cases_sha256": sha256_file(ws.cases_path) if ran_oracle and ws.cases_path.exists() else "",
        "config": str(config) if config else "",
        "config_sha256": sha256_file(config) if config else "",
        "traces": {k: str(v) for k, v in run.traces.items()},
        "trace_sha256": {k: sha256_file(v) for k, v in run.traces.items()},
        "recipes": recipes,
        "versions": _versions(),
        "machine": f"{platform.node()} {platform.system()} {platform.release()} {platform.machine()}",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_verdicts(run: GateRun, folder: str | os.PathLike) -> dict[str, Path]:
    """Write each verdict as `<folder>/<gate>.verdict.json` (atomically); returns gate -> path."""
    out = {}
    for name, verdict in run.verdicts.items():
        path = Path(folder) / f"{_safe(name)}.verdict.json"
        verdict.write(path)
        out[name] = path
    return out
