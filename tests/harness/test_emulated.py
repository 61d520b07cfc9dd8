"""Emulated candidates on the bundled fixture: the fast path is bit-identical to coreai-opt's eager
fake quantization for every variant, and the S=1 decode yields the teacher-forced rows."""

from __future__ import annotations

import copy
import json
from importlib.metadata import version

import numpy as np
import pytest
import torch

from harness.candidates import resolve
from harness.candidates.base import Sequence
from harness.candidates.emulated import (
    EmulatedCandidate, apply_plan, emulated_candidate, load_fp16, prepare_coreai_opt,
)
from harness.cases import load_cases, tokenize_case
from harness.errors import InputError
from harness.models import fixture_model_path, load_tokenizer, weights_sha256
from harness.recipe import get_recipe, parse_recipes

pytestmark = pytest.mark.slow  # runs the fixture model

VARIANTS = ["fp16", "int8lin", "int8hu", "int4lin", "mixed", "mixed-edge"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small fp16 models run fastest on one thread; on a shared 2-core machine, many threads spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base():
    """The fixture loaded in fp16, once; each test quantizes a copy."""
    return load_fp16(None)


@pytest.fixture(scope="module")
def case_ids():
    tok = load_tokenizer(fixture_model_path())
    return [np.asarray(tokenize_case(s, tok).prompt_ids) for s in load_cases()]


def linear_weights(model) -> dict[str, np.ndarray]:
    with torch.no_grad():  # a parametrized weight is computed (fake-quantized) on access
        return {n: m.weight.detach().numpy().copy() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def full_logits(model, ids) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=torch.as_tensor(ids)[None]).logits[0].numpy()


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_is_bit_identical_to_coreai_opt(base, case_ids, variant):
    recipe = get_recipe(variant)
    plan = recipe.plan(base)
    fast = copy.deepcopy(base)
    codes = apply_plan(fast, plan)
    assert set(codes) == {n for n, s in plan.items() if s is not None}
    fast_w = linear_weights(fast)
    base_w = linear_weights(base)
    if variant == "fp16":
        reference = base  # nothing planned: coreai-opt has nothing to do
    else:
        _, reference = prepare_coreai_opt(copy.deepcopy(base), plan)
    ref_w = linear_weights(reference)
    for name, spec in plan.items():
        assert np.array_equal(fast_w[name].view(np.uint16), ref_w[name].view(np.uint16)), name
        changed = not np.array_equal(fast_w[name], base_w[name])
        assert changed == (spec is not None), name  # quantized exactly where the recipe says
    # and so the logits: max |delta| = 0 on every case of the fixture's case set
    for ids in case_ids:
        a, b = full_logits(fast, ids), full_logits(reference, ids)
        assert a.dtype == np.float16
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
    if variant != "fp16":
        assert not np.array_equal(full_logits(fast, case_ids[0]), full_logits(base, case_ids[0]))


def test_stepwise_decode_is_bit_identical_between_modes():
    ids = np.array([312, 45, 1023, 7, 88, 1500, 9, 640, 3, 77])
    seqs = [Sequence("s", ids, 4)]
    fast = list(emulated_candidate("mixed", mode="fast").run(seqs))[0]
    ref = list(emulated_candidate("mixed", mode="coreai-opt").run(seqs))[0]
    assert fast.logits.shape == (4, 2048) and fast.logits.dtype == np.float16
    assert np.array_equal(fast.logits.view(np.uint16), ref.logits.view(np.uint16))
    assert np.array_equal(fast.input_ids, ids)


def test_rows_are_the_teacher_forced_predictions(base, case_ids):
    cand = emulated_candidate("int8hu")
    ids = np.concatenate([case_ids[0], case_ids[1][:6]])
    n, r = len(ids), 6
    step = cand.rows_stepwise(ids, r)
    # row k predicts x[P+k] from x[0..P+k-1] only: cutting the last token drops exactly the last row
    shorter = cand.rows_stepwise(ids[:-1], r - 1)
    assert np.array_equal(step[:-1].view(np.uint16), shorter.view(np.uint16))
    # the one-pass rows are the same predictions computed another way (chunked vs recurrent
    # GatedDeltaNet, batched attention): close, not bit-equal
    full = cand.rows_full(ids, r)
    assert np.array_equal(full, full_logits(cand.model, ids)[n - 1 - r:n - 1])
    a, b = step.astype(np.float64), full.astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999
    p = torch.softmax(torch.from_numpy(b), -1).numpy()
    top2 = np.sort(p, axis=1)[:, -2:]
    confident = top2[:, 1] - top2[:, 0] >= 0.1
    assert (step.argmax(1) == full.argmax(1))[confident].all()


def test_only_restricts_the_plan(base):
    plan = get_recipe("int4lin").plan(base)
    model = copy.deepcopy(base)
    picked = {"model.layers.0.mlp.down_proj", "model.layers.3.self_attn.q_proj", "lm_head"}
    codes = apply_plan(model, plan, only=picked)
    assert set(codes) == picked - {"lm_head"}  # int4lin keeps the head fp16
    after, before = linear_weights(model), linear_weights(base)
    for name in plan:
        assert np.array_equal(after[name], before[name]) == (name not in codes), name
    qw = codes["model.layers.0.mlp.down_proj"]
    assert qw.codes.min() >= -7 and qw.codes.max() <= 7 and qw.scales.shape == (128, 12)
    assert np.array_equal(plan["model.layers.0.mlp.down_proj"].scheme().dequantize(qw), after["model.layers.0.mlp.down_proj"])
    with pytest.raises(InputError, match="only='model.layers.9.mlp.up_proj': not a Linear module"):
        apply_plan(copy.deepcopy(base), plan, only={"model.layers.9.mlp.up_proj"})


def test_tied_head_is_untied_not_changed():
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    cfg = json.loads((fixture_model_path() / "config.json").read_text())
    cfg.update(tie_word_embeddings=True, num_hidden_layers=4, layer_types=cfg["layer_types"][:4])
    model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**cfg)).to(torch.float16).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    emb = model.model.embed_tokens.weight.detach().clone()
    apply_plan(model, get_recipe("int8hu").plan(model))
    assert torch.equal(model.model.embed_tokens.weight, emb)  # the embedding is never quantized
    assert not torch.equal(model.lm_head.weight, emb)


def test_metadata_carries_recipe_versions_and_hashes():
    cand = resolve("int8hu", model=str(fixture_model_path()), mode="fast")
    assert isinstance(cand, EmulatedCandidate) and (cand.runner, cand.variant) == ("emulated", "int8hu")
    meta = cand.metadata()
    assert parse_recipes(meta["recipe"])["int8hu"].plan(load_fp16(None)) == get_recipe("int8hu").plan(load_fp16(None))
    assert meta["coreai_opt_version"] == version("coreai-opt")
    assert json.loads(meta["model"])["sha256"] == weights_sha256(fixture_model_path())
    assert (meta["mode"], meta["decode"], meta["dtype"]) == ("fast", "stepwise", "float16")
    assert resolve("int4lin", full=True, mode="coreai-opt").metadata()["decode"] == "full"


def test_bad_input():
    with pytest.raises(InputError, match=r"unknown variant 'int3': valid variants are fp16, int8lin, int8hu"):
        resolve("int3")
    with pytest.raises(InputError, match=r"--mode 'graph': expected one of fast, coreai-opt"):
        emulated_candidate("int8hu", mode="graph")
    with pytest.raises(InputError, match=r"vocab_size 2048 differs from the oracle's 4096"):
        emulated_candidate("int8hu", vocab_size=4096)
    cand = emulated_candidate("fp16")
    with pytest.raises(InputError, match=r"case 'x': token id 5000 is outside the model's vocabulary of 2048"):
        list(cand.run([Sequence("x", np.array([1, 2, 5000, 3]), 2)]))
