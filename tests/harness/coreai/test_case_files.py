"""Files named after case ids (`import --emit-raw-tokens DIR`, the llm-runner candidate's dump folder) stay
inside their folder: a case id holding '/', '..', NUL or control characters is refused before anything is
written, wherever it came from (an oracle trace made elsewhere, --case)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from harness.cli import main
from harness.coreai.logits_file import case_file
from harness.errors import InputError
from harness.trace import open_trace

HOSTILE = ["../escape", "../../tmp/escape", "a/b", "/abs", "..", ".", "nul\x00byte", "esc\x1b[31mred", "new\nline",
           "back\\slash", "rtl\u202eover"]


def _oracle_with_case_id(oracle_path, case_id, out):
    """The oracle trace with its first case renamed: written with safetensors itself, as any runtime's
    exporter could, since flipgate's own writer refuses such an id."""
    t = open_trace(oracle_path)
    first = t.case_ids[0]
    meta = dict(t.metadata)
    meta["cases"] = json.dumps([case_id])
    save_file({f"{case_id}/input_ids": np.asarray(t.input_ids(first)),
               f"{case_id}/logits": np.ascontiguousarray(t.case(first).logits)}, str(out), metadata=meta)
    return out


@pytest.mark.parametrize("case_id", HOSTILE)
def test_case_file_refuses_ids_that_leave_the_folder(tmp_path, case_id):
    with pytest.raises(InputError, match="case "):
        case_file(tmp_path / "d", case_id, ".tokens.json")
    assert case_file(tmp_path / "d", "gzip", ".tokens.json") == (tmp_path / "d" / "gzip.tokens.json")


@pytest.mark.parametrize("case_id", ["../escape", "../../escape", "nul\x00byte", "esc\x1b[31mred", "/abs"])
def test_emit_raw_tokens_never_writes_outside_its_folder(coreai_oracle, tmp_path, capsys, case_id):
    bad = _oracle_with_case_id(coreai_oracle, case_id, tmp_path / "oracle.safetensors")
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["import", "--emit-raw-tokens", str(work / "dumps"), "--oracle", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\x00" not in err
    assert sorted(p for p in tmp_path.rglob("*")) == before        # nothing written, in the folder or out of it
    assert not list(tmp_path.parent.glob("escape*"))


def test_emit_refuses_a_hostile_case_option(coreai_oracle, tmp_path, capsys):
    assert main(["import", "--emit-raw-tokens", str(tmp_path / "d"), "--oracle", str(coreai_oracle),
                 "--case", "../x"]) == 2
    assert "'../x'" in capsys.readouterr().err
    assert not (tmp_path / "x.tokens.json").exists() and not (tmp_path / "d").exists()


def test_llm_runner_dump_folder_refuses_hostile_case_ids(light_bundle, llm_runner_standin, coreai_oracle, tmp_path):
    from harness.candidates import Sequence, resolve

    keep = tmp_path / "keep" / "dumps"
    cand = resolve(f"coreai:{light_bundle}?keep_dumps={keep}", llm_runner=str(llm_runner_standin), audit=False)
    ids = open_trace(coreai_oracle).input_ids(open_trace(coreai_oracle).case_ids[0])
    with pytest.raises(InputError, match="'../../escape'"):
        list(cand.run([Sequence("../../escape", ids, 4)]))
    assert not (tmp_path / "escape.tokens.json").exists()
    assert not list(keep.iterdir())
