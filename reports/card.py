"""The release card: a Hugging Face–style model-card section generated from data, never typed by hand.

    from reports.card import CardInputs, render_card
    text = render_card(CardInputs(verdicts, subject="int8hu", inspections={"int8hu": inspect_json},
                                  speeds={"int8hu": [read_speed("bench.json")]}, localisations=[record],
                                  bandwidth=chip_bandwidth("M4 Max"), base_model=["Qwen/Qwen3.6-27B"]))

What it holds: YAML front matter (license, base_model, tags, pipeline_tag, library_name, as the
seed card has them); a first line naming the evidence the shipped variant's numerics are (device,
Linux reference runtime or emulation: harness.evidence), a bundle table (variant, evidence, size on
disk, weight bytes, weight storage mix from `flipgate inspect --json`), a measured table, and the
numerics paragraph. Every sentence of the numerics paragraph is made from the verdicts (read through
gates.verdict.check_verdict by reports.model), the localisation records and the speed files: which
variants equal the oracle at every confident position (with the count and the 95 % Wilson upper
bound on the confident-flip rate), which flips the control shares and whether an fp32 oracle
confirms them, each variant's defects with position and tokens, what localisation found, and the
share of the machine's memory bandwidth the decode uses.

Token text is untrusted: it goes through `token()`/`visible()` and `md_text()` like every report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from gates.metrics import wilson_interval
from harness.errors import InputError
from harness.evidence import DESCRIPTIONS, evidence_of, label

from .escape import md_text, token, visible
from .localise import check_record, culprits_text, position_key, summary_line
from .model import (as_verdicts, candidate_evidence, candidate_name, control_name, fmt, margin_space, one_line,
                    reasons, verdict_word)
from .speed import Bandwidth, Speed, bandwidth_use, size_text, weight_bytes

MAX_LISTED = 10  # positions listed per variant and kind; the rest are counted


@dataclass
class CardInputs:
    verdicts: list                       # verdict dicts or Verdict objects (one per gate)
    subject: str                         # the gate of the variant the release ships
    inspections: Mapping[str, Mapping] = field(default_factory=dict)   # variant -> `flipgate inspect --json`
    speeds: Mapping[str, list] = field(default_factory=dict)           # variant -> [Speed]
    localisations: list = field(default_factory=list)                  # flipgate.localise/1 records
    bandwidth: Bandwidth | None = None
    title: str | None = None
    license: str = "unknown"
    base_model: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str = "text-generation"
    library_name: str = "coreai"


# ---- small views ----------------------------------------------------------------------------------

def _tok(p: Mapping, key: str) -> str:
    """`"␣is" #305`: a token's text made visible and escaped for Markdown, with its id."""
    tid = p.get(key)
    if tid is None:
        return "—"
    text = p.get("target_text" if key == "target_token" else f"{key}_text")
    return f'"{md_text(token(text))}" #{tid}' if text is not None else f"#{tid}"


def _key(p: Mapping) -> str:
    return f"{md_text(visible(p['case']))}:{p['row']}"


def _names(names: list[str]) -> str:
    names = [f"**{md_text(visible(n))}**" for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _is_confident(v: Mapping, p: Mapping) -> bool:
    if isinstance(p.get("confident"), bool):
        return p["confident"]
    m = p.get("margin")
    return isinstance(m, (int, float)) and m >= float(v["policy"].get("min_margin", 0.1))


def confident_flips(v: Mapping) -> list[Mapping]:
    """Confident positions whose argmax is not the oracle's (oracle-artifacts, defects, invalid rows)."""
    return [p for p in v["positions"] if p["class"] in ("oracle-artifact", "defect")
            or (p["class"] == "invalid" and _is_confident(v, p))]


def flip_rate_bound(v: Mapping) -> tuple[int, int, float]:
    """(confident flips, confident positions, 95 % Wilson upper bound on the confident-flip rate)."""
    n = sum(_is_confident(v, p) for p in v["positions"])  # from the positions, as the verdict was judged
    k = len(confident_flips(v))
    return k, n, wilson_interval(k, n)[1]


def equals_oracle(v: Mapping) -> bool:
    """Every confident position a match and no row invalid: the strongest claim a card can make."""
    return (any(_is_confident(v, p) for p in v["positions"]) and not confident_flips(v)
            and not any(p["class"] == "invalid" for p in v["positions"]))


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %" if x >= 0.001 else f"{100 * x:.2f} %"


# ---- front matter ---------------------------------------------------------------------------------

_PLAIN_YAML = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")


def _yaml_scalar(s: str) -> str:
    """A YAML scalar: plain where that cannot be misread, else a JSON string (valid YAML)."""
    s = str(s)
    if _PLAIN_YAML.match(s) and s.lower() not in ("true", "false", "yes", "no", "on", "off", "null", "~"):
        return s
    return json.dumps(s, ensure_ascii=True)


def default_tags() -> list[str]:
    """core-ai, coreai, apple, text-generation. The architecture's tags (`qwen3_5`, `dense`) come with
    --tag: a card made from the same verdicts reads the same on any machine, so nothing is looked up
    on disk."""
    return ["core-ai", "coreai", "apple", "text-generation"]


def front_matter(inp: CardInputs, verdicts: list[Mapping]) -> list[str]:
    model = str((verdicts[0].get("provenance") or {}).get("model") or "unknown")
    base = inp.base_model or [model.rstrip("/").rsplit("/", 1)[-1]]  # a local path: its folder's name
    tags = inp.tags or default_tags()
    out = ["---", f"license: {_yaml_scalar(inp.license)}", "base_model:"]
    out += [f"- {_yaml_scalar(b)}" for b in base]
    out += ["tags:"] + [f"- {_yaml_scalar(t)}" for t in tags]
    out += [f"pipeline_tag: {_yaml_scalar(inp.pipeline_tag)}", f"library_name: {_yaml_scalar(inp.library_name)}",
            "---"]
    return out


# ---- the evidence line ------------------------------------------------------------------------------

def evidence_line(subject: Mapping) -> str:
    """The card's first line: what the shipped variant's numerics are evidence of."""
    kind = candidate_evidence(subject)
    cand = md_text(visible(candidate_name(subject)))
    if kind == "device":
        return (f"**Evidence: device.** The numerics of {cand} below are rows of {md_text(DESCRIPTIONS['device'])}, "
                "teacher-forced against the oracle.")
    return (f"**Evidence: {md_text(label(kind))}, not device.** The numerics of {cand} below are "
            f"{md_text(DESCRIPTIONS.get(kind, DESCRIPTIONS['unknown']))}; no run of the device's Core AI runtime "
            "stands behind them.")


# ---- tables ---------------------------------------------------------------------------------------

def _inspection_row(doc: Mapping, source: str) -> tuple[str, str, str, int | None]:
    """(bundle name, size on disk, storage mix, weight bytes) from an inspect JSON document."""
    audit = doc.get("asset_audit")
    wbytes = None
    mix = "not audited"
    if isinstance(audit, Mapping):
        storage = audit.get("storage")
        if not isinstance(storage, Mapping):
            raise InputError(f"{source}: asset_audit has no 'storage' object")
        wbytes = weight_bytes(storage, source)
        fractions = audit.get("weight_storage_mix") or {}
        if not isinstance(fractions, Mapping) or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1 for f in fractions.values()):
            raise InputError(f"{source}: weight_storage_mix must map storage types to fractions in [0, 1]")
        if fractions:
            mix = " · ".join(f"{visible(k)} {100 * f:.1f}%" for k, f in sorted(fractions.items(), key=lambda kv: -kv[1]))
    on_disk = doc.get("bundle_bytes")
    size = size_text(on_disk) if isinstance(on_disk, int) and not isinstance(on_disk, bool) else "not measured"
    name = visible(doc.get("name") or doc.get("bundle") or "?")
    return name, size, mix, wbytes


def inspection_for(inp: CardInputs, variant: str) -> Mapping | None:
    """The `inspect --json` document of the variant's bundle, if one was given."""
    return inp.inspections.get(variant)


def bundle_table(inp: CardInputs, verdicts: list[Mapping]) -> list[str]:
    out = ["| variant | numerics evidence | bundle | size on disk | weight bytes | weight storage mix |",
           "|---|---|---|---|---|---|"]
    seen = []
    for v in verdicts:
        variant = candidate_name(v)
        if variant in seen:
            continue
        seen.append(variant)
        doc = inspection_for(inp, variant)
        if doc is None:
            cells = ["no bundle inspected", "—", "—", "—"]
        else:
            name, size, mix, wbytes = _inspection_row(doc, f"inspection of {variant}")
            cells = [name, size, size_text(wbytes), mix]
        row = [visible(variant), label(candidate_evidence(v))] + cells
        out.append("| " + " | ".join(md_text(c) for c in row) + " |")
    for variant, doc in inp.inspections.items():
        if variant not in seen:
            name, size, mix, wbytes = _inspection_row(doc, f"inspection of {variant}")
            out.append("| " + " | ".join(md_text(c) for c in [visible(variant), "no verdict", name, size,
                                                                  size_text(wbytes), mix]) + " |")
    return out


def _speed_what(s: Speed) -> str:
    return "llm-benchmark" if s.source == "llm-benchmark" else f"coreai-python, {s.runtime or 'runtime not recorded'}"


def _speed_evidence(s: Speed) -> str:
    return f"{label(s.evidence)} ({_speed_what(s)})"


def measured_table(inp: CardInputs, verdicts: list[Mapping], subject: Mapping) -> list[str]:
    rows: list[tuple[str, str, str]] = []
    variant = candidate_name(subject)
    for s in inp.speeds.get(variant, []):
        tag = "" if s.evidence == "device" else f", {label(s.evidence)}"
        if s.decode_tok_s is not None:
            rows.append((f"decode{tag}", f"{s.decode_tok_s:.1f} tok/s", _speed_evidence(s)))
        if s.prefill_tok_s is not None:
            rows.append((f"prefill{tag}", f"{s.prefill_tok_s:.1f} tok/s", _speed_evidence(s)))
    doc = inspection_for(inp, variant)
    if doc is not None:
        _name, size, _mix, wbytes = _inspection_row(doc, f"inspection of {variant}")
        rows.append(("bundle", size, "flipgate inspect"))
        use = bandwidth_share(inp, variant, wbytes)
        if use is not None:
            rows.append(("bandwidth use", f"{_pct(use[0])} of {use[1]}", f"{_speed_evidence(use[2])}, decode"))
    rows.append(("numerics", f"{numerics_headline(subject)}", label(candidate_evidence(subject))))
    out = ["| metric | value | evidence |", "|---|---|---|"]
    out += ["| " + " | ".join(md_text(c) for c in r) + " |" for r in rows]
    return out


def numerics_headline(v: Mapping) -> str:
    k, n, ub = flip_rate_bound(v)
    cand = visible(candidate_name(v))
    if equals_oracle(v):
        return (f"{cand} == oracle at every confident position ({n} of {n}; 95 % upper bound on the flip rate "
                f"{_pct(ub)})")
    return f"{cand}: {k} of {n} confident positions flip ({verdict_word(v)})"


def bandwidth_share(inp: CardInputs, variant: str, wbytes: int | None) -> tuple[float, str, Speed] | None:
    """(share, "NAME's X GB/s", the speed used) for the variant's device decode, or None when something
    is missing. Only device speeds count: a share of an Apple chip's bandwidth by another runtime means nothing."""
    device = [s for s in inp.speeds.get(variant, []) if s.evidence == "device" and s.decode_tok_s]
    if inp.bandwidth is None or not wbytes or not device:
        return None
    share = bandwidth_use(wbytes, device[0].decode_tok_s, inp.bandwidth.bytes_per_s)
    return share, f"{inp.bandwidth.name}'s {inp.bandwidth.bytes_per_s / 1e9:.0f} GB/s", device[0]


# ---- the numerics paragraph -------------------------------------------------------------------------

def _oracle_sentence(verdicts: list[Mapping]) -> str:
    v = verdicts[0]
    oracle = (v.get("provenance") or {}).get("oracle") or {}
    variant = visible(oracle.get("variant") or "not recorded") if isinstance(oracle, Mapping) else "not recorded"
    kind = evidence_of(oracle) if isinstance(oracle, Mapping) else "unknown"
    n = int(v["summary"]["positions"])
    cases = len({str(p["case"]) for p in v["positions"]})
    space = {"prob": "the softmax-probability gap p(top1) − p(top2)", "logit": "the logit gap"}.get(
        margin_space(v), margin_space(v))
    mins = sorted({float(x["policy"].get("min_margin", 0.1)) for x in verdicts})
    runner = visible(oracle.get("runner") or "not recorded") if isinstance(oracle, Mapping) else "not recorded"
    what = "the reference" if kind == "oracle" else f"{label(kind)} evidence, not a full-precision model"
    return (f"The oracle is the checkpoint in **{md_text(variant)}** (runner {md_text(runner)}: "
            f"{md_text(what)}); each gate is "
            f"teacher-forced single-step argmax under an oracle-margin ≥ {'/'.join(f'{m:g}' for m in mins)} rule "
            f"(margin = {md_text(space)}) over {_plural(n, 'scored position')} in {_plural(cases, 'case')}.")


def _equal_sentence(verdicts: list[Mapping]) -> str:
    clean = [v for v in verdicts if equals_oracle(v)]
    if not clean:
        return "**No variant equals the oracle at every confident position.**"
    groups: dict[tuple[int, float], list[str]] = {}
    for v in clean:
        _k, n, ub = flip_rate_bound(v)
        groups.setdefault((n, round(ub, 6)), []).append(candidate_name(v))
    parts = []
    for (n, ub), names in groups.items():
        verb = "equals" if len(names) == 1 else "equal"
        parts.append(f"{_names(names)} {verb} the oracle at every confident position ({n} of {n} confident "
                     f"positions, 0 flips; 95 % upper bound on the confident-flip rate {_pct(ub)}, Wilson)")
    return "; ".join(parts) + "."


def _shared_sentences(verdicts: list[Mapping]) -> list[str]:
    """One sentence per position where candidates flip to the control's own token (oracle-artifacts)."""
    by_pos: dict[tuple[str, int], list[tuple[Mapping, Mapping]]] = {}
    for v in verdicts:
        for p in v["positions"]:
            if p["class"] == "oracle-artifact":
                by_pos.setdefault((str(p["case"]), int(p["row"])), []).append((v, p))
    out = []
    for _key_, items in by_pos.items():
        p = items[0][1]
        names = [candidate_name(v) for v, _ in items]
        controls = sorted({control_name(v) for v, _ in items})
        verb = "flips" if len(names) == 1 else "flip"
        s = (f"At {_key(p)} (position {p['position']}, margin {fmt(p['margin'], 2)}) {_names(names)} {verb} the "
             f"oracle's {_tok(p, 'oracle_top1')} to {_tok(p, 'candidate_top1')}, the token the "
             f"{md_text(visible(', '.join(controls)))} control picks too: a flip the control shares "
             "(oracle-artifact), so the oracle's own resolution is the likely cause, not the quantization")
        confirms = [q.get("fp32_confirms") for _, q in items]
        fp32 = p.get("fp32_top1")
        if all(c is True for c in confirms):
            s += f"; the fp32 oracle confirms it (its top-1 is #{fp32})"
        elif any(c is False for c in confirms):
            s += f"; the fp32 oracle does **not** confirm it (its top-1 is #{fp32})"
        else:
            s += "; no fp32 oracle was run to confirm it"
        out.append(s + ".")
    return out


def _listed(items: list[str]) -> str:
    shown = items[:MAX_LISTED]
    more = len(items) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _variant_sentences(verdicts: list[Mapping]) -> list[str]:
    """Per variant with anything to say: its defects (position and tokens), invalid rows, tie-flips."""
    artifacts: dict[tuple, list[str]] = {}
    for v in verdicts:
        for p in v["positions"]:
            if p["class"] == "oracle-artifact":
                artifacts.setdefault((str(p["case"]), int(p["row"]), p["candidate_top1"]), []).append(candidate_name(v))
    out = []
    for v in verdicts:
        cand = candidate_name(v)
        s = v["summary"]
        defects = [p for p in v["positions"] if p["class"] == "defect"]
        invalid = [p for p in v["positions"] if p["class"] == "invalid"]
        ties = [p for p in v["positions"] if p["class"] == "tie-flip"]
        if not (defects or invalid or ties):
            continue
        parts = []
        if defects:
            rows = []
            for p in defects:
                r = (f"{_key(p)} (position {p['position']}, margin {fmt(p['margin'], 3)}): oracle "
                     f"{_tok(p, 'oracle_top1')}, {md_text(visible(cand))} {_tok(p, 'candidate_top1')}")
                if p.get("control_top1") is not None:
                    r += f", control {_tok(p, 'control_top1')}"
                shared = [n for n in artifacts.get((str(p["case"]), int(p["row"]), p["candidate_top1"]), [])
                          if n != cand]
                if shared:
                    who = " and ".join(md_text(visible(n)) for n in shared)
                    r += f" (the flip {who} {'shares' if len(shared) == 1 else 'share'} with the control)"
                rows.append(r)
            what = "confident flips the control does not share" if control_name(v) else "confident flips (no control)"
            parts.append(f"{_plural(len(defects), 'defect')} — {what}: {_listed(rows)}")
        if invalid:
            parts.append(f"{_plural(len(invalid), 'invalid position')} (NaN or Inf in its logits): "
                         + _listed([f"{_key(p)} (position {p['position']})" for p in invalid]))
        if ties:
            parts.append(f"{_plural(len(ties), 'tie-flip')} below the margin (reported, never failing)")
        out.append(f"**{md_text(visible(cand))}** ({verdict_word(v)}; min cosine {fmt(s['min_cosine'], 5)}, mean "
                   f"{fmt(s['mean_cosine'], 5)}): " + "; ".join(parts) + ".")
    return out


def _verdicts_sentence(verdicts: list[Mapping]) -> str:
    parts = []
    for v in verdicts:
        why = reasons(v)
        parts.append(f"{md_text(visible(v['gate']))} {verdict_word(v)}"
                     + (f" ({md_text('; '.join(why))})" if why and v["passed"] is not True else ""))
    return "Gates: " + "; ".join(parts) + "."


def _localisation_sentences(records: list[Mapping], verdicts: list[Mapping]) -> list[str]:
    from .localise import size_text as loc_size

    gates = {v["gate"]: v for v in verdicts}
    out = []
    for d in records:
        g = gates.get(d["gate"])
        if g is not None and candidate_name(g) != d["candidate"]:
            raise InputError(f"localisation of gate {d['gate']!r} restores candidate {d['candidate']!r}, but that "
                             f"gate's verdict judges {candidate_name(g)!r}: records of different runs")
        s = f"Localisation — {md_text(visible(summary_line(d)))}."
        if d["positions"]:
            s += " Culprits per defect: " + _listed([
                f"{md_text(position_key(p))} → {md_text(visible(culprits_text(p)))} ({md_text(p['status'])})"
                for p in d["positions"]]) + "."
        sizes = d.get("sizes") or {}
        if d.get("suggested"):
            s += (f" Weight bytes: {md_text(visible(d['candidate']))} {loc_size(sizes.get('candidate'))}, "
                  f"{md_text(visible(d['suggested']['name']))} {loc_size(sizes.get('suggested'))}, "
                  f"{md_text(visible(d['safe']))} {loc_size(sizes.get('safe'))}.")
            ver = d.get("verification")
            if ver:
                s += f" Verified over the whole case set: {md_text(visible(ver.get('one_line', '')))}."
        out.append(s)
    return out


def _speed_sentences(inp: CardInputs, verdicts: list[Mapping]) -> list[str]:
    out = []
    for variant, speeds in inp.speeds.items():
        doc = inspection_for(inp, variant)
        wbytes = _inspection_row(doc, f"inspection of {variant}")[3] if doc is not None else None
        for s in speeds:
            rates = ", ".join(x for x in (f"decode {s.decode_tok_s:.1f} tok/s" if s.decode_tok_s else "",
                                          f"prefill {s.prefill_tok_s:.1f} tok/s" if s.prefill_tok_s else "") if x)
            if s.evidence == "device":
                run = []
                if s.prompt_tokens:
                    run.append(f"{s.prompt_tokens} prompt / {s.generation_tokens} generation tokens")
                if s.trials:
                    run.append(_plural(s.trials, "trial"))
                sent = (f"**Speed of {md_text(visible(variant))}** ({md_text(label(s.evidence))}, "
                        f"{md_text(visible(_speed_what(s)))}"
                        + (f", {md_text(', '.join(run))}" if run else "") + f"): {rates}.")
                bw = inp.bandwidth
                if bw is not None and wbytes and s.decode_tok_s:
                    share = bandwidth_use(wbytes, s.decode_tok_s, bw.bytes_per_s)
                    sent += (f" A dense decode reads every weight once per token: {size_text(wbytes)} per token "
                             f"(the bundle's weight storage, from its audit) × {s.decode_tok_s:.1f} tok/s = "
                             f"{size_text(wbytes * s.decode_tok_s, 'B/s')}, **{_pct(share)}** of "
                             f"{md_text(bw.name)}'s {bw.bytes_per_s / 1e9:.0f} GB/s memory bandwidth "
                             f"(source: {md_text(visible(bw.source))}).")
                    if share > 1:
                        sent += (" **More than the ceiling**: the weight bytes, the rate or the machine named "
                                 "cannot all be right.")
                elif bw is None:
                    sent += " Bandwidth use not computed: no machine bandwidth given (`--chip` or `--bandwidth`)."
                else:
                    sent += (" Bandwidth use not computed: no storage audit of this bundle "
                             "(`flipgate inspect BUNDLE --json`).")
            else:
                sent = (f"**{md_text(label(s.evidence))}** ({md_text(visible(s.runtime or s.source))}): {rates} for "
                        f"{md_text(visible(variant))} — "
                        f"{md_text(DESCRIPTIONS.get(s.evidence, DESCRIPTIONS['unknown']))}; "
                        "a cost of checking the asset off the device, not the device's speed (no bandwidth share "
                        "is computed from it).")
            out.append(sent)
    return out


def numerics_paragraphs(inp: CardInputs, verdicts: list[Mapping]) -> list[str]:
    paras = [_oracle_sentence(verdicts) + " " + _equal_sentence(verdicts)]
    shared = _shared_sentences(verdicts)
    if shared:
        paras.append(" ".join(shared))
    paras += _variant_sentences(verdicts)
    paras.append(_verdicts_sentence(verdicts))
    paras += _localisation_sentences([check_record(d) for d in inp.localisations], verdicts)
    return paras


# ---- the card ---------------------------------------------------------------------------------------

def render_card(inp: CardInputs) -> str:
    """The card section as Markdown (front matter first, then the evidence line)."""
    verdicts = as_verdicts(inp.verdicts)
    subject = next((v for v in verdicts if v["gate"] == inp.subject), None)
    if subject is None:
        raise InputError(f"gate {inp.subject!r} is not among the verdicts given "
                         f"({', '.join(v['gate'] for v in verdicts)})")
    variant = candidate_name(subject)
    for name in list(inp.inspections) + list(inp.speeds):
        if not any(candidate_name(v) == name for v in verdicts):
            raise InputError(f"--inspect/--speed name variant {name!r}, which no verdict judges "
                             f"({', '.join(candidate_name(v) for v in verdicts)})")
    out = front_matter(inp, verdicts)
    out += [evidence_line(subject), ""]
    title = inp.title or f"{variant} — Core AI bundle"
    out += [f"# {md_text(visible(title))}", ""]
    mark = "✅" if subject["passed"] is True else "❌"
    out += [f"{mark} **{md_text(one_line(subject))}**", ""]
    if subject["passed"] is not True:
        out += [f"**The {md_text(visible(subject['gate']))} gate failed: this bundle does not meet its numerics "
                f"gate.** {md_text('; '.join(reasons(subject)) or 'see the verdict')}.", ""]
    out += ["## Bundle", ""] + bundle_table(inp, verdicts) + [""]
    out += ["## Measured", ""] + measured_table(inp, verdicts, subject) + [""]
    out += ["## Numerics", ""]
    for para in numerics_paragraphs(inp, verdicts):
        out += [para, ""]
    speed = _speed_sentences(inp, verdicts)
    if speed:
        out += ["## Speed", ""]
        for para in speed:
            out += [para, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def card_exit_code(inp: CardInputs) -> int:
    verdicts = as_verdicts(inp.verdicts)
    v = next(v for v in verdicts if v["gate"] == inp.subject)
    return 0 if v["passed"] is True else 1


def speeds_by_variant(pairs: Iterable[tuple[str, Speed]]) -> dict[str, list[Speed]]:
    out: dict[str, list[Speed]] = {}
    for variant, s in pairs:
        out.setdefault(variant, []).append(s)
    return out


# ---- reading the inputs -----------------------------------------------------------------------------

def _named(spec: str) -> tuple[str | None, str]:
    """`int8hu=path` -> ('int8hu', 'path'); `path` -> (None, 'path'). A path with '=' in it: use ./a=b."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and path:
        return name, path
    return None, spec


def load_inspection(spec: str, default_variant: str) -> tuple[str, dict]:
    """`[VARIANT=]FILE` of `flipgate inspect --json` -> (variant, document). The variant is the one
    named, else the one `inspect --variant` checked, else the shipped one; a contradiction is refused."""
    from pathlib import Path

    name, path = _named(spec)
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InputError(f"{p}: not the JSON of `flipgate inspect --json`") from None
    if not isinstance(doc, dict) or "bundle" not in doc or "name" not in doc:
        raise InputError(f"{p}: not the JSON of `flipgate inspect --json` (no 'bundle' and 'name' keys)")
    check = doc.get("variant_check")
    checked = check.get("variant") if isinstance(check, Mapping) else None
    if isinstance(check, Mapping) and check.get("ok") is not True:
        raise InputError(f"{p}: the bundle's storage contradicts variant {checked!r}: {check.get('reason', '')}")
    if name and checked and name != checked:
        raise InputError(f"{p}: named as variant {name!r}, but inspect checked it as {checked!r}")
    return name or checked or default_variant, doc


def load_speed(spec: str, default_variant: str) -> tuple[str, Speed]:
    """`[VARIANT=]FILE` of llm-benchmark output (text or --output-json) or a flipgate.speed/1 record."""
    from .speed import read_speed

    name, path = _named(spec)
    return name or default_variant, read_speed(path)
