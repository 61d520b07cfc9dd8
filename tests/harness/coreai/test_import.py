"""`flipgate import`: dumps made on "another machine" (the stand-in, run by the emitted script) -> traces."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from harness.cli import main
from harness.trace import open_trace


@pytest.fixture(scope="module")
def dumps(tmp_path_factory, coreai_oracle, light_bundle, llm_runner_standin):
    """What the Mac leg produces: `--emit-raw-tokens`, then the emitted script run with a runner."""
    folder = tmp_path_factory.mktemp("dumps")
    assert main(["import", "--emit-raw-tokens", str(folder), "--oracle", str(coreai_oracle)]) == 0
    env = {k: v for k, v in os.environ.items() if k != "FLIPGATE_STANDIN_FAULT"}
    subprocess.run(["sh", str(folder / "run-llm-runner.sh"), str(light_bundle), str(llm_runner_standin)],
                   check=True, env=env, capture_output=True)
    return folder


def test_emitted_raw_tokens_are_the_oracle_sequences(dumps, coreai_oracle):
    oracle = open_trace(coreai_oracle)
    for cid in oracle.case_ids:
        assert json.loads((dumps / f"{cid}.tokens.json").read_text()) == {"tokens": oracle.input_ids(cid).tolist()}
    script = (dumps / "run-llm-runner.sh").read_text()
    assert "--save-logits-length full --inference-engine-variant coreai-sequential" in script


def test_import_by_file_name_round_trips_the_emulated_logits(dumps, coreai_oracle, emulated_int8hu, tmp_path):
    out = tmp_path / "imported.safetensors"
    files = sorted(str(p) for p in dumps.glob("*.logits.json"))
    assert main(["import", *files, "--oracle", str(coreai_oracle), "--variant", "int8hu", "--out", str(out)]) == 0
    t, emulated, oracle = open_trace(out), open_trace(emulated_int8hu), open_trace(coreai_oracle)
    assert (t.runner, t.variant, t.vocab_size) == ("import", "int8hu", 2048)
    assert t.metadata["source_runner"] == "coreai-llm-runner"
    assert sorted(json.loads(t.metadata["source_files"])) == sorted(os.path.basename(f) for f in files)
    assert t.tokenizer_sha256 == oracle.tokenizer_sha256
    for cid in oracle.case_ids:
        assert np.array_equal(t.input_ids(cid), oracle.input_ids(cid))
        assert np.array_equal(t.case(cid).logits.view(np.uint16), emulated.case(cid).logits.view(np.uint16))


def test_import_from_the_case_file_alone(dumps, coreai_cases, coreai_oracle, emulated_int8hu, tmp_path, fixture_dir):
    """No oracle trace: the prompt comes from the case file, the continuation from the dump's echo."""
    out = tmp_path / "from-cases.safetensors"
    oracle = open_trace(coreai_oracle)
    files, ids = [], []
    for cid in oracle.case_ids:
        renamed = tmp_path / f"dump-{cid}.json"
        renamed.write_bytes((dumps / f"{cid}.logits.json").read_bytes())
        files.append(str(renamed))
        ids += ["--case", cid]
    assert main(["import", *files, *ids, "--cases", str(coreai_cases), "--model", str(fixture_dir),
                 "--out", str(out)]) == 0
    t = open_trace(out)
    assert t.variant == "coreai"
    for cid in oracle.case_ids:
        assert np.array_equal(t.input_ids(cid), oracle.input_ids(cid))
        assert t.rows(cid) == oracle.rows(cid)
        assert np.array_equal(t.case(cid).logits, open_trace(emulated_int8hu).case(cid).logits)


def test_refusals_write_nothing(dumps, coreai_oracle, tmp_path, capsys):
    out = tmp_path / "never.safetensors"
    gzip, abc = str(dumps / "gzip.logits.json"), str(dumps / "abc.logits.json")
    cases = [
        (["import", gzip, abc, "--case", "gzip", "--oracle", str(coreai_oracle), "--out", str(out)],
         "2 logits files but 1 --case ids"),
        (["import", gzip, "--case", "abc", "--oracle", str(coreai_oracle), "--out", str(out)],
         "gzip.logits.json: case 'abc': the dump's context tokens \\[\\d+\\] are not the case's first token"),
        (["import", gzip, "--case", "nope", "--oracle", str(coreai_oracle), "--out", str(out)],
         "no case 'nope' in the oracle trace"),
        (["import", gzip, gzip, "--oracle", str(coreai_oracle), "--out", str(out)], "case 'gzip' is given twice"),
        (["import", gzip, "--out", str(out)], "give --oracle TRACE"),
    ]
    import re

    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), (argv, err)
        assert err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_unnamed_file_needs_a_case(dumps, coreai_oracle, tmp_path, capsys):
    odd = tmp_path / "something.json"
    odd.write_bytes((dumps / "gzip.logits.json").read_bytes())
    assert main(["import", str(odd), "--oracle", str(coreai_oracle), "--out", str(tmp_path / "t.st")]) == 2
    assert "name its case with --case" in capsys.readouterr().err


def test_emit_needs_continuations_or_an_oracle(coreai_cases, fixture_dir, tmp_path, capsys):
    assert main(["import", "--emit-raw-tokens", str(tmp_path / "d"), "--cases", str(coreai_cases),
                 "--model", str(fixture_dir)]) == 2
    assert "its continuation is the oracle's greedy output, so give --oracle TRACE" in capsys.readouterr().err
