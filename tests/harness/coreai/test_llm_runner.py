"""`coreai:BUNDLE`: the real subprocess path, driven against an executable llm-runner stand-in."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from harness.candidates import resolve, sequences_from_trace
from harness.coreai.runtime import MACOS_ONLY, RunnerError
from harness.errors import InputError, PlatformError
from harness.trace import open_trace


def _run(bundle, oracle_path, runner, **options):
    oracle = open_trace(oracle_path)
    cand = resolve(f"coreai:{bundle}", llm_runner=str(runner), **options)
    return cand, list(cand.run(sequences_from_trace(oracle)))


@pytest.mark.parametrize("layout", ["positions", "tokens"])
def test_rows_are_the_dumped_logits_at_the_scored_positions(layout, light_bundle, coreai_oracle, emulated_int8hu,
                                                             llm_runner_standin, fixture_dir, monkeypatch):
    monkeypatch.setenv("FLIPGATE_STANDIN_LAYOUT", layout)
    # (no variant claimed: the light bundle's empty asset cannot be audited; test_real_bundle claims one)
    cand, cases = _run(light_bundle, coreai_oracle, llm_runner_standin, model=str(fixture_dir), audit=False)
    assert (cand.runner, cand.variant) == ("coreai-llm-runner", "coreai")
    emulated = open_trace(emulated_int8hu)
    oracle = open_trace(coreai_oracle)
    assert [c.case_id for c in cases] == oracle.case_ids
    for c in cases:
        assert c.logits.dtype == np.float16
        assert np.array_equal(c.input_ids, oracle.input_ids(c.case_id))
        assert np.array_equal(c.logits.view(np.uint16), emulated.case(c.case_id).logits.view(np.uint16))


def test_argv_is_what_llm_runner_takes(light_bundle, llm_runner_standin, tmp_path):
    cand = resolve(f"coreai:{light_bundle}", llm_runner=str(llm_runner_standin), audit=False)
    argv = cand.argv(tmp_path / "t.json", tmp_path / "o.json")
    assert argv == [str(llm_runner_standin), "--model", str(light_bundle), "--raw-tokens", str(tmp_path / "t.json"),
                    "--save-logits", str(tmp_path / "o.json"), "--save-logits-length", "full",
                    "--inference-engine-variant", "coreai-sequential"]


@pytest.mark.parametrize("fault, message", [
    ("exit", r"case 'gzip': llm-runner exited with status 3: Loading bundle \.\.\. \| error: CoreAI: function "
             r"'main' failed to specialize \| Fatal error: model load failed \(code 7\)"),
    ("stdout-error", r"exited with status 1: Error: The inference engine does not support returning logits \| "
                     r"Generating\.\.\."),
    ("no-file", r"case 'gzip': llm-runner exited 0 but wrote no logits file \(gzip.logits.json\)"),
    ("truncate", r"case 'gzip': llm-runner output is unusable: .*gzip.logits.json: truncated JSON"),
    ("extra-row", r"output is unusable: .*case 'gzip': (\d+) rows for (\d+) raw tokens, .* one row more"),
    ("short-rows", r"output is unusable: .*case 'gzip': \d+ rows for \d+ raw tokens, .* one row short"),
    ("wide", r"case 'gzip': rows are 2049 logits wide, but the oracle's vocabulary has 2048 entries"),
    ("wrong-id", r"token index \d+: case 'gzip': the runner echoed token \d+ where the case has \d+"),
])
def test_failure_modes_are_one_clear_line(fault, message, light_bundle, coreai_oracle, llm_runner_standin,
                                          fixture_dir, monkeypatch):
    monkeypatch.setenv("FLIPGATE_STANDIN_FAULT", fault)
    with pytest.raises(RunnerError, match=message) as e:
        _run(light_bundle, coreai_oracle, llm_runner_standin, model=str(fixture_dir), audit=False)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_a_hung_runner_is_stopped(light_bundle, coreai_oracle, llm_runner_standin, monkeypatch):
    monkeypatch.setenv("FLIPGATE_STANDIN_FAULT", "hang")
    with pytest.raises(RunnerError, match=r"case 'gzip': llm-runner did not finish within 2 s"):
        _run(light_bundle, coreai_oracle, llm_runner_standin, audit=False, timeout=2)


def test_nan_in_a_dump_reaches_the_trace(light_bundle, coreai_oracle, llm_runner_standin, monkeypatch):
    monkeypatch.setenv("FLIPGATE_STANDIN_FAULT", "nan")
    _, cases = _run(light_bundle, coreai_oracle, llm_runner_standin, audit=False)
    assert all(np.isnan(c.logits[-1, 0]) for c in cases)  # the gate judges the row invalid


def test_bad_runner_paths(light_bundle, tmp_path):
    with pytest.raises(InputError, match="--llm-runner .*nope: no such file"):
        resolve(f"coreai:{light_bundle}", llm_runner=str(tmp_path / "nope"), audit=False)
    plain = tmp_path / "plain"
    plain.write_text("not executable")
    with pytest.raises(InputError, match="not an executable file"):
        resolve(f"coreai:{light_bundle}", llm_runner=str(plain), audit=False)


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the refusal off macOS")
def test_off_macos_without_a_runner_fails_early_with_one_line(tmp_path, coreai_oracle, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.delenv("FLIPGATE_LLM_RUNNER", raising=False)
    # before the bundle is even read: a folder that does not exist is not reported
    with pytest.raises(PlatformError) as e:
        resolve(f"coreai:{tmp_path / 'no-such-bundle'}")
    assert str(e.value) == MACOS_ONLY and e.value.exit_code == 2
    out = tmp_path / "t.safetensors"
    assert main(["capture", f"coreai:{tmp_path}", "--oracle", str(coreai_oracle), "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == f"flipgate capture: error: {MACOS_ONLY}\n"
    assert not out.exists()


def test_the_runner_can_come_from_the_environment(light_bundle, llm_runner_standin, monkeypatch):
    monkeypatch.setenv("FLIPGATE_LLM_RUNNER", str(llm_runner_standin))
    assert resolve(f"coreai:{light_bundle}", audit=False).llm_runner == llm_runner_standin


def test_spec_options(light_bundle, real_bundle, llm_runner_standin, tmp_path):
    cand = resolve(f"coreai:{real_bundle}?variant=int8hu&llm_runner={llm_runner_standin}&timeout=30"
                   f"&keep_dumps={tmp_path}")
    assert (cand.variant, cand.llm_runner, cand.timeout, cand.keep_dumps) == ("int8hu", llm_runner_standin, 30.0, tmp_path)
    with pytest.raises(InputError, match="candidate option 'colour' .*expected one of variant, llm_runner"):
        resolve(f"coreai:{light_bundle}?colour=red", llm_runner=str(llm_runner_standin), audit=False)
    with pytest.raises(InputError, match="candidate option timeout='soon' .*not a float"):
        resolve(f"coreai:{light_bundle}?timeout=soon", llm_runner=str(llm_runner_standin), audit=False)


def test_oracle_vocabulary_and_tokenizer_are_checked_before_running(light_bundle, fixture_dir, tmp_path,
                                                                   llm_runner_standin):
    import shutil

    other = tmp_path / "bundle"
    shutil.copytree(light_bundle, other)
    md = json.loads((other / "metadata.json").read_text())
    md["language"]["vocab_size"] = 4096
    (other / "metadata.json").write_text(json.dumps(md))
    with pytest.raises(InputError, match="language.vocab_size 4096 differs from the oracle's vocabulary of 2048"):
        resolve(f"coreai:{other}", llm_runner=str(llm_runner_standin), model=str(fixture_dir), audit=False)
