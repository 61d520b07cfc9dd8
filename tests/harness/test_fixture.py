"""The bundled fixture: a real transformers Qwen3.5 checkpoint with the 27B's structure, scaled down."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.models import fixture_model_path


def test_files_and_size():
    d = fixture_model_path()
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)  # no pickles shipped
    assert (d / "model.safetensors").stat().st_size <= 10 * 1024 * 1024


def test_structure_matches_the_27b_scaled_down():
    cfg = json.loads((fixture_model_path() / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_5_text" and cfg["architectures"] == ["Qwen3_5ForCausalLM"]
    kinds = cfg["layer_types"]
    assert kinds == (["linear_attention"] * 3 + ["full_attention"]) * (len(kinds) // 4)
    assert cfg["num_attention_heads"] // cfg["num_key_value_heads"] == 6   # 27B: 24/4
    assert cfg["linear_num_value_heads"] // cfg["linear_num_key_heads"] == 3  # 27B: 48/16
    assert cfg["tie_word_embeddings"] is False
    assert cfg["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert cfg["dtype"] == "bfloat16"


def test_loads_through_auto_classes_and_runs():
    d = str(fixture_model_path())
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, use_safetensors=True).eval()
    assert type(model).__name__ == "Qwen3_5ForCausalLM"
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert 1000 <= len(tok) <= model.config.vocab_size <= 4096
    ids = tok.encode("Return a new list containing all items from the iterable", add_special_tokens=False)
    assert tok.decode(ids) == "Return a new list containing all items from the iterable"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert torch.isfinite(logits).all()
    # It learned its corpus, and something of English beyond it: both losses well below uniform.
    uniform = torch.log(torch.tensor(float(model.config.vocab_size))).item()
    seen = tok.encode("Return a tuple containing the sum of the two numbers", add_special_tokens=False)
    corpus = (fixture_model_path().parents[2] / "scripts" / "fixture" / "corpus.txt")
    if corpus.exists():  # a source checkout: score a span of the training text itself
        seen = tok.encode(corpus.read_text(encoding="utf-8")[:400], add_special_tokens=False)
    with torch.no_grad():
        held_out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
        trained = model(input_ids=torch.tensor([seen]), labels=torch.tensor([seen])).loss.item()
    assert held_out < 0.8 * uniform
    if corpus.exists():
        assert trained < 0.3 * uniform
