"""A tour of bad inputs: each is made in a temporary folder, handed to the real `flipgate`, and its exit
status and first line of output recorded as a Markdown table (the trust sweep's evidence).

    python scripts/bad_inputs.py > bad-inputs.md

Nothing here is a test (the tests assert each refusal); this shows them side by side as a user meets
them. Inputs are small synthetic traces, verdicts and dumps, plus the bundled fixture where a model
is needed. Expect exit 2 (refused, one line) for bad input and 1 only where a gate ran and failed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.trace import CaseTrace, base_metadata, write_trace  # noqa: E402
from harness.trace import open_trace as open_trace0  # noqa: E402


def raw_trace(path: Path, header: dict, data: bytes = b"") -> Path:
    """A safetensors file with exactly this header (no validation), for inputs the writer refuses."""
    raw = json.dumps(header, ensure_ascii=False).encode("utf-8", "surrogatepass")
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def trace_with_ids(path: Path, case_ids: list[str], vocab: int = 32, ids=None, meta_extra=None) -> Path:
    ids = np.arange(6, dtype=np.int64) % vocab if ids is None else np.asarray(ids, dtype=np.int64)
    logits = np.zeros((2, vocab), dtype=np.float32)
    header, off, blobs = {}, 0, []
    for cid in case_ids:
        for name, arr, dt in ((f"{cid}/input_ids", ids, "I64"), (f"{cid}/logits", logits, "F32")):
            b = arr.tobytes()
            header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
            blobs.append(b)
            off += len(b)
    meta = {"format": "flipgate.trace/1", "runner": "test", "variant": "int8hu", "vocab_size": str(vocab),
            "cases": json.dumps(case_ids, ensure_ascii=False), **(meta_extra or {})}
    return raw_trace(path, {"__metadata__": meta, **header}, b"".join(blobs))


def scenario(d: Path) -> dict:
    """Oracle, fp16 control, int8hu and int4lin traces of one 24-position case (a 24-row synthetic gate)."""
    rng = np.random.default_rng(0)
    vocab, rows = 64, 24
    ids = rng.integers(0, vocab, size=40).astype(np.int64)
    o = rng.normal(size=(rows, vocab)) * 3
    top = o.argmax(1)
    o[np.arange(rows), top] += 4  # confident rows
    ids[-rows:] = top

    from harness.models import fixture_model_path, tokenizer_sha256

    tok = tokenizer_sha256(fixture_model_path())  # so a candidate could be run on these sequences

    def write(name, runner, variant, logits, dtype=np.float32):
        meta = base_metadata(runner=runner, variant=variant, vocab_size=vocab, tokenizer_sha256=tok)
        return write_trace(d / f"{name}.safetensors", meta, [CaseTrace("c", ids, logits.astype(dtype))])

    flip = o.copy()
    second = np.argsort(o[5])[-2]
    flip[5, second] = flip[5].max() + 1  # a confident flip at row 5
    nan = o.copy()
    nan[3, 7] = np.nan
    return {"oracle": write("oracle", "hf", "bf16", o), "fp16": write("fp16", "emulated", "fp16", o + 1e-3, np.float16),
            "int8hu": write("int8hu", "emulated", "int8hu", o + 2e-3, np.float16),
            "int4lin": write("int4lin", "emulated", "int4lin", flip, np.float16),
            "nan": write("nan", "emulated", "int8hu", nan, np.float16),
            "flat-oracle": write("flat-oracle", "hf", "bf16", np.zeros((rows, vocab))),
            "flat-cand": write("flat-cand", "emulated", "int8hu", np.zeros((rows, vocab)), np.float16),
            "flat-ctrl": write("flat-ctrl", "emulated", "fp16", np.zeros((rows, vocab)) + 1e-3, np.float16)}


def main() -> None:
    d = Path(tempfile.mkdtemp(prefix="flipgate-bad-"))
    os.chdir(d)
    s = scenario(d)
    o, f16, i8, i4 = (str(s[k]) for k in ("oracle", "fp16", "int8hu", "int4lin"))
    runs: list[tuple[str, list[str] | str]] = []

    def add(what, argv):
        runs.append((what, argv))

    # --- traces that break the format
    for label, cid in (("case id with '/'", "a/b"), ("case id '..'", ".."), ("case id with NUL", "a\x00b"),
                       ("case id with ESC", "a\x1b[31mb"), ("case id with U+202E", "a\u202eb"),
                       ("case id with U+2028", "a\u2028b"), ("case id with a leading space", " a"),
                       ("case id of 201 bytes", "x" * 201), ("empty case id", "")):
        add(f"trace: {label}", ["trace", str(trace_with_ids(d / f"id{len(runs)}.st", [cid]))])
    add("trace: a case id listed twice", ["trace", str(trace_with_ids(d / "dup.st", ["a", "a"]))])
    add("trace: token id = vocab_size", ["trace", str(trace_with_ids(d / "big-id.st", ["a"], ids=[1, 2, 32, 3, 4, 5]))])
    add("trace: token id -1", ["trace", str(trace_with_ids(d / "neg-id.st", ["a"], ids=[1, 2, -1, 3, 4, 5]))])
    sparse = d / "vocab31.st"
    raw_trace(sparse, {"__metadata__": {"format": "flipgate.trace/1", "runner": "t", "variant": "v",
                                         "vocab_size": str(2**31), "cases": '["a"]'},
                       "a/input_ids": {"dtype": "I64", "shape": [6], "data_offsets": [0, 48]},
                       "a/logits": {"dtype": "F32", "shape": [2, 2**31], "data_offsets": [48, 48 + 2 * 2**31 * 4]}})
    with open(sparse, "r+b") as fh:
        fh.truncate(sparse.stat().st_size + 48 + 2 * 2**31 * 4)
    add("trace: vocab_size 2**31 (sparse 16 GiB file)", ["trace", str(sparse)])
    add("gate: an oracle claiming vocab_size 2**31", ["gate", "int8hu", "--oracle", str(sparse), "--candidate", i8,
                                                     "--control", f16])
    long_ids = d / "671m.st"
    n = 671_000_000
    raw_trace(long_ids, {"__metadata__": {"format": "flipgate.trace/1", "runner": "t", "variant": "v",
                                           "vocab_size": "32", "cases": '["a"]'},
                         "a/input_ids": {"dtype": "I64", "shape": [n], "data_offsets": [0, n * 8]},
                         "a/logits": {"dtype": "F32", "shape": [2, 32], "data_offsets": [n * 8, n * 8 + 256]}})
    with open(long_ids, "r+b") as fh:
        fh.truncate(long_ids.stat().st_size + n * 8 + 256)
    add("trace: input_ids claiming 671 M tokens (sparse)", ["trace", str(long_ids)])
    add("trace: vocab_size ' 8'", ["trace", str(trace_with_ids(d / "v8.st", ["a"], meta_extra={"vocab_size": " 8"}))])
    deep = d / "deep.st"
    raw = b'{"__metadata__":{"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}}"
    raw += b" " * (-len(raw) % 8)
    deep.write_bytes(struct.pack("<Q", len(raw)) + raw)
    add("trace: header nested 200,000 deep", ["trace", str(deep)])
    add("trace: a lone surrogate in metadata (raw bytes)",
        ["trace", str(trace_with_ids(d / "sur.st", ["a"], meta_extra={"note": "m\ud800"}))])
    sur = trace_with_ids(d / "sur-escaped.st", ["a"])
    raw = sur.read_bytes()
    hlen = struct.unpack("<Q", raw[:8])[0]
    head = raw[8:8 + hlen].replace(b'"variant": "int8hu"', b'"variant": "int8\\ud800"')
    sur.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + hlen:])
    add("trace: a lone surrogate in metadata (JSON escape \\ud800)", ["trace", str(sur)])
    shape70 = d / "shape70.st"
    raw_trace(shape70, {"__metadata__": {"format": "flipgate.trace/1", "runner": "t", "variant": "v",
                                          "vocab_size": "32", "cases": '["a"]'},
                        "a/input_ids": {"dtype": "I64", "shape": [2**70], "data_offsets": [0, 48]},
                        "a/logits": {"dtype": "F32", "shape": [2, 32], "data_offsets": [48, 304]}}, b"\0" * 304)
    add("trace: shape [2**70]", ["trace", str(shape70)])
    (d / "empty.st").write_bytes(b"")
    add("trace: an empty file", ["trace", str(d / "empty.st")])
    (d / "text.st").write_text("hello, not a trace\n")
    add("trace: a text file", ["trace", str(d / "text.st")])
    shutil.copyfile(o, d / "trunc.st")
    with open(d / "trunc.st", "r+b") as fh:
        fh.truncate((d / "trunc.st").stat().st_size - 100)
    add("trace: truncated by 100 bytes", ["trace", str(d / "trunc.st")])
    (d / "folder.st").mkdir()
    add("trace: a folder", ["trace", str(d / "folder.st")])
    add("trace: a missing file", ["trace", str(d / "missing.st")])
    add("trace X | head -1 (closed pipe)", f"{sys.executable} -m harness.cli trace {o} {i8} {f16} | head -1")

    # --- gates and their inputs
    add("gate: the candidate as its own control", ["gate", "int4lin", "--oracle", o, "--candidate", i4, "--control", i4])
    os.symlink(i4, d / "link-to-int4.st")
    add("gate: the control a symlink to the candidate", ["gate", "int4lin", "--oracle", o, "--candidate", i4,
                                                         "--control", str(d / "link-to-int4.st")])
    relabel = write_trace(d / "relabelled.st", base_metadata(runner="emulated", variant="fp16", vocab_size=64,
                                                             tokenizer_sha256=open_trace0(i4).tokenizer_sha256),
                          [CaseTrace("c", *(lambda t: (t.input_ids("c"), t.case("c").logits))(
                              __import__("harness.trace", fromlist=["open_trace"]).open_trace(i4)))])
    add("gate: a control holding the candidate's rows, relabelled fp16",
        ["gate", "int4lin", "--oracle", o, "--candidate", i4, "--control", str(relabel)])
    add("gate: the control is int8hu, the policy names fp16", ["gate", "int4lin", "--oracle", o, "--candidate", i4,
                                                               "--control", i8])
    add("gate: the oracle as candidate", ["gate", "int8hu", "--oracle", o, "--candidate", o, "--control", f16])
    shutil.copyfile(o, d / "oracle-copy.st")
    add("gate: a copy of the oracle as candidate", ["gate", "int8hu", "--oracle", o, "--candidate",
                                                    str(d / "oracle-copy.st"), "--control", f16])
    add("gate: the oracle as control", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", o])
    add("gate: all-equal logits, no confident position (min_confident)",
        ["gate", "int8hu", "--oracle", str(s["flat-oracle"]), "--candidate", str(s["flat-cand"]),
         "--control", str(s["flat-ctrl"])])
    add("gate: a NaN in the candidate", ["gate", "int8hu", "--oracle", o, "--candidate", str(s["nan"]), "--control", f16])
    add("gate: int4lin with a confident flip (a real failure)", ["gate", "int4lin", "--oracle", o, "--candidate", i4,
                                                                 "--control", f16])
    other = write_trace(d / "other-set.st", base_metadata(runner="emulated", variant="int8hu", vocab_size=64,
                                                          tokenizer_sha256=open_trace0(i4).tokenizer_sha256),
                        [CaseTrace("c", np.arange(40, dtype=np.int64) % 64,
                                   np.zeros((24, 64), dtype=np.float16))])
    add("gate: a candidate of another case set", ["gate", "int8hu", "--oracle", o, "--candidate", str(other),
                                                  "--control", f16])
    add("gate: --json names the oracle", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                          "--json", o])
    os.symlink(o, d / "soft.json")
    add("gate: --json a symlink to the oracle", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                                 "--json", str(d / "soft.json")])
    os.link(o, d / "hard.json")
    add("gate: --json a hard link to the oracle", ["gate", "int8hu", "--oracle", o, "--candidate", i8,
                                                   "--control", f16, "--json", str(d / "hard.json")])
    add("gate: --json names a folder", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                        "--json", str(d / "folder.st")])
    add("gate: --json under a file", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                      "--json", str(d / "empty.st" / "v.json")])
    os.symlink(d / "nowhere" / "x", d / "dangling.json")
    add("gate: --json a dangling symlink", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                            "--json", str(d / "dangling.json")])
    add("gate: --json /dev/full (disk full)", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                               "--json", "/dev/full"])
    add("gate: --json - (standard output)", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                             "--json", "-"])
    (d / "latin1.toml").write_bytes("[gates.int8hu]\n# caf\xe9\n".encode("latin-1"))
    add("gate: a non-UTF-8 config", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                     "--config", str(d / "latin1.toml")])
    (d / "bad.toml").write_text("[gates.int8hu\nmin_cosine = 0.9\n")
    add("gate: malformed TOML config", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                        "--config", str(d / "bad.toml")])
    (d / "neg.toml").write_text("[gates.int8hu]\nmin_confident = -1\n")
    add("gate: min_confident = -1 in a config", ["gate", "int8hu", "--oracle", o, "--candidate", i8, "--control", f16,
                                                 "--config", str(d / "neg.toml")])
    add("gate: an unknown gate", ["gate", "int9", "--oracle", o, "--candidate", i8])
    add("gate: --oracle missing", ["gate", "int8hu", "--oracle", str(d / "missing.st"), "--candidate", i8])

    # --- verdicts read back
    subprocess.run([sys.executable, "-m", "harness.cli", "gate", "int4lin", "--oracle", o, "--candidate", i4,
                    "--control", f16, "--json", str(d / "int4.json")], capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    v = json.loads((d / "int4.json").read_text())
    v["passed"] = True
    v["summary"]["reasons"] = []
    (d / "edited-passed.json").write_text(json.dumps(v))
    add("report: a verdict whose 'passed' was edited to true", ["report", str(d / "edited-passed.json")])
    v = json.loads((d / "int4.json").read_text())
    v["summary"]["defects"] = 0
    (d / "edited-summary.json").write_text(json.dumps(v))
    add("report: a verdict whose defect count was edited", ["report", str(d / "edited-summary.json")])
    v = json.loads((d / "int4.json").read_text())
    for p in v["positions"]:
        if p["class"] == "defect":
            p["class"] = "match"
    (d / "edited-class.json").write_text(json.dumps(v))
    add("report: a verdict whose defect was relabelled match", ["report", str(d / "edited-class.json")])
    v = json.loads((d / "int4.json").read_text())
    v["summary"]["defect_rate_upper_95"] = 0.0001
    (d / "edited-bound.json").write_text(json.dumps(v))
    add("report: a verdict whose stated bound was edited", ["report", str(d / "edited-bound.json")])
    add("signoff --verdicts: an edited verdict", ["signoff", "int4lin", "--verdicts", str(d / "edited-passed.json"),
                                                  "--report-dir", str(d / "signoff")])
    add("compare --verdicts: an edited verdict", ["compare", "--verdicts", str(d / "edited-passed.json"),
                                                  "--report-dir", str(d / "cmp")])
    (d / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    add("report: a verdict nested 200,000 deep", ["report", str(d / "deep.json")])
    (d / "latin1.json").write_bytes(b'{"gate": "caf\xe9"}')
    add("report: a verdict that is not UTF-8", ["report", str(d / "latin1.json")])
    add("report: --out names the verdict read", ["report", str(d / "int4.json"), "--out", str(d / "int4.json")])
    add("report: --out ./x/../ the verdict read", ["report", str(d / "int4.json"), "--out",
                                                   str(d / "folder.st" / ".." / "int4.json")])

    # --- case files, llm-runner dumps, other commands
    (d / "cases-slash.jsonl").write_text('{"id": "a/b", "prompt_ids": [1, 2, 3]}\n')
    add("oracle --cases: an id with '/'", ["oracle", "--cases", str(d / "cases-slash.jsonl"), "--out", str(d / "x.st")])
    (d / "cases-deep.jsonl").write_text("[" * 200_000 + "]" * 200_000 + "\n")
    add("oracle --cases: a line nested 200,000 deep", ["oracle", "--cases", str(d / "cases-deep.jsonl"),
                                                       "--out", str(d / "x.st")])
    (d / "cases-big.jsonl").write_text(json.dumps({"id": "a", "prompt_ids": [1, 2**70]}) + "\n")
    add("oracle --cases: prompt_ids holding 2**70", ["oracle", "--cases", str(d / "cases-big.jsonl"),
                                                     "--out", str(d / "x.st")])
    (d / "cases-ok.jsonl").write_text(json.dumps({"id": "a", "prompt_ids": [1, 2, 3]}) + "\n")
    add("oracle: --out names the case file", ["oracle", "--cases", str(d / "cases-ok.jsonl"),
                                              "--out", str(d / "cases-ok.jsonl")])
    add("capture: --out names the oracle", ["capture", "int8hu", "--oracle", o, "--out", o])
    add("merge: --out - (standard output)", ["merge", o, "--out", "-"])
    add("merge: --out names a shard", ["merge", o, i8, "--out", i8])
    from harness.coreai.logits_file import write_logits_file
    from harness.trace import open_trace

    ot = open_trace(o)
    real = write_logits_file(d / "c.logits.json", [int(x) for x in ot.input_ids("c")[1:]],
                             np.zeros((len(ot.input_ids("c")) - 1, 64), dtype=np.float16))
    doc = json.loads(Path(real).read_text())
    key = "tokens" if "tokens" in doc else "positions"
    doc[key][0]["token_id"] = 2**70
    Path(real).write_text(json.dumps(doc))
    add("import: an llm-runner dump with token_id 2**70", ["import", str(d / "c.logits.json"), "--oracle", o,
                                                           "--variant", "int8hu", "--out", str(d / "imp.st")])
    (d / "d.logits.json").write_text("[" * 200_000 + "]" * 200_000)
    add("import: a dump nested 200,000 deep", ["import", str(d / "d.logits.json"), "--case", "c", "--oracle", o,
                                               "--variant", "int8hu", "--out", str(d / "imp.st")])
    evil_oracle = trace_with_ids(d / "evil-oracle.st", ["ok"], vocab=64,
                                 meta_extra={"cases": json.dumps(["../escape"])})
    add("import --emit-raw-tokens: a case id '../escape'", ["import", "--emit-raw-tokens", str(d / "dumps"),
                                                            "--oracle", str(evil_oracle)])
    add("inspect: a folder that is not a bundle", ["inspect", str(d / "folder.st")])
    add("capture coreai: off macOS, no llm-runner", ["capture", f"coreai:{d / 'folder.st'}", "--oracle", o,
                                                     "--out", str(d / "cc.st")])
    add("compare --report-dir under a file", ["compare", "--verdicts", str(d / "int4.json"), "--report-dir",
                                              str(d / "empty.st" / "r")])
    add("cases size --rate 0", ["cases", "size", "--rate", "0"])
    add("selftest --oracle a folder", ["selftest", "--oracle", str(d / "folder.st")])

    env_extra = {"WORLD_SIZE": "2"}
    add("oracle under a launcher: WORLD_SIZE=2, no RANK", ["oracle", "--out", str(d / "w.st")])

    print("| # | input | exit | first line of output |")
    print("|---|---|---|---|")
    for i, (what, argv) in enumerate(runs, 1):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        if what.startswith("oracle under a launcher"):
            env.update(env_extra)
        if isinstance(argv, str):
            r = subprocess.run(["bash", "-o", "pipefail", "-c", argv], capture_output=True, text=True, env=env,
                               errors="backslashreplace")
        else:
            r = subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True,
                               env=env, errors="backslashreplace")
        lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ": error: " in ln]
        first = (errors or lines or ["(nothing)"])[0]
        if r.returncode in (0, 1) and r.stdout.strip():
            first = r.stdout.strip().splitlines()[-1] if "gate" in what else first
        first = first.replace(str(d) + "/", "").replace("|", "\\|")
        if len(first) > 150:
            first = first[:147] + "..."
        print(f"| {i} | {what.replace('|', chr(92) + '|')} | {r.returncode} | `{first}` |", flush=True)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
