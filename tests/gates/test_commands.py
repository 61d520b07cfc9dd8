"""`flipgate gate` and `flipgate selftest`: exit codes 0/1/2, printed summary, verdict file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import gates.engine
from gates.selftest import run_selftest
from harness.cli import main
from harness.trace import CaseTrace, base_metadata, write_trace

from helpers import QWEN36_ARTIFACT_ROW, make_qwen36_scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return make_qwen36_scenario(tmp_path_factory.mktemp("q"))


def _gate(*args):
    return main(["gate", *map(str, args)])


def test_a_passing_gate_exits_0_prints_summary_and_writes_the_verdict(scenario, tmp_path, capsys):
    out = tmp_path / "sub" / "int8hu.json"
    rc = _gate("int8hu", "--oracle", scenario["oracle"], "--candidate", scenario["int8hu"],
               "--control", scenario["fp16"], "--json", out)
    text = capsys.readouterr().out
    assert rc == 0
    assert "exact 14/16, rule 15/16" in text and "Wilson 95%" in text
    assert "oracle-artifact" in text and "tie-flip" in text
    assert text.rstrip().splitlines()[-2].startswith("int8hu: PASS — exact 14/16")
    d = json.loads(out.read_text())
    assert d["passed"] is True and d["summary"]["tie_flips"] == 1


def test_a_failing_gate_exits_1(scenario, capsys):
    assert _gate("fp16", "--oracle", scenario["oracle"], "--candidate", scenario["fp16"]) == 1
    text = capsys.readouterr().out
    assert "fails: 1 defect(s), max_defects 0" in text and f"{QWEN36_ARTIFACT_ROW:4d}" in text


def test_overrides_reach_the_verdict(scenario, tmp_path, capsys):
    out = tmp_path / "v.json"
    rc = _gate("fp16", "--oracle", scenario["oracle"], "--candidate", scenario["fp16"], "--max-defects", 1,
               "--margin-space", "logit", "--min-margin", 2.0, "--json", out)
    capsys.readouterr()
    policy = json.loads(out.read_text())["policy"]
    assert rc == 0 and (policy["max_defects"], policy["margin_space"], policy["min_margin"]) == (1, "logit", 2.0)


@pytest.mark.parametrize("args, message", [
    (["int9", "--oracle", "{oracle}", "--candidate", "{fp16}"], "unknown gate 'int9' (valid gates: fp16, int8lin, int8hu"),
    (["int8hu", "--oracle", "{oracle}"], "--oracle TRACE and --candidate TRACE are required"),
    (["int8hu", "--oracle", "{oracle}", "--candidate", "{int8hu}"], "--control TRACE, or --no-control"),
    (["fp16", "--oracle", "{oracle}", "--candidate", "/nonexistent.safetensors"], "/nonexistent.safetensors: no such file"),
    (["fp16", "--oracle", "{oracle}", "--candidate", "{fp16}", "--min-cosine", "3"], "min_cosine = 3.0"),
    (["fp16", "--oracle", "{oracle}", "--candidate", "{fp16}", "--max-kl", "lots"], "--max-kl 'lots'"),
    (["fp16", "--oracle", "{oracle}", "--candidate", "{fp16}", "--tokenizer", "/nowhere"], "no tokenizer.json"),
])
def test_input_errors_exit_2_with_one_line(scenario, capsys, args, message):
    args = [a.format(**{k: str(v) for k, v in scenario.items()}) for a in args]
    assert _gate(*args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_no_control_runs_the_gate_without_one(scenario, capsys):
    rc = _gate("int8hu", "--oracle", scenario["oracle"], "--candidate", scenario["int8hu"], "--no-control")
    assert rc == 1 and "defect 1" in capsys.readouterr().out


def test_list_shows_user_gates(tmp_path, capsys):
    cfg = tmp_path / "g.toml"
    cfg.write_text('[gates.strict]\ncandidate = "int8hu"\ncontrol = "fp16"\nmin_cosine = 0.999\n')
    assert _gate("--list", "--config", cfg) == 0
    out = capsys.readouterr().out
    assert "int8hu" in out and "strict" in out and str(cfg) in out


def test_gate_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["gate", "--help"])
    assert "example:\n  flipgate gate int8hu" in capsys.readouterr().out


def test_selftest_command_passes_on_the_synthetic_and_on_a_given_oracle(scenario, capsys):
    assert main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert "0 wrong" in out and "WRONG" not in out
    assert main(["selftest", "--oracle", str(scenario["oracle"]), "--gate", "int4lin"]) == 0
    out = capsys.readouterr().out
    assert "skip  logits-of-another-case: not applicable (the oracle has one case)" in out
    assert main(["selftest", "--max-cases", "0"]) == 2


def test_selftest_catches_a_broken_engine(monkeypatch, capsys):
    """The test of the test: an engine that lets the control excuse every flip must be caught."""
    real = gates.engine._classify

    def lenient(finite, cand, top1, confident, control):
        cls = real(finite, cand, top1, confident, control)
        return "oracle-artifact" if cls == "defect" else cls

    monkeypatch.setattr(gates.engine, "_classify", lenient)
    result = run_selftest()
    wrong = {r.name for r in result.wrong}
    assert not result
    assert {"confident-row-forced-to-runner-up", "control-disagrees", "control-flips-elsewhere"} <= wrong
    assert main(["selftest"]) == 1
    assert "WRONG" in capsys.readouterr().out


def test_selftest_catches_nan_read_as_a_pass(monkeypatch):
    real = gates.engine._classify

    def nan_passes(finite, cand, top1, confident, control):
        return "match" if not finite else real(finite, cand, top1, confident, control)

    monkeypatch.setattr(gates.engine, "_classify", nan_passes)
    wrong = {r.name for r in run_selftest().wrong}
    assert {"row-set-to-nan", "one-logit-nan", "one-logit-inf", "control-row-nan"} <= wrong


NEW_PROBES = {"control-is-candidate": "REFUSED", "control-holds-candidate-rows": "REFUSED",
              "oracle-as-candidate": "REFUSED", "edited-verdict": "REFUSED", "no-confident-positions": "FAIL"}


def test_selftest_probes_the_control_the_verdict_reader_and_the_evidence_bound(capsys):
    result = run_selftest()
    assert result
    by_name = {r.name: r for r in result.results}
    for name, want in NEW_PROBES.items():
        r = by_name[name]
        assert r.ok and not r.skipped, (name, r.problems)
        assert (r.refused is not None) == (want == "REFUSED"), name
    assert "candidate's own file" in by_name["control-is-candidate"].refused
    assert "exact rows" in by_name["control-holds-candidate-rows"].refused
    assert "'passed' is true" in by_name["edited-verdict"].refused
    assert any("min_confident" in x for x in by_name["no-confident-positions"].verdict.reasons)
    assert main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert "ok    control-is-candidate: expected REFUSED, got REFUSED" in out
    assert "ok    no-confident-positions: expected FAIL, got FAIL" in out


def test_selftest_catches_a_gate_that_takes_the_candidate_as_its_control(monkeypatch):
    import gates.roles

    monkeypatch.setattr(gates.roles, "check_control", lambda *a, **k: None)
    monkeypatch.setattr(gates.roles.SameRows, "check", lambda *a, **k: None)
    monkeypatch.setattr(gates.roles, "check_candidate", lambda *a, **k: None)
    wrong = {r.name for r in run_selftest().wrong}
    assert {"control-is-candidate", "control-holds-candidate-rows", "oracle-as-candidate"} <= wrong


def test_selftest_catches_a_reader_that_believes_an_edited_verdict(monkeypatch):
    import gates.verdict

    monkeypatch.setattr(gates.verdict, "rejudge", lambda *a, **k: None)
    result = run_selftest()
    wrong = {r.name: r for r in result.wrong}
    assert set(wrong) == {"edited-verdict"}
    assert wrong["edited-verdict"].problems == ["the edited verdict was read back as a pass"]


def test_selftest_catches_a_pass_on_no_evidence(monkeypatch):
    real = gates.engine.summarise

    def vacuous(*args, **kwargs):
        s = real(*args, **kwargs)
        s["reasons"] = [r for r in s["reasons"] if "min_confident" not in r]
        return s

    monkeypatch.setattr(gates.engine, "summarise", vacuous)
    wrong = {r.name for r in run_selftest().wrong}
    assert "no-confident-positions" in wrong


def test_selftest_refuses_an_oracle_with_nan(tmp_path):
    logits = np.zeros((2, 8), np.float32)
    logits[1, 3] = np.nan
    meta = base_metadata(runner="t", variant="bf16", vocab_size=8)
    p = write_trace(tmp_path / "o.safetensors", meta, [CaseTrace("a", np.arange(5), logits)])
    assert main(["selftest", "--oracle", str(p)]) == 2


def test_gates_never_import_torch():
    code = ("import sys, gates.engine, gates.selftest, gates.policy, gates.verdict, gates.sweep, gates.report, "
            "gates.commands.gate, gates.commands.selftest\n"
            "from gates.selftest import run_selftest\n"
            "assert run_selftest(max_cases=1)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'transformers' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tokenizer_fills_the_text_fields_and_its_hash_is_checked(tmp_path, scenario, capsys):
    from tokenizers import Tokenizer

    from harness.models import fixture_model_path, tokenizer_sha256

    model = fixture_model_path()
    if not (model / "tokenizer.json").is_file():
        pytest.skip("the bundled fixture tokenizer is not there")
    digest = tokenizer_sha256(model)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 2048)).astype(np.float32)
    ids = np.concatenate([[300, 301, 302], np.argmax(logits, axis=1)])
    meta = base_metadata(runner="t", variant="fp16", vocab_size=2048, tokenizer_sha256=digest)
    op = write_trace(tmp_path / "o.safetensors", meta, [CaseTrace("a", ids, logits)])
    cp = write_trace(tmp_path / "c.safetensors", meta, [CaseTrace("a", ids, logits)])
    out = tmp_path / "v.json"
    assert _gate("fp16", "--oracle", op, "--candidate", cp, "--tokenizer", model, "--json", out,
                 "--min-confident", 0) == 0
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    p = json.loads(out.read_text())["positions"][1]
    assert p["target_text"] == tok.decode([int(ids[4])], skip_special_tokens=False)
    assert p["context_text"] == tok.decode([int(i) for i in ids[:4]], skip_special_tokens=False)
    capsys.readouterr()
    assert _gate("fp16", "--oracle", scenario["oracle"], "--candidate", scenario["fp16"], "--tokenizer", model) == 2
    assert "is not the tokenizer of" in capsys.readouterr().err
