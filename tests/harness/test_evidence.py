"""The evidence label of each runner kind (harness/evidence.py), in traces and in verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from harness.evidence import evidence_of, label
from harness.trace import CaseTrace, base_metadata, open_trace, write_trace


@pytest.mark.parametrize("meta, kind, text", [
    ({"runner": "hf"}, "oracle", "oracle"),
    ({"runner": "hf-stream"}, "oracle", "oracle"),
    ({"runner": "emulated"}, "emulation", "emulation"),
    ({"runner": "coreai-llm-runner"}, "device", "device"),
    ({"runner": "import", "source_runner": "coreai-llm-runner"}, "device", "device"),
    ({"runner": "import", "source_runner": "some-other-tool"}, "unknown", "unknown"),
    ({"runner": "coreai-python", "coreai_runtime": "Core AI framework (macOS 27.0)"}, "device", "device"),
    ({"runner": "coreai-python", "coreai_runtime": "coreai-core in-package runtime (Linux x86_64)"},
     "reference-runtime", "Linux reference runtime"),
    ({"runner": "coreai-python", "coreai_runtime": "coreai-core in-package runtime (macOS 27.0)"},
     "reference-runtime", "Linux reference runtime"),
    ({"runner": "coreai-python"}, "reference-runtime", "Linux reference runtime"),  # not recorded: not device
    # a runner flipgate knows cannot promote itself
    ({"runner": "emulated", "evidence": "device"}, "emulation", "emulation"),
    ({"runner": "coreai-python", "evidence": "device", "coreai_runtime": "coreai-core in-package runtime"},
     "reference-runtime", "Linux reference runtime"),
    # a runner flipgate does not know is taken at its word, and is unknown when it says nothing usable
    ({"runner": "mlx-dump", "evidence": "device"}, "device", "device"),
    ({"runner": "mlx-dump", "evidence": "on a Mac, trust me"}, "unknown", "unknown"),
    ({"runner": "test"}, "unknown", "unknown"),
])
def test_evidence_of_each_runner_kind(meta, kind, text):
    assert evidence_of(meta) == kind
    assert label(kind) == text


def test_every_trace_written_records_its_evidence(tmp_path):
    meta = base_metadata(runner="emulated", variant="int8hu", vocab_size=4, evidence="device")
    assert meta["evidence"] == "emulation"
    path = write_trace(tmp_path / "t.safetensors", meta,
                       [CaseTrace("c", np.arange(5, dtype=np.int64), np.zeros((2, 4), dtype=np.float32))])
    assert open_trace(path).metadata["evidence"] == "emulation"


def test_verdicts_and_reports_name_the_candidates_evidence(trace_factory):
    from gates.engine import evaluate
    from gates.policy import load_gates
    from reports import build_report, render

    rng = np.random.default_rng(3)
    ids = rng.integers(0, 16, size=8).astype(np.int64)
    logits = rng.normal(size=(3, 16)).astype(np.float32)
    oracle = trace_factory("o.safetensors", [CaseTrace("c", ids, logits)], vocab=16, runner="hf", variant="bf16")
    cand = trace_factory("c.safetensors", [CaseTrace("c", ids, logits + 2e-3)], vocab=16, runner="coreai-python",
                         variant="int8hu", coreai_runtime="coreai-core in-package runtime (Linux x86_64)")
    ctrl = trace_factory("f.safetensors", [CaseTrace("c", ids, logits + 1e-3)], vocab=16, runner="emulated",
                         variant="fp16")
    v = evaluate(oracle, cand, ctrl, policy=load_gates()["int8hu"])
    prov = v.to_dict()["provenance"]
    assert (prov["oracle"]["evidence"], prov["candidate"]["evidence"], prov["control"]["evidence"]) == \
        ("oracle", "reference-runtime", "emulation")
    md = render(build_report([v]), "md")
    assert "evidence: Linux reference runtime**" in md and md.count("| Linux reference runtime |") == 1
    from gates.report import format_verdict
    assert "evidence: Linux reference runtime" in format_verdict(v)
