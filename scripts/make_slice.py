"""A Qwen3.6-27B "slice": the 27B's exact per-layer shapes and vocabulary, few decoder layers.

    python scripts/make_slice.py --out /data/slice27b                 # 4 layers (3 GatedDeltaNet + 1 attention)
    python scripts/make_slice.py --out /data/slice27b-8 --layers 8
    python scripts/make_slice.py --out /tmp/tiny --scale 16           # every width / 16 (the tests' slice)

Shapes (seed card; Qwen3.5-27B's published config; transformers' qwen3_5 defaults where the card is
silent, marked *): hidden 5120; SwiGLU MLP 17408; gated full attention with 24 query / 4 KV heads,
head_dim 256, partial rotary 0.25, rope_theta 1e7, output gate; GatedDeltaNet with 16 key heads and
48 value heads, key and value head dim 128*, conv kernel 4*; RMSNorm eps 1e-6*; untied 248320-token
head. Layers follow the 3:1 interleave (layer i is full attention when i % 4 == 3).

Written as sharded bf16 safetensors with `model.safetensors.index.json`, like the real checkpoint,
one tensor at a time and the big ones in row blocks straight into the file: peak memory is one
row block, never the model (the 4-layer slice is 8.1 GB on disk).

Weights are random, but not so that the logits are flat: a 0.02-normal head over 248320 tokens
gives every position a near-uniform softmax (no confident position, nothing for a gate to judge).
The head instead holds a planted bigram: the row of token pi(t), for a fixed random permutation
pi, gets `boost[t]` times the direction of token t's embedding, so after token t the model
prefers pi(t) by a logit gap of about boost[t], on top of noise of std `--logit-noise` from the
random part of the head. boost[t] is drawn uniform on [0, --boost-max], so the margins spread
from exact ties (small boosts, lost in the noise) to near-certainty, and the decoder layers
(out-projections scaled so that each adds a fraction of the embedding's size to the residual)
make the prediction depend on context as well. `benchmarks/bench_slice.py` prints the margin
histogram this gives.

The tokenizer is a synthetic byte-level BPE with exactly 248320 tokens (256 bytes, then merges of
random pairs of earlier tokens), built with `tokenizers`, so that text round-trips and every id
decodes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Qwen3.6-27B (Qwen3.5 architecture), per layer
FULL = dict(
    vocab_size=248320,
    hidden_size=5120,
    intermediate_size=17408,
    num_attention_heads=24,
    num_key_value_heads=4,
    head_dim=256,
    linear_num_key_heads=16,
    linear_num_value_heads=48,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    linear_conv_kernel_dim=4,
)
WIDTHS = ("vocab_size", "hidden_size", "intermediate_size", "head_dim", "linear_key_head_dim",
          "linear_value_head_dim")
EOS = "<|endoftext|>"
SHARD_BYTES = 2 << 30  # the real checkpoint's shards are a few GB; the head and embedding get one each
BLOCK_ROWS_BYTES = 64 << 20


def slice_config(layers: int, scale: int) -> dict:
    cfg = dict(FULL)
    for k in WIDTHS:
        if cfg[k] % scale:
            raise SystemExit(f"--scale {scale}: {k} {cfg[k]} is not divisible")
        cfg[k] //= scale
    if scale > 1:  # a width of the tests' slice must stay a multiple of the quantizer's block of 32
        for k in ("hidden_size", "intermediate_size"):
            cfg[k] = max(32, cfg[k] // 32 * 32)
    cfg.update(
        architectures=["Qwen3_5ForCausalLM"], model_type="qwen3_5_text", num_hidden_layers=layers,
        layer_types=["full_attention" if i % 4 == 3 else "linear_attention" for i in range(layers)],
        hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=False,
        attention_bias=False, attention_dropout=0.0, initializer_range=0.02, use_cache=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
        eos_token_id=0, bos_token_id=None, pad_token_id=None, dtype="bfloat16",
    )
    return cfg


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, from transformers' own model built on the meta device."""
    import torch
    from transformers import Qwen3_5ForCausalLM
    from transformers.models.qwen3_5 import Qwen3_5TextConfig

    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "dtype")}
    with torch.device("meta"):
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**keep))
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


# --- weights --------------------------------------------------------------------------------------

class Init:
    """How each tensor is drawn (float32, then rounded to bf16), reproducibly from the seed."""

    def __init__(self, cfg: dict, seed: int, logit_noise: float, boost_max: float, layer_share: float):
        self.cfg, self.seed = cfg, seed
        self.hidden = cfg["hidden_size"]
        self.logit_noise, self.boost_max, self.layer_share = logit_noise, boost_max, layer_share
        rng = np.random.default_rng([seed, 1])
        v = cfg["vocab_size"]
        self.perm = rng.permutation(v)  # token t is followed by perm[t]
        self.boost = rng.uniform(0.0, boost_max, size=v).astype(np.float32)
        self.inv_perm = np.empty_like(self.perm)
        self.inv_perm[self.perm] = np.arange(v)

    def rng(self, name: str, block: int = 0) -> np.random.Generator:
        import hashlib

        tag = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        return np.random.default_rng([self.seed, tag, block])

    def rows(self, name: str, shape: tuple[int, ...], start: int, stop: int, embed=None) -> np.ndarray:
        """Rows [start, stop) of tensor `name` (axis 0), float32."""
        r = self.rng(name, start)
        n = stop - start
        rest = shape[1:]
        leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else name.rsplit(".", 1)[-1]
        if name == "model.embed_tokens.weight":
            return r.normal(0.0, 0.02, size=(n, *rest)).astype(np.float32)
        if name == "lm_head.weight":
            # noise of std logit_noise on a unit-RMS hidden state, plus the planted bigram: row j
            # is the successor of token inv_perm[j]; its boost along that token's embedding
            w = r.normal(0.0, self.logit_noise / math.sqrt(self.hidden), size=(n, *rest)).astype(np.float32)
            prev = self.inv_perm[start:stop]
            e = np.asarray(embed[np.sort(prev)], dtype=np.float32)[np.argsort(np.argsort(prev))]
            rms = np.sqrt((e * e).mean(axis=1, keepdims=True)) + 1e-12
            w += self.boost[prev][:, None] * e / (rms * self.hidden)
            return w
        if leaf.endswith("norm") or leaf in ("input_layernorm", "post_attention_layernorm", "q_norm", "k_norm"):
            # Qwen3.5's RMSNorm scales by (1 + w): zeros; the GatedDeltaNet's gated norm by w: ones
            return (np.ones if ".linear_attn.norm" in name else np.zeros)((n, *rest), np.float32)
        if name.endswith("dt_bias"):
            return np.ones((n, *rest), np.float32)
        if name.endswith("A_log"):
            return np.log(r.uniform(1.0, 16.0, size=(n, *rest))).astype(np.float32)
        if leaf in ("o_proj", "out_proj", "down_proj"):
            # each layer adds about layer_share of the embedding's RMS (0.02) to the residual
            fan_in = shape[1]
            std = self.layer_share * 0.02 / math.sqrt(fan_in) / math.sqrt(max(1, self.cfg["num_hidden_layers"] / 4))
            return r.normal(0.0, std, size=(n, *rest)).astype(np.float32)
        return r.normal(0.0, 0.02, size=(n, *rest)).astype(np.float32)


def _bf16_bytes(a: np.ndarray) -> bytes:
    import ml_dtypes

    return np.ascontiguousarray(a.astype(ml_dtypes.bfloat16)).tobytes()


def _write_shard(path: Path, names: list[str], shapes: dict, init: Init, embed_path: Path | None) -> None:
    """One safetensors file, each tensor generated in row blocks and written as it comes."""
    header, offset = {}, 0
    for n in names:
        nbytes = math.prod(shapes[n]) * 2
        header[n] = {"dtype": "BF16", "shape": list(shapes[n]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    embed = None
    if "lm_head.weight" in names:
        embed = _embed_view(embed_path, shapes["model.embed_tokens.weight"])
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for n in names:
            shape = shapes[n]
            row_bytes = max(1, math.prod(shape[1:]) * 4)
            step = max(1, BLOCK_ROWS_BYTES // row_bytes)
            for a in range(0, shape[0], step):
                f.write(_bf16_bytes(init.rows(n, shape, a, min(shape[0], a + step), embed=embed)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _embed_view(path: Path, shape: tuple[int, ...]):
    """The embedding, memory-mapped from its shard (the head's bigram reads rows of it)."""
    import ml_dtypes

    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(hlen))["model.embed_tokens.weight"]
    start = 8 + hlen + entry["data_offsets"][0]
    return np.memmap(path, dtype=ml_dtypes.bfloat16, mode="r", offset=start, shape=tuple(shape))


def write_weights(out: Path, cfg: dict, *, seed: int, logit_noise: float, boost_max: float,
                  layer_share: float, log=print) -> None:
    shapes = tensor_shapes(cfg)
    init = Init(cfg, seed, logit_noise, boost_max, layer_share)
    # shards: the embedding alone, the layers packed up to SHARD_BYTES, then the final norm and head
    groups: list[list[str]] = [["model.embed_tokens.weight"]]
    current, size = [], 0
    for n in shapes:
        if n in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
            continue
        nbytes = math.prod(shapes[n]) * 2
        if current and size + nbytes > SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append(n)
        size += nbytes
    if current:
        groups.append(current)
    groups.append(["model.norm.weight", "lm_head.weight"])
    total = len(groups)
    files = [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
    weight_map, total_bytes = {}, 0
    for names, fname in zip(groups, files):
        t0 = time.perf_counter()
        _write_shard(out / fname, names, shapes, init, out / files[0])
        for n in names:
            weight_map[n] = fname
            total_bytes += math.prod(shapes[n]) * 2
        log(f"  {fname}: {len(names)} tensors, {(out / fname).stat().st_size / 2**30:.2f} GiB "
            f"in {time.perf_counter() - t0:.1f} s")
    index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


# --- tokenizer ------------------------------------------------------------------------------------

def write_tokenizer(out: Path, vocab_size: int, seed: int) -> None:
    """Byte-level BPE with exactly `vocab_size` tokens: <|endoftext|>, the 256 byte symbols, then merges
    of random pairs of earlier tokens (each new string once)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_syms = list(pre_tokenizers.ByteLevel.alphabet())
    byte_syms.sort()
    vocab: dict[str, int] = {EOS: 0}
    for s in byte_syms:
        vocab[s] = len(vocab)
    rng = np.random.default_rng([seed, 2])
    strings = list(vocab)[1:]
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        need = vocab_size - len(vocab)
        a_idx = rng.integers(0, len(strings), size=need * 2)
        b_idx = rng.integers(0, min(len(strings), 4096), size=need * 2)  # short right parts: tokens stay words
        for i, j in zip(a_idx, b_idx):
            a, b = strings[i], strings[j]
            s = a + b
            if s in vocab or len(s) > 24:
                continue
            vocab[s] = len(vocab)
            strings.append(s)
            merges.append((a, b))
            if len(vocab) == vocab_size:
                break
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "backend": "tokenizers", "eos_token": EOS, "tokenizer_class": "TokenizersBackend",
        "model_max_length": 1 << 30}, indent=2) + "\n")


def make_slice(out: str | os.PathLike, *, layers: int = 4, scale: int = 1, seed: int = 0,
               logit_noise: float = 1.0, boost_max: float = 24.0, layer_share: float = 0.35,
               log=print) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: exists and is not empty (choose a new folder)")
    if layers < 1:
        raise SystemExit(f"--layers {layers}: at least 1")
    out.mkdir(parents=True, exist_ok=True)
    cfg = slice_config(layers, scale)
    log(f"slice: {layers} layers ({cfg['layer_types'].count('linear_attention')} GatedDeltaNet, "
        f"{cfg['layer_types'].count('full_attention')} attention), hidden {cfg['hidden_size']}, "
        f"vocab {cfg['vocab_size']} -> {out}")
    write_tokenizer(out, cfg["vocab_size"], seed)
    write_weights(out, cfg, seed=seed, logit_noise=logit_noise, boost_max=boost_max,
                  layer_share=layer_share, log=log)
    cfg["transformers_version"] = __import__("transformers").__version__
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, "use_cache": True}, indent=2) + "\n")
    (out / "README.md").write_text(
        f"# Qwen3.6-27B slice ({layers} layers, widths / {scale})\n\nRandom weights with a planted "
        f"bigram, made by `scripts/make_slice.py --layers {layers} --scale {scale} --seed {seed} "
        f"--logit-noise {logit_noise} --boost-max {boost_max} --layer-share {layer_share}`. "
        "Not a language model: a rehearsal of the 27B's shapes.\n")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example:\n  python scripts/make_slice.py --out /data/slice27b --layers 4")
    ap.add_argument("--out", required=True, help="a new folder")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (3:1 GatedDeltaNet:attention), default 4")
    ap.add_argument("--scale", type=int, default=1, help="divide every width by this (the tests use 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logit-noise", type=float, default=1.0, help="std of the head's random logits")
    ap.add_argument("--boost-max", type=float, default=24.0, help="largest planted bigram logit gap")
    ap.add_argument("--layer-share", type=float, default=0.35,
                    help="each layer's output RMS as a share of the embedding's (context dependence)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    make_slice(a.out, layers=a.layers, scale=a.scale, seed=a.seed, logit_noise=a.logit_noise,
               boost_max=a.boost_max, layer_share=a.layer_share)
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
