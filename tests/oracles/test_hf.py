"""The HF oracle's rows: what row k means, one pass vs stepwise, greedy continuations, multimodal."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import InputError
from harness.trace import open_trace
from oracles.hf import HFOracle, low_margin_count, parse_max_memory, prob_margins

torch = pytest.importorskip("torch")

STEPWISE_CASES = 5  # 5 cases x 16 rows = 80 positions, as measured in the issue
FP32_STEPWISE_CASES = 3


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _sequences(default_trace, n=None):
    t = open_trace(default_trace)
    return [(c.input_ids, c.rows) for c in list(t)[:n]]


def test_prob_margins_by_hand():
    big = np.log(np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.1, 0.3, 0.6]]))
    np.testing.assert_allclose(prob_margins(big), [0.5, 0.0, 0.3], atol=1e-12)
    assert low_margin_count(big, 0.1) == 1 and low_margin_count(big, 0.4) == 2 and low_margin_count(big, 0.0) == 0


def test_row_k_predicts_token_p_plus_k(oracle_fp32, default_trace):
    """Row k is the last-position logits of a forward over x[0 .. P+k-1] alone (DESIGN.md)."""
    ids, r = _sequences(default_trace, 1)[0]
    rows = oracle_fp32.rows(ids, r)
    assert rows.shape == (r, oracle_fp32.vocab_size) and rows.dtype == np.float32
    p = len(ids) - r
    for k in (0, r // 2, r - 1):
        with torch.inference_mode():
            prefix = oracle_fp32.model(input_ids=torch.tensor(ids[None, :p + k]), use_cache=False).logits[0, -1]
        np.testing.assert_allclose(rows[k], prefix.numpy(), atol=2e-4, rtol=0)
        assert rows[k].argmax() == prefix.argmax().item()


def test_bf16_rows_are_stored_as_computed(oracle_bf16, default_trace):
    import ml_dtypes

    ids, r = _sequences(default_trace, 1)[0]
    rows = oracle_bf16.rows(ids, r)
    assert rows.dtype == np.dtype(ml_dtypes.bfloat16)
    with torch.inference_mode():
        ref = oracle_bf16.model(input_ids=torch.tensor(ids[None]), use_cache=False).logits[0, -r - 1:-1]
    assert np.array_equal(rows.astype(np.float32), ref.float().numpy())  # bit-exact, no second rounding


def test_one_pass_vs_stepwise_float32_same_argmax_everywhere(oracle_fp32, default_trace):
    worst = 0.0
    for ids, r in _sequences(default_trace, FP32_STEPWISE_CASES):
        full, step = oracle_fp32.rows(ids, r), oracle_fp32.rows(ids, r, stepwise=True)
        assert np.array_equal(full.argmax(-1), step.argmax(-1))
        worst = max(worst, float(np.abs(full - step).max()))
    assert worst < 1e-3, worst


def test_one_pass_vs_stepwise_bfloat16_agree_where_confident(oracle_bf16, oracle_fp32, default_trace):
    """Same argmax at every confident position, and the two bf16 paths differ by less than bf16
    itself differs from fp32 (the issue's cosine >= 0.9999 was measured on a random-weight model;
    this trained fixture's bf16 rows sit at cosine ~0.9997 from fp32, see the report)."""
    confident_seen, mode_gap, bf16_gap = 0, 0.0, 0.0
    for ids, r in _sequences(default_trace, STEPWISE_CASES):
        full, step = oracle_bf16.rows(ids, r), oracle_bf16.rows(ids, r, stepwise=True)
        full32, step32 = full.astype(np.float32), step.astype(np.float32)
        confident = prob_margins(full32) >= 0.1
        confident_seen += int(confident.sum())
        assert np.array_equal(full32.argmax(-1)[confident], step32.argmax(-1)[confident])
        mode_gap = max(mode_gap, float(1 - _cosine(full32, step32).min()))
        bf16_gap = max(bf16_gap, float(1 - _cosine(full32, oracle_fp32.rows(ids, r)).min()))
    assert confident_seen > 0, "no confident position: the comparison above would prove nothing"
    assert mode_gap <= bf16_gap, (mode_gap, bf16_gap)
    assert mode_gap < 1e-3  # a wrong position, cache or mask would cost far more than rounding


def test_greedy_continuation_is_the_models_argmax(oracle_fp32, fixture_model):
    """complete() matches transformers' own greedy generate, and every generated token is the
    argmax of its teacher-forced row."""
    from harness.cases import load_cases, tokenize_case

    spec = load_cases().specs[0]
    case = tokenize_case(spec, oracle_fp32.tokenizer, oracle_fp32.vocab_size)
    done = oracle_fp32.complete([case])[0]
    assert done.prompt_ids == case.prompt_ids and len(done.continuation_ids) == spec.new_tokens
    with torch.inference_mode():
        gen = oracle_fp32.model.generate(torch.tensor([case.prompt_ids]), do_sample=False,
                                         max_new_tokens=spec.new_tokens, min_new_tokens=0, pad_token_id=0)
    gen = [int(t) for t in gen[0, len(case.prompt_ids):]]
    eos = oracle_fp32.tokenizer.eos_token_id
    upto = gen.index(eos) + 1 if eos in gen else len(gen)  # generate stops at end-of-text; the oracle goes on
    assert list(done.continuation_ids[:upto]) == gen[:upto]
    rows = oracle_fp32.rows(done.input_ids, len(done.continuation_ids))
    assert list(rows.argmax(-1)) == list(done.continuation_ids)


def test_a_given_continuation_is_kept(oracle_bf16):
    from harness.cases import Case

    given = Case("g", (5, 6, 7), (8, 9), 2)
    open_ = Case("o", (5, 6, 7), None, 3)
    out = oracle_bf16.complete([given, open_])
    assert out[0] == given
    assert out[1].continuation_ids is not None and len(out[1].continuation_ids) == 3


def test_batching_equal_lengths_changes_nothing(oracle_bf16, default_trace):
    """Cases batch only with cases of their own length, so a case's rows do not depend on its
    neighbours (or on the shard it ran in)."""
    seqs = _sequences(default_trace, 3)
    n = min(len(ids) for ids, _ in seqs)
    batch = np.stack([ids[:n] for ids, _ in seqs])
    together = oracle_bf16.rows_batch(batch, 8)
    for b in range(len(batch)):
        alone = oracle_bf16.rows(batch[b], 8)
        assert np.array_equal(together[b].astype(np.float32), alone.astype(np.float32))


def test_rows_rejects_impossible_row_counts(oracle_bf16):
    with pytest.raises(ValueError):
        oracle_bf16.rows([1, 2, 3], 3)
    with pytest.raises(ValueError):
        oracle_bf16.rows([1, 2, 3], 0)


def test_metadata_is_provenance(oracle_bf16, fixture_model):
    import transformers

    from harness.models import tokenizer_sha256, weights_sha256

    meta = oracle_bf16.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["dtype"] == "bfloat16" and meta["device"] == "cpu"
    assert meta["torch_version"] == torch.__version__ and meta["transformers_version"] == transformers.__version__
    assert meta["tokenizer_sha256"] == tokenizer_sha256(fixture_model)
    assert weights_sha256(fixture_model)["model.safetensors"] in meta["model"]
    assert str(fixture_model) in meta["model"]


def test_parse_max_memory():
    assert parse_max_memory("0=20GiB, cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory(None) is None
    for bad in ("20GiB", "gpu=1GiB", "cpu=", "cpu=lots"):
        with pytest.raises(InputError, match="--max-memory"):
            parse_max_memory(bad)


def test_max_memory_needs_device_auto(fixture_model):
    with pytest.raises(InputError, match="--device auto"):
        HFOracle(max_memory="cpu=1GiB")


def test_device_auto_with_disk_offload_gives_the_same_rows(oracle_bf16, default_trace):
    """accelerate's device_map="auto": with a CPU budget smaller than the model every weight is read
    from the safetensors files on disk, layer by layer, and the rows do not change."""
    ids, r = _sequences(default_trace, 1)[0]
    auto = HFOracle(device="auto", max_memory="cpu=200KB")
    rows = auto.rows(ids, r)
    assert "disk" in auto.metadata()["device_map"]
    assert np.array_equal(rows.astype(np.float32), oracle_bf16.rows(ids, r).astype(np.float32))
    short = ids[:12]  # stepwise through offloaded layers: a short sequence is enough
    assert np.array_equal(auto.rows(short, 4, stepwise=True).astype(np.float32),
                          oracle_bf16.rows(short, 4, stepwise=True).astype(np.float32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_an_input_error(fixture_model):
    o = HFOracle(device="cuda")
    with pytest.raises(InputError, match="--device cuda"):
        o.model


def test_multimodal_checkpoint_runs_through_its_text_decoder(fixture_model, tmp_path):
    """A Qwen3_5ForConditionalGeneration checkpoint (tiny, random, small vision tower): the oracle
    loads its text decoder and gives the multimodal model's own logits for text input."""
    import shutil

    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from harness.models import read_config

    text = {k: v for k, v in read_config(fixture_model).items()
            if k not in ("architectures", "transformers_version", "dtype", "torch_dtype")}
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text["hidden_size"],
                  patch_size=4, spatial_merge_size=1, temporal_patch_size=1, num_position_embeddings=16)
    v = text["vocab_size"]
    cfg = Qwen3_5Config(text_config=text, vision_config=vision, image_token_id=v - 4, video_token_id=v - 3,
                        vision_start_token_id=v - 2, vision_end_token_id=v - 1)
    torch.manual_seed(0)
    mm = Qwen3_5ForConditionalGeneration(cfg).eval()
    mm.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(fixture_model / name, tmp_path / name)

    oracle = HFOracle(tmp_path, dtype="float32")
    assert oracle.vocab_size == v
    ids = np.array(oracle.tokenizer.encode("Return the sum of the values.", add_special_tokens=False) + [7, 8, 9])
    rows = oracle.rows(ids, 3)
    with torch.inference_mode():
        ref = mm(input_ids=torch.tensor(ids[None])).logits[0, -4:-1].numpy()
    np.testing.assert_allclose(rows, ref, atol=1e-5, rtol=0)
    step = oracle.rows(ids, 3, stepwise=True)
    assert np.array_equal(step.argmax(-1), ref.argmax(-1))
