#!/usr/bin/env python3
"""An executable stand-in for apple/coreai-models' `llm-runner`, for the tests of `coreai:` on Linux.

It honours the flags flipgate passes (--model BUNDLE --raw-tokens F --save-logits OUT
--save-logits-length full --inference-engine-variant coreai-sequential) and writes OUT as the Swift
LogitsWriter does (pretty-printed JSON, sorted keys, one row per token after the first, token_id =
the token the row predicts, logits_base64 = raw little-endian float16), with logits taken from
BUNDLE/standin-logits.safetensors: a trace whose rows are the emulated variant's logits for every
position of each sequence. It shares no code with flipgate's reader on purpose.

Two layouts, as LogitsWriter has two: FLIPGATE_STANDIN_LAYOUT=positions (the default: the
evaluation JSON the llm-runner source writes for --raw-tokens) or tokens (the generation JSON).
FLIPGATE_STANDIN_FAULT injects one failure mode: exit, hang, stdout-error, no-file, truncate, extra-row,
short-rows, wide, wrong-id, nan.
"""

import argparse
import base64
import json
import os
import sys

import numpy as np
from safetensors import safe_open


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="llm-runner")
    ap.add_argument("--model", required=True)
    ap.add_argument("--raw-tokens", required=True)
    ap.add_argument("--save-logits", required=True)
    ap.add_argument("--save-logits-length", default="5")
    ap.add_argument("--inference-engine-variant", default="coreai-pipelined")
    args = ap.parse_args(argv)
    fault = os.environ.get("FLIPGATE_STANDIN_FAULT", "")

    if fault == "exit":
        print("Loading bundle ...", file=sys.stderr)
        print("error: CoreAI: function 'main' failed to specialize", file=sys.stderr)
        print("Fatal error: model load failed (code 7)", file=sys.stderr)
        return 3
    if fault == "hang":
        import time

        time.sleep(60)
    if fault == "stdout-error":
        print("Generating...")
        print("Error: The inference engine does not support returning logits")
        return 1
    if args.inference_engine_variant != "coreai-sequential":
        print("error: logits are sampled on device by the pipelined engine; use coreai-sequential", file=sys.stderr)
        return 64
    if args.save_logits_length != "full":
        print("error: the stand-in writes full logits only", file=sys.stderr)
        return 64
    with open(os.path.join(args.model, "metadata.json"), encoding="utf-8") as f:
        if json.load(f).get("kind") != "llm":
            print("error: not a language bundle", file=sys.stderr)
            return 65
    with open(args.raw_tokens, encoding="utf-8") as f:
        tokens = json.load(f)["tokens"]

    rows = None
    with safe_open(os.path.join(args.model, "standin-logits.safetensors"), framework="numpy") as st:
        for cid in json.loads(st.metadata()["cases"]):
            if st.get_tensor(f"{cid}/input_ids").tolist() == tokens:
                rows = st.get_tensor(f"{cid}/logits").astype(np.float16)
                break
    if rows is None or rows.shape[0] != len(tokens) - 1:
        print(f"error: no logits for these {len(tokens)} raw tokens", file=sys.stderr)
        return 2
    if fault == "no-file":
        return 0
    ids = list(tokens[1:])
    if fault == "extra-row":
        rows = np.concatenate([rows, rows[-1:]])
        ids.append(ids[-1])
    elif fault == "short-rows":
        rows, ids = rows[:-1], ids[:-1]
    elif fault == "wide":
        rows = np.concatenate([rows, np.zeros((rows.shape[0], 1), dtype=np.float16)], axis=1)
    elif fault == "wrong-id":
        ids[-2] = (ids[-2] + 1) % rows.shape[1]
    elif fault == "nan":
        rows = rows.copy()
        rows[-1, 0] = np.nan

    if os.environ.get("FLIPGATE_STANDIN_LAYOUT", "positions") == "tokens":
        doc = {"tokens": [{"incremental_text": f"<{t}>", "logits_base64": _b64(r), "token_id": int(t)}
                          for t, r in zip(ids, rows)]}
    else:
        positions = []
        for i, (t, r) in enumerate(zip(ids, rows)):
            x = r.astype(np.float64)
            # LogitsWriter logs max(p, 1e-10): a row with NaN still gets a finite number
            logp = float(x[t] - x.max() - np.log(np.exp(x - x.max()).sum())) if np.isfinite(x).all() else np.log(1e-10)
            positions.append({"index": i, "logits_base64": _b64(r), "target_log_prob": logp,
                              "target_probability": float(np.exp(logp)), "target_text": f"<{t}>",
                              "target_token": int(t)})
        total = float(sum(p["target_log_prob"] for p in positions))
        doc = {"average_log_probability": total / len(positions), "context": f"(raw tokens: {len(tokens)} ids)",
               "context_tokens": tokens[:1], "continuation": f"(forced: {len(tokens) - 1} ids)",
               "continuation_tokens": [int(t) for t in ids], "perplexity": float(np.exp(-total / len(positions))),
               "positions": positions, "total_log_probability": total}
    text = json.dumps(doc, indent=2, sort_keys=True)
    if fault == "truncate":
        text = text[: len(text) // 2]
    with open(args.save_logits, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"Saved evaluation results to {args.save_logits} ({len(ids)} rows, vocab: {rows.shape[1]})", file=sys.stderr)
    return 0


def _b64(row) -> str:
    return base64.b64encode(np.asarray(row, dtype="<f2").tobytes()).decode()


if __name__ == "__main__":
    sys.exit(main())
