"""Case sets that can prove something: the case set hash and its refusals (gate, merge, compare),
`flipgate cases build` (reproducible, stops at the target, drops near-duplicates, pins
continuations that the oracle reproduces), and the bundled `big` set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.caseset import (case_file_sha256, case_set_sha256, check_verdicts_one_case_set, jaccard,
                             read_corpus, shingles, summary_path, trace_case_set_sha256)
from harness.cases import BUNDLED_CASES, bundled_cases_path, load_cases, resolve_cases_path
from harness.cli import main
from harness.errors import InputError, TraceError
from harness.trace import CaseTrace, base_metadata, open_trace, write_trace
from helpers import make_case

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = ROOT / "scripts" / "cases" / "heldout-docstrings.jsonl"


# ---------------------------------------------------------------------------------------------
# the hash


def test_hash_is_of_ids_and_sequences_in_any_order():
    a = [("x", [1, 2, 3]), ("y", [4, 5])]
    h = case_set_sha256(a)
    assert len(h) == 64 and h == case_set_sha256(list(reversed(a)))
    assert h == case_set_sha256([("x", np.array([1, 2, 3])), ("y", (4, 5))])
    assert h != case_set_sha256([("x", [1, 2, 3]), ("y", [4, 6])])     # one token
    assert h != case_set_sha256([("x", [1, 2, 3]), ("z", [4, 5])])     # one id
    assert h != case_set_sha256([("x", [1, 2, 3])])                    # one case fewer
    assert h != case_set_sha256([("x", [1, 2]), ("y", [3, 4, 5])])     # same tokens, other split
    with pytest.raises(ValueError, match="twice"):
        case_set_sha256([("x", [1]), ("x", [1])])


def test_every_written_trace_carries_the_hash_of_its_own_cases(trace_factory):
    cases = [make_case("a", seed=1), make_case("b", seed=2)]
    t = open_trace(trace_factory("t.safetensors", cases, case_set_sha256="a lie the writer replaces"))
    want = case_set_sha256((c.case_id, c.input_ids) for c in cases)
    assert t.metadata["case_set_sha256"] == want == trace_case_set_sha256(t)


def test_a_trace_whose_label_disagrees_with_its_sequences_is_refused(trace_factory, tmp_path):
    path = trace_factory("t.safetensors", [make_case("a")])
    real = open_trace(path).metadata["case_set_sha256"]
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(path.read_bytes().replace(real.encode(), b"0" * 64))  # same header length
    t = open_trace(forged)
    with pytest.raises(TraceError, match=r"forged.safetensors: metadata case_set_sha256 0000000000000000… is not "
                                         r"the hash of the trace's own cases"):
        trace_case_set_sha256(t)


def test_a_pinned_case_file_hashes_like_its_trace(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "prompt_ids": [1, 2], "continuation_ids": [3]}\n'
                 '{"id": "b", "prompt_ids": [4], "continuation_ids": [5, 6]}\n')
    assert case_file_sha256(p) == case_set_sha256([("a", [1, 2, 3]), ("b", [4, 5, 6])])
    p.write_text('{"id": "a", "prompt_ids": [1, 2]}\n')
    with pytest.raises(InputError, match=r"c.jsonl:1: case 'a' gives no continuation"):
        case_file_sha256(p)


# ---------------------------------------------------------------------------------------------
# refusing to mix case sets: gate, merge, compare


def _copy_as_candidate(trace, dest):
    """The same rows under another file name: a trace may not be judged against its own file."""
    import shutil

    shutil.copyfile(trace, dest)
    return dest


def _pair(tmp_path, vocab=32):
    """An oracle trace and a candidate of another case set (one token of case 'b' differs)."""
    a, b = make_case("a", vocab=vocab, seed=1), make_case("b", vocab=vocab, seed=2)
    meta = base_metadata(runner="hf", variant="bf16", vocab_size=vocab)
    oracle = write_trace(tmp_path / "oracle.safetensors", meta, [a, b])
    ids = b.input_ids.copy()
    ids[-1] = (ids[-1] + 1) % vocab
    other = write_trace(tmp_path / "other.safetensors", base_metadata(runner="emulated", variant="int8hu",
                                                                      vocab_size=vocab),
                        [a, CaseTrace("b", ids, b.logits)])
    same = write_trace(tmp_path / "same.safetensors", base_metadata(runner="emulated", variant="int8hu",
                                                                     vocab_size=vocab), [b, a])
    return oracle, other, same


def test_gate_refuses_another_case_set_naming_both_hashes(tmp_path, capsys):
    from gates.engine import evaluate
    from gates.policy import GatePolicy

    oracle, other, same = _pair(tmp_path)
    ho, hx = (trace_case_set_sha256(open_trace(p)) for p in (oracle, other))
    assert ho != hx
    policy = GatePolicy(name="g", candidate="int8hu")
    with pytest.raises(InputError) as e:
        evaluate(oracle, other, policy=policy)
    msg = str(e.value)
    assert ho[:16] in msg and hx[:16] in msg and "case 'b': input_ids differ" in msg
    # the same set in another order is the same set: judged, and the verdict names it
    v = evaluate(oracle, same, policy=policy)
    assert v.provenance["case_set_sha256"] == ho
    assert main(["gate", "int8hu", "--oracle", str(oracle), "--candidate", str(other), "--no-control"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ho[:16] in err and hx[:16] in err


def test_gate_refuses_a_control_of_another_case_set(tmp_path):
    from gates.engine import evaluate
    from gates.policy import GatePolicy

    oracle, other, same = _pair(tmp_path)
    with pytest.raises(InputError, match=r"control trace .*other.safetensors: .*case set"):
        evaluate(oracle, same, other, policy=GatePolicy(name="g", candidate="int8hu", control="fp16"))


def test_merge_refuses_whole_traces_of_different_case_sets(tmp_path, capsys):
    oracle, other, _ = _pair(tmp_path)
    a = write_trace(tmp_path / "wa.safetensors", base_metadata(runner="hf", variant="bf16", vocab_size=32, shard=""),
                    [make_case("a", seed=1)])
    b = write_trace(tmp_path / "wb.safetensors", base_metadata(runner="hf", variant="bf16", vocab_size=32, shard=""),
                    [make_case("c", seed=3)])
    ha, hb = trace_case_set_sha256(open_trace(a)), trace_case_set_sha256(open_trace(b))
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ha[:16] in err and hb[:16] in err and "different case sets" in err
    assert not out.exists()


def test_merge_refuses_shards_of_different_case_files(tmp_path, capsys):
    def shard(name, cases_file_sha, case):
        meta = base_metadata(runner="hf", variant="bf16", vocab_size=32, shard="0/2", cases_file_sha256=cases_file_sha)
        return write_trace(tmp_path / name, meta, [case])

    a = shard("s0.safetensors", "a" * 64, make_case("a", seed=1))
    b = shard("s1.safetensors", "b" * 64, make_case("b", seed=2))
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a" * 64 in err and "b" * 64 in err and "another case set" in err and not out.exists()
    # shards of one case file merge, and the merged trace carries the hash of the whole set
    c = shard("s2.safetensors", "a" * 64, make_case("b", seed=2))
    m = open_trace(main(["merge", str(a), str(c), "--out", str(out)]) == 0 and out)
    assert m.metadata["case_set_sha256"] == case_set_sha256(
        [("a", make_case("a", seed=1).input_ids), ("b", make_case("b", seed=2).input_ids)])


def test_compare_refuses_verdicts_of_different_case_sets(tmp_path, capsys):
    from gates.engine import evaluate
    from gates.policy import GatePolicy

    oracle, other, same = _pair(tmp_path)
    v1 = evaluate(oracle, same, policy=GatePolicy(name="one", candidate="int8hu"))
    other_cand = _copy_as_candidate(other, tmp_path / "other-int8hu.safetensors")
    v2 = evaluate(other, other_cand, policy=GatePolicy(name="two", candidate="int8hu"))
    p1, p2 = v1.write(tmp_path / "one.json"), v2.write(tmp_path / "two.json")
    h1, h2 = v1.provenance["case_set_sha256"], v2.provenance["case_set_sha256"]
    assert h1 != h2
    rc = main(["compare", "--verdicts", str(p1), str(p2), "--report-dir", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and h1[:16] in err and h2[:16] in err and "'one'" in err
    assert not (tmp_path / "r").exists()
    assert main(["report", str(p1), str(p2)]) == 2
    assert h2[:16] in capsys.readouterr().err
    # verdicts made before the hash existed are not compared; one case set passes
    old = v1.to_dict()
    old["provenance"].pop("case_set_sha256")
    assert check_verdicts_one_case_set([old, v2.to_dict()]) == h2
    assert check_verdicts_one_case_set([v1, v1]) == h1


# ---------------------------------------------------------------------------------------------
# corpora and near-duplicates


def test_read_corpus_units(tmp_path):
    t = tmp_path / "c.txt"
    t.write_text("First para\nline two.\n\n  \nSecond para.\n<|endoftext|>\nNext doc.\n")
    assert [(u.id, u.text) for u in read_corpus(t)] == [
        ("d0-p0", "First para\nline two."), ("d0-p1", "Second para."), ("d1-p0", "Next doc.")]
    assert [u.id for u in read_corpus(t, "document")] == ["d0", "d1"]
    j = tmp_path / "c.jsonl"
    j.write_text('{"id": "m.f", "text": "A doc.\\n\\nIts second para."}\n"bare string"\n\n{"id": "m.f", "text": "x"}\n')
    assert [(u.id, u.text) for u in read_corpus(j)] == [("m.f", "A doc.\n\nIts second para."), ("d2", "bare string"),
                                                        ("m.f-1", "x")]
    assert [u.id for u in read_corpus(j, "paragraph")] == ["m.f-p0", "m.f-p1", "d2-p0", "m.f-p0-1"]
    j.write_text('{"text": 3}\n')
    with pytest.raises(InputError, match=r"c.jsonl:1: a corpus line must be"):
        read_corpus(j)
    with pytest.raises(InputError, match="no such corpus file"):
        read_corpus(tmp_path / "missing.txt")


def test_near_duplicates_by_word_shingles():
    a = shingles("Return the number of items in the queue, as the caller sees it.")
    b = shingles("Return the number of items in the queue, as the caller sees it now.")
    c = shingles("Compute the arithmetic mean of a sequence of numbers.")
    assert jaccard(a, a) == 1.0 and jaccard(a, b) >= 0.5 and jaccard(a, c) == 0.0


# ---------------------------------------------------------------------------------------------
# building (the bundled fixture model; a small held-out corpus)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    lines = HELDOUT.read_text(encoding="utf-8").splitlines()[:60]
    p = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


TARGET = 40


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("built")
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = d / f"{name}.jsonl"
        assert main(["cases", "build", "--corpus", str(corpus), "--target-confident", str(TARGET),
                     "--seed", str(seed), "--out", str(out), "--quiet"]) == 0
        outs[name] = out
    return outs


def test_same_seed_same_bytes_other_seed_other_cases(built):
    a, b, c = built["a"], built["b"], built["c"]
    assert a.read_bytes() == b.read_bytes()
    assert summary_path(a).read_bytes() == summary_path(b).read_bytes()
    assert load_cases(a).ids != load_cases(c).ids


def test_build_stops_at_the_target_and_pins_what_the_oracle_reproduces(built, tmp_path):
    from oracles.hf import prob_margins, run_oracle

    a = built["a"]
    summary = json.loads(summary_path(a).read_text())
    per_case = summary["per_case"]
    total = sum(c["confident"] for c in per_case)
    assert total == summary["confident"] >= TARGET > total - per_case[-1]["confident"]  # the last case crossed it
    assert summary["positions"] == 16 * len(per_case) == summary["confident"] + summary["ties"]
    assert sum(summary["margin_histogram"]["counts"]) == summary["positions"]
    for c in per_case:
        assert c["tie_fraction"] == pytest.approx(1 - c["confident"] / c["positions"], abs=1e-6)
    cs = load_cases(a)
    assert all(s.continuation_ids is not None and len(s.continuation_ids) == 16 and s.prompt for s in cs)
    header = a.read_text().splitlines()[0]
    assert header.startswith("# flipgate cases build") and summary["case_set_sha256"] in header
    # the oracle run on the built file: same sequences (hash), same confident count
    trace = open_trace(run_oracle(cases=a, out=tmp_path / "o.safetensors", quiet=True))
    assert trace_case_set_sha256(trace) == summary["case_set_sha256"] == case_file_sha256(a, _tokenizer())
    confident = sum(int((prob_margins(trace.case(cid).logits) >= 0.1).sum()) for cid in trace.case_ids)
    assert confident == summary["confident"]


def _tokenizer():
    from harness.models import load_tokenizer, resolve_model_dir

    return load_tokenizer(resolve_model_dir(None))


def test_build_refuses_when_the_corpus_runs_out(tmp_path, capsys):
    text = HELDOUT.read_text(encoding="utf-8").splitlines()
    doc = json.loads(text[0])["text"]
    near = doc.replace("functions", "routines", 1)
    corpus = tmp_path / "small.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": f"d{i}", "text": t}) for i, t in
                                enumerate([doc, doc, near, "too short"])) + "\n")
    out = tmp_path / "x.jsonl"
    rc = main(["cases", "build", "--corpus", str(corpus), "--target-confident", "1000", "--out", str(out),
               "--prompt-tokens", "16-16", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "1 units too short, 2 near-duplicates" in err and "short of --target-confident 1000" in err
    assert not out.exists() and not summary_path(out).exists()


def test_build_refuses_bad_options(corpus, tmp_path, capsys):
    for extra, match in ((["--target-confident", "0"], "--target-confident 0"),
                         (["--target-confident", "5", "--prompt-tokens", "9-3"], "--prompt-tokens 9-3"),
                         (["--target-confident", "5", "--prompt-tokens", "x"], "--prompt-tokens 'x'")):
        assert main(["cases", "build", "--corpus", str(corpus), "--out", str(tmp_path / "o.jsonl"), *extra]) == 2
        assert match in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the bundled sets


def test_bundled_sets_by_name(tmp_path, monkeypatch):
    assert resolve_cases_path(None) == bundled_cases_path() == resolve_cases_path("fixture")
    assert resolve_cases_path("big").name == "big.jsonl" and set(BUNDLED_CASES) == {"fixture", "big"}
    assert load_cases("big").path == bundled_cases_path("big")
    with pytest.raises(InputError, match="bundled case sets, by name: fixture, big"):
        resolve_cases_path("huge")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "big").write_text('{"id": "mine", "prompt": "x"}\n')
    assert load_cases("big").ids == ["mine"]  # a file of that name wins


def test_cases_hash_command(trace_factory, capsys):
    t = trace_factory("t.safetensors", [make_case("a"), make_case("b", seed=4)])
    summary = json.loads(summary_path(bundled_cases_path("big")).read_text())
    assert main(["cases", "hash", "big", str(t)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == summary["case_set_sha256"]
    assert lines[1] == f"{trace_case_set_sha256(open_trace(t))}  {t}"
    assert main(["cases", "hash", "fixture"]) == 2  # its continuations are the oracle's: not pinned
    assert "gives no continuation" in capsys.readouterr().err


def test_the_big_set_is_pinned_held_out_and_sized():
    from gates.metrics import clopper_pearson_upper

    big = bundled_cases_path("big")
    summary = json.loads(summary_path(big).read_text())
    cs = load_cases(big)
    assert summary["cases"] == len(cs) and summary["confident"] >= summary["target_confident"] >= 1024
    assert all(s.continuation_ids is not None for s in cs)
    assert case_file_sha256(big, _tokenizer()) == summary["case_set_sha256"]
    # 0 defects on it would bound the confident defect rate below 0.3 % at 95 %
    assert clopper_pearson_upper(0, summary["confident"]) < 0.003
    trained = (ROOT / "scripts" / "fixture" / "corpus.txt").read_text(encoding="utf-8")
    assert not [s.id for s in cs if s.prompt in trained], "a prompt of the big set is training text"
    notice = (big.parent / "NOTICE").read_text()
    assert "Python Software Foundation" in notice and "big.jsonl" in notice


pytest_plugins = ("pytester",)


def test_gate_cases_takes_a_bundled_name(pytester, tmp_path):
    from harness.pipeline import workspace
    from helpers import make_qwen36_scenario

    assert workspace(cases="big").cases_path == bundled_cases_path("big")
    bad = pytester.runpytest("--gate", "int8hu", "--gate-cases", "nosuch")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--gate-cases nosuch: no such file (bundled case sets, by name: fixture, big)" in bad.stderr.str()
    paths = make_qwen36_scenario(tmp_path)
    ok = pytester.runpytest("--gate", "int8hu", "--gate-cases", "big", f"--gate-oracle={paths['oracle']}",
                            f"--gate-candidate={paths['int8hu']}", f"--gate-control={paths['fp16']}",
                            f"--gate-cache={tmp_path / 'c'}", "-q")
    assert ok.ret == pytest.ExitCode.OK
