"""flipgate under a launcher (torchrun, accelerate launch, or bare RANK/WORLD_SIZE as srun gives).

Every multi-process test runs real processes on the loopback; the launched result is compared
with a single-process run of the same command: same case order, same bytes in every tensor, same
metadata but for when it was made and which shares it was joined from.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.distributed import Launch, from_env
from harness.errors import InputError
from harness.trace import open_trace

pytestmark = pytest.mark.slow

TORCHRUN = shutil.which("torchrun")
ACCELERATE = shutil.which("accelerate")
CLI = [sys.executable, "-m", "harness.cli"]
# metadata that says when and from what shares a trace was made, not what its rows are
_WHEN = {"created_at", "merged_from", "peak_rss_bytes", "shard"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items()
         if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    e["OMP_NUM_THREADS"] = "1"
    e.update({k: str(v) for k, v in extra.items()})
    return e


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [TORCHRUN, "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), "-m", "harness.cli", *args]


def run(cmd, cwd, timeout=300, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env(**extra), capture_output=True, text=True, timeout=timeout)


def assert_same_trace(single: Path, launched: Path) -> None:
    a, b = open_trace(single), open_trace(launched)
    assert a.case_ids == b.case_ids
    for c in a.case_ids:
        assert np.array_equal(a.input_ids(c), b.input_ids(c)), c
        la, lb = a.case(c).logits, b.case(c).logits
        assert la.dtype == lb.dtype and la.tobytes() == lb.tobytes(), f"case {c}: rows differ"
    differ = {k for k in set(a.metadata) | set(b.metadata) if a.metadata.get(k) != b.metadata.get(k)}
    assert differ <= _WHEN, {k: (a.metadata.get(k), b.metadata.get(k)) for k in differ - _WHEN}


def no_shares_left(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".rank-" in p.name]


# --- the environment -----------------------------------------------------------------------------

def test_from_env(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InputError, match="RANK is not set"):
        from_env()
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="outside 0..3"):
        from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(InputError, match="RANK='x'"):
        from_env()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    launch = from_env()
    assert launch == Launch(rank=2, world_size=4, local_rank=0)
    assert launch.shard == "2/4" and launch.select(list(range(10))) == [2, 6]
    assert launch.share_path("o/x.safetensors") == Path("o/x.rank-2-of-4.safetensors")


# --- byte for byte against one process ------------------------------------------------------------

@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Single-process oracle (bf16 and streamed fp32) and int8hu capture of the bundled case set."""
    d = tmp_path_factory.mktemp("single")
    for args in (["oracle", "--out", "oracle.safetensors"],
                 ["oracle", "--stream", "--sequences", str(d / "oracle.safetensors"), "--out", "fp32.safetensors"],
                 ["capture", "int8hu", "--oracle", str(d / "oracle.safetensors"), "--out", "int8hu.safetensors"]):
        r = run(CLI + args + ["--quiet"], d)
        assert r.returncode == 0, r.stderr
    return d


needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not on PATH")


@needs_torchrun
@pytest.mark.parametrize("what", ["oracle", "stream", "capture"])
def test_torchrun_matches_one_process(single, tmp_path, what):
    seq = str(single / "oracle.safetensors")
    args = {"oracle": ["oracle", "--out", "out.safetensors"],
            "stream": ["oracle", "--stream", "--sequences", seq, "--out", "out.safetensors"],
            "capture": ["capture", "int8hu", "--oracle", seq, "--out", "out.safetensors"]}[what]
    r = run(torchrun(*args), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "joined from 2 ranks" in r.stdout + r.stderr
    reference = {"oracle": "oracle", "stream": "fp32", "capture": "int8hu"}[what]
    assert_same_trace(single / f"{reference}.safetensors", tmp_path / "out.safetensors")
    no_shares_left(tmp_path)
    assert not list(tmp_path.glob("*.parts"))


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate is not on PATH")
def test_accelerate_launch_matches_one_process(single, tmp_path):
    # accelerate's --cpu multi-process mode goes through mpirun; --multi_gpu is its torchrun path,
    # which starts CPU processes just as well on a machine without GPUs
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "harness.cli", "oracle", "--out", "out.safetensors", "--quiet"]
    r = run(cmd, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_trace(single / "oracle.safetensors", tmp_path / "out.safetensors")
    assert json.loads(open_trace(tmp_path / "out.safetensors").metadata["merged_from"])[1]["shard"] == "1/2"


@needs_torchrun
def test_torchrun_compare_gates_like_one_process(tmp_path):
    gates = ["--gates", "int8hu", "--format", "json", "--quiet"]  # int8hu and its fp16 control: one each
    one = run(CLI + ["compare", "--cache", "one", "--report-dir", "rep1", *gates], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    many = run(torchrun("compare", "--cache", "many", "--report-dir", "rep2", *gates), tmp_path)
    assert many.returncode == 0, many.stderr[-3000:]
    a, b = json.loads(one.stdout), json.loads(many.stdout)  # rank 0 alone prints the report

    def judged(report):
        verdicts = [report] if isinstance(report, dict) else report  # one gate: one verdict object
        return [(v["gate"], v["passed"], v["summary"], v["positions"]) for v in verdicts]

    assert judged(a) == judged(b)
    assert [p.name for p in (tmp_path / "rep2").iterdir()]  # one report folder, written by rank 0
    assert len(list((tmp_path / "rep2").iterdir())) == 1
    # the same entries (keys differ: a candidate's key holds its oracle trace's bytes, and the joined
    # oracle says when and from which shares it was made)
    def entries(cache):
        return sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / cache / "traces").glob("*.safetensors"))

    assert entries("many") == entries("one") == ["fp16", "int8hu", "oracle-bfloat16"]


# --- failures: bounded, never a hang, resumable -----------------------------------------------------

def bare(rank: int, world: int, port: int, args, cwd, **extra) -> subprocess.Popen:
    """A rank started without a launcher, as `srun` would start one (the environment only)."""
    return subprocess.Popen(CLI + list(args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(WORLD_SIZE=world, RANK=rank, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1",
                                    MASTER_PORT=port, **extra))


def test_a_rank_that_never_starts_fails_the_others_in_bounded_time(tmp_path):
    t0 = time.monotonic()
    p = bare(0, 2, free_port(), ["oracle", "--out", "o.safetensors", "--quiet"], tmp_path,
             FLIPGATE_DIST_TIMEOUT=4)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert "did not all join within 4 s" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 90
    assert not (tmp_path / "o.safetensors").exists()


def test_a_rank_with_bad_input_fails_every_rank(tmp_path):
    # a case file that exists (the command line's checks pass) but breaks on its second line, which
    # the rank finds during its work, after the ranks have met
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n')
    port = free_port()
    args = ["oracle", "--out", "o.safetensors", "--quiet"]
    r0 = bare(0, 2, port, args, tmp_path)
    r1 = bare(1, 2, port, args + ["--cases", "bad.jsonl"], tmp_path)
    (_, e1), (_, e0) = r1.communicate(timeout=240), r0.communicate(timeout=240)
    assert r1.returncode == 2 and "bad.jsonl:2" in e1
    assert r0.returncode == 2, e0
    assert "rank 1 of 2 failed" in e0 and "bad.jsonl:2" in e0 and "Traceback" not in e0
    assert not (tmp_path / "o.safetensors").exists()


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A case set long enough to kill a rank in the middle of it, and its single-process oracle."""
    from harness.cases import bundled_cases_path

    d = tmp_path_factory.mktemp("long")
    base = [json.loads(line) for line in bundled_cases_path().read_text().splitlines() if line.strip()]
    lines = [json.dumps({**base[i % len(base)], "id": f"c{i:02d}"}) for i in range(20)]
    cases = d / "cases.jsonl"
    cases.write_text("\n".join(lines) + "\n")
    ref = run(CLI + ["oracle", "--cases", str(cases), "--out", "ref.safetensors", "--quiet"], d)
    assert ref.returncode == 0, ref.stderr
    return cases, d / "ref.safetensors"


def wait_for_parts(parts: Path, at_least: int, proc, limit: float = 180) -> None:
    t0 = time.monotonic()
    while len(list(parts.glob("case-*.safetensors"))) < at_least:
        assert proc.poll() is None, "the run ended before a rank could be killed"
        assert time.monotonic() - t0 < limit
        time.sleep(0.05)


def test_a_killed_rank_stops_the_others_then_resume_completes(tmp_path, long_run):
    cases, reference = long_run
    args = ["oracle", "--cases", str(cases), "--out", "o.safetensors", "--quiet"]
    port = free_port()
    r0 = bare(0, 2, port, args, tmp_path, FLIPGATE_DIST_STALE=3)
    r1 = bare(1, 2, port, args, tmp_path, FLIPGATE_DIST_STALE=3)
    wait_for_parts(tmp_path / "o.rank-1-of-2.safetensors.parts", 1, r1)
    r1.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    _, e0 = r0.communicate(timeout=300)
    r1.communicate()
    assert r0.returncode == 2, e0
    assert "rank 1 stopped without reporting" in e0 and "--resume" in e0 and "Traceback" not in e0
    assert time.monotonic() - t0 < 240
    assert not (tmp_path / "o.safetensors").exists()
    kept = len(list((tmp_path / "o.rank-1-of-2.safetensors.parts").glob("case-*.safetensors")))
    assert kept >= 1

    port = free_port()
    r0 = bare(0, 2, port, args + ["--resume"], tmp_path)
    r1 = bare(1, 2, port, args + ["--resume"], tmp_path)
    (_, e1), (_, e0) = r1.communicate(timeout=300), r0.communicate(timeout=300)
    assert r0.returncode == 0 and r1.returncode == 0, e0 + e1
    assert_same_trace(reference, tmp_path / "o.safetensors")
    no_shares_left(tmp_path)
    assert not list(tmp_path.glob("*.parts"))


@needs_torchrun
def test_torchrun_kill_then_resume(tmp_path, long_run):
    """The same through torchrun, which stops the surviving rank itself."""
    import psutil

    cases, reference = long_run
    args = ["oracle", "--cases", str(cases), "--out", "o.safetensors", "--quiet"]
    p = subprocess.Popen(torchrun(*args), cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wait_for_parts(tmp_path / "o.rank-1-of-2.safetensors.parts", 1, p)
    rank1 = [c for c in psutil.Process(p.pid).children(recursive=True)
             if c.environ().get("RANK") == "1"]
    assert len(rank1) == 1
    rank1[0].kill()
    p.communicate(timeout=300)
    assert p.returncode != 0
    assert not (tmp_path / "o.safetensors").exists()
    kept = len(list((tmp_path / "o.rank-1-of-2.safetensors.parts").glob("case-*.safetensors")))
    r = run(torchrun(*args[:-1], "--resume"), tmp_path)  # not --quiet: it says what it reused
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resume: {kept} of 10 cases already in" in r.stdout + r.stderr
    assert_same_trace(reference, tmp_path / "o.safetensors")


def test_shard_under_a_launcher_is_refused(tmp_path):
    p = bare(0, 2, free_port(), ["oracle", "--shard", "0/2", "--out", "o.safetensors"], tmp_path,
             FLIPGATE_DIST_TIMEOUT=5)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "drop --shard" in err
