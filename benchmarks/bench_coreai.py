"""Core AI paths: reading llm-runner dumps at the 27B's vocabulary, and stepping a real bundle.

    python benchmarks/bench_coreai.py                     # dump parsing only (seconds)
    python benchmarks/bench_coreai.py --bundle DIR        # + coreai-python vs emulated, per S=1 step
    python benchmarks/bench_coreai.py --build             # + the same on a bundle built from the fixture

1. `read_logits_file` (validation: base64 alphabet, row widths, layout checks) against the bare
   minimum (json.load, b64decode, frombuffer, stack) on one 27B-sized dump: 48 rows x 248,320 float16
   logits (a 32-token prompt and 16 scored tokens), in the evaluation layout llm-runner writes.
   Reports time and peak Python memory (tracemalloc) of both and their ratio.
2. With a bundle: the `coreai-python` candidate (coreai.runtime; off macOS coreai-core's in-package
   runtime) against the emulated candidate of the same recipe (transformers fp16, S=1), both over
   the same cases, in ms per step.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB_27B = 248_320
ROWS = 48


def _peak(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak


def bench_parse(repeats: int) -> dict:
    from harness.coreai.logits_file import read_logits_file, write_logits_file

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4, size=(ROWS, VOCAB_27B)).astype(np.float16)
    ids = rng.integers(0, VOCAB_27B, size=ROWS + 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_logits_file(Path(tmp) / "dump.json", ids[1:], logits, layout="positions", context_ids=ids[:1])
        size = path.stat().st_size

        def bare():
            doc = json.loads(path.read_bytes())
            return np.stack([np.frombuffer(base64.b64decode(p["logits_base64"]), dtype="<f2") for p in doc["positions"]])

        def ours():
            return read_logits_file(path, vocab_size=VOCAB_27B).logits

        best = {}
        for name, fn in (("bare", bare), ("read_logits_file", ours)):
            runs = [_peak(fn) for _ in range(repeats)]
            assert np.array_equal(runs[0][0].view(np.uint16), logits.view(np.uint16))
            best[name] = (min(r[1] for r in runs), max(r[2] for r in runs))
    return {"file_mb": size / 2**20, **best}


def bench_runtime(bundle: Path, model_dir: Path, cases: int) -> dict:
    from harness.candidates import resolve
    from harness.candidates.base import Sequence
    from harness.candidates.emulated import emulated_candidate
    from harness.cases import load_cases, tokenize_case
    from harness.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    seqs = []
    for spec in list(load_cases())[:cases]:
        ids = np.asarray(tokenize_case(spec, tok).prompt_ids, dtype=np.int64)
        ids = np.concatenate([ids, ids[:8]])  # a fixed 8-token continuation keeps both runs identical
        seqs.append(Sequence(spec.id, ids, 8))
    steps = sum(len(s.input_ids) - 1 for s in seqs)
    python = resolve(f"coreai-python:{bundle}", model=str(model_dir), audit=False)
    emulated = emulated_candidate("int8hu", model=str(model_dir))
    list(emulated.run(seqs[:1]))  # load and quantize outside the timing
    out = {"steps": steps, "runtime": python.metadata()["coreai_runtime"]}
    for name, cand in (("emulated int8hu (transformers fp16)", emulated), ("coreai-python", python)):
        t0 = time.perf_counter()
        list(cand.run(seqs))
        out[name] = (time.perf_counter() - t0) / steps * 1000
    return out


def build_fixture_bundle(folder: Path) -> Path:
    import importlib.util

    from harness.candidates.emulated import load_fp16, prepare_coreai_opt
    from harness.models import fixture_model_path
    from harness.recipe import get_recipe

    spec = importlib.util.spec_from_file_location("coreai_conftest", ROOT / "tests/harness/coreai/conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    model = load_fp16(fixture_model_path())
    quantizer, prepared = prepare_coreai_opt(model, get_recipe("int8hu").plan(model))
    return conftest.build_bundle(quantizer.finalize(prepared), fixture_model_path(), folder / "Fixture-int8hu",
                                 name="fixture-int8hu-bench")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bundle", type=Path, help="a LanguageBundle of the fixture's int8hu variant")
    ap.add_argument("--build", action="store_true", help="build that bundle first (about 90 s)")
    ap.add_argument("--cases", type=int, default=3)
    args = ap.parse_args()

    r = bench_parse(args.repeats)
    bare_t, bare_m = r["bare"]
    ours_t, ours_m = r["read_logits_file"]
    print(f"dump: {ROWS} rows x {VOCAB_27B} float16, {r['file_mb']:.1f} MiB of JSON")
    print(f"  bare json+b64+frombuffer: {bare_t * 1000:7.1f} ms, peak {bare_m / 2**20:6.1f} MiB")
    print(f"  read_logits_file:         {ours_t * 1000:7.1f} ms, peak {ours_m / 2**20:6.1f} MiB")
    print(f"  ratio (ours / bare):      time {ours_t / bare_t:.2f}x, peak memory {ours_m / bare_m:.2f}x")

    bundle = args.bundle
    with tempfile.TemporaryDirectory() as tmp:
        if bundle is None and args.build:
            t0 = time.perf_counter()
            bundle = build_fixture_bundle(Path(tmp))
            print(f"built {bundle} in {time.perf_counter() - t0:.0f} s")
        if bundle is not None:
            from harness.models import fixture_model_path

            rt = bench_runtime(bundle, fixture_model_path(), args.cases)
            e, p = rt["emulated int8hu (transformers fp16)"], rt["coreai-python"]
            print(f"S=1 steps: {rt['steps']} over {args.cases} cases; coreai-python on {rt['runtime']}")
            print(f"  emulated int8hu (transformers fp16): {e:7.1f} ms/step")
            print(f"  coreai-python:                       {p:7.1f} ms/step")
            print(f"  ratio (coreai-python / emulated):    {p / e:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
