"""Report token text comes from tokenizer.json through `tokenizers` (no transformers import), and
reads exactly as transformers' fast tokenizer decoded it before."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import InputError
from harness.models import fixture_model_path, load_tokenizer
from harness.pipeline import _decoder


def test_decoder_matches_transformers_on_every_token_and_on_sequences():
    model = fixture_model_path()
    ours = _decoder(model)
    theirs = load_tokenizer(model)
    for t in range(len(theirs)):
        assert ours([t]) == theirs.decode([t], clean_up_tokenization_spaces=False), t
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = [int(x) for x in rng.integers(0, len(theirs), rng.integers(1, 40))]
        assert ours(ids) == theirs.decode(ids, clean_up_tokenization_spaces=False), ids
    assert ours(np.array([5, 6, 7])) == ours([5, 6, 7])  # trace arrays decode like lists


def test_a_broken_tokenizer_json_is_an_input_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="tokenizer.json: cannot load the tokenizer"):
        _decoder(tmp_path)
