"""Bad input to `flipgate oracle`: one line naming what is wrong, exit 2, nothing under the output name."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.cli import main


def _model_copy(fixture_model, dest, *, weights=True):
    dest.mkdir()
    for f in fixture_model.iterdir():
        if f.suffix == ".safetensors" and not weights:
            continue
        if f.is_file():
            shutil.copy(f, dest / f.name)
    return dest


def _cases(tmp_path, lines, name="cases.jsonl"):
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return p


def _tiny_random_qwen(fixture_model, dest, vocab):
    """A real Qwen3.5 text checkpoint with its own (smaller) vocabulary, and the fixture's tokenizer."""
    import torch
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    from harness.models import read_config

    cfg = {k: v for k, v in read_config(fixture_model).items()
           if k not in ("architectures", "transformers_version", "dtype", "torch_dtype", "model_type")}
    cfg.update(vocab_size=vocab, num_hidden_layers=4, layer_types=cfg["layer_types"][:4])
    torch.manual_seed(0)
    Qwen3_5ForCausalLM(Qwen3_5TextConfig(**cfg)).save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(fixture_model / name, dest / name)
    return dest


def _bad(kind, fixture_model, tmp_path):
    """(extra argv, text the error must contain) for each kind of bad input."""
    if kind == "missing model directory":
        return ["--model", str(tmp_path / "no-such-model")], "no-such-model"
    if kind == "no safetensors weights":
        d = _model_copy(fixture_model, tmp_path / "bin-model", weights=False)
        (d / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # never opened: pickles are not loaded
        return ["--model", str(d)], "no *.safetensors weights (found pytorch_model.bin"
    if kind == "not a causal LM":
        from transformers import BertConfig, BertForMaskedLM

        d = tmp_path / "bert"
        BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32)).save_pretrained(d)
        return ["--model", str(d)], "BertForMaskedLM is not a causal language model"
    if kind == "tokenizer larger than the head":
        d = _tiny_random_qwen(fixture_model, tmp_path / "small-head", vocab=1000)
        return ["--model", str(d)], "only 1000 rows"
    if kind == "case longer than the context":
        p = _cases(tmp_path, ['{"id": "short", "prompt": "Hello"}',
                              json.dumps({"id": "novel", "prompt_ids": [5] * 1020, "new_tokens": 16})])
        return ["--cases", str(p)], "case 'novel': 1036 tokens"
    if kind == "empty case file":
        p = _cases(tmp_path, ["# nothing here", ""])
        return ["--cases", str(p)], "holds no cases"
    if kind == "malformed JSONL line":
        p = _cases(tmp_path, ['{"id": "a", "prompt": "Hello"}', '{"id": "b", "prompt": "oops"', '{"id": "c"}'])
        return ["--cases", str(p)], f"{p}:2: malformed JSON"
    if kind == "token id outside the vocabulary":
        p = _cases(tmp_path, ['{"id": "far", "prompt_ids": [1, 999999]}'])
        return ["--cases", str(p)], "token id 999999"
    if kind == "bad shard":
        return ["--shard", "3/3"], "--shard '3/3'"
    if kind == "bad max-memory":
        return ["--device", "auto", "--max-memory", "lots"], "--max-memory 'lots'"
    if kind == "config file missing":
        return ["--config", str(tmp_path / "nope.toml")], "nope.toml: no such file"
    raise AssertionError(kind)


KINDS = ["missing model directory", "no safetensors weights", "not a causal LM", "tokenizer larger than the head",
         "case longer than the context", "empty case file", "malformed JSONL line",
         "token id outside the vocabulary", "bad shard", "bad max-memory", "config file missing"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(kind, fixture_model, tmp_path, capsys):
    argv, expected = _bad(kind, fixture_model, tmp_path)
    out = tmp_path / "out" / "oracle.safetensors"
    out.parent.mkdir()
    rc = main(["oracle", *argv, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.count("\n") == 0, err
    assert err.startswith("flipgate oracle: error: ") and expected in err, err
    assert list(out.parent.iterdir()) == [], "something was written beside the output"


def test_output_that_is_a_folder(tmp_path, capsys, fixture_model):
    assert main(["oracle", "--out", str(tmp_path), "--quiet"]) == 2
    assert "is a folder" in capsys.readouterr().err
