"""Core AI fixtures: the oracle on a few cases, the emulated int8hu logits, an `llm-runner` stand-in,
and a real Core AI LanguageBundle of the fixture built once per session.

The real bundle is a TEST ARTIFACT (its metadata.json says so): the fixture's int8hu variant,
quantized by coreai-opt (`prepare_coreai_opt` + `finalize`, so its weights are stored as Int8 codes
with fp16 block scales) and converted by coreai-torch from transformers' own Qwen3_5ForCausalLM
stepped one token at a time: `DecodeStep` below drives the Hugging Face layers through a cache
whose tensors are registered buffers updated in place, so `torch.export` records them as the
asset's states (keyCache, valueCache, convStates, recurrentStates, the names apple/coreai-models
uses). Its `position_ids` input is the one position of the token ([1, 1]); apple/coreai-models'
exports take the positions so far and grow their caches, so this asset is for flipgate's
`coreai-python` runner and the audit, not for `llm-runner`.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
from pathlib import Path

import pytest

from harness.models import fixture_model_path

HERE = Path(__file__).parent
CASE_IDS = ("gzip", "abc", "queue")   # short prompts: the stepwise runners stay quick
STATE_NAMES = ("keyCache", "valueCache", "convStates", "recurrentStates")
MAX_CONTEXT = 128


# -- building a real bundle (test infrastructure, not a flipgate feature) -------------------------------

class _BufferCache:
    """The cache interface transformers' Qwen3.5 layers call during a cached S=1 step, backed by the
    DecodeStep's buffers and updated in place (torch.export turns those mutations into states)."""

    def __init__(self, step, position):
        self.step, self.position = step, position

    def update(self, key, value, layer_idx, *args, **kwargs):
        i = self.step.kv_row[layer_idx]
        kc, vc = self.step.keyCache[i], self.step.valueCache[i]
        kc.index_copy_(2, self.position, key.to(kc.dtype))
        vc.index_copy_(2, self.position, value.to(vc.dtype))
        return kc.to(key.dtype), vc.to(value.dtype)

    def get_conv_state(self, layer_idx, state_idx=0):
        return self.step.convStates[self.step.linear_row[layer_idx]]

    def get_recurrent_state(self, layer_idx, state_idx=0):
        return self.step.recurrentStates[self.step.linear_row[layer_idx]]

    def update_recurrent_state(self, state, layer_idx):
        self.step.recurrentStates[self.step.linear_row[layer_idx]].copy_(state)

    def is_recording_past(self, layer_idx):
        return False

    def get_seq_length(self, layer_idx=0):
        return 0


def decode_step_module(lm, max_context: int):
    import torch

    class DecodeStep(torch.nn.Module):
        """One token through transformers' Qwen3_5ForCausalLM: (input_ids [1,1], position_ids [1,1]) -> logits."""

        def __init__(self):
            super().__init__()
            self.lm = lm
            cfg = lm.config
            types = list(cfg.layer_types)[: cfg.num_hidden_layers]
            self.kv_row = {i: types[:i].count(t) for i, t in enumerate(types) if t == "full_attention"}
            self.linear_row = {i: types[:i].count(t) for i, t in enumerate(types) if t == "linear_attention"}
            dt = lm.get_input_embeddings().weight.dtype
            conv_dim = 2 * cfg.linear_key_head_dim * cfg.linear_num_key_heads + cfg.linear_value_head_dim * cfg.linear_num_value_heads
            kv = (len(self.kv_row), 1, cfg.num_key_value_heads, max_context, cfg.head_dim)
            self.register_buffer("keyCache", torch.zeros(kv, dtype=dt))
            self.register_buffer("valueCache", torch.zeros(kv, dtype=dt))
            self.register_buffer("convStates", torch.zeros(len(self.linear_row), 1, conv_dim, cfg.linear_conv_kernel_dim, dtype=dt))
            # transformers keeps the GatedDeltaNet state in float32
            self.register_buffer("recurrentStates", torch.zeros(
                len(self.linear_row), 1, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim,
                dtype=torch.float32))
            self.max_context = max_context

        def forward(self, input_ids, position_ids):
            pos = position_ids.reshape(-1).to(torch.long)
            dt = self.keyCache.dtype
            visible = torch.arange(self.max_context) <= pos
            mask = torch.where(visible, torch.zeros((), dtype=dt), torch.full((), torch.finfo(dt).min, dtype=dt))
            out = self.lm(input_ids=input_ids.to(torch.long), position_ids=pos.view(1, 1),
                          attention_mask={"full_attention": mask.view(1, 1, 1, -1), "linear_attention": None},
                          past_key_values=_BufferCache(self, pos), use_cache=True)
            return out.logits

    return DecodeStep().eval()


def build_bundle(lm, tokenizer_dir: Path, out: Path, *, name: str, max_context: int = MAX_CONTEXT,
                 compression: str | None = None) -> Path:
    """Export the S=1 step with its states, convert it with coreai-torch, and lay out a LanguageBundle."""
    import torch
    import coreai_torch

    lm.config._attn_implementation = "eager"
    step = decode_step_module(lm, max_context)
    example = (torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, 1, dtype=torch.int32))
    with torch.no_grad():
        program = torch.export.export(step, example).run_decompositions(coreai_torch.get_decomp_table())
    converter = coreai_torch.TorchConverter(mode=coreai_torch.TorchConverter.Mode.RELEASE)
    converter.add_exported_program(program, input_names=["input_ids", "position_ids"], output_names=["logits"],
                                   state_names=list(STATE_NAMES))
    out.mkdir(parents=True, exist_ok=True)
    converter.to_coreai().save_asset(out / f"{name}.aimodel")
    (out / "tokenizer").mkdir(exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (tokenizer_dir / f).is_file():
            shutil.copy(tokenizer_dir / f, out / "tokenizer" / f)
    cfg = lm.config
    (out / "metadata.json").write_text(json.dumps({
        "metadata_version": "0.2", "kind": "llm", "name": name,
        "assets": {"main": f"{name}.aimodel"},
        "language": {"tokenizer": "flipgate fixture", "vocab_size": cfg.vocab_size,
                     "max_context_length": max_context, "embedded_tokenizer": True,
                     "function_map": {"main": ["main"]}},
        "source": {"model_definition": "torch", "hf_model_id": "flipgate/fixture-model",
                   "note": "TEST ARTIFACT built by flipgate's tests: transformers Qwen3_5ForCausalLM, S=1 decode "
                           "step with states, position_ids [1,1]; not an apple/coreai-models export"},
        "compression": compression,
        "compilation": {"targets": []},
    }, indent=2), encoding="utf-8")
    return out


# -- session fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    path = fixture_model_path()
    if not (path / "model.safetensors").is_file():
        pytest.fail(f"the bundled fixture model is missing: {path} (scripts/make_fixture.py train)")
    return path


@pytest.fixture(scope="session")
def coreai_cases(tmp_path_factory) -> Path:
    from harness.cases import bundled_cases_path

    lines = [ln for ln in bundled_cases_path().read_text(encoding="utf-8").splitlines()
             if ln.strip() and json.loads(ln)["id"] in CASE_IDS]
    path = tmp_path_factory.mktemp("coreai-cases") / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def coreai_oracle(fixture_dir, coreai_cases, tmp_path_factory) -> Path:
    from oracles.hf import run_oracle

    return Path(run_oracle(model=str(fixture_dir), cases=str(coreai_cases), quiet=True,
                           out=tmp_path_factory.mktemp("coreai-oracle") / "oracle.safetensors"))


def _emulated_trace(variant, fixture_dir, oracle_path, out, *, all_rows: bool) -> Path:
    from harness.candidates import Sequence, capture_to_trace
    from harness.candidates.emulated import emulated_candidate
    from harness.models import model_provenance, tokenizer_sha256
    from harness.trace import open_trace

    oracle = open_trace(oracle_path)
    seqs = [Sequence(c, oracle.input_ids(c), len(oracle.input_ids(c)) - 1 if all_rows else oracle.rows(c))
            for c in oracle.case_ids]
    return capture_to_trace(emulated_candidate(variant, model=str(fixture_dir)), seqs, out,
                            vocab_size=oracle.vocab_size, model=model_provenance(fixture_dir),
                            tokenizer_sha256=tokenizer_sha256(fixture_dir))


@pytest.fixture(scope="session")
def emulated_all_rows(fixture_dir, coreai_oracle, tmp_path_factory) -> Path:
    """int8hu, emulated stepwise, with a row for EVERY position (what llm-runner dumps)."""
    return _emulated_trace("int8hu", fixture_dir, coreai_oracle,
                           tmp_path_factory.mktemp("emulated") / "int8hu-all.safetensors", all_rows=True)


@pytest.fixture(scope="session")
def emulated_int8hu(emulated_all_rows, coreai_oracle, tmp_path_factory) -> Path:
    """The same logits cut to the oracle's scored rows: the emulated candidate's own trace."""
    from harness.trace import CaseTrace, open_trace, write_trace

    full, oracle = open_trace(emulated_all_rows), open_trace(coreai_oracle)
    cases = [CaseTrace(c, full.input_ids(c), full.case(c).logits[-oracle.rows(c):]) for c in full.case_ids]
    return write_trace(tmp_path_factory.mktemp("emulated") / "int8hu.safetensors", dict(full.metadata), cases)


@pytest.fixture(scope="session")
def emulated_fp16(fixture_dir, coreai_oracle, tmp_path_factory) -> Path:
    return _emulated_trace("fp16", fixture_dir, coreai_oracle,
                           tmp_path_factory.mktemp("emulated") / "fp16.safetensors", all_rows=False)


@pytest.fixture(scope="session")
def llm_runner_standin(tmp_path_factory) -> Path:
    """An executable `llm-runner` (a shell wrapper, so this interpreter and its packages run it)."""
    script = tmp_path_factory.mktemp("bin") / "llm-runner"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "llm_runner_standin.py"}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@pytest.fixture(scope="session")
def light_bundle(fixture_dir, emulated_all_rows, tmp_path_factory) -> Path:
    """A LanguageBundle layout around an EMPTY asset folder, with the stand-in's logits: for the
    subprocess error paths, which never read the asset (candidates built with audit=False)."""
    root = tmp_path_factory.mktemp("light-bundle") / "Fixture-int8hu"
    (root / "model.aimodel").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    shutil.copy(fixture_dir / "tokenizer.json", root / "tokenizer" / "tokenizer.json")
    (root / "metadata.json").write_text(json.dumps({
        "metadata_version": "0.2", "kind": "llm", "name": "Fixture-int8hu", "assets": {"main": "model.aimodel"},
        "language": {"tokenizer": "fixture", "vocab_size": 2048, "max_context_length": MAX_CONTEXT,
                     "embedded_tokenizer": True, "function_map": {"main": ["main"]}},
        "compression": None}), encoding="utf-8")
    shutil.copy(emulated_all_rows, root / "standin-logits.safetensors")
    return root


def build_variant_bundle(fixture_dir: Path, variant: str, out: Path, *, compression: str | None = None,
                         recipes: Path | None = None) -> Path:
    """The fixture quantized by coreai-opt with `variant`'s recipe (`prepare_coreai_opt` + `finalize`: Core AI
    custom ops holding integer codes, fp16 block scales and zero points) and converted by coreai-torch."""
    from harness.candidates.emulated import load_fp16, prepare_coreai_opt
    from harness.recipe import get_recipe

    model = load_fp16(fixture_dir)
    plan = get_recipe(variant, recipes).plan(model)
    if any(spec is not None for spec in plan.values()):
        quantizer, prepared = prepare_coreai_opt(model, plan)
        model = quantizer.finalize(prepared)
    return build_bundle(model, fixture_dir, out, name=f"fixture-{variant}-test-artifact", compression=compression)


@pytest.fixture(scope="session")
def bundle_builder():
    """build_variant_bundle, for tests that build bundles of their own recipes."""
    return build_variant_bundle


@pytest.fixture(scope="session")
def variant_bundle(fixture_dir, tmp_path_factory):
    """variant -> a real LanguageBundle of the fixture quantized with that recipe, built on first use and
    kept for the session (about 6-10 s each on one core; metadata.json says compression: null)."""
    built: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in built:
            out = tmp_path_factory.mktemp(f"bundle-{variant}") / f"Fixture-{variant}"
            built[variant] = build_variant_bundle(fixture_dir, variant, out)
        return built[variant]

    return get


@pytest.fixture(scope="session")
def real_bundle(variant_bundle) -> Path:
    """The fixture's int8hu variant as a real Core AI LanguageBundle (test artifact). metadata.json says
    compression: null on purpose: the audit must find int8 from the storage alone."""
    return variant_bundle("int8hu")


@pytest.fixture(scope="session")
def real_bundle_with_standin(real_bundle, emulated_all_rows) -> Path:
    """The real bundle, plus the logits the stand-in llm-runner serves for it."""
    shutil.copy(emulated_all_rows, real_bundle / "standin-logits.safetensors")
    return real_bundle
