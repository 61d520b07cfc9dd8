"""scripts/make_slice.py: the 27B's shapes at 1/16 width, run through oracle -> capture -> gate.

CI cannot hold the real-width slice (8 GB, hours on 2 cores); this keeps the script and the
stages from rotting. The real-width figures are in benchmarks/README.md (bench_slice.py).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.trace import open_trace

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("make_slice", ROOT / "scripts" / "make_slice.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("slice") / "tiny"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_slice.py"), "--out", str(out), "--scale", "16"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_shapes_are_the_27b_divided(tiny):
    make_slice = _load_script()
    cfg = json.loads((tiny / "config.json").read_text())
    full = make_slice.FULL
    assert cfg["hidden_size"] == full["hidden_size"] // 16 == 320
    assert cfg["intermediate_size"] == full["intermediate_size"] // 16 == 1088
    assert cfg["vocab_size"] == full["vocab_size"] // 16
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (24, 4)
    assert (cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]) == (16, 48)
    assert cfg["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    assert cfg["tie_word_embeddings"] is False
    assert cfg["rope_parameters"]["rope_theta"] == 1e7 and cfg["rope_parameters"]["partial_rotary_factor"] == 0.25
    # sharded like the real checkpoint: the index names every parameter, each in a file that holds it
    index = json.loads((tiny / "model.safetensors.index.json").read_text())
    shapes = make_slice.tensor_shapes(cfg)
    assert set(index["weight_map"]) == set(shapes)
    assert len(set(index["weight_map"].values())) >= 3
    assert index["metadata"]["total_size"] == sum(int(np.prod(s)) * 2 for s in shapes.values())
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    assert tok.get_vocab_size() == cfg["vocab_size"]
    text = "def f(x):\n    return x + 1  # café"
    assert tok.decode(tok.encode(text).ids) == text


def test_same_seed_same_bytes(tiny, tmp_path):
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_slice.py"), "--out", str(again), "--scale", "16"],
                   capture_output=True, check=True)
    for f in sorted(p.name for p in tiny.iterdir() if p.suffix in (".safetensors", ".json")):
        assert (tiny / f).read_bytes() == (again / f).read_bytes(), f


def test_oracle_capture_gate_on_the_slice(tiny, tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "code", "prompt": "def add(a, b):\\n    return a + b\\n\\ndef"}\n'
                     '{"id": "prose", "prompt": "The quick brown fox jumps over the lazy dog, and then"}\n')
    cli = [sys.executable, "-m", "harness.cli"]

    def run(*args):
        r = subprocess.run(cli + list(args), cwd=tmp_path, capture_output=True, text=True)
        return r

    r = run("oracle", "--model", str(tiny), "--cases", str(cases), "--out", "oracle.safetensors", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    oracle = open_trace(tmp_path / "oracle.safetensors")
    assert oracle.vocab_size == 248320 // 16
    # not flat: some positions confident, some near-ties (the planted bigram's spread of boosts)
    margins = []
    for c in oracle.case_ids:
        lg = oracle.case(c).logits.astype(np.float64)
        p = np.exp(lg - lg.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        s = np.sort(p, axis=1)
        margins += list(s[:, -1] - s[:, -2])
    margins = np.array(margins)
    assert (margins >= 0.1).sum() >= 4 and (margins < 0.1).sum() >= 1, np.round(margins, 3)
    for variant in ("int8hu", "fp16"):
        r = run("capture", variant, "--model", str(tiny), "--oracle", "oracle.safetensors",
                "--out", f"{variant}.safetensors", "--quiet")
        assert r.returncode == 0, r.stderr[-2000:]
    r = run("gate", "int8hu", "--oracle", "oracle.safetensors", "--candidate", "int8hu.safetensors",
            "--control", "fp16.safetensors", "--json", "int8hu.json")
    assert r.returncode in (0, 1), r.stderr[-2000:]
    verdict = json.loads((tmp_path / "int8hu.json").read_text())
    assert verdict["summary"]["positions"] == len(margins)
    assert verdict["summary"]["min_cosine"] > 0.99  # int8 at this width stays close to bf16
