"""Which trace may play which part (gates.roles), and the evidence a pass needs (min_confident):
the candidate as its own control, the oracle as candidate or control, a control other than the
policy's, and a pass on no confident position — each an unearned PASS on the main before issue 13."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

from gates.engine import evaluate
from gates.policy import GatePolicy, get_gate
from harness.cli import main
from harness.errors import InputError
from harness.trace import CaseTrace, base_metadata, open_trace, write_trace

from helpers import make_qwen36_scenario


@pytest.fixture
def q(tmp_path):
    return make_qwen36_scenario(tmp_path)


def _gate(*args) -> int:
    return main(["gate", *map(str, args)])


def _rewrite(src, dest, *, dtype=None, **meta):
    """A copy of trace `src` with metadata changed and, optionally, its logits in another dtype."""
    t = open_trace(src)
    cases = [CaseTrace(c.case_id, c.input_ids, c.logits if dtype is None else c.logits.astype(dtype))
             for c in t]
    return write_trace(dest, {**t.metadata, **meta}, cases)


# ---- the candidate as its own control ---------------------------------------------------------

def test_the_candidates_own_file_as_its_control_is_refused(q, tmp_path, capsys):
    # main: exit 0, the int4lin defect read as an oracle-artifact
    assert _gate("int4lin", "--oracle", q["oracle"], "--candidate", q["int4lin"], "--control", q["int4lin"]) == 2
    err = capsys.readouterr().err
    assert "is the candidate's own file" in err and len(err.strip().splitlines()) == 1
    # another name for the same file: a symlink, a hard link, a path through ".."
    link = tmp_path / "link.safetensors"
    link.symlink_to(q["int4lin"])
    hard = tmp_path / "hard.safetensors"
    os.link(q["int4lin"], hard)
    dotted = tmp_path / "sub" / ".." / q["int4lin"].name
    (tmp_path / "sub").mkdir()
    for other in (link, hard, dotted):
        with pytest.raises(InputError, match="candidate's own file"):
            evaluate(q["oracle"], q["int4lin"], other, policy=get_gate("int4lin"))


def test_a_control_holding_the_candidates_rows_is_refused_whatever_its_name_or_dtype(q, tmp_path):
    pol = get_gate("int4lin")
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(q["int4lin"], copy)
    relabelled = _rewrite(q["int4lin"], tmp_path / "fp16.safetensors", variant="fp16")
    widened = _rewrite(q["int4lin"], tmp_path / "f32.safetensors", variant="fp16", dtype=np.float32)
    for other in (relabelled, widened):
        with pytest.raises(InputError, match=r"holds the candidate's exact rows \(every case"):
            evaluate(q["oracle"], q["int4lin"], other, policy=pol)
    # the plain copy still says variant int4lin: it is not even the control the gate names
    with pytest.raises(InputError, match="not the gate's control 'fp16': its variant is 'int4lin'"):
        evaluate(q["oracle"], q["int4lin"], copy, policy=pol)


def test_one_case_of_the_candidates_rows_is_enough_to_refuse(q, tmp_path):
    ids = open_trace(q["oracle"]).input_ids("qwen36")
    cand, ctrl = open_trace(q["int4lin"]).case("qwen36").logits, open_trace(q["fp16"]).case("qwen36").logits
    meta = dict(open_trace(q["oracle"]).metadata)

    def two(name, first, runner, variant):
        # not the oracle's evidence claim: a trace that says `oracle` is refused as a candidate outright
        m = {**meta, "runner": runner, "variant": variant, "evidence": "emulation"}
        return write_trace(tmp_path / name, m, [CaseTrace("a", ids, first), CaseTrace("b", ids, ctrl)])

    o = write_trace(tmp_path / "o.safetensors", meta, [CaseTrace("a", ids, open_trace(q["oracle"]).case("qwen36").logits),
                                                       CaseTrace("b", ids, open_trace(q["oracle"]).case("qwen36").logits)])
    c = two("c.safetensors", cand, "emulated", "int4lin")
    k = write_trace(tmp_path / "k.safetensors", {**meta, "runner": "emulated", "variant": "fp16", "evidence": "emulation"},
                    [CaseTrace("a", ids, cand), CaseTrace("b", ids, ctrl + np.float16(0.5))])
    with pytest.raises(InputError, match="holds the candidate's exact rows \\(case 'a'"):
        evaluate(o, c, k, policy=get_gate("int4lin"))


def test_the_control_must_be_what_the_policy_names(q, tmp_path):
    pol = get_gate("int8hu")  # control = "fp16"
    int4 = q["int4lin"]  # another run, but of variant int4lin
    with pytest.raises(InputError, match="is not the gate's control 'fp16': its variant is 'int4lin'"):
        evaluate(q["oracle"], q["int8hu"], int4, policy=pol)
    # trace:FILE names a file; coreai:DIR?variant=V names a runner, bundle and variant
    assert evaluate(q["oracle"], q["int8hu"], q["fp16"], policy=replace(pol, control=f"trace:{q['fp16']}"))
    with pytest.raises(InputError, match=f"it is not the file {q['int4lin']}"):
        evaluate(q["oracle"], q["int8hu"], q["fp16"], policy=replace(pol, control=f"trace:{q['int4lin']}"))
    with pytest.raises(InputError, match="its runner is 'emulated', not 'coreai-llm-runner'"):
        evaluate(q["oracle"], q["int8hu"], q["fp16"], policy=replace(pol, control="coreai:/b/fp16?variant=fp16"))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    dev = _rewrite(q["fp16"], tmp_path / "dev.safetensors", runner="coreai-llm-runner", bundle=str(bundle))
    assert evaluate(q["oracle"], q["int8hu"], dev, policy=replace(pol, control=f"coreai:{bundle}?variant=fp16"))
    with pytest.raises(InputError, match="its variant is 'fp16', not 'int8'"):
        evaluate(q["oracle"], q["int8hu"], dev, policy=replace(pol, control=f"coreai:{bundle}?variant=int8"))
    with pytest.raises(InputError, match="captured from bundle"):
        evaluate(q["oracle"], q["int8hu"], dev, policy=replace(pol, control=f"coreai:{tmp_path}?variant=fp16"))


def test_a_control_made_from_other_weights_is_refused(q, tmp_path):
    def model(sha):
        return json.dumps({"path": "/m", "sha256": {"model.safetensors": sha}})

    cand = _rewrite(q["int8hu"], tmp_path / "c.safetensors", model=model("aa" * 32))
    same = _rewrite(q["fp16"], tmp_path / "k1.safetensors", model=model("aa" * 32))
    other = _rewrite(q["fp16"], tmp_path / "k2.safetensors", model=model("bb" * 32))
    v = evaluate(q["oracle"], cand, same, policy=get_gate("int8hu"))
    assert v and v.provenance["control"]["weights"] == json.dumps({"model.safetensors": "aa" * 32})
    with pytest.raises(InputError, match="made from other weights than the candidate"):
        evaluate(q["oracle"], cand, other, policy=get_gate("int8hu"))


def test_the_verdict_records_the_controls_identity(q, tmp_path):
    v = evaluate(q["oracle"], q["int8hu"], q["fp16"], policy=get_gate("int8hu"))
    ctrl, cand = v.provenance["control"], v.provenance["candidate"]
    assert (ctrl["path"], ctrl["runner"], ctrl["variant"]) == (str(q["fp16"]), "emulated", "fp16")
    assert (cand["path"], cand["runner"], cand["variant"]) == (str(q["int8hu"]), "emulated", "int8hu")
    assert ctrl["evidence"] == "emulation" and len(ctrl["logits_sha256"]) == 64
    # a content hash: the same rows under another name and metadata hash the same, other rows not
    moved = _rewrite(q["fp16"], tmp_path / "moved.safetensors", runner="import")
    t = open_trace(q["fp16"])
    logits = t.case("qwen36").logits.copy()
    logits[0, 0] += 1
    changed = write_trace(tmp_path / "changed.safetensors", t.metadata, [CaseTrace("qwen36", t.input_ids("qwen36"),
                                                                                   logits)])
    pol = replace(get_gate("int8hu"), control=None)
    hashes = [evaluate(q["oracle"], q["int8hu"], k, policy=pol).provenance["control"]["logits_sha256"]
              for k in (moved, changed)]
    assert hashes[0] == ctrl["logits_sha256"] != hashes[1]


# ---- the oracle as candidate or control -------------------------------------------------------

def test_the_oracle_as_candidate_or_control_is_refused(q, tmp_path, capsys):
    # main: exit 0 with a note ("candidate trace variant 'bf16' is not the gate's candidate")
    assert _gate("int8hu", "--oracle", q["oracle"], "--candidate", q["oracle"], "--control", q["fp16"]) == 2
    assert "is the oracle's own file" in capsys.readouterr().err
    copy = tmp_path / "oracle-copy.safetensors"
    shutil.copyfile(q["oracle"], copy)  # runner hf, variant bf16: an oracle trace under another name
    assert _gate("int8hu", "--oracle", q["oracle"], "--candidate", copy, "--control", q["fp16"]) == 2
    assert "is an oracle trace (runner hf, variant bf16" in capsys.readouterr().err
    fp32 = _rewrite(q["oracle"], tmp_path / "fp32.safetensors", variant="fp32", dtype=np.float32)
    with pytest.raises(InputError, match="control trace .* is an oracle trace"):
        evaluate(q["oracle"], q["int8hu"], fp32, policy=get_gate("int8hu"))
    with pytest.raises(InputError, match="is the oracle's own file"):
        evaluate(q["oracle"], q["int8hu"], q["oracle"], policy=get_gate("int8hu"))
    tagged = _rewrite(q["fp16"], tmp_path / "tagged.safetensors", evidence="oracle")
    with pytest.raises(InputError, match="evidence oracle"):
        evaluate(q["oracle"], tagged, policy=replace(get_gate("fp16"), control=None))


def test_judged_against_the_fp32_oracle_the_bf16_oracle_is_no_candidate_either(q, tmp_path):
    bf16 = _rewrite(q["oracle"], tmp_path / "bf16.safetensors", runner="test")  # not labelled an oracle
    fp32 = _rewrite(q["oracle"], tmp_path / "fp32.safetensors", runner="test", variant="f32", dtype=np.float32)
    pol = replace(get_gate("int8hu"), reference="fp32", oracle_fp32=str(fp32))
    with pytest.raises(InputError, match="candidate trace .* is the oracle's own file"):
        evaluate(bf16, bf16, q["fp16"], policy=pol)
    with pytest.raises(InputError, match="control trace .* is the oracle's own file"):
        evaluate(bf16, q["int8hu"], bf16, policy=pol)
    assert evaluate(bf16, q["int8hu"], q["fp16"], policy=pol)


def test_compare_and_pytest_paths_refuse_the_candidate_as_its_control(q, tmp_path):
    from harness.pipeline import run_gates

    with pytest.raises(InputError, match="candidate's own file"):
        run_gates(["int4lin"], oracle=str(q["oracle"]), candidate=str(q["int4lin"]), control=str(q["int4lin"]),
                  cache_dir=str(tmp_path / "cache"), quiet=True)
    assert run_gates(["int8hu"], oracle=str(q["oracle"]), candidate=str(q["int8hu"]), control=str(q["fp16"]),
                     cache_dir=str(tmp_path / "cache"), quiet=True)


# ---- a pass needs evidence: min_confident ----------------------------------------------------

def _flat(tmp_path, name, variant, runner="test"):
    ids = np.arange(20, dtype=np.int64) % 50
    meta = base_metadata(runner=runner, variant=variant, vocab_size=50)
    return write_trace(tmp_path / name, meta, [CaseTrace("a", ids, np.ones((16, 50), np.float32))])


def test_all_equal_logits_fail_for_want_of_confident_positions(tmp_path, capsys):
    o = _flat(tmp_path, "o.safetensors", "bf16")
    c = _flat(tmp_path, "c.safetensors", "fp16")
    # main: exit 0, "exact 16/16" on 0 confident positions
    assert _gate("fp16", "--oracle", o, "--candidate", c, "--json", tmp_path / "v.json") == 1
    out = capsys.readouterr().out
    assert "0 confident position(s), min_confident 12: too little evidence for a pass" in out
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["passed"] is False and v["policy"]["min_confident"] == 12 and v["summary"]["confident"] == 0
    # the bound is the policy's: a gate that asks for none passes (and the verdict says so)
    assert _gate("fp16", "--oracle", o, "--candidate", c, "--min-confident", 0) == 0


def test_min_confident_counts_confident_positions_exactly(q):
    pol = get_gate("int8hu")
    v = evaluate(q["oracle"], q["int8hu"], q["fp16"], policy=pol)
    n = v.summary["confident"]
    assert n == 15 and v  # the published gate's 16 positions, one a tie
    assert evaluate(q["oracle"], q["int8hu"], q["fp16"], policy=replace(pol, min_confident=n))
    short = evaluate(q["oracle"], q["int8hu"], q["fp16"], policy=replace(pol, min_confident=n + 1))
    assert not short and short.reasons == [f"{n} confident position(s), min_confident {n + 1}: too little "
                                           "evidence for a pass"]


def test_min_confident_is_a_checked_policy_key(tmp_path):
    from gates.policy import load_gates

    cfg = tmp_path / "flipgate.toml"
    cfg.write_text('[gates.tiny]\ncandidate = "int8hu"\nmin_confident = 3\n')
    assert load_gates(cfg)["tiny"].min_confident == 3
    assert GatePolicy(name="x", candidate="y").min_confident == 12  # a gate that does not say gets the default
    for bad in ("-1", "1.5", '"many"'):
        cfg.write_text(f'[gates.tiny]\ncandidate = "int8hu"\nmin_confident = {bad}\n')
        with pytest.raises(InputError, match=r"\[gates.tiny\] min_confident"):
            load_gates(cfg)


def test_pytest_gate_has_a_min_confident_bound_item(q, tmp_path):
    from harness.pytest_plugin import gate_checks

    o = _flat(tmp_path, "o.safetensors", "bf16")
    c = _flat(tmp_path, "c.safetensors", "fp16")
    v = evaluate(o, c, policy=replace(get_gate("fp16"), min_cosine=0.5)).to_dict()
    checks = {ch.suffix: ch for ch in gate_checks(v)}
    assert checks["min_confident"].outcome == "fail"
    assert "min_confident: 0 confident position(s), fewer than min_confident 12" in checks["min_confident"].message
    assert all(ch.outcome == "pass" for s, ch in checks.items() if s != "min_confident")
    good = evaluate(q["oracle"], q["int8hu"], q["fp16"], policy=get_gate("int8hu")).to_dict()
    assert [ch.outcome for ch in gate_checks(good) if ch.suffix == "min_confident"] == ["pass"]
