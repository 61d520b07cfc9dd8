"""Plain-text summary of a verdict for `flipgate gate` (the rich renderers live in `reports/`)."""

from __future__ import annotations

import math

from harness.evidence import evidence_of, label

from .verdict import Verdict


def _num(x, fmt: str) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    return format(x, fmt)


def format_verdict(v: Verdict) -> str:
    s, pol, prov = v.summary, v.policy, v.provenance
    n = s["positions"]
    lines = [f"gate {v.gate}: {'PASS' if v.passed else 'FAIL'}"]
    for role in ("oracle", "candidate", "control", "oracle_fp32", "bf16_oracle"):
        info = prov.get(role)
        if isinstance(info, dict):
            lines.append(f"  {role:9s} {info.get('path')} ({info.get('runner')} {info.get('variant')}, "
                         f"{info.get('logits_dtype')}; evidence: {label(evidence_of(info))})")
    kl_bound = "-" if pol.get("max_kl") is None else f"{pol['max_kl']:g}"
    lines.append(f"  policy    min_margin {pol['min_margin']:g} ({pol['margin_space']} margin), max_defects "
                 f"{pol['max_defects']}, min_cosine {pol['min_cosine']:g}, max_kl {kl_bound}, control "
                 f"{pol.get('control') or '-'}")
    lines.append(f"  score     exact {s['exact']}/{n}, rule {s['rule']}/{n}, confident {s['confident']}/{n}")
    lines.append(f"  classes   match {s['exact']}, tie-flip {s['tie_flips']}, oracle-artifact "
                 f"{s['oracle_artifacts']}, defect {s['defects']}, invalid {s['invalid']}")
    if "oracle_artifacts_confirmed" in s:
        lines.append(f"  fp32      oracle-artifacts confirmed by fp32 {s['oracle_artifacts_confirmed']}, not confirmed "
                     f"{s['oracle_artifacts_unconfirmed']}; confident flips fp32 agrees with {s['fp32_confirmed_flips']}")
    lines.append(f"  cosine    min {_num(s['min_cosine'], '.6f')}, mean {_num(s['mean_cosine'], '.6f')}")
    lines.append(f"  KL        mean {_num(s['mean_kl'], '.3g')}, max {_num(s['max_kl'], '.3g')}")
    lo, hi = s["confident_flip_rate_ci95"]
    judged = s.get("confident_judged", s["confident"])
    rate = s["confident_flip_rate"]
    lines.append(f"  confident flips {s['confident_flips']}/{judged}"
                 + (f" = {rate:.1%}" if rate is not None else "")
                 + f" (Wilson 95% {lo:.1%} to {hi:.1%})")
    for note in s.get("notes", []):
        lines.append(f"  note: {note}")
    for reason in s.get("reasons", []):
        lines.append(f"  fails: {reason}")
    rows = v.non_matches()
    if rows:
        lines.append("")
        lines.append(f"positions that are not a match ({len(rows)} of {n}):")
        lines.append(f"  {'case':16s} {'row':>4s} {'pos':>5s} {'class':15s} {'margin':>8s} "
                     f"{'oracle top1/top2':>18s} {'candidate':>10s} {'control':>8s} {'cosine':>9s} {'KL':>9s}")
        for p in rows:
            lines.append(
                f"  {p['case'][:16]:16s} {p['row']:4d} {p['position']:5d} {p.get('class_text') or p['class']:15s} "
                f"{_num(p['margin'], '8.4f')} {str(p['oracle_top1']) + '/' + str(p['oracle_top2']):>18s} "
                f"{_num(p['candidate_top1'], 'd'):>10s} {_num(p['control_top1'], 'd'):>8s} "
                f"{_num(p['cosine'], '9.6f')} {_num(p['kl'], '9.3g')}")
            if p.get("target_text") is not None:
                lines.append(f"      …{p.get('context_text', '')!r} → target {p['target_text']!r}, oracle "
                             f"{p.get('oracle_top1_text')!r}, candidate {p.get('candidate_top1_text')!r}"
                             + (f", control {p.get('control_top1_text')!r}" if p.get("control_top1") is not None
                                else ""))
    lines.append("")
    lines.append(v.one_line())
    return "\n".join(lines)


def print_verdict(v: Verdict) -> None:
    print(format_verdict(v))
