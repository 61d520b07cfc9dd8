"""The layer-streamed fp32 oracle: bit-identical to the in-memory fp32 forward, one layer at a time,
and clear refusals of checkpoints it cannot stream."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.candidates.base import Sequence
from harness.errors import InputError
from harness.models import fixture_model_path, load_causal_lm

torch = pytest.importorskip("torch")
from oracles.stream import CheckpointIndex, StreamedOracle, parse_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _fixture_config() -> dict:
    spec = importlib.util.spec_from_file_location("make_fixture", ROOT / "scripts" / "make_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return dict(mod.CONFIG)


def _save_random(path: Path, config, cls, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():  # non-trivial norms, so a norm loaded wrong changes the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.1)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The bundled fixture; until it is committed, a random model of the same config (bf16)."""
    p = fixture_model_path()
    if (p / "config.json").is_file():
        return p
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    cfg = Qwen3_5TextConfig(**_fixture_config(), eos_token_id=0, bos_token_id=None, pad_token_id=None)
    return _save_random(tmp_path_factory.mktemp("fixture") / "model", cfg, Qwen3_5ForCausalLM)


@pytest.fixture(scope="module")
def sequences(model_dir) -> list[Sequence]:
    """Six bundled prompts (random ids where the model has no tokenizer) + 16 teacher-forced tokens,
    and two more of an existing length, so that equal-length cases share a batch."""
    from harness.cases import load_cases

    rng = np.random.default_rng(7)
    vocab = 2048
    tok = None
    if (model_dir / "tokenizer.json").is_file():
        from harness.models import load_tokenizer

        tok = load_tokenizer(model_dir)
    out = []
    for spec in load_cases().specs[:6]:  # six cases keep the test quick on 2 cores
        prompt = (tok.encode(spec.prompt, add_special_tokens=False) if tok is not None
                  else rng.integers(0, vocab, size=14).tolist())
        ids = np.array(prompt + rng.integers(0, vocab, size=16).tolist(), dtype=np.int64)
        out.append(Sequence(spec.id, ids, 16))
    n = len(out[0].input_ids)
    out.append(Sequence("same-length", rng.integers(0, vocab, size=n), 16))
    out.append(Sequence("short", rng.integers(0, vocab, size=7), 3))
    return out


def in_memory(model_dir: Path, seqs, *, batch_size: int = 1, keep: bool = True) -> dict[str, np.ndarray]:
    """The ordinary fp32 forward, whole model in memory: equal-length cases batched (at most
    `batch_size`), the head on the last R+1 positions (`logits_to_keep`) or on all of them."""
    model = load_causal_lm(model_dir, "float32")
    batches: dict[tuple[int, int], list[list[Sequence]]] = {}
    for s in seqs:
        runs = batches.setdefault((len(s.input_ids), s.rows), [[]])
        if len(runs[-1]) == batch_size:
            runs.append([])
        runs[-1].append(s)
    out = {}
    with torch.no_grad():
        for runs in batches.values():
            for run in runs:
                ids = torch.from_numpy(np.stack([s.input_ids for s in run]))
                r = run[0].rows
                kw = {"logits_to_keep": r + 1} if keep else {}
                logits = model(input_ids=ids, **kw).logits[:, -r - 1:-1]
                out.update({s.case_id: logits[j].numpy() for j, s in enumerate(run)})
    return {s.case_id: out[s.case_id] for s in seqs}


@pytest.fixture(scope="module")
def reference(model_dir, sequences):
    return in_memory(model_dir, sequences, batch_size=8)


@pytest.fixture(scope="module")
def streamed(model_dir, sequences):
    """One streamed run, watched: how many layers hold real weights whenever a layer runs."""
    oracle = StreamedOracle(model_dir, batch_size=8)
    held_at_forward = []
    weights_seen = []

    def count_materialized(module, args):
        held_at_forward.append(sum(any(p.device.type != "meta" for p in layer.parameters())
                                   for layer in oracle.layers))

    def weights_like_a_loaded_model(module, args):
        # torch picks matmul paths by the weight's autograd state: they must be a loaded model's
        weights_seen.extend((p.requires_grad, p.is_inference(), p.dtype) for p in module.parameters())

    hooks = [layer.register_forward_pre_hook(count_materialized) for layer in oracle.layers]
    hooks += [m.register_forward_pre_hook(weights_like_a_loaded_model) for m in (*oracle.layers, oracle.head)]
    try:
        traces = list(oracle.run(sequences))
    finally:
        for h in hooks:
            h.remove()
    assert weights_seen and set(weights_seen) == {(True, False, torch.float32)}
    return oracle, traces, held_at_forward


def assert_bit_identical(traces, reference):
    assert [t.case_id for t in traces] == list(reference)
    for t in traces:
        assert t.logits.dtype == np.float32
        assert t.logits.shape == reference[t.case_id].shape
        assert np.array_equal(t.logits.view(np.uint32), reference[t.case_id].view(np.uint32)), t.case_id


def test_logits_are_bit_identical_to_the_in_memory_fp32_forward(streamed, sequences, reference):
    oracle, traces, _ = streamed
    groups = oracle.groups(sequences)
    assert sorted(i for g in groups for i in g) == list(range(len(sequences)))
    assert any(len(g) > 1 for g in groups)  # batched cases are exact too
    assert all(len({len(sequences[i].input_ids) for i in g}) == 1 for g in groups)
    assert_bit_identical(traces, reference)
    for t, s in zip(traces, sequences):
        assert np.array_equal(t.input_ids, s.input_ids) and t.rows == s.rows


def test_unbatched_with_the_head_on_every_position_matches_a_plain_forward(model_dir, sequences):
    seqs = [sequences[0], sequences[-2], sequences[-1]]
    oracle = StreamedOracle(model_dir, head_rows="all", head_chunk_rows=512)
    assert_bit_identical(list(oracle.run(seqs)), in_memory(model_dir, seqs, keep=False))


def test_at_most_one_layer_is_held_and_every_layer_is_freed(streamed, sequences):
    oracle, _, held_at_forward = streamed
    assert len(held_at_forward) == len(oracle.groups(sequences)) * len(oracle.layers)
    assert max(held_at_forward) == 1
    assert all(p.device.type == "meta" for p in oracle.model.parameters())
    st = oracle.stats
    total = sum(t.nbytes(4) for t in oracle.index.tensors.values())
    assert 0 < st.largest_layer_bytes < st.peak_held_bytes <= st.need_bytes
    assert st.peak_held_bytes < total / 3  # the whole fp32 model is never held


def test_small_head_chunks_over_a_sharded_checkpoint_are_still_bit_identical(model_dir, sequences, reference,
                                                                             tmp_path):
    # Shards of ~300 KB: layers straddle files, and the index must route every tensor.
    model = load_causal_lm(model_dir, "bfloat16")
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="300KB")
    for f in model_dir.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, tmp_path / f.name)
    assert len(list(tmp_path.glob("*.safetensors"))) > 3 and (tmp_path / "model.safetensors.index.json").is_file()
    oracle = StreamedOracle(tmp_path, head_chunk_rows=256, batch_size=8)
    seqs = [sequences[0], sequences[-2], sequences[1]]
    traces = list(oracle.run(seqs))
    assert oracle.stats.head_chunks == -(-oracle.vocab_size // 256) > 1
    assert_bit_identical(traces, {s.case_id: reference[s.case_id] for s in seqs})


def test_logits_in_blocks_of_cases_are_the_same_logits(model_dir, sequences, reference):
    # one head pass per batch: the case set's logits are never all held
    oracle = StreamedOracle(model_dir, batch_size=8, logits_block_bytes=1)
    traces = list(oracle.run(sequences))
    groups = oracle.groups(sequences)
    assert 1 < oracle.stats.head_passes <= len(groups)
    assert oracle.stats.logits_block_bytes < oracle.stats.logits_bytes
    assert sorted(t.case_id for t in traces) == sorted(reference)
    assert_bit_identical(sorted(traces, key=lambda t: list(reference).index(t.case_id)), reference)


def test_multimodal_checkpoint_naming_streams_its_text_decoder(tmp_path):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    text = _fixture_config()
    text.update(num_hidden_layers=4, layer_types=text["layer_types"][:4])
    cfg = Qwen3_5Config(text_config=text, tie_word_embeddings=False, vision_config=dict(
        depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text["hidden_size"],
        patch_size=4, spatial_merge_size=1, temporal_patch_size=1))
    path = _save_random(tmp_path / "vlm", cfg, Qwen3_5ForConditionalGeneration, seed=3)
    oracle = StreamedOracle(path)
    assert oracle.embed_name == "model.language_model.embed_tokens.weight"
    rng = np.random.default_rng(0)
    seqs = [Sequence("a", rng.integers(0, 2048, size=20), 8), Sequence("b", rng.integers(0, 2048, size=9), 8)]
    assert_bit_identical(list(oracle.run(seqs)), in_memory(path, seqs))
    assert_bit_identical(list(StreamedOracle(path, head_rows="all").run(seqs)), in_memory(path, seqs, keep=False))


def test_parse_bytes():
    assert parse_bytes("8GB") == 8_000_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5g") == 1_500_000_000
    assert parse_bytes("4096") == 4096
    for bad in ("eight", "8XB", "-1GB", "0"):
        with pytest.raises(InputError, match="--max-memory"):
            parse_bytes(bad)


def test_a_budget_below_the_need_stops_with_both_figures(model_dir, sequences):
    oracle = StreamedOracle(model_dir, max_memory="1MB")
    with pytest.raises(InputError) as e:
        list(oracle.run(sequences))
    msg = str(e.value)
    assert "--max-memory 976.56 KiB is below the measured need of" in msg
    assert "largest layer model.layers." in msg
    # a budget that fits lets it run, with the head chunk shrunk to fit
    need = oracle.stats.need_bytes
    ok = StreamedOracle(model_dir, max_memory=need + 2**20)
    assert len(list(ok.run(sequences[:1]))) == 1 and ok.stats.need_bytes <= need + 2**20


def test_pickle_weights_are_refused(tmp_path, model_dir):
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02not really")
    with pytest.raises(InputError, match=r"its weights are pytorch_model\.bin; the streamed oracle memory-maps "
                                         r"safetensors files only"):
        StreamedOracle(tmp_path)


def test_a_corrupt_weight_file_is_refused_by_name(tmp_path, model_dir):
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(InputError, match=r"model\.safetensors: cannot be memory-mapped as safetensors"):
        StreamedOracle(tmp_path)


def test_a_missing_layer_tensor_names_the_layer_and_the_tensor(tmp_path, model_dir):
    from safetensors.torch import load_file, save_file

    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    tensors = load_file(str(model_dir / "model.safetensors"))
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"layer 3 \(model\.layers\.3\) lacks tensor "
                                         r"'model\.layers\.3\.mlp\.up_proj\.weight'"):
        StreamedOracle(tmp_path)


def test_an_index_naming_a_missing_shard_is_refused(tmp_path, model_dir):
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    shutil.copy(model_dir / "model.safetensors", tmp_path / "model.safetensors")
    names = list(CheckpointIndex(tmp_path).tensors)
    weight_map = {n: "model.safetensors" for n in names}
    weight_map[names[5]] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(InputError, match=rf"maps tensor '{names[5]}' to model-00002-of-00002\.safetensors, "
                                         rf"which does not exist"):
        StreamedOracle(tmp_path)
    shutil.copy(model_dir / "model.safetensors", tmp_path / "model-00002-of-00002.safetensors")
    weight_map[names[5]] = "model.safetensors"
    weight_map[names[6]] = "model-00002-of-00002.safetensors"
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    from safetensors.torch import load_file, save_file

    save_file({names[0]: load_file(str(tmp_path / "model.safetensors"))[names[0]]},
              str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(InputError, match=rf"maps tensor '{names[6]}' to model-00002-of-00002\.safetensors, "
                                         rf"which does not hold it \(it is in model\.safetensors\)"):
        StreamedOracle(tmp_path)


def test_only_float32_streams(model_dir):
    with pytest.raises(InputError, match="float32 only"):
        StreamedOracle(model_dir, dtype="bfloat16")


def test_command_streams_the_same_trace_as_the_in_memory_command(tmp_path, capsys):
    from harness.cli import main
    from harness.trace import open_trace

    model = fixture_model_path()
    if not (model / "tokenizer.json").is_file():
        pytest.skip("the bundled fixture model is not committed yet")
    rng = np.random.default_rng(3)
    prompts = ["The quick brown fox", "Return the median of data", "Parse a URL into six components"]
    given = tmp_path / "given.jsonl"
    given.write_text("".join(json.dumps({"id": f"c{i}", "prompt": p, "continuation_ids": rng.integers(0, 2048, 6 + i).tolist()})
                             + "\n" for i, p in enumerate(prompts)))
    memory, streamed = tmp_path / "memory.safetensors", tmp_path / "streamed.safetensors"
    common = ["--model", str(model), "--cases", str(given), "--quiet"]
    assert main(["oracle", "--dtype", "float32", "--out", str(memory), *common]) == 0
    assert main(["oracle", "--stream", "--out", str(streamed), *common]) == 0
    a, b = open_trace(memory), open_trace(streamed)
    assert b.runner == "hf-stream" and b.variant == "fp32" and b.metadata["execution"] == "layer-streamed"
    assert a.case_ids == b.case_ids
    for cid in a.case_ids:
        assert np.array_equal(a.input_ids(cid), b.input_ids(cid))
        assert np.array_equal(a.case(cid).logits.view(np.uint32), b.case(cid).logits.view(np.uint32)), cid

    # prompts only: the sequences come from a trace (normally the bf16 oracle's)
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({"id": f"c{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    again = tmp_path / "again.safetensors"
    assert main(["oracle", "--stream", "--cases", str(bare), "--model", str(model), "--sequences", str(memory),
                 "--out", str(again), "--quiet"]) == 0
    c = open_trace(again)
    assert json.loads(c.metadata["continuation"]) == {"c0": "sequences", "c1": "sequences", "c2": "sequences"}
    for cid in a.case_ids:
        assert np.array_equal(a.case(cid).logits, c.case(cid).logits)

    capsys.readouterr()
    refused = [
        (["--stream", "--cases", str(bare)], "gives no continuation, and --stream makes none: pass --sequences"),
        (["--stream", "--cases", str(given), "--device", "auto"], "--device does not apply to --stream"),
        (["--stream", "--cases", str(given), "--dtype", "bfloat16"], "float32 only"),
        (["--cases", str(given), "--sequences", str(memory)], "--sequences applies to --stream only"),
        (["--stream", "--cases", str(given), "--max-memory", "0=8GiB"], "with --stream give one size"),
    ]
    for extra, message in refused:
        out = tmp_path / "refused.safetensors"
        assert main(["oracle", "--model", str(model), "--out", str(out), "--quiet", *extra]) == 2, extra
        assert message in capsys.readouterr().err
        assert not out.exists()
