"""The engine's worker processes: same verdict bytes as in-process, bad input still exit 2, default choice;
and the judging commands never load the ML stack."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gates import engine, sweep
from gates.engine import GateJob, default_workers, evaluate_many
from gates.policy import GatePolicy
from harness.errors import InputError
from harness.trace import CaseTrace, base_metadata, write_trace

from helpers import make_qwen36_scenario

POLICY = GatePolicy(name="g", candidate="cand", control="ctrl", min_cosine=0.5)


def _write(path, cases, variant):
    meta = base_metadata(runner="test", variant=variant, vocab_size=cases[0].logits.shape[1], tokenizer_sha256="")
    return write_trace(path, meta, cases)


def _traces(tmp_path, rows=(5, 9, 3), vocab=sweep.MIN_VOCAB + 33, dtype=np.float16):
    rng = np.random.default_rng(11)
    cases, cands, ctrls = [], [], []
    for i, r in enumerate(rows):
        o = (rng.normal(size=(r, vocab)) * 3).astype(np.float32)
        o[np.arange(r), rng.integers(0, vocab, r)] += 9
        ids = np.concatenate([rng.integers(0, vocab, 4), np.argmax(o, 1)]).astype(np.int64)
        cases.append(CaseTrace(f"c{i}", ids, o.astype(dtype)))
        cands.append(CaseTrace(f"c{i}", ids, (o + rng.normal(size=o.shape) * 2).astype(dtype)))
        ctrls.append(CaseTrace(f"c{i}", ids, (o + rng.normal(size=o.shape) * 0.5).astype(dtype)))
    return (_write(tmp_path / "o.safetensors", cases, "bf16"), _write(tmp_path / "c.safetensors", cands, "cand"),
            _write(tmp_path / "k.safetensors", ctrls, "ctrl"))


def test_processes_give_the_in_process_verdict_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "READ_BYTES", 3 * (sweep.MIN_VOCAB + 33) * 4)  # 3-row blocks: many tasks
    op, cp, kp = _traces(tmp_path)
    jobs = [GateJob(POLICY, cp, kp), GateJob(GatePolicy(name="h", candidate="ctrl", min_cosine=0.5), kp)]
    runs = [[v.to_json() for v in evaluate_many(op, jobs, workers=w)] for w in (1, 2, 3, 8)]
    assert all(r == runs[0] for r in runs[1:])
    positions = json.loads(runs[0][0])["positions"]
    assert len(positions) == 17 and {p["case"] for p in positions} == {"c0", "c1", "c2"}
    assert [p["row"] for p in positions if p["case"] == "c1"] == list(range(9))  # block order kept


def test_a_bad_row_in_a_worker_is_an_input_error_naming_case_and_row(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "READ_BYTES", 2 * (sweep.MIN_VOCAB + 33) * 4)
    op, cp, kp = _traces(tmp_path)
    from harness.trace import open_trace

    t = open_trace(op)
    cases = []
    for c in t:
        x = c.logits.copy()
        if c.case_id == "c1":
            x[6, 5] = np.inf
        cases.append(CaseTrace(c.case_id, c.input_ids, x))
    bad = _write(tmp_path / "bad.safetensors", cases, "bf16")
    with pytest.raises(InputError, match=r"c1.*row 6|row 6.*c1"):
        evaluate_many(bad, [GateJob(POLICY, cp, kp)], workers=2)


def test_default_workers():
    big = engine.PROCESS_MIN_BYTES
    assert default_workers(False, 10 * big) == 1  # the reference path: small vocabularies
    assert default_workers(True, big - 1) == 1  # too little to read: forking costs more
    n = default_workers(True, big)
    assert 1 <= n <= engine.MAX_WORKERS
    if sys.platform.startswith("linux"):
        import os

        assert n == min(len(os.sched_getaffinity(0)), engine.MAX_WORKERS)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return make_qwen36_scenario(tmp_path_factory.mktemp("q"))


HEAVY = ("torch", "transformers", "pandas", "accelerate", "coreai_opt", "coremltools")


def _modules_after(argv: list[str]) -> tuple[int, list[str]]:
    code = ("import sys, json\nfrom harness.cli import main\n"
            f"rc = main({argv!r})\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "print(json.dumps([rc, heavy]), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    try:
        rc, heavy = json.loads(done.stderr.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise AssertionError(done.stderr[-3000:]) from None
    return rc, heavy


def test_gate_and_selftest_never_import_the_ml_stack(scenario, tmp_path):
    """`flipgate gate`, `selftest` and `report` judge and render with numpy alone (a subprocess each)."""
    rc, heavy = _modules_after(["gate", "int8hu", "--oracle", str(scenario["oracle"]), "--candidate",
                                str(scenario["int8hu"]), "--control", str(scenario["fp16"]),
                                "--json", str(tmp_path / "v.json")])
    assert rc == 0 and heavy == []
    rc, heavy = _modules_after(["selftest", "--oracle", str(scenario["oracle"]), "--gate", "int4lin"])
    assert rc == 0 and heavy == []
    rc, heavy = _modules_after(["report", str(tmp_path / "v.json"), "--format", "md"])
    assert rc == 0 and heavy == []
