"""Regenerate the bundled fixture model (harness/data/fixture-model) deterministically.

    python scripts/make_fixture.py collect   # corpus + held-out prompts from CPython docstrings
    python scripts/make_fixture.py train     # tokenizer + model, written into the package

The corpus is committed (scripts/fixture/corpus.txt) so that `train` does not depend on the
running Python's stdlib; `collect` is only needed to rebuild it. See harness/data/fixture-model/README.md
for what was measured on the result.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "scripts" / "fixture" / "corpus.txt"
MODEL_DIR = ROOT / "harness" / "data" / "fixture-model"
CASES = ROOT / "harness" / "data" / "cases" / "fixture.jsonl"

# Training text: docstrings of these CPython modules (PSF License 2.0, redistributable with the
# notice kept in scripts/fixture/NOTICE). Held-out prompts come from modules NOT in this list,
# so the gate scores text the model never saw.
TRAIN_MODULES = (
    "argparse collections functools itertools json re textwrap random heapq csv logging shutil "
    "subprocess threading socket zipfile tarfile enum dataclasses contextlib copy"
).split()
HELDOUT_MODULES = ("statistics", "difflib", "calendar", "urllib.parse", "gzip", "abc", "bisect",
                   "decimal", "pathlib", "queue", "string", "pprint")
CORPUS_CHARS = 50_000
EOS = "<|endoftext|>"

# The 27B's structure, scaled down: 3 GatedDeltaNet : 1 gated full attention, GQA 6 query heads
# per KV head (27B: 24/4), GatedDeltaNet 3 value heads per key head (27B: 48/16), untied head,
# partial rotary 0.25. Every linear's input width is a multiple of 32 (the quantizer's block).
CONFIG = dict(
    vocab_size=2048,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=8,
    layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 2,
    num_attention_heads=6,
    num_key_value_heads=1,
    head_dim=32,
    linear_num_key_heads=2,
    linear_num_value_heads=6,
    linear_key_head_dim=32,
    linear_value_head_dim=32,
    linear_conv_kernel_dim=4,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
)
SEED = 1234
STEPS = 420
BATCH = 16
SEQ = 128
LR = 3e-3


def _docstrings(module_name: str) -> list[str]:
    mod = importlib.import_module(module_name)
    docs = [inspect.getdoc(mod) or ""]
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        docs.append(inspect.getdoc(obj) or "")
    return [d.strip() for d in docs if d and len(d.strip()) > 40]


def collect() -> None:
    docs: list[str] = []
    for m in TRAIN_MODULES:
        docs.extend(_docstrings(m))
    text, total = [], 0
    for d in docs:
        if total >= CORPUS_CHARS:
            break
        text.append(d)
        total += len(d)
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    CORPUS.write_text(f"\n{EOS}\n".join(text) + "\n", encoding="utf-8")
    # One prompt per held-out module: the start of its first sentence-rich docstring.
    cases = []
    for m in HELDOUT_MODULES:
        for d in _docstrings(m):
            words = d.replace("\n", " ").split()
            if len(words) >= 14 and ">>>" not in " ".join(words[:14]):
                cases.append({"id": m.replace(".", "-"), "prompt": " ".join(words[:14])})
                break
    CASES.parent.mkdir(parents=True, exist_ok=True)
    CASES.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")
    print(f"corpus {len(CORPUS.read_bytes())} bytes, {len(cases)} held-out prompts")


def train(steps: int, out: Path = MODEL_DIR) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    text = CORPUS.read_text(encoding="utf-8")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=CONFIG["vocab_size"], special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text.split(f"\n{EOS}\n"), trainer=trainer)
    eos_id = tok.token_to_id(EOS)
    ids: list[int] = []
    for doc in text.split(f"\n{EOS}\n"):
        ids.extend(tok.encode(doc).ids + [eos_id])
    data = torch.tensor(ids, dtype=torch.long)
    print(f"tokenizer vocab {tok.get_vocab_size()}, corpus {len(data)} tokens")

    cfg = Qwen3_5TextConfig(**CONFIG, eos_token_id=eos_id, bos_token_id=None, pad_token_id=None)
    model = Qwen3_5ForCausalLM(cfg)
    print(f"model {sum(p.numel() for p in model.parameters()):,} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)
    warmup = 20
    t0 = time.time()
    for step in range(steps):
        lr = LR * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
        x = torch.stack([data[s:s + SEQ] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == steps - 1:
            print(f"step {step:4d} loss {loss.item():.3f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)

    # Shipped in bf16, like the real checkpoint: the oracle's native precision.
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    hf_tok.save_pretrained(tmp)
    readme = out / "README.md"
    if readme.exists():
        shutil.copy(readme, tmp / "README.md")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("collect")
    t = sub.add_parser("train")
    t.add_argument("--steps", type=int, default=STEPS)
    t.add_argument("--out", type=Path, default=MODEL_DIR, help="folder to write (default: the package's fixture)")
    a = p.parse_args(argv)
    if a.cmd == "collect":
        collect()
    else:
        train(a.steps, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
