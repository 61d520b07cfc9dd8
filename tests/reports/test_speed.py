"""Speed inputs of the card: llm-benchmark's two output forms, the bandwidth arithmetic, weight bytes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.errors import InputError
from reports.speed import (bandwidth_use, chip_bandwidth, chip_table, parse_bandwidth, parse_llm_benchmark_json,
                           parse_llm_benchmark_text, read_speed, weight_bytes)

BENCH = Path(__file__).parent / "data" / "llm-benchmark"
FIXTURE_INSPECT = Path(__file__).parent / "data" / "fixture-compare" / "inspect-int8hu.json"


def test_stdout_as_benchmarkmain_prints_it():
    s = read_speed(BENCH / "stdout.txt")
    assert (s.decode_tok_s, s.prefill_tok_s) == (15.9, 15.8)  # the summary's averages, not a trial's
    assert (s.prompt_tokens, s.generation_tokens, s.trials) == (64, 128, 3)
    assert s.source == "llm-benchmark" and s.evidence == "device"


def test_stdout_as_the_readme_shows_it():
    s = read_speed(BENCH / "readme-stdout.txt")
    assert (s.decode_tok_s, s.prefill_tok_s, s.trials) == (58.912, 1064.879, 2)


def test_output_json_both_forms():
    s = read_speed(BENCH / "output.json")
    assert (s.decode_tok_s, s.prefill_tok_s, s.trials, s.model) == (15.9, 15.8, 3, "qwen3_6_27b_decode_int8hu_block32_sym")
    s = read_speed(BENCH / "readme-output.json")
    assert (s.decode_tok_s, s.prefill_tok_s, s.prompt_tokens) == (58.9, 1064.9, 512)


def test_json_without_averages_takes_the_mean_of_its_trials():
    doc = json.loads((BENCH / "output.json").read_text())
    del doc["averages"]
    s = parse_llm_benchmark_json(doc)
    assert s.decode_tok_s == pytest.approx((15.934 + 15.871 + 15.895) / 3)
    assert s.prefill_tok_s == pytest.approx((15.812 + 15.79 + 15.798) / 3)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.split("📊")[0], "no 'Benchmark Summary' block"),                       # interrupted run
    (lambda t: t.replace("Generation: 15.900", "Generation: nan"), "not a measured rate"),
    (lambda t: t.replace("Generation: 15.900", "Generation: 0.000"), "not a measured rate"),
    (lambda t: t.replace("Prompt:     15.800 tokens/sec\n", ""), "no 'Prompt: N tokens/sec' line"),
    (lambda t: t.replace("Prompt:     15.800", "Prompt:     15.800 tokens/sec\nPrompt:     99.0"),
     "a second 'Prompt' line"),
])
def test_broken_stdout_is_refused(edit, message):
    text = edit((BENCH / "stdout.txt").read_text(encoding="utf-8"))
    with pytest.raises(InputError, match=message):
        parse_llm_benchmark_text(text, "bench.txt")


@pytest.mark.parametrize("doc, message", [
    ({"averages": {"prompt_tps": 15.8}}, "lack 'generation_tps'"),
    ({"averages": {"prompt_tps": 15.8, "generation_tps": -1}}, "not a measured rate"),
    ({"averages": {"prompt_tps": 15.8, "generation_tps": "15.9"}}, "expected a number"),
    ({"averages": {"prompt_tps": 15.8, "generation_tps": True}}, "expected a number"),
    ({"model": "x"}, "no 'averages' and no 'trials'"),
    ([1, 2], "not an llm-benchmark report"),
])
def test_broken_json_is_refused(doc, message):
    with pytest.raises(InputError, match=message):
        parse_llm_benchmark_json(doc, "bench.json")


@pytest.mark.parametrize("text, message", [
    ('{"averages": {"generation_tps": ' + "9" * 5000 + "}}", "Exceeds the limit"),
    ("{" + '"a": [' * 100_000 + "]" * 100_000 + "}", "nested"),
])
def test_hostile_speed_files_are_one_line_input_errors(tmp_path, text, message):
    from reports.speed import read_speed

    f = tmp_path / "bench.json"
    f.write_text(text)
    with pytest.raises(InputError, match=message) as e:
        read_speed(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_bandwidth_arithmetic():
    # bytes per token x tok/s / bandwidth; the seed's "~28 GB/token -> 15.9 tok/s is ~87 %" holds with
    # 28 GiB (30.1e9 bytes); with 28e9 bytes it is 81.5 %
    assert bandwidth_use(28 * 2**30, 15.9, 546e9) == pytest.approx(0.87552, abs=1e-5)
    assert bandwidth_use(28e9, 15.9, 546e9) == pytest.approx(0.81538, abs=1e-5)
    assert bandwidth_use(14e9, 30, parse_bandwidth("546GB/s")) == pytest.approx(14e9 * 30 / 546e9)
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(InputError):
            bandwidth_use(bad, 15.9, 546e9)
        with pytest.raises(InputError):
            bandwidth_use(28e9, bad, 546e9)


def test_bandwidth_figures():
    assert parse_bandwidth("546GB/s") == 546e9
    assert parse_bandwidth(" 546 gb/s ") == 546e9
    assert parse_bandwidth("400GiB/s") == 400 * 2**30
    assert parse_bandwidth("1.2TB/s") == pytest.approx(1.2e12)
    for bad in ("546", "fast", "0GB/s", "-5GB/s", "546 GB", "546GB/h"):
        with pytest.raises(InputError, match="--bandwidth"):
            parse_bandwidth(bad)
    m4max = chip_bandwidth("m4  max")
    assert (m4max.bytes_per_s, m4max.name) == (546e9, "M4 Max")
    assert m4max.source.startswith("https://www.apple.com/")
    for name, row in chip_table().items():  # every figure names where it comes from
        assert row["bandwidth"] > 0 and row["source"].startswith("https://www.apple.com/"), name
    with pytest.raises(InputError, match="not in the bandwidth table"):
        chip_bandwidth("M9 Hyper")


def test_weight_bytes_of_the_fixture_bundle_audit():
    doc = json.loads(FIXTURE_INSPECT.read_text())
    storage = doc["asset_audit"]["storage"]
    # int8 codes, fp16 scales and tensors, fp32 constants; Int32/UInt32/UInt64/Bool are indices, not weights
    assert weight_bytes(storage) == storage["Int8"] + 2 * storage["Float16"] + 4 * storage["Float32"] == 2_848_014
    assert doc["asset_audit"]["weight_bytes"] == 2_848_014  # what `flipgate inspect --json` says too
    assert weight_bytes({"UInt4": 3, "Int8": 1}) == 3  # 1.5 + 1 bytes, rounded up
    with pytest.raises(InputError, match="not an element count"):
        weight_bytes({"Int8": -1})
