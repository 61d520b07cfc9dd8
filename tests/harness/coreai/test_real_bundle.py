"""A real Core AI LanguageBundle of the fixture (int8hu, built in conftest.py): inspected, audited, run
by coreai.runtime, and gated through the `coreai:` subprocess path with the llm-runner stand-in."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.coreai.bundle import audit_asset, open_bundle
from harness.coreai.runtime import MACOS_ONLY
from harness.trace import open_trace


@pytest.fixture(scope="module")
def audit(real_bundle):
    return audit_asset(open_bundle(real_bundle).asset_path)


def test_the_asset_is_the_s1_decode_step_with_its_states(audit):
    main_fn = audit.functions["main"]
    assert [(s.name, s.dtype, s.shape) for s in main_fn.inputs] == [("input_ids", "Int32", ("1", "1")),
                                                                    ("position_ids", "Int32", ("1", "1"))]
    assert [(s.name, s.shape[-1]) for s in main_fn.outputs] == [("logits", "2048")]
    assert [s.name for s in main_fn.states] == ["keyCache", "valueCache", "convStates", "recurrentStates"]


def test_storage_is_int8_though_metadata_says_compression_null(audit, real_bundle, fixture_dir):
    from harness.coreai.bundle import expected_storage, meta_model
    from harness.recipe import load_recipes

    assert json.loads((real_bundle / "metadata.json").read_text())["compression"] is None
    fractions = audit.storage_fractions()
    assert list(fractions)[0] == "Int8" and fractions["Int8"] > 0.8
    # the recipe's int8 weights: every body Linear and the lm_head of the fixture, plus the symmetric
    # weights' all-zero zero points counted once (the lm_head's 8,192 blocks), exactly
    want = expected_storage(load_recipes()["int8hu"], meta_model(fixture_dir))
    assert audit.storage["Int8"] == 1_893_376 + 262_144 + 8_192
    assert audit.storage["Int8"] in want.allowed(8)


def test_inspect_prints_what_the_bundle_holds(real_bundle, fixture_dir, capsys):
    assert main(["inspect", str(real_bundle), "--model", str(fixture_dir), "--variant", "int8hu"]) == 0
    out = capsys.readouterr().out
    assert "vocab 2048, context 128" in out
    assert "compression: null" in out
    assert "tokenizer: same as the oracle's (2048 tokens" in out
    assert "states: keyCache Float16[2x1x1x128x32], valueCache" in out
    assert re.search(r"weight storage: Int8 \d+\.\d% · Float16 \d+\.\d%", out)
    assert re.search(r"variant int8hu: the asset's storage agrees with the recipe \(int8: 2,1\d\d,\d{3} elements\)", out)


@pytest.mark.parametrize("variant, message", [
    ("fp16", r"gated as 'fp16', whose recipe keeps every weight fp16, but the asset stores 2,1\d\d,\d{3} elements of "
             r"8-bit integers \(Int8 .*\); its storage fits int8hu"),
    ("int8lin", r"gated as 'int8lin', whose recipe stores int8 as 1,893,376 codes \+ one all-zero zero-point constant "
                r"of 24..1,536 = .* elements on the oracle model, but the asset stores 2,163,712 8-bit integers .*; "
                r"its storage fits int8hu"),
    ("int4lin", r"gated as 'int4lin', whose recipe quantizes to int4 only, but the asset stores 2,1\d\d,\d{3} elements"),
])
def test_inspect_refuses_a_variant_the_storage_contradicts(real_bundle, fixture_dir, capsys, variant, message):
    assert main(["inspect", str(real_bundle), "--model", str(fixture_dir), "--variant", variant]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.count("\n") == 1


def test_inspect_json(real_bundle, fixture_dir, capsys):
    assert main(["inspect", str(real_bundle), "--model", str(fixture_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vocab_size"] == 2048 and doc["tokenizer"]["same_as_oracle"] is True
    assert doc["asset_audit"]["functions"]["main"]["states"][3].startswith("recurrentStates Float32")
    assert doc["asset_audit"]["storage"]["Int8"] > 2_000_000
    on_disk = sum(p.stat().st_size for p in Path(real_bundle).rglob("*") if p.is_file() and not p.is_symlink())
    assert doc["bundle_bytes"] == on_disk
    st = doc["asset_audit"]["storage"]
    assert doc["asset_audit"]["weight_bytes"] == st["Int8"] + 2 * st["Float16"] + 4 * st.get("Float32", 0)


def test_capture_through_llm_runner_gates_as_the_emulated_trace(real_bundle_with_standin, llm_runner_standin,
                                                                coreai_oracle, emulated_int8hu, emulated_fp16,
                                                                fixture_dir, tmp_path):
    """`flipgate capture coreai:` (real code, real bundle, stand-in runner) gates exactly as the emulated
    int8hu trace whose logits the stand-in serves."""
    from gates.engine import evaluate
    from gates.policy import load_gates

    out = tmp_path / "coreai.safetensors"
    spec = f"coreai:{real_bundle_with_standin}?variant=int8hu&llm_runner={llm_runner_standin}"
    assert main(["capture", spec, "--oracle", str(coreai_oracle), "--model", str(fixture_dir), "--out", str(out),
                 "--quiet"]) == 0
    t = open_trace(out)
    assert (t.runner, t.variant) == ("coreai-llm-runner", "int8hu")
    assert t.metadata["storage_check"].startswith("int8hu agrees with the asset's storage")
    policy = load_gates()["int8hu"]
    via_runner = evaluate(coreai_oracle, out, emulated_fp16, policy=policy)
    emulated = evaluate(coreai_oracle, emulated_int8hu, emulated_fp16, policy=policy)
    keys = ("positions", "exact", "rule", "confident", "tie_flips", "oracle_artifacts", "defects", "invalid",
            "min_cosine", "mean_cosine", "mean_kl")
    assert {k: via_runner.summary[k] for k in keys} == {k: emulated.summary[k] for k in keys}
    assert [p["class"] for p in via_runner.positions] == [p["class"] for p in emulated.positions]
    assert bool(via_runner) == bool(emulated)


def test_capture_refuses_the_wrong_variant_before_running(real_bundle_with_standin, llm_runner_standin,
                                                          coreai_oracle, fixture_dir, tmp_path, capsys):
    spec = f"coreai:{real_bundle_with_standin}?variant=fp16&llm_runner={llm_runner_standin}"
    assert main(["capture", spec, "--oracle", str(coreai_oracle), "--model", str(fixture_dir),
                 "--out", str(tmp_path / "x.safetensors"), "--quiet"]) == 2
    assert "gated as 'fp16', whose recipe keeps every weight fp16" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_coreai_python_runs_the_bundle(real_bundle, coreai_oracle, emulated_int8hu, emulated_fp16, fixture_dir,
                                       tmp_path):
    """coreai.runtime steps the real asset with its states (off macOS: coreai-core's in-package runtime),
    and the result passes the int8hu gate, agreeing with the emulated int8hu wherever it is clear-cut."""
    from gates.engine import evaluate
    from gates.policy import load_gates
    from harness.candidates import capture_to_trace, resolve, sequences_from_trace

    oracle = open_trace(coreai_oracle)
    cand = resolve(f"coreai-python:{real_bundle}?variant=int8hu", model=str(fixture_dir),
                   vocab_size=oracle.vocab_size)
    out = capture_to_trace(cand, sequences_from_trace(oracle), tmp_path / "python.safetensors",
                           vocab_size=oracle.vocab_size)
    t, emulated = open_trace(out), open_trace(emulated_int8hu)
    assert t.runner == "coreai-python" and t.metadata["coreai_runtime"]
    # named for what it is: the OS framework on a Mac is the device, coreai-core's own runtime is not
    want_evidence = "device" if t.metadata["coreai_runtime"].startswith("Core AI framework") else "reference-runtime"
    assert t.metadata["evidence"] == want_evidence
    for cid in oracle.case_ids:
        got = t.case(cid).logits.astype(np.float32)
        want = emulated.case(cid).logits.astype(np.float32)
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 0.5   # a logit gap no rounding difference can close
        assert np.array_equal(got.argmax(1)[clear], want.argmax(1)[clear])
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.999
    verdict = evaluate(coreai_oracle, out, emulated_fp16, policy=load_gates()["int8hu"])
    assert verdict, verdict.summary


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the refusal off macOS")
def test_specialization_off_macos_is_refused(real_bundle, fixture_dir):
    from harness.candidates import resolve
    from harness.errors import PlatformError

    with pytest.raises(PlatformError, match=re.escape(MACOS_ONLY)):
        resolve(f"coreai-python:{real_bundle}?compute_units=ane", model=str(fixture_dir))


@pytest.mark.skipif(sys.platform != "darwin", reason=MACOS_ONLY)
def test_llm_runner_on_a_mac(coreai_oracle, fixture_dir, tmp_path):
    """On a Mac with llm-runner: FLIPGATE_COREAI_BUNDLE names a LanguageBundle exported from the oracle's
    checkpoint (apple/coreai-models), FLIPGATE_LLM_RUNNER the runner (or it is on PATH)."""
    import os

    bundle = os.environ.get("FLIPGATE_COREAI_BUNDLE")
    if not bundle:
        pytest.skip("set FLIPGATE_COREAI_BUNDLE to an apple/coreai-models export of the fixture model")
    out = tmp_path / "mac.safetensors"
    assert main(["capture", f"coreai:{bundle}", "--oracle", str(coreai_oracle), "--model", str(fixture_dir),
                 "--out", str(out), "--quiet"]) == 0
    t = open_trace(out)
    assert t.runner == "coreai-llm-runner" and t.vocab_size == 2048


@pytest.mark.skipif(sys.platform != "darwin", reason=MACOS_ONLY)
def test_coreai_python_on_the_mac_cpu(real_bundle, coreai_oracle, fixture_dir, tmp_path):
    from harness.candidates import resolve, sequences_from_trace

    oracle = open_trace(coreai_oracle)
    cand = resolve(f"coreai-python:{real_bundle}?compute_units=cpu", model=str(fixture_dir))
    cases = list(cand.run(sequences_from_trace(oracle)))
    assert [c.case_id for c in cases] == oracle.case_ids
