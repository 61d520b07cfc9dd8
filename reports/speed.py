"""Speed for the card: `llm-benchmark` results (device), the `coreai-python` runtime's tok/s (on Linux,
coreai-core's in-package CPU runtime), bundle weight bytes from an `inspect` audit, and the share of
the machine's memory bandwidth a decode uses.

`llm-benchmark` (apple/coreai-models, swift/Sources/Tools/benchmark) writes two forms, both read here:

- its standard output: per trial `⚡ Prompt:     1042.315 tokens/sec` and `🏃 Generation: 58.721
  tokens/sec`, then a `📊 Benchmark Summary:` block between `=====` rules holding the averages as
  `Prompt:     N tokens/sec` and `Generation: N tokens/sec` (newer builds add `Prepare:` and `Warmup:`
  lines there); the run's sizes in `🔄 Benchmarking with P prompt tokens, G generation tokens`;
- `--output-json FILE`: snake-case keys `model`, `prompt_tokens`, `generation_tokens`, `num_trials`,
  `trials` (`prompt_tps`, `gen_tps` each), `averages` (`prompt_tps`, `generation_tps`), and in newer
  builds `prepare_seconds`, `cache_hit`, `warmup_seconds`.

Prompt tokens/sec is prefill (the prompt's length over time to first token); generation is decode
(tokens after the first over their time). A rate that is missing, zero, negative or not finite is
refused: a card never shows a speed nobody measured.

Bandwidth use = weight bytes read per token × decode tok/s ÷ the machine's bandwidth. A dense
decoder reads every weight once per token, so this is the share of the memory-bandwidth ceiling the
decode reaches (KV cache and activations are left out: the figure is a lower bound on the traffic).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from harness import safejson
from harness.errors import InputError
from harness.evidence import evidence_of

SPEED_SCHEMA = "flipgate.speed/1"


@dataclass(frozen=True)
class Speed:
    """One speed measurement, named for what ran it."""

    source: str                    # "llm-benchmark" or "coreai-python"
    evidence: str                  # harness.evidence kind: "device" or "reference-runtime"
    decode_tok_s: float | None
    prefill_tok_s: float | None
    path: str
    model: str = ""
    prompt_tokens: int | None = None
    generation_tokens: int | None = None
    trials: int | None = None
    runtime: str = ""              # e.g. "coreai-core in-package runtime (Linux x86_64)"


def _rate(x: Any, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise InputError(f"{where}: expected a number of tokens/sec, found {x!r}")
    v = float(x)
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{where}: {x!r} tokens/sec is not a measured rate (must be finite and > 0)")
    return v


_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)"
_SUMMARY_LINE = re.compile(r"^\s*(Prompt|Generation):\s*" + _NUM + r"\s*tokens/sec\s*$", re.IGNORECASE)
_TRIAL = re.compile(r"Trial\s+\d+")
_SIZES = re.compile(r"Benchmarking with (\d+) prompt tokens, (\d+) generation tokens")


def parse_llm_benchmark_text(text: str, source: str = "llm-benchmark output") -> Speed:
    """The averages of `llm-benchmark`'s standard output (its `Benchmark Summary` block)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "Benchmark Summary" in line), None)
    if start is None:
        raise InputError(f"{source}: no 'Benchmark Summary' block: not llm-benchmark output, or the run "
                         "did not finish")
    found: dict[str, float] = {}
    for n, line in enumerate(lines[start + 1:], start + 2):
        m = _SUMMARY_LINE.match(line)
        if m:
            key = m.group(1).lower()
            if key in found:
                raise InputError(f"{source}, line {n}: a second {m.group(1)!r} line in the summary")
            found[key] = _rate(float(m.group(2)), f"{source}, line {n}")
    for key in ("prompt", "generation"):
        if key not in found:
            raise InputError(f"{source}: the Benchmark Summary has no '{key.capitalize()}: N tokens/sec' line")
    sizes = next((m for m in map(_SIZES.search, lines) if m), None)
    trials = sum(1 for line in lines[:start] if _TRIAL.search(line))
    return Speed("llm-benchmark", "device", found["generation"], found["prompt"], source,
                 prompt_tokens=int(sizes.group(1)) if sizes else None,
                 generation_tokens=int(sizes.group(2)) if sizes else None, trials=trials or None)


def parse_llm_benchmark_json(doc: Any, source: str = "llm-benchmark JSON") -> Speed:
    """`llm-benchmark --output-json`'s report: its averages (recomputed from `trials` if absent)."""
    if not isinstance(doc, Mapping):
        raise InputError(f"{source}: not an llm-benchmark report (a JSON object)")
    trials = doc.get("trials")
    if trials is not None and (not isinstance(trials, list) or not all(isinstance(t, Mapping) for t in trials)):
        raise InputError(f"{source}: 'trials' must be a list of objects")
    avg = doc.get("averages")
    if avg is not None:
        if not isinstance(avg, Mapping):
            raise InputError(f"{source}: 'averages' must be an object")
        for key in ("prompt_tps", "generation_tps"):
            if key not in avg:
                raise InputError(f"{source}: averages lack {key!r}")
        prefill = _rate(avg["prompt_tps"], f"{source}: averages.prompt_tps")
        decode = _rate(avg["generation_tps"], f"{source}: averages.generation_tps")
    elif trials:
        prefill = sum(_rate(t.get("prompt_tps"), f"{source}: trials[{i}].prompt_tps")
                      for i, t in enumerate(trials)) / len(trials)
        decode = sum(_rate(t.get("gen_tps"), f"{source}: trials[{i}].gen_tps")
                     for i, t in enumerate(trials)) / len(trials)
    else:
        raise InputError(f"{source}: no 'averages' and no 'trials': not an llm-benchmark report")

    def count(key: str) -> int | None:
        v = doc.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    return Speed("llm-benchmark", "device", decode, prefill, source, model=str(doc.get("model") or ""),
                 prompt_tokens=count("prompt_tokens"), generation_tokens=count("generation_tokens"),
                 trials=len(trials) if trials else count("num_trials"))


def parse_runtime_speed(doc: Any, source: str = "speed file") -> Speed:
    """A `flipgate.speed/1` record of the `coreai-python` runner (benchmarks/bench_reference_runtime.py)."""
    if not isinstance(doc, Mapping) or doc.get("schema") != SPEED_SCHEMA:
        raise InputError(f"{source}: not a {SPEED_SCHEMA} record")
    if doc.get("runner") != "coreai-python":
        raise InputError(f"{source}: runner {doc.get('runner')!r}: a {SPEED_SCHEMA} record is of coreai-python")
    evidence = evidence_of({"runner": "coreai-python", "coreai_runtime": str(doc.get("coreai_runtime", ""))})
    decode = _rate(doc.get("decode_tok_s"), f"{source}: decode_tok_s")
    prefill = doc.get("prefill_tok_s")
    prefill = None if prefill is None else _rate(prefill, f"{source}: prefill_tok_s")
    return Speed("coreai-python", evidence, decode, prefill, source, model=str(doc.get("model") or ""),
                 runtime=str(doc.get("coreai_runtime", "")))


def read_speed(path: str | Path) -> Speed:
    """An `llm-benchmark` stdout capture or `--output-json` file, or a `flipgate.speed/1` record."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a speed measurement (not UTF-8 text)") from None
    if text.lstrip().startswith("{"):
        try:  # depth checked before the parser (harness.safejson), huge integers refused by json itself
            doc = safejson.loads(text, max_depth=8)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}: malformed JSON ({e.msg}, line {e.lineno})") from None
        except (ValueError, RecursionError) as e:  # JSONLimitError, an integer of thousands of digits
            raise InputError(f"{p}: not a speed measurement ({str(e).split(';')[0]})") from None
        if isinstance(doc, Mapping) and doc.get("schema") == SPEED_SCHEMA:
            return parse_runtime_speed(doc, str(p))
        return parse_llm_benchmark_json(doc, str(p))
    return parse_llm_benchmark_text(text, str(p))


# ---- bandwidth ------------------------------------------------------------------------------------

_UNITS = {"b/s": 1, "kb/s": 1e3, "mb/s": 1e6, "gb/s": 1e9, "tb/s": 1e12,
          "kib/s": 2**10, "mib/s": 2**20, "gib/s": 2**30, "tib/s": 2**40}
_BANDWIDTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b/s)\s*$", re.IGNORECASE)


def parse_bandwidth(text: str) -> float:
    """`546GB/s` -> 5.46e11 bytes/s (GB = 10^9 bytes, GiB = 2^30), refusing anything else."""
    m = _BANDWIDTH.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"--bandwidth {text!r}: expected a figure with a unit, e.g. 546GB/s or 400GiB/s")
    v = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if v <= 0:
        raise InputError(f"--bandwidth {text!r}: must be > 0")
    return v


@dataclass(frozen=True)
class Bandwidth:
    bytes_per_s: float
    name: str        # "M4 Max" or the figure as given
    source: str      # where the figure comes from


def chip_table() -> dict[str, dict]:
    with resources.files("reports").joinpath("chips.toml").open("rb") as f:
        return tomllib.load(f)["chips"]


def chip_bandwidth(name: str) -> Bandwidth:
    """Apple's published bandwidth of chip `name` (case and spaces ignored), from reports/chips.toml."""
    table = chip_table()
    key = {re.sub(r"\s+", "", k).lower(): k for k in table}.get(re.sub(r"\s+", "", name).lower())
    if key is None:
        raise InputError(f"--chip {name!r}: not in the bandwidth table (known: {', '.join(table)}); "
                         "give the figure with --bandwidth, e.g. 546GB/s")
    row = table[key]
    return Bandwidth(float(row["bandwidth"]) * 1e9, key, str(row["source"]))


def bandwidth_use(weight_bytes: float, tok_s: float, bandwidth_bytes_per_s: float) -> float:
    """The share of the bandwidth ceiling a decode uses: bytes read per token × tok/s ÷ bandwidth."""
    for name, v in (("weight bytes", weight_bytes), ("tok/s", tok_s), ("bandwidth", bandwidth_bytes_per_s)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise InputError(f"bandwidth use: {name} must be a finite number > 0, found {v!r}")
    return weight_bytes * tok_s / bandwidth_bytes_per_s


# ---- bundle sizes from an inspect audit -------------------------------------------------------------

_BITS = re.compile(r"(\d+)$")


def storage_type_bits(type_name: str) -> int | None:
    """Bits per element of a Core AI storage type name: Float16 -> 16, Int8 -> 8, UInt4 -> 4, Bool -> None."""
    m = _BITS.search(type_name)
    return int(m.group(1)) if m else None


def weight_bytes(storage: Mapping[str, Any], source: str = "storage") -> int:
    """Bytes of weight-bearing storage (floats, integers of 8 bits or fewer) in an audit's
    `storage` (type -> element count): what a dense decode reads per token."""
    from harness.coreai.bundle import is_weight_storage

    total = 0.0
    for name, count in storage.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InputError(f"{source}: storage {name!r} count {count!r} is not an element count")
        bits = storage_type_bits(str(name))
        if is_weight_storage(str(name)) and bits is not None:
            total += count * bits / 8
    return int(math.ceil(total))


def size_text(n: float | None, unit: str = "B") -> str:
    """A byte count in decimal units (GB = 10^9 bytes, as the bandwidth is)."""
    if n is None:
        return "—"
    for name, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {name}{unit}"
    return f"{int(n)} {unit}"
