"""Synthetic verdict sets for the report tests, built as `flipgate.verdict/1` dicts (DESIGN.md).

`seed_verdicts()` is the published Qwen3.6-27B story in 16 positions (two cases of 8):
  - fp16 (no control) flips the margin-0.50 position -> a defect, FAIL;
  - int8hu flips the same position to the same token as fp16 (oracle-artifact) and one margin-0.04
    position (tie-flip): exact 14/16, rule 15/16, PASS;
  - int4lin flips the margin-0.50 position too (artifact) and a margin-0.69 one that fp16 gets right
    (defect), lower cosine: FAIL;
  - mixed flips its own confident position (defect): FAIL;
  - mixed-edge has a NaN row (invalid): FAIL, and NaN must show as NaN.
The summaries are computed from the positions, so they agree with them by construction.
"""

from __future__ import annotations

import copy
import math

import pytest

MIN_MARGIN = 0.1

# (case, context text, [(target text, target id, top2 text, top2 id, p1, p2)] per row)
_CASES = [
    ("capital", "Question: what is the capital of France?\nAnswer: The capital of France is", [
        (" Paris", 101, " the", 102, 0.91, 0.03), (".", 13, ",", 11, 0.80, 0.10),
        (" It", 201, " The", 202, 0.42, 0.30), (" is", 203, " has", 204, 0.88, 0.05),
        (" known", 205, " the", 102, 0.37, 0.28), (" for", 206, " as", 207, 0.65, 0.15),
        (" its", 208, " the", 102, 0.55, 0.25), (" art", 209, " food", 210, 0.21, 0.17),
    ]),
    ("story", "Once upon a time | there was a `tiny` robot", [
        (" who", 301, " that", 302, 0.60, 0.22), (" lived", 303, " loved", 304, 0.48, 0.18),
        (" in", 305, " on", 306, 0.40, 0.36), (" a", 307, " the", 102, 0.70, 0.12),
        (" small", 308, " big", 309, 0.52, 0.21), (" town", 310, " house", 311, 0.33, 0.25),
        (" by", 312, " near", 313, 0.80, 0.11), (" the", 102, " a", 307, 0.75, 0.08),
    ]),
]

# gate -> (candidate, control, {(case, row): (candidate top1 text, id, class)}, cosine base, kl scale)
_GATES = {
    "fp16": ("fp16", None, {("capital", 5): (" as", 207, "defect")}, 0.99999, 1e-5),
    "int8hu": ("int8hu", "fp16", {("capital", 5): (" as", 207, "oracle-artifact"),
                                  ("story", 2): (" on", 306, "tie-flip")}, 0.99990, 1e-4),
    "int4lin": ("int4lin", "fp16", {("capital", 5): (" as", 207, "oracle-artifact"),
                                    ("story", 6): (" near", 313, "defect")}, 0.99800, 2e-3),
    "mixed": ("mixed", "fp16", {("story", 4): (" big", 309, "defect")}, 0.99900, 8e-4),
    "mixed-edge": ("mixed-edge", "fp16", {("capital", 3): (None, 0, "invalid")}, 0.99920, 6e-4),
}
_FP16_FLIPS = _GATES["fp16"][2]


def _wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 6), round(min(1.0, c + h), 6)]


def make_verdict(gate: str, candidate: str, control: str | None, flips: dict, cos_base: float,
                 kl_scale: float, *, cases=_CASES, min_cosine: float = 0.99, provenance: dict | None = None) -> dict:
    positions = []
    for ci, (case, context, rows) in enumerate(cases):
        text = context
        prompt_len = 20 + 5 * ci
        for r, (t_text, t_id, o2_text, o2_id, p1, p2) in enumerate(rows):
            wiggle = ((r * 7 + ci * 3) % 5) / 5
            flip = flips.get((case, r))
            cls = flip[2] if flip else "match"
            c_text, c_id = (flip[0], flip[1]) if flip else (t_text, t_id)
            cosine = round(cos_base - (1 - cos_base) * wiggle, 6)
            kl = round(kl_scale * (1 + wiggle), 8)
            if flip:
                cosine, kl = round(cosine - 5 * (1 - cos_base), 6), round(kl * 20, 8)
            c_prob = round(p2 + 0.05 if flip else p1 - 0.01, 4)
            if cls == "invalid":
                cosine = kl = c_prob = float("nan")
                c_id, c_text = 0, "<unk>"
            ctrl = _FP16_FLIPS.get((case, r))
            ctrl_text, ctrl_id = (ctrl[0], ctrl[1]) if ctrl else (t_text, t_id)
            rank = None if cls == "invalid" else (1 if not flip else 2)
            pos = {
                "case": case, "row": r, "position": prompt_len + r,
                "target_token": t_id, "oracle_top1": t_id, "oracle_top2": o2_id,
                "margin": round(p1 - p2, 4),
                "candidate_top1": c_id, "control_top1": ctrl_id if control else None,
                "class": cls, "cosine": cosine, "kl": kl,
                "oracle_rank_in_candidate": rank, "top5_overlap": 5 if not flip else 4,
                "oracle_top1_prob": p1, "oracle_top2_prob": p2, "candidate_top1_prob": c_prob,
                "control_top1_prob": (round(p2 + 0.05, 4) if ctrl else round(p1 - 0.005, 4)) if control else None,
                "context_text": text, "target_text": t_text, "oracle_top1_text": t_text,
                "oracle_top2_text": o2_text, "candidate_top1_text": c_text,
                "control_top1_text": ctrl_text if control else None,
            }
            positions.append(pos)
            text += t_text
    return finish_verdict(gate, candidate, control, positions, min_cosine=min_cosine, provenance=provenance)


def finish_verdict(gate, candidate, control, positions, *, min_cosine=0.99, provenance=None) -> dict:
    count = lambda cls: sum(p["class"] == cls for p in positions)  # noqa: E731
    cos = [p["cosine"] for p in positions]
    kls = [p["kl"] for p in positions]
    nan = any(math.isnan(c) for c in cos)
    min_cos = float("nan") if nan else min(cos)
    mean_cos = float("nan") if nan else round(sum(cos) / len(cos), 6)
    mean_kl = float("nan") if nan else round(sum(kls) / len(kls), 8)
    max_kl = float("nan") if nan else max(kls)
    confident = sum(p["margin"] >= MIN_MARGIN for p in positions)
    confident_flips = sum(p["margin"] >= MIN_MARGIN and p["class"] != "match" for p in positions)
    defects, invalid = count("defect"), count("invalid")
    passed = defects == 0 and invalid == 0 and min_cos >= min_cosine  # NaN >= x is False: a fail
    reasons = []
    if invalid:
        reasons.append(f"{invalid} invalid position(s): NaN or Inf in the candidate or control")
    if defects:
        reasons.append(f"{defects} defect(s), max_defects 0")
    if not min_cos >= min_cosine:
        reasons.append(f"min cosine {min_cos:.6g} below min_cosine {min_cosine}")
    return {
        "schema": "flipgate.verdict/1",
        "gate": gate,
        "passed": bool(passed),
        "policy": {"candidate": candidate, "control": control, "min_margin": MIN_MARGIN,
                   "margin_space": "prob", "max_defects": 0, "min_cosine": min_cosine, "max_kl": None},
        "summary": {
            "positions": len(positions), "exact": count("match"),
            "rule": count("match") + count("tie-flip"), "confident": confident,
            "tie_flips": count("tie-flip"), "oracle_artifacts": count("oracle-artifact"),
            "defects": defects, "invalid": invalid,
            "min_cosine": min_cos, "mean_cosine": mean_cos, "mean_kl": mean_kl,
            "max_kl": max_kl, "margin_space": "prob",
            "confident_flip_rate_wilson95": _wilson(confident_flips, confident),
            "reasons": reasons,
        },
        "positions": positions,
        "provenance": provenance if provenance is not None else {
            "model": "harness/data/fixture-model",
            "model_sha256": {"model.safetensors": "ab" * 32},
            "tokenizer_sha256": "cd" * 32,
            "cases": "harness/data/cases/fixture.jsonl",
            "cases_sha256": "ef" * 32,
            "traces": {"oracle": ".flipgate/traces/oracle.safetensors",
                       candidate: f".flipgate/traces/{candidate}.safetensors"},
            "trace_sha256": {"oracle": "01" * 32, candidate: "23" * 32},
            "recipes": {candidate: f"# {candidate}\n[quantize]\nbits = 8\nblock = 32\nmode = \"symmetric_with_clipping\"\n"},
            "versions": {"flipgate": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0", "coreai-opt": "0.4.0"},
            "machine": "ci-linux x86_64",
            "date": "2026-01-01T00:00:00+00:00",
        },
    }


def seed_verdicts() -> list[dict]:
    return [make_verdict(g, *spec) for g, spec in _GATES.items()]


EVIL_SCRIPT = "<script>document.body.setAttribute('data-pwned','1')</script>"
EVIL_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">"


def evil_verdict() -> dict:
    """A verdict whose token texts and names try to break out of every medium."""
    cases = [("evil<b>case</b>|1", EVIL_SCRIPT + " \x1b[31mred\x1b[0m a\nb\u202eRTL", [
        (EVIL_SCRIPT, 401, EVIL_IMG, 402, 0.8, 0.1),
        ("a|b`c*d_e[f](g)", 403, "\"quote' & amp", 404, 0.6, 0.2),
        ("\udc80\udcff half", 405, "\u200b\u2067rtl", 406, 0.5, 0.4),
    ])]
    flips = {("evil<b>case</b>|1", 0): (EVIL_IMG, 402, "defect"),
             ("evil<b>case</b>|1", 2): ("$x^2$ </td></tr></table>", 407, "tie-flip")}
    return make_verdict("evil<i>gate</i>", "int8hu", None, flips, 0.999, 1e-3, cases=cases)


@pytest.fixture
def seed():
    return copy.deepcopy(seed_verdicts())


@pytest.fixture
def evil():
    return copy.deepcopy(evil_verdict())


_FIXED_MADE = {"versions": {"flipgate": "0.1.0", "python": "3.11.2", "torch": "2.13.0", "transformers": "5.24.0",
                           "coreai-opt": "0.4.0"},
              "machine": "golden-host Linux 6.1 x86_64", "date": "2026-01-02T03:04:05+00:00"}


@pytest.fixture
def verdict_files(tmp_path, seed):
    """The seed verdicts saved one per file, as `flipgate gate --json` would: gate -> path."""
    import json

    out = {}
    for v in seed:
        p = tmp_path / "verdicts" / f"{v['gate']}.json"
        p.parent.mkdir(exist_ok=True)
        p.write_text(json.dumps(v, indent=2), encoding="utf-8")
        out[v["gate"]] = p
    return out


@pytest.fixture
def fixed_made():
    """A fixed `made` block (versions, machine, date) so that sign-off output is reproducible."""
    return copy.deepcopy(_FIXED_MADE)
