"""The trace cache (harness/pipeline.py) keys a `coreai:` candidate's trace on the bundle's content: a bundle
rebuilt at the same path is run again, never answered from the old trace."""

from __future__ import annotations

import shutil

import numpy as np

from harness.trace import CaseTrace, open_trace, write_trace


def _standin_logits(emulated_all_rows, out, *, shift: float):
    """The stand-in llm-runner's logits for a bundle: the emulated rows, moved by `shift` (so two
    bundles' traces can be told apart)."""
    full = open_trace(emulated_all_rows)
    cases = [CaseTrace(c, full.input_ids(c), (full.case(c).logits.astype(np.float32) + shift).astype(np.float16))
             for c in full.case_ids]
    return write_trace(out, dict(full.metadata), cases)


def _install(bundle_src, dest, logits):
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(bundle_src, dest)
    shutil.copy(logits, dest / "standin-logits.safetensors")


def test_a_bundle_rebuilt_at_the_same_path_gets_a_fresh_trace(variant_bundle, emulated_all_rows, coreai_oracle,
                                                              llm_runner_standin, fixture_dir, tmp_path):
    from harness.pipeline import workspace

    first = _standin_logits(emulated_all_rows, tmp_path / "first.safetensors", shift=0.0)
    second = _standin_logits(emulated_all_rows, tmp_path / "second.safetensors", shift=1.0)
    bundle = tmp_path / "Bundle"
    spec = f"coreai:{bundle}?llm_runner={llm_runner_standin}"
    lines: list[str] = []
    ws = workspace(model=str(fixture_dir), cache_dir=str(tmp_path / "cache"), log=lines.append)

    _install(variant_bundle("int8hu"), bundle, first)
    t1 = ws.candidate_trace(spec, coreai_oracle)
    again = ws.candidate_trace(spec, coreai_oracle)
    assert again == t1 and lines[-1].endswith(f"cached {t1}")   # unchanged bundle: the cache answers

    # rebuilt at the same path: another asset (int8lin) and other logits
    _install(variant_bundle("int8lin"), bundle, second)
    t2 = ws.candidate_trace(spec, coreai_oracle)
    assert t2 != t1 and "running" in lines[-2]
    oracle = open_trace(coreai_oracle)
    for cid in oracle.case_ids:
        a, b = open_trace(t1).case(cid).logits, open_trace(t2).case(cid).logits
        assert np.allclose(b.astype(np.float32) - a.astype(np.float32), 1.0, atol=0.07)

    # one file rewritten in place (same inode, name and size): a fresh trace again
    target = bundle / "standin-logits.safetensors"
    data = first.read_bytes()
    assert len(data) == target.stat().st_size
    inode = target.stat().st_ino
    with open(target, "r+b") as f:
        f.write(data)
    assert target.stat().st_ino == inode
    t3 = ws.candidate_trace(spec, coreai_oracle)
    assert t3 != t2
    cid = oracle.case_ids[0]
    assert open_trace(t3).case(cid).logits.tobytes() == open_trace(t1).case(cid).logits.tobytes()


def test_content_hash_is_remembered_only_while_the_file_is_unchanged(tmp_path):
    from harness.contenthash import file_sha256, tree_sha256

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    h1, t1 = file_sha256(f), tree_sha256(tmp_path)
    f.write_bytes(b"b" * 1000)          # same size, same name
    assert file_sha256(f) != h1 and tree_sha256(tmp_path) != t1
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x").write_bytes(b"")
    assert tree_sha256(tmp_path) != t1   # a new file changes the tree's hash


def test_keys_follow_the_bytes_of_an_imported_trace_and_of_the_oracle(emulated_int8hu, emulated_fp16, coreai_oracle,
                                                                      fixture_dir, tmp_path):
    """`trace:FILE` rewritten under the same name, or the oracle trace rewritten under its name: new keys."""
    from harness.candidates import resolve
    from harness.pipeline import workspace

    ws = workspace(model=str(fixture_dir), cache_dir=str(tmp_path / "cache"))
    given, oracle = tmp_path / "given.safetensors", tmp_path / "oracle.safetensors"
    shutil.copy(emulated_int8hu, given)
    shutil.copy(coreai_oracle, oracle)
    spec = f"trace:{given}"
    first = ws.candidate_key(spec, resolve(spec), oracle)
    assert ws.candidate_key(spec, resolve(spec), oracle) == first
    shutil.copy(emulated_fp16, given)
    second = ws.candidate_key(spec, resolve(spec), oracle)
    assert second != first
    t = open_trace(coreai_oracle)
    write_trace(oracle, {**t.metadata, "note": "rewritten"}, [t.case(c) for c in t.case_ids])
    assert ws.candidate_key(spec, resolve(spec), oracle) != second
