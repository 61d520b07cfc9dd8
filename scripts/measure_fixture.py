"""Measure whether the bundled fixture is a *useful* fixture (issue 2's bar), independently of the
harness: bf16 oracle margins on the held-out prompts, and the flips that plain per-block-32 weight
rounding (fp16 model, scale max|w|/qmax, round half to even) causes at int8 and int4.

    python scripts/measure_fixture.py            # prints the figures recorded in the fixture README

A useful fixture: the oracle is confident (prob margin >= 0.1) at most but not all positions,
int8 rounding makes no confident flip, int4 rounding makes some.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.cases import load_cases, tokenize_case  # noqa: E402
from harness.models import fixture_model_path, load_causal_lm, load_tokenizer  # noqa: E402

NEW_TOKENS = 16
MIN_MARGIN = 0.1


def round_weights(model, qmax: int, block: int = 32, head: bool = False) -> None:
    """Plain symmetric rounding of every body linear (and optionally the head), in place."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear) or (name == "lm_head" and not head):
                continue
            w = mod.weight.data.float()
            out, inp = w.shape
            wb = w.reshape(out, inp // block, block)
            scale = (wb.abs().amax(-1, keepdim=True) / qmax).half().float()
            q = torch.where(scale > 0, torch.round(wb / scale), torch.zeros_like(wb)).clamp(-qmax, qmax)
            mod.weight.data = (q * scale).reshape(out, inp).half()


def rows(model, ids: list[int], r: int) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).logits[0, -r - 1:-1]
    return out.float().numpy().astype(np.float64)


def main() -> int:
    torch.manual_seed(0)
    mdir = fixture_model_path()
    tok = load_tokenizer(mdir)
    oracle = load_causal_lm(mdir, "bfloat16")
    seqs = []
    for spec in load_cases():
        c = tokenize_case(spec, tok)
        with torch.no_grad():
            g = oracle.generate(torch.tensor([c.prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
        seqs.append((spec.id, g[0].tolist(), NEW_TOKENS, tok.decode(g[0, len(c.prompt_ids):])))
    o_rows = {cid: rows(oracle, ids, r) for cid, ids, r, _ in seqs}
    margins = []
    for cid, ids, r, text in seqs:
        lg = o_rows[cid]
        p = np.exp(lg - lg.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        top = np.sort(p, -1)
        margins.extend((top[:, -1] - top[:, -2]).tolist())
        print(f"{cid:14s} {text!r}")
    margins = np.array(margins)
    conf = margins >= MIN_MARGIN
    result = {
        "positions": int(margins.size),
        "confident": int(conf.sum()),
        "margin_quantiles": {q: round(float(np.quantile(margins, q)), 3) for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)},
    }
    for label, qmax, head in (("fp16", None, False), ("int8", 127, False), ("int8+head", 127, True),
                              ("int4", 7, False)):
        cand = load_causal_lm(mdir, "float16")
        if qmax is not None:
            round_weights(cand, qmax, head=head)
        flips = ties = 0
        cos = []
        for (cid, ids, r, _), m in zip(seqs, margins.reshape(len(seqs), -1)):
            c_rows = rows(cand, ids, r)
            o = o_rows[cid]
            diff = c_rows.argmax(-1) != o.argmax(-1)
            flips += int((diff & (m >= MIN_MARGIN)).sum())
            ties += int((diff & (m < MIN_MARGIN)).sum())
            cos.extend((np.sum(o * c_rows, -1) / np.linalg.norm(o, axis=-1) / np.linalg.norm(c_rows, axis=-1)).tolist())
        result[label] = {"confident_flips": flips, "tie_flips": ties, "min_cosine": round(min(cos), 5),
                         "mean_cosine": round(float(np.mean(cos)), 5)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
