"""`run_oracle` and `flipgate oracle`: the trace it writes, the prompt floor, resume, config files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.cases import load_cases
from harness.cli import main
from harness.errors import InputError
from harness.trace import open_trace
from oracles.hf import low_margin_count, prob_margins, run_oracle


def _same_trace(a, b):
    ta, tb = open_trace(a), open_trace(b)
    assert ta.case_ids == tb.case_ids
    for cid in ta.case_ids:
        ca, cb = ta.case(cid), tb.case(cid)
        assert np.array_equal(ca.input_ids, cb.input_ids), cid
        assert ca.logits.dtype == cb.logits.dtype and np.array_equal(ca.logits.astype(np.float32),
                                                                      cb.logits.astype(np.float32)), cid


def test_default_trace(default_trace, oracle_bf16, fixture_model):
    t = open_trace(default_trace)
    cs = load_cases()
    assert t.case_ids == cs.ids and t.runner == "hf" and t.variant == "bf16"
    assert t.vocab_size == oracle_bf16.vocab_size
    meta = t.metadata
    for key in ("model", "model_id", "tokenizer_sha256", "dtype", "device", "torch_version",
                "transformers_version", "harness_version", "created_at"):
        assert meta[key], key
    assert meta["mode"] == "one-pass" and meta["min_margin"] == "0.1" and meta["margin_space"] == "prob"
    assert json.loads(meta["case_set"]) == cs.ids and meta["cases_file_sha256"] == cs.sha256
    # the case set hash is of the ids and the sequences the trace holds, not of the file
    from harness.caseset import case_set_sha256, trace_case_set_sha256

    assert meta["case_set_sha256"] == case_set_sha256((c.case_id, c.input_ids) for c in t) \
        == trace_case_set_sha256(t) != cs.sha256
    assert not default_trace.with_name(default_trace.name + ".parts").exists(), "work folder left behind"

    low = json.loads(meta["low_margin"])
    assert list(low) == cs.ids
    total = 0
    for spec, c in zip(cs.specs, t):
        prompt = oracle_bf16.tokenizer.encode(spec.prompt, add_special_tokens=False)
        assert list(c.input_ids[:c.prompt_len]) == prompt and c.rows == spec.new_tokens == 16
        assert low[c.case_id] == low_margin_count(c.logits, 0.1)
        np.testing.assert_array_equal(c.logits.astype(np.float32),
                                      oracle_bf16.rows(c.input_ids, c.rows).astype(np.float32))
        total += c.rows
    assert float(meta["confident_fraction"]) == pytest.approx((total - sum(low.values())) / total, abs=1e-6)
    assert sum(low.values()) < total, "the fixture should be confident somewhere"


def test_given_continuations_are_scored_as_given(given_cases, default_trace, tmp_path):
    out = run_oracle(cases=given_cases, out=tmp_path / "o.safetensors", quiet=True)
    _same_trace(out, default_trace)
    assert json.loads(open_trace(out).metadata["low_margin"]) == json.loads(open_trace(default_trace).metadata["low_margin"])


def test_prompt_floor_is_printed_per_case(given_cases, tmp_path, capsys):
    run_oracle(cases=given_cases, out=tmp_path / "o.safetensors", min_margin=0.5)
    out = capsys.readouterr().out
    t = open_trace(tmp_path / "o.safetensors")
    low = json.loads(t.metadata["low_margin"])
    for cid in t.case_ids:
        assert low[cid] == int((prob_margins(t.case(cid).logits) < 0.5).sum())
        line = next(l for l in out.splitlines() if l.startswith(cid + " "))
        assert line.split()[1:3] == ["16", str(low[cid])]
    assert f"{sum(low.values())} under the floor" in out


def test_min_confident_fraction_refuses_a_tie_heavy_case_set(given_cases, tmp_path):
    out = tmp_path / "o.safetensors"
    with pytest.raises(InputError, match="min-confident-fraction") as e:
        run_oracle(cases=given_cases, out=out, min_margin=0.999, min_confident_fraction=0.5, quiet=True)
    assert "\n" not in str(e.value)
    assert not out.exists()
    assert run_oracle(cases=given_cases, out=out, min_confident_fraction=0.0, quiet=True) == out


def test_cli_refusal_exits_2_and_writes_nothing(given_cases, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    rc = main(["oracle", "--cases", str(given_cases), "--out", str(out), "--min-margin", "0.999",
               "--min-confident-fraction", "0.5", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists() and err.count("\n") == 0 and "confident" in err


def test_resume_after_a_crash_computes_only_what_is_missing(given_cases, default_trace, tmp_path, monkeypatch):
    import oracles.hf as hf

    out = tmp_path / "o.safetensors"
    real_write, written = hf.write_trace, []

    def crash_after_four(path, meta, cases):
        if len(written) == 4:
            raise KeyboardInterrupt
        written.append(path)
        return real_write(path, meta, cases)

    monkeypatch.setattr(hf, "write_trace", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        run_oracle(cases=given_cases, out=out, quiet=True, batch_size=1)
    parts = out.with_name(out.name + ".parts")
    assert not out.exists() and len(list(parts.glob("case-*.safetensors"))) == 4
    before = {p: p.stat().st_mtime_ns for p in parts.glob("case-*.safetensors")}

    monkeypatch.setattr(hf, "write_trace", real_write)
    rows_computed = []
    real_rows = hf.HFOracle.rows_batch

    def counting(self, ids, n_rows, **kw):
        rows_computed.append(len(ids))
        return real_rows(self, ids, n_rows, **kw)

    monkeypatch.setattr(hf.HFOracle, "rows_batch", counting)
    with pytest.raises(InputError, match="another dtype"):
        run_oracle(cases=given_cases, out=out, quiet=True, resume=True, dtype="float32")
    assert {p: p.stat().st_mtime_ns for p in parts.glob("case-*.safetensors")} == before, "refusal touched the parts"
    run_oracle(cases=given_cases, out=out, quiet=True, resume=True, batch_size=1)
    assert sum(rows_computed) == len(load_cases(given_cases)) - 4
    assert not parts.exists()
    _same_trace(out, default_trace)


def test_without_resume_old_parts_are_not_reused(given_cases, tmp_path):
    out = tmp_path / "o.safetensors"
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    (parts / "case-000000.safetensors").write_bytes(b"stale")
    run_oracle(cases=given_cases, out=out, quiet=True)
    assert not parts.exists() and open_trace(out).case_ids == load_cases(given_cases).ids


def test_stepwise_mode_through_the_cli(given_cases, default_trace, tmp_path, capsys):
    cases = tmp_path / "two.jsonl"
    cases.write_text("\n".join(given_cases.read_text().splitlines()[:2]) + "\n")
    out = tmp_path / "step.safetensors"
    assert main(["oracle", "--cases", str(cases), "--out", str(out), "--stepwise", "--quiet"]) == 0
    step, full = open_trace(out), open_trace(default_trace)
    assert step.metadata["mode"] == "stepwise"
    for c in step:
        o = full.case(c.case_id).logits.astype(np.float32)
        s = c.logits.astype(np.float32)
        confident = prob_margins(o) >= 0.1
        assert np.array_equal(o.argmax(-1)[confident], s.argmax(-1)[confident])


def test_config_file_supplies_defaults(given_cases, tmp_path, capsys):
    cfg = tmp_path / "flipgate.toml"
    cfg.write_text(f'[gates.x]\nmin_margin = 0.2\n\n[oracle]\ncases = "{given_cases.name}"\n'
                   'dtype = "float32"\nout = "from-config.safetensors"\n')
    (tmp_path / given_cases.name).write_text(given_cases.read_text())
    assert main(["oracle", "--config", str(cfg), "--quiet"]) == 0
    t = open_trace(tmp_path / "from-config.safetensors")
    assert t.variant == "fp32" and t.metadata["dtype"] == "float32" and t.case(t.case_ids[0]).logits.dtype == np.float32
    # a flag beats the file
    assert main(["oracle", "--config", str(cfg), "--dtype", "bfloat16", "--out", str(tmp_path / "b.safetensors"),
                 "--quiet"]) == 0
    assert open_trace(tmp_path / "b.safetensors").variant == "bf16"
    cfg.write_text('[oracle]\ndtype = "float32"\nprecision = 3\n')
    assert main(["oracle", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "precision" in err and "valid:" in err


def test_progress_bar_only_on_a_terminal(given_cases, tmp_path, capsys):
    run_oracle(cases=given_cases, out=tmp_path / "o.safetensors")
    cap = capsys.readouterr()
    assert "tok/s" not in cap.err and "━" not in cap.err  # not a TTY under pytest
    run_oracle(cases=given_cases, out=tmp_path / "q.safetensors", quiet=True)
    assert capsys.readouterr().out == ""


def test_resume_recomputes_a_corrupt_part_never_uses_it(given_cases, default_trace, tmp_path, monkeypatch):
    """A part whose bytes changed after it was written (a disk error, an editor, a half-synced copy)
    still reads as a valid one-case trace; only its checksum in run.json tells. It is computed again."""
    import oracles.hf as hf

    out = tmp_path / "o.safetensors"
    real_write, written = hf.write_trace, []

    def crash_after_four(path, meta, cases):
        if len(written) == 4:
            raise KeyboardInterrupt
        written.append(path)
        return real_write(path, meta, cases)

    monkeypatch.setattr(hf, "write_trace", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        run_oracle(cases=given_cases, out=out, quiet=True, batch_size=1)
    monkeypatch.setattr(hf, "write_trace", real_write)
    parts = out.with_name(out.name + ".parts")
    manifest = json.loads((parts / "run.json").read_text())
    assert sorted(manifest["part_sha256"]) == sorted(p.name for p in written)  # each part listed with its sha256
    victim = written[1]
    data = bytearray(victim.read_bytes())
    data[-2] ^= 0x01  # the lowest mantissa bit of the last logit: still a valid, finite trace
    victim.write_bytes(bytes(data))
    open_trace(victim)  # the reader cannot tell

    rows_computed = []
    real_rows = hf.HFOracle.rows_batch

    def counting(self, ids, n_rows, **kw):
        rows_computed.append(len(ids))
        return real_rows(self, ids, n_rows, **kw)

    monkeypatch.setattr(hf.HFOracle, "rows_batch", counting)
    run_oracle(cases=given_cases, out=out, quiet=True, resume=True, batch_size=1)
    assert sum(rows_computed) == len(load_cases(given_cases)) - 3  # the corrupt part was not reused
    _same_trace(out, default_trace)  # and the result equals a clean run's
