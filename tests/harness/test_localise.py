"""Flip localisation on a culprit known by construction.

A copy of the fixture model has layer 4's MLP made fragile: in every block of 32 input channels of
`down_proj` one channel carries a weight 400 times the largest one, and the matching row of
`up_proj` is zero. In fp16 that channel's activation is exactly 0, so the model computes as if the
weight were not there; quantized per block, the outlier sets the block's scale and every other
weight of the block rounds to nothing. So int8 quantization of that one group - and of nothing
else: int8 passes on the fixture - flips confident positions. `flipgate localise` must name
exactly MLP 4 for every defect, and its suggested recipe (int8 with MLP 4 at fp16) must gate clean.

The oracle here is the perturbed model's own fp16 S=1 trace (one case, 12 scored rows), so the
whole file runs in well under a minute on two busy cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.errors import InputError
from harness.localise import (CaseWork, Group, TrialRunner, groups_of, layer_ranges, localise_traces, module_map,
                              restoration_label, suggested_recipe_text, torch_threads, weight_bytes)
from harness.recipe import QuantSpec, get_recipe, parse_recipes

CULPRIT_LAYER = 4
CASE = "string"
ROWS = 12
OUTLIER = 400.0


def _perturbed_copy(dest: Path) -> Path:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from harness.models import fixture_model_path

    shutil.copytree(fixture_model_path(), dest)
    path = dest / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    down_key = next(k for k in tensors if f"layers.{CULPRIT_LAYER}.mlp.down_proj.weight" in k)
    up_key = down_key.replace("down_proj", "up_proj")
    down, up = tensors[down_key].clone(), tensors[up_key].clone()
    big = float(down.abs().max()) * OUTLIER
    for block in range(down.shape[1] // 32):
        channel = block * 32 + 7
        up[channel, :] = 0       # the channel's activation is exactly 0 ...
        down[:, channel] = big   # ... so this weight changes nothing in fp16, everything once quantized
    tensors[down_key], tensors[up_key] = down, up
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    assert torch.equal(tensors[down_key], down)
    return dest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The perturbed model, its fp16 oracle trace (one case), and one `flipgate localise` run of the
    bundled int8lin gate on it (the expensive part, shared by the tests below)."""
    from harness.candidates.base import Sequence, capture_to_trace
    from harness.candidates.emulated import emulated_candidate
    from harness.cases import load_cases, tokenize_case
    from harness.models import load_tokenizer

    root = tmp_path_factory.mktemp("localise")
    model_dir = _perturbed_copy(root / "model")
    spec = next(s for s in load_cases() if s.id == CASE)
    ids = np.asarray(tokenize_case(spec, load_tokenizer(model_dir)).prompt_ids)
    with torch_threads(None, 128):
        oracle = capture_to_trace(emulated_candidate("fp16", model=model_dir), [Sequence(CASE, ids, ROWS)],
                                  root / "oracle.safetensors", vocab_size=2048)
    report_dir, record = root / "reports", root / "record.json"
    # one case of 12 rows: below the bundled min_confident (12 confident positions), not what this is about
    config = root / "flipgate.toml"
    config.write_text("[gates.int8lin]\nmin_confident = 1\n", encoding="utf-8")
    rc = main(["localise", "int8lin", "--model", str(model_dir), "--oracle", str(oracle), "--cache",
               str(root / "cache"), "--report-dir", str(report_dir), "--json", str(record), "--quiet",
               "--config", str(config)])
    folders = sorted(report_dir.glob("localise-int8lin-*"))
    traces = sorted((root / "cache" / "traces").glob("*.safetensors"))
    return {"root": root, "model": model_dir, "oracle": oracle, "ids": ids, "rc": rc, "record": record,
            "folder": folders[-1] if folders else None, "traces": traces, "config": config}


def _trace(setup, prefix: str) -> Path:
    return next(p for p in setup["traces"] if p.name.startswith(prefix + "-"))


# -- the culprit known by construction -----------------------------------------------------------------

def test_localise_names_exactly_the_perturbed_group(setup):
    assert setup["rc"] == 0
    d = json.loads(setup["record"].read_text())
    assert d["schema"] == "flipgate.localise/1" and d["gate"] == "int8lin" and d["safe"] == "fp16"
    assert d["baseline"]["defects"] >= 1
    gate_defects = [p for p in d["positions"] if p["found_by"] == "the gate"]
    assert len(gate_defects) == d["baseline"]["defects"]
    for p in d["positions"]:
        assert p["status"] == "localised", p
        assert [(g["kind"], g["layers"]) for g in p["culprits"]] == [("mlp", [CULPRIT_LAYER])], p
        # the evidence: the candidate flips, restoring MLP 4 alone repairs it, restoring attention alone does not
        by_label = {t["restored"]: t for t in p["trials"]}
        assert p["trials"][0]["restored"] == "nothing (the candidate)" and p["trials"][0]["class"] == "defect"
        assert p["trials"][0]["lead"] < 0
        assert by_label[f"MLP {CULPRIT_LAYER}"]["repaired"] and by_label[f"MLP {CULPRIT_LAYER}"]["lead"] > 0
        assert not by_label["attention 3,7"]["repaired"]
    assert d["complete"] is True
    assert [(g["kind"], g["layers"]) for g in d["suggested"]["groups"]] == [("mlp", [CULPRIT_LAYER])]


def test_suggested_recipe_restores_only_that_group_and_gates_clean(setup):
    from harness.candidates.emulated import load_fp16

    d = json.loads(setup["record"].read_text())
    name = d["suggested"]["name"]
    assert name == "int8lin-localised"
    recipe_file = setup["folder"] / f"{name}.toml"
    text = recipe_file.read_text()
    assert text == d["suggested"]["recipe"]
    plan = parse_recipes(text, str(recipe_file))[name].plan(load_fp16(setup["model"]))
    int8 = get_recipe("int8lin").plan(load_fp16(setup["model"]))
    for module, spec in plan.items():
        if f"layers.{CULPRIT_LAYER}.mlp." in module:
            assert spec is None, module  # restored to the safe recipe, fp16
        else:
            assert spec == int8[module], module
    # the gate of the same name in the same file, and its verdict over the whole case set
    from gates.policy import load_gates

    gate = load_gates(str(recipe_file))[name]
    assert gate.candidate == name and gate.control == "fp16" and gate.max_defects == 0
    assert d["verification"]["passed"] is True and d["verification"]["defects"] == 0
    assert d["sizes"]["candidate"] < d["sizes"]["suggested"] < d["sizes"]["safe"]
    # one MLP of 8 layers at fp16 instead of int8: 3 weights of 128 x 384, 2 bytes per weight instead of ~1.06
    mlp4 = 3 * (weight_bytes(None, (128, 384)) - weight_bytes(get_recipe("int8lin").rules[1].spec, (128, 384)))
    assert d["sizes"]["suggested"] - d["sizes"]["candidate"] == mlp4


def test_report_folder_and_grid(setup, tmp_path):
    folder = setup["folder"]
    assert {p.name for p in folder.iterdir()} == {"localise.html", "localise.md", "localise.json",
                                                  "int8lin-localised.toml"}
    from reports.localise import load_record

    assert load_record(folder / "localise.json") == json.loads(setup["record"].read_text())
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "flipgate.verdict/1"}')
    with pytest.raises(InputError, match="bad.json: schema is 'flipgate.verdict/1'"):
        load_record(bad)
    md = (folder / "localise.md").read_text()
    assert "## Flip localisation: int8lin" in md and "| 4 |" in md
    grid_line = next(line for line in md.splitlines() if line.startswith("| 4 |"))
    assert "**string:" in grid_line  # MLP 4 names the defects it causes
    assert all("**" not in line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| 4 |")
               and line[2:3].isdigit() and len(line.split("|")) == 6)
    page = folder / "localise.html"
    dom = _dom(tmp_path, page)
    culprits = [a for tag, a in dom if tag == "td" and "culprit" in a.get("class", "").split()]
    assert [(a["data-kind"], a["data-layer"]) for a in culprits] == [("mlp", str(CULPRIT_LAYER))]
    restorable = [a for tag, a in dom if tag == "td" and a.get("class") == "restorable"]
    assert len(restorable) == 2 + 6 + 8 - 1  # attention 3,7, GatedDeltaNet 6 layers, MLP 8 layers, less the culprit


def test_localisation_section_in_the_gate_report(setup):
    from reports import build_report
    from reports.html import render_html
    from reports.markdown import render_markdown
    from gates.engine import evaluate
    from gates.policy import get_gate

    verdict = evaluate(setup["oracle"], _trace(setup, "int8lin"), _trace(setup, "fp16"),
                       policy=get_gate("int8lin", setup["config"]))
    record = json.loads(setup["record"].read_text())
    report = build_report([verdict], title="int8lin", localisations=[record])
    html = render_html(report, plots={})
    assert html.count('id="localise"') == 1 and 'data-kind="mlp" data-layer="4"' in html
    md = render_markdown(report)
    assert md.index("## Positions") < md.index("## Flip localisation: int8lin")


# -- trials: the layer prefix replays bit for bit --------------------------------------------------------

def test_trials_replay_layers_bit_identically_and_reproduce_the_capture(setup):
    from harness.candidates.emulated import load_fp16
    from harness.trace import open_trace

    rows = (2, 7)
    work = {CASE: CaseWork(CASE, setup["ids"], len(setup["ids"]) - ROWS, rows)}
    restorations = [frozenset(), frozenset({("mlp", CULPRIT_LAYER)}), frozenset({("mlp", 7)}),
                    frozenset({("attention", 3), ("mlp", CULPRIT_LAYER)}), frozenset({("gdn", 0)})]
    got = {}
    with torch_threads(None, 128):
        for reuse in (True, False):
            model = load_fp16(setup["model"])
            mm = module_map(model, get_recipe("int8lin"), get_recipe("fp16"))
            runner = TrialRunner(model, mm, work, prefix_reuse=reuse)
            got[reuse] = [runner.rows(u, CASE) for u in restorations]
            if reuse:
                replayed = runner.stats
    for a, b in zip(got[True], got[False]):
        for r in rows:
            assert np.array_equal(a[r].view(np.uint16), b[r].view(np.uint16))
    # the replays did skip layers: MLP 4 from layer 4, MLP 7 from 7, attention 3 + MLP 4 from 3, GDN 0 none
    steps = work[CASE].steps
    assert replayed.layer_steps == (8 + 4 + 1 + 5 + 8) * steps and replayed.layer_steps_full == 5 * 8 * steps
    # restoring nothing is the candidate: the same rows as the captured int8lin trace, bit for bit
    cand = open_trace(_trace(setup, "int8lin")).case(CASE).logits
    for r in rows:
        assert np.array_equal(got[True][0][r].view(np.uint16), cand[r].view(np.uint16))
    # and restoring MLP 4 changes the rows (the weights were really swapped)
    assert not np.array_equal(got[True][1][rows[0]], got[True][0][rows[0]])


# -- bad input ------------------------------------------------------------------------------------------------

def test_budget_too_small_reports_best_partial_result_and_what_it_did_not_try(setup):
    from gates.policy import get_gate

    loc = localise_traces(get_gate("int8lin", setup["config"]), oracle=setup["oracle"],
                          candidate_trace=_trace(setup, "int8lin"),
                          control=_trace(setup, "fp16"), candidate=get_recipe("int8lin"), safe=get_recipe("fp16"),
                          model_dir=setup["model"], budget=3, verify=False)
    assert not loc and not loc.complete
    assert loc.stats["case_runs"] == 3
    statuses = [p.status for p in loc.positions]
    assert statuses[0] == "partial" and set(statuses[1:]) <= {"untried", "partial"}
    # best partial result: everything restored repairs it (that trial ran), so that is the culprit set so far
    assert {u for g in loc.positions[0].culprits for u in g.units()} == set(module_map_units(setup))
    assert loc.untried and any("kinds not singled out" in u for u in loc.untried)
    d = loc.to_dict()
    assert d["complete"] is False and d["untried"] == loc.untried


def module_map_units(setup):
    from harness.candidates.emulated import load_fp16

    return module_map(load_fp16(setup["model"]), get_recipe("int8lin"), get_recipe("fp16")).all_units()


def test_gate_without_defects_says_so(setup, capsys):
    from gates.policy import get_gate

    from harness.trace import open_trace, write_trace

    # the oracle's rows as the candidate's trace (a copy: the oracle's own file is refused): nothing flips
    o = open_trace(setup["oracle"])
    same = write_trace(setup["root"] / "oracle-rows.safetensors", {**o.metadata, "variant": "int8lin"}, list(o))
    loc = localise_traces(get_gate("int8lin", setup["config"]), oracle=setup["oracle"], candidate_trace=same,
                          control=None, candidate=get_recipe("int8lin"), safe=get_recipe("fp16"),
                          model_dir=setup["model"], verify=False)
    assert loc and loc.no_defects and loc.stats == {}
    assert "no defects" in loc.message and "nothing to localise" in loc.message
    assert loc.to_dict()["positions"] == []


def test_cli_gate_without_defects_exits_0(tmp_path, capsys):
    """int8lin on the unperturbed fixture flips nothing: the command says so, exits 0, writes no report."""
    from harness.candidates.base import Sequence, capture_to_trace
    from harness.candidates.emulated import emulated_candidate
    from harness.cases import load_cases, tokenize_case
    from harness.models import fixture_model_path, load_tokenizer

    spec = next(s for s in load_cases() if s.id == CASE)
    ids = np.asarray(tokenize_case(spec, load_tokenizer(fixture_model_path())).prompt_ids)
    with torch_threads(None, 128):
        oracle = capture_to_trace(emulated_candidate("fp16"), [Sequence(CASE, ids, ROWS)],
                                  tmp_path / "oracle.safetensors", vocab_size=2048)
    rc = main(["localise", "int8lin", "--oracle", str(oracle), "--cache", str(tmp_path / "cache"),
               "--report-dir", str(tmp_path / "reports"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "no defects" in out and "nothing to localise" in out
    assert not (tmp_path / "reports").exists()


def test_nothing_to_restore_is_an_error_naming_both(tmp_path, capsys):
    # same name: refused before anything runs
    assert main(["localise", "int8lin", "--safe", "int8lin", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'int8lin'" in err and "nothing to restore" in err
    # another name, the same plan: found from the model's module names (a meta-device skeleton)
    cfg = tmp_path / "flipgate.toml"
    cfg.write_text('[recipes.my-int8]\nextends = "int8lin"\nrules = []\n')
    assert main(["localise", "int8lin", "--safe", "my-int8", "--config", str(cfg), "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'int8lin'" in err and "'my-int8'" in err and "nothing to restore" in err
    assert not (tmp_path / "traces").exists()  # no oracle, no capture was run


def test_unusable_gates_and_options(tmp_path, capsys):
    assert main(["localise", "no-such-gate", "--cache", str(tmp_path)]) == 2
    assert "unknown gate 'no-such-gate'" in capsys.readouterr().err
    cfg = tmp_path / "flipgate.toml"
    cfg.write_text('[gates.bundle]\ncandidate = "coreai:/nowhere"\n')
    assert main(["localise", "bundle", "--config", str(cfg), "--cache", str(tmp_path)]) == 2
    assert "not a recipe" in capsys.readouterr().err
    assert main(["localise", "int8lin", "--budget", "0"]) == 2
    assert "--budget 0" in capsys.readouterr().err


# -- the pieces --------------------------------------------------------------------------------------------------

def test_weight_bytes():
    int8 = QuantSpec("int8", "symmetric_with_clipping", "per_block", 32, 1)
    int4 = QuantSpec("int4", "symmetric_with_clipping", "per_block", 32, 1)
    int4a = QuantSpec("int4", "asymmetric", "per_block", 32, 1)
    chan = QuantSpec("int8", "symmetric", "per_channel", None, 0)
    assert weight_bytes(None, (64, 64)) == 8192
    assert weight_bytes(int8, (64, 64)) == 4096 + 2 * 128
    assert weight_bytes(int4, (64, 64)) == 2048 + 2 * 128
    assert weight_bytes(int4a, (64, 64)) == 2048 + 2 * 128 + 64
    assert weight_bytes(chan, (64, 64)) == 4096 + 2 * 64


def test_groups_and_labels():
    assert layer_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    units = {("mlp", 0), ("mlp", 1), ("gdn", 5), ("head", -1), ("attention", 3)}
    assert [g.label for g in groups_of(units)] == ["attention 3", "GatedDeltaNet 5", "MLP 0-1", "head"]
    assert restoration_label(units) == "attention 3; GatedDeltaNet 5; MLP 0-1; head"
    assert restoration_label(()) == "nothing (the candidate)"
    assert Group("head", ()).units() == frozenset({("head", -1)})


def test_suggested_recipe_round_trips_with_mixed_specs():
    """Restoring to int8hu gives the head int8 `symmetric` and a GatedDeltaNet layer int8 with clipping:
    the file must plan exactly that and keep the candidate's rules for the rest."""
    from harness.candidates.emulated import load_fp16

    model = load_fp16(None)
    cand, safe = get_recipe("int4lin"), get_recipe("int8hu")
    mm = module_map(model, cand, safe)
    assert ("head", -1) in mm.units and mm.units[("head", -1)].restore_bytes < 0  # int8 head is smaller than fp16
    units = {("head", -1), ("gdn", 2), ("mlp", 7)}
    text = suggested_recipe_text("int4-fixed", cand, safe, mm, units, model)
    plan = parse_recipes(text, "suggested")["int4-fixed"].plan(model)
    for name, spec in plan.items():
        restored = name == "lm_head" or ".layers.2.linear_attn." in name or ".layers.7.mlp." in name
        assert spec == (mm.safe_plan[name] if restored else mm.candidate_plan[name]), name
    # everything restored: the candidate's body rule would match nothing, so it is left out
    every = suggested_recipe_text("all-restored", cand, safe, mm, mm.all_units(), model)
    assert "name = 'body'" not in every and "name = 'head'" not in every
    assert parse_recipes(every, "suggested")["all-restored"].plan(model) == mm.safe_plan
    with pytest.raises(InputError, match="'int4lin'.*'int4lin'|nothing to restore"):
        module_map(model, cand, cand)


# -- a DOM as Chromium builds it ---------------------------------------------------------------------------------

class _Elements(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.items: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.items.append((tag, {k: (v or "") for k, v in attrs}))


def _dom(tmp_path: Path, page: Path) -> list[tuple[str, dict]]:
    """The page's elements after headless Chromium loaded it (the raw file where no Chromium is installed)."""
    exe = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
    if exe is None:
        return _Elements(page.read_text()).items
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    return _Elements(proc.stdout).items
