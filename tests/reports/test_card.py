"""The release card (`flipgate card`, reports/card.py): every sentence made from the data.

The golden card is the fixture's real compare run (tests/reports/data/fixture-compare/: the six
verdicts `flipgate compare` wrote on the bundled fixture, `flipgate localise int4lin --safe int8lin`'s
record, `flipgate inspect --json` of the fixture's int8hu bundle, and the Linux reference runtime's
speed from benchmarks/bench_reference_runtime.py). Regenerate after an intended change with
`FLIPGATE_REGEN_GOLDEN=1 pytest tests/reports/test_card.py` and read the diff.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from gates.metrics import wilson_interval
from harness.cli import main
from harness.errors import InputError
from reports.card import CardInputs, load_inspection, load_speed, render_card, speeds_by_variant
from reports.localise import load_record
from reports.model import load_verdicts
from reports.speed import chip_bandwidth

HERE = Path(__file__).parent
DATA = HERE / "data" / "fixture-compare"
BENCH = HERE / "data" / "llm-benchmark"
GOLDEN = HERE / "golden"
GATES = ("fp16", "int8lin", "int8hu", "int4lin", "mixed", "mixed-edge")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("FLIPGATE_REGEN_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run with FLIPGATE_REGEN_GOLDEN=1 once and review it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


@pytest.fixture
def fixture_verdicts():
    return load_verdicts([DATA / f"{g}.verdict.json" for g in GATES])


def fixture_inputs(verdicts, **kw) -> CardInputs:
    speed = DATA / "speed-coreai-python.json"
    kw.setdefault("inspections", dict([load_inspection(str(DATA / "inspect-int8hu.json"), "int8hu")]))
    kw.setdefault("speeds", speeds_by_variant([load_speed(f"int8hu={speed}", "int8hu")]) if speed.is_file() else {})
    kw.setdefault("localisations", [load_record(DATA / "localise-int4lin.json")])
    kw.setdefault("bandwidth", chip_bandwidth("M4 Max"))
    return CardInputs(verdicts, kw.pop("subject", "int8hu"), **kw)


def body_lines(text: str) -> list[str]:
    """The card after its YAML front matter."""
    lines = text.splitlines()
    assert lines[0] == "---"
    end = lines.index("---", 1)
    return lines[end + 1:]


def rejudged(v: dict) -> dict:
    """Summary and verdict recomputed from the positions, as a gate would have written them."""
    ps = v["positions"]
    count = lambda c: sum(p["class"] == c for p in ps)  # noqa: E731
    s = v["summary"]
    s.update(exact=count("match"), rule=count("match") + count("tie-flip"), tie_flips=count("tie-flip"),
             oracle_artifacts=count("oracle-artifact"), defects=count("defect"), invalid=count("invalid"))
    flips = count("defect") + count("oracle-artifact")
    s["confident_flips"] = flips
    s["confident_flip_rate"] = flips / s["confident"] if s["confident"] else None
    s["confident_flip_rate_ci95"] = list(wilson_interval(flips, s["confident"]))
    s["reasons"] = [f"{s['defects']} defect(s), max_defects 0"] if s["defects"] else []
    v["passed"] = s["defects"] == 0 and s["invalid"] == 0 and s["min_cosine"] >= v["policy"]["min_cosine"]
    return v


def flip_to_defect(v: dict) -> dict:
    """The first confident match becomes a confident flip to the oracle's runner-up (a defect)."""
    p = next(p for p in v["positions"] if p["class"] == "match" and p["margin"] >= 0.3)
    p["candidate_top1"], p["candidate_top1_text"] = p["oracle_top2"], p.get("oracle_top2_text")
    p["class"] = "defect"
    return rejudged(v)


# ---- the golden card and its sentences ------------------------------------------------------------

def test_golden_card_of_the_fixture_compare_run(fixture_verdicts):
    text = render_card(fixture_inputs(fixture_verdicts))
    check_golden("card-fixture.md", text)


def test_first_line_names_emulation_and_never_claims_the_device(fixture_verdicts):
    text = render_card(fixture_inputs(fixture_verdicts))
    first = body_lines(text)[0]
    assert first.startswith("**Evidence: emulation, not device.**")
    assert "verified on device" not in text.lower()
    # the Linux runtime's speed appears only under its own label, never as the device's
    if (DATA / "speed-coreai-python.json").is_file():
        assert "| decode, Linux reference runtime |" in text
        assert "| decode |" not in text


def test_front_matter_is_yaml_with_the_seed_fields(fixture_verdicts):
    yaml = pytest.importorskip("yaml")
    text = render_card(fixture_inputs(fixture_verdicts, license="apache-2.0", base_model=["Qwen/Qwen3.6-27B"],
                                      tags=["core-ai", "qwen3_5", "yes", "a: b"]))
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta == {"license": "apache-2.0", "base_model": ["Qwen/Qwen3.6-27B"],
                    "tags": ["core-ai", "qwen3_5", "yes", "a: b"],  # "yes" stays a string, "a: b" a tag
                    "pipeline_tag": "text-generation", "library_name": "coreai"}


def test_equal_at_every_confident_position_with_the_bound(fixture_verdicts):
    text = render_card(fixture_inputs(fixture_verdicts))
    ub = wilson_interval(0, 169)[1]
    assert f"{100 * ub:.1f} %" == "2.2 %"
    assert ("**fp16**, **int8lin** and **int8hu** equal the oracle at every confident position (169 of 169 "
            "confident positions, 0 flips; 95 % upper bound on the confident-flip rate 2.2 %, Wilson)") in text


def test_a_changed_verdict_changes_the_sentence(fixture_verdicts):
    before = render_card(fixture_inputs(fixture_verdicts))
    changed = copy.deepcopy(fixture_verdicts)
    v = flip_to_defect(changed[2])
    assert v["gate"] == "int8hu" and v["passed"] is False
    p = next(p for p in v["positions"] if p["class"] == "defect")
    after = render_card(fixture_inputs(changed))
    assert "**fp16**, **int8lin** and **int8hu** equal" in before
    assert "**fp16** and **int8lin** equal the oracle at every confident position" in after
    assert f"{p['case']}:{p['row']} (position {p['position']}, margin {p['margin']:.3f})" in after
    assert f"int8hu \"{p['oracle_top2_text'].replace(' ', '␣')}\" #{p['oracle_top2']}" in after
    assert "The int8hu gate failed" in after and "The int8hu gate failed" not in before
    assert body_lines(after)[2].startswith("# int8hu")
    assert "❌ **int8hu: FAIL" in after


def test_localisation_sentence_follows_the_record(fixture_verdicts):
    record = json.loads((DATA / "localise-int4lin.json").read_text())
    text = render_card(fixture_inputs(fixture_verdicts, localisations=[record]))
    assert "Localisation — int4lin: 6 of 6 defect(s) localised (candidate int4lin, safe recipe int8lin)" in text
    assert "difflib:1 → GatedDeltaNet 0-2 (localised)" in text and "its gate PASSES" in text
    record["positions"][0]["culprits"] = [{"kind": "mlp", "layers": [3], "label": "MLP 3"}]
    record["verification"]["passed"] = False
    text = render_card(fixture_inputs(fixture_verdicts, localisations=[record]))
    assert "difflib:1 → MLP 3 (localised)" in text and "its gate FAILS" in text
    record["candidate"] = "int8hu"
    with pytest.raises(InputError, match="records of different runs"):
        render_card(fixture_inputs(fixture_verdicts, localisations=[record]))


# ---- a failing set of gates ----------------------------------------------------------------------

def test_card_from_failing_gates(seed, verdict_files, tmp_path, capsys):
    out = tmp_path / "card.md"
    rc = main(["card", "int4lin", "--verdicts", *map(str, verdict_files.values()), "--out", str(out)])
    assert rc == 1  # the card is written, and the gate's failure is the exit status
    text = out.read_text(encoding="utf-8")
    assert body_lines(text)[0].startswith("**Evidence: unknown, not device.**")
    assert "❌ **int4lin: FAIL" in text and "**The int4lin gate failed" in text
    assert "**No variant equals the oracle at every confident position.**" in text
    # the flip fp16 makes too: int8hu and int4lin share it with the control, no fp32 oracle ran
    assert ('At capital:5 (position 25, margin 0.50) **int8hu** and **int4lin** flip the oracle\'s "␣for" #206 to '
            '"␣as" #207, the token the fp16 control picks too') in text
    assert "no fp32 oracle was run to confirm it" in text
    assert ('**int4lin** (FAIL; min cosine 0.98800, mean 0.99598): 1 defect — confident flips the control does '
            'not share: story:6 (position 31, margin 0.690): oracle "␣by" #312, int4lin "␣near" #313, control '
            '"␣by" #312') in text
    assert "**mixed-edge** (FAIL; min cosine NaN, mean NaN): 1 invalid position (NaN or Inf in its logits): " \
           "capital:3 (position 23)" in text
    assert "(the flip int8hu and int4lin share with the control)" in text  # fp16's own defect, at the same token
    assert "Gates: fp16 FAIL (1 defect(s), max\\_defects 0); int8hu PASS;" in text
    assert main(["card", "int8hu", "--verdicts", *map(str, verdict_files.values())]) == 0


def test_fp32_confirmation_changes_the_shared_flip_sentence(seed):
    for v in seed:
        for p in v["positions"]:
            if p["class"] == "oracle-artifact":
                p["fp32_top1"], p["fp32_confirms"] = 207, True
    text = render_card(CardInputs(seed, "int8hu"))
    assert "the fp32 oracle confirms it (its top-1 is #207)" in text
    seed[2]["positions"][5]["fp32_confirms"] = False
    assert seed[2]["positions"][5]["class"] == "oracle-artifact"
    text = render_card(CardInputs(seed, "int8hu"))
    assert "the fp32 oracle does **not** confirm it" in text


def test_hostile_token_text_is_escaped(evil):
    text = render_card(CardInputs([evil], evil["gate"]))
    assert "<script" not in text and "<img" not in text and "&lt;script&gt;" in text


# ---- device evidence, speed and bandwidth ----------------------------------------------------------

def _as_device(v: dict) -> dict:
    v["provenance"]["candidate"] = {"runner": "coreai-llm-runner", "variant": "int8hu", "evidence": "device"}
    return v


def test_device_card_with_llm_benchmark_speed_and_bandwidth(fixture_verdicts):
    _as_device(fixture_verdicts[2])
    inspect_doc = {"bundle": "gpu-pipelined/int8hu", "name": "qwen3_6_27b_int8hu", "bundle_bytes": 30_100_000_000,
                   "asset_audit": {"storage": {"Int8": 28 * 2**30, "Int32": 1000},
                                   "weight_storage_mix": {"Int8": 1.0}}}
    speeds = speeds_by_variant([load_speed(str(BENCH / "output.json"), "int8hu")])
    text = render_card(fixture_inputs(fixture_verdicts, inspections={"int8hu": inspect_doc}, speeds=speeds))
    assert body_lines(text)[0].startswith("**Evidence: device.** The numerics of int8hu below are rows of the "
                                          "device's Core AI runtime")
    assert "| decode | 15.9 tok/s | device (llm-benchmark) |" in text
    assert "| prefill | 15.8 tok/s | device (llm-benchmark) |" in text
    # 28 GiB read per token at 15.9 tok/s on an M4 Max (546 GB/s): the seed card's "~87 %"
    assert 28 * 2**30 * 15.9 / 546e9 == pytest.approx(0.8755, abs=1e-4)
    assert "| bandwidth use | 87.6 % of M4 Max's 546 GB/s | device (llm-benchmark), decode |" in text
    assert "30.1 GB per token (the bundle's weight storage, from its audit) × 15.9 tok/s = 478 GB/s, **87.6 %**" in text
    assert "apple.com/newsroom/2024/10/apple-introduces-m4-pro-and-m4-max" in text
    # another machine, another share; no bandwidth, no share
    text = render_card(fixture_inputs(fixture_verdicts, inspections={"int8hu": inspect_doc}, speeds=speeds,
                                      bandwidth=chip_bandwidth("M4 Pro")))
    assert "| bandwidth use | 175.1 % of M4 Pro's 273 GB/s |" in text  # more than the ceiling: shown, not hidden
    assert "**More than the ceiling**" in text
    text = render_card(fixture_inputs(fixture_verdicts, inspections={"int8hu": inspect_doc}, speeds=speeds,
                                      bandwidth=None))
    assert "bandwidth use" not in text and "no machine bandwidth given" in text


def test_linux_runtime_speed_only_under_its_own_label(fixture_verdicts, tmp_path):
    rec = {"schema": "flipgate.speed/1", "runner": "coreai-python", "decode_tok_s": 5.25,
           "coreai_runtime": "coreai-core in-package runtime (Linux x86_64)"}
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(rec))
    text = render_card(fixture_inputs(fixture_verdicts, speeds=speeds_by_variant([load_speed(str(path), "int8hu")])))
    assert "| decode, Linux reference runtime | 5.2 tok/s | Linux reference runtime (coreai-python, coreai-core " \
           "in-package runtime (Linux x86\\_64)) |" in text
    assert "| decode |" not in text and "bandwidth use |" not in text
    assert "not the device's speed" in text
    rec["coreai_runtime"] = "Core AI framework (macOS 27.0)"  # coreai.runtime on the OS framework: the device
    path.write_text(json.dumps(rec))
    text = render_card(fixture_inputs(fixture_verdicts, speeds=speeds_by_variant([load_speed(str(path), "int8hu")])))
    assert "| decode | 5.2 tok/s | device (coreai-python, Core AI framework (macOS 27.0)) |" in text


def test_inspection_that_contradicts_its_variant_is_refused(tmp_path):
    doc = json.loads((DATA / "inspect-int8hu.json").read_text())
    p = tmp_path / "i.json"
    p.write_text(json.dumps(doc))
    assert load_inspection(str(p), "int4lin")[0] == "int8hu"  # the variant inspect checked
    with pytest.raises(InputError, match="named as variant 'int4lin', but inspect checked it as 'int8hu'"):
        load_inspection(f"int4lin={p}", "int8hu")
    doc["asset_audit"]["weight_storage_mix"]["Int8"] = "lots"
    with pytest.raises(InputError, match="weight_storage_mix must map storage types to fractions"):
        render_card(CardInputs(load_verdicts([DATA / "int8hu.verdict.json"]), "int8hu", inspections={"int8hu": doc}))
    doc["asset_audit"]["weight_storage_mix"]["Int8"] = 0.86
    doc["variant_check"]["ok"] = False
    p.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="contradicts"):
        load_inspection(str(p), "int8hu")
    p.write_text("[]")
    with pytest.raises(InputError, match="not the JSON of `flipgate inspect --json`"):
        load_inspection(str(p), "int8hu")


def test_cli_refuses_bad_inputs_with_exit_2(verdict_files, tmp_path, capsys):
    files = [str(p) for p in verdict_files.values()]
    assert main(["card", "nosuch", "--verdicts", *files]) == 2
    assert main(["card", "int8hu", "--verdicts", *files, "--bandwidth", "fast"]) == 2
    assert main(["card", "int8hu", "--verdicts", *files, "--chip", "M9 Hyper"]) == 2
    assert main(["card", "int8hu", "--verdicts", *files, "--speed", str(BENCH / "README.md")]) == 2
    assert main(["card", "int8hu", "--verdicts", *files, "--speed", f"int9={BENCH / 'output.json'}"]) == 2
    err = capsys.readouterr().err
    assert "'M9 Hyper': not in the bandwidth table" in err and "no 'Benchmark Summary' block" in err


def test_out_never_replaces_an_input(verdict_files, capsys):
    files = [str(p) for p in verdict_files.values()]
    before = verdict_files["int8hu"].read_bytes()
    assert main(["card", "int8hu", "--verdicts", *files, "--out", files[1]]) == 2
    assert verdict_files["int8hu"].read_bytes() == before
    assert "is an input of the card" in capsys.readouterr().err


def test_no_confident_positions_is_never_equal_to_the_oracle(seed):
    v = seed[1]  # int8hu: an oracle-artifact and a tie-flip
    for p in v["positions"]:
        p["margin"] = 0.05
        if p["class"] != "match":
            p["class"] = "tie-flip"
    v["summary"]["confident"] = 0
    text = render_card(CardInputs([rejudged(v)], "int8hu"))
    assert "**No variant equals the oracle at every confident position.**" in text
    assert "int8hu: 0 of 0 confident positions flip" in text


def test_cli_card_with_a_given_bandwidth(tmp_path, capsys):
    files = [str(DATA / f"{g}.verdict.json") for g in GATES]
    rc = main(["card", "int8hu", "--verdicts", *files, "--inspect", str(DATA / "inspect-int8hu.json"),
               "--speed", str(BENCH / "stdout.txt"), "--bandwidth", "546GB/s", "--license", "apache-2.0"])
    text = capsys.readouterr().out
    assert rc == 0 and text.startswith("---\nlicense: apache-2.0\n")
    # 2,848,014 weight bytes x 15.9 tok/s / 546e9 B/s
    assert f"{100 * 2_848_014 * 15.9 / 546e9:.2f} %" == "0.01 %"
    assert "**0.01 %** of the machine's 546 GB/s memory bandwidth (source: given as --bandwidth 546GB/s)" in text
    assert "| decode | 15.9 tok/s | device (llm-benchmark) |" in text
