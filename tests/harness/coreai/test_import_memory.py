"""`flipgate import` writes each dump's case as it is read: peak memory flat in the number of dumps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.coreai.logits_file import write_logits_file
from harness.trace import CaseTrace, base_metadata, open_trace, write_trace

WIDTH = 248320   # the 27B's vocabulary
TOKENS, ROWS = 10, 8   # a dump holds 9 rows (one per token after the first): 4.3 MiB of float16 a case
ROOT = Path(__file__).resolve().parents[3]

# Runs in a fresh interpreter: the peak resident set (VmHWM) is reset after the imports, so what is
# read is the import's own high-water mark above the interpreter and its modules.
PROBE = """
import json, sys
from harness.coreai.dumps import import_dumps
from harness.trace import open_trace
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = rss("VmRSS:")
files, oracle, out = json.loads(sys.argv[1])
import_dumps(files, None, out, oracle=oracle, variant="int8hu")
print(json.dumps({"peak_above_base": rss("VmHWM:") - base}))
"""


def make_dumps(folder: Path, n: int) -> tuple[list[str], Path]:
    rng = np.random.default_rng(n)
    cases, files = [], []
    for i in range(n):
        ids = rng.integers(0, WIDTH, size=TOKENS).astype(np.int64)
        rows = rng.normal(size=(TOKENS - 1, WIDTH)).astype(np.float16)
        files.append(str(write_logits_file(folder / f"case{i:03d}.logits.json", ids[1:].tolist(), rows)))
        cases.append(CaseTrace(f"case{i:03d}", ids, rows[-ROWS:]))
    oracle = write_trace(folder / "oracle.safetensors",
                         base_metadata(runner="hf", variant="bf16", vocab_size=WIDTH), cases)
    return files, oracle


def peak_import(files, oracle, out) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps([files, str(oracle), str(out)])],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_above_base"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_import_peak_memory_is_flat_in_the_number_of_dumps(tmp_path):
    few_dir, many_dir = tmp_path / "few", tmp_path / "many"
    few_dir.mkdir()
    many_dir.mkdir()
    few = make_dumps(few_dir, 2)
    many = make_dumps(many_dir, 24)
    case_bytes = ROWS * WIDTH * 2
    p_few = peak_import(*few, tmp_path / "few.safetensors")
    p_many = peak_import(*many, tmp_path / "many.safetensors")
    # holding every case (the old writer) would add 22 cases' rows: 22 x 3.8 MiB = 83 MiB
    assert p_many - p_few < 3 * case_bytes, (p_few, p_many)
    t = open_trace(tmp_path / "many.safetensors")
    assert len(t.case_ids) == 24 and t.vocab_size == WIDTH and t.metadata["logits_dtype"] == "float16"
    oracle = open_trace(many[1])
    for cid in ("case000", "case023"):
        assert np.array_equal(t.case(cid).logits, oracle.case(cid).logits)
        assert np.array_equal(t.input_ids(cid), oracle.input_ids(cid))


def test_a_bad_dump_after_good_ones_writes_nothing(tmp_path):
    files, oracle = make_dumps(tmp_path, 3)
    doc = json.loads(Path(files[2]).read_text())
    doc["tokens"] = doc["tokens"][:-1]  # one row short
    Path(files[2]).write_text(json.dumps(doc))
    from harness.cli import main

    out = tmp_path / "out.safetensors"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["import", *files, "--oracle", str(oracle), "--out", str(out)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no trace, no spool left behind
