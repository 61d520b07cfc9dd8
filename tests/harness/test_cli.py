"""The CLI: --help/--version, every command documented with an example, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import __version__
from harness.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"flipgate {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out


def test_console_script_runs_without_importing_torch():
    code = ("import sys; from harness.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'flipgate --help imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_command_has_an_example_and_is_in_the_readme(name):
    help_text = _subcommands()[name].format_help()
    assert re.search(r"example:\n  flipgate " + re.escape(name), help_text), help_text
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"`flipgate {name}`" in readme, f"README.md does not document `flipgate {name}`"


def test_input_errors_are_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"not a trace")
    assert main(["trace", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "not a safetensors file" in err


# ---- issue 13: nothing lost, clear errors, a terminal that data cannot steer ----------------------

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402

from tests.helpers import make_qwen36_scenario  # noqa: E402

CONTROL = set(chr(c) for c in range(0x20) if chr(c) not in "\n\t") | {"\x7f", "\x9b", "\u202e"}


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path):
    """Real inputs: traces, a verdict (from `flipgate gate`), a case file and a recipe file."""
    scen = make_qwen36_scenario(tmp_path)
    verdict = tmp_path / "fp16.verdict.json"
    assert main(["gate", "fp16", "--oracle", str(scen["oracle"]), "--candidate", str(scen["fp16"]),
                 "--json", str(verdict)]) == 1
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "a", "prompt": "Hello"}\n')
    toml = tmp_path / "flipgate.toml"
    toml.write_text("[recipes.x]\nextends = 'int8lin'\n")
    (tmp_path / "sub").mkdir()
    return {"oracle": scen["oracle"], "fp16": scen["fp16"], "verdict": verdict, "cases": cases, "toml": toml,
            "dir": tmp_path}


# each command with an output that names one of its inputs (OUT)
COLLISIONS = [
    (["gate", "fp16", "--oracle", "{oracle}", "--candidate", "{fp16}", "--json", "OUT"], "oracle"),
    (["gate", "fp16", "--oracle", "{oracle}", "--candidate", "{fp16}", "--json", "OUT"], "fp16"),
    (["capture", "fp16", "--oracle", "{oracle}", "--out", "OUT"], "oracle"),
    (["capture", "fp16", "--config", "{toml}", "--oracle", "{oracle}", "--out", "OUT"], "toml"),
    (["report", "{verdict}", "--format", "md", "--out", "OUT"], "verdict"),
    (["oracle", "--cases", "{cases}", "--out", "OUT"], "cases"),
    (["merge", "{oracle}", "--out", "OUT"], "oracle"),
    (["oracle-diff", "{oracle}", "{fp16}", "-o", "OUT"], "fp16"),
    (["import", "{verdict}", "--oracle", "{oracle}", "--out", "OUT"], "oracle"),
    (["localise", "int4lin", "--cases", "{cases}", "--json", "OUT"], "cases"),
    (["localise", "int4lin", "--config", "{toml}", "--out-recipe", "OUT"], "toml"),
]


@pytest.mark.parametrize("form", ["same", "relative", "dotdot", "hardlink", "symlink"])
@pytest.mark.parametrize("args, victim", COLLISIONS, ids=[f"{a[0]}-{v}" for a, v in COLLISIONS])
def test_an_output_that_names_an_input_is_refused_before_any_work(files, args, victim, form, capsys, monkeypatch):
    target = files[victim]
    monkeypatch.chdir(files["dir"] / "sub")
    out = {"same": str(target), "relative": f"../{target.name}", "dotdot": f"../sub/../{target.name}",
           "hardlink": "hard", "symlink": "soft"}[form]
    if form == "hardlink":
        os.link(target, "hard")
    elif form == "symlink":
        os.symlink(target, "soft")
    before = _digest(target)
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    argv = [out if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is the input" in err and out in err and str(target) in err, err
    assert _digest(target) == before


def test_a_default_or_configured_output_that_names_an_input_is_refused(files, capsys, monkeypatch):
    monkeypatch.chdir(files["dir"])
    # capture's default output name is candidate-SPEC.safetensors: here it is the oracle trace itself
    oracle = files["dir"] / "candidate-fp16.safetensors"
    files["oracle"].rename(oracle)
    before = _digest(oracle)
    assert main(["capture", "fp16", "--oracle", str(oracle)]) == 2
    assert "is the input --oracle" in capsys.readouterr().err and _digest(oracle) == before
    # oracle --config whose [oracle] out is the case file it reads
    cfg = files["dir"] / "oracle.toml"
    cfg.write_text('[oracle]\ncases = "cases.jsonl"\nout = "cases.jsonl"\n')
    before = _digest(files["cases"])
    assert main(["oracle", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "is the input --cases" in err and _digest(files["cases"]) == before


def test_a_report_folder_that_is_an_input_file_is_refused(files, capsys):
    for cmd in (["signoff", "fp16"], ["compare"]):
        assert main([*cmd, "--verdicts", str(files["verdict"]), "--report-dir", str(files["verdict"])]) == 2
        assert "must be a folder" in capsys.readouterr().err
    assert json.loads(files["verdict"].read_text())["gate"] == "fp16"


def test_special_files_stay_special_and_dash_is_standard_output(files, capsys):
    gate = ["gate", "fp16", "--oracle", str(files["oracle"]), "--candidate", str(files["fp16"])]
    from tests.harness.test_fileio import private_device  # never the machine's /dev/null: a regression replaces it

    null = private_device(files["dir"], "null", 3)
    before = os.lstat(null)
    assert main(gate + ["--json", str(null)]) == 1
    after = os.lstat(null)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
    capsys.readouterr()
    assert main(gate + ["--json", "-"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["gate"] == "fp16" and "gate fp16: FAIL" in err  # the summary moves to stderr
    assert not Path("-").exists()
    assert main(["report", str(files["verdict"]), "--format", "csv", "--out", "-"]) == 0
    assert capsys.readouterr().out.startswith("gate,candidate,")
    assert main(["merge", str(files["oracle"]), "--out", "-"]) == 2  # a trace on a terminal is no use
    assert "standard output" in capsys.readouterr().err
    full = private_device(files["dir"], "full", 7)
    assert main(gate + ["--json", str(full)]) == 2  # a full device: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(full) in err and "No space left on device" in err


def test_unwritable_outputs_and_unreadable_inputs_are_one_line_exit_2(files, capsys):
    gate = ["gate", "fp16", "--oracle", str(files["oracle"]), "--candidate", str(files["fp16"])]
    for out, message in ((files["dir"] / "sub", "is a folder"),
                         (files["verdict"] / "v.json", "is a file, not a folder"),
                         (files["dir"] / "dangling", "symlink to a missing file")):
        if out.name == "dangling":
            out.symlink_to(files["dir"] / "nowhere" / "x")
        assert main(gate + ["--json", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and str(out) in err, err
    for bad, message in ((files["dir"] / "sub", "is a folder"), (files["dir"] / "missing.st", "no such file")):
        assert main(["gate", "fp16", "--oracle", str(bad), "--candidate", str(files["fp16"])]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and str(bad) in err, err
        assert main(["trace", str(bad)]) == 2 and message in capsys.readouterr().err


def test_an_unreadable_input_for_a_user(files, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file anyway; the folder and missing-file cases cover root")
    files["oracle"].chmod(0)
    assert main(["trace", str(files["oracle"])]) == 2
    assert "not readable" in capsys.readouterr().err


def test_a_read_only_folder_for_the_output(files, capsys, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    import subprocess as sp

    if os.geteuid() != 0 or sp.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)],
                                   capture_output=True).returncode != 0:
        pytest.skip("needs root and mount for a read-only folder (chmod does not stop root)")
    try:
        assert main(["gate", "fp16", "--oracle", str(files["oracle"]), "--candidate", str(files["fp16"]),
                     "--json", str(mnt / "v.json")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        sp.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("cmd", [["gate", "fp16", "--list", "--config"], ["capture", "fp16", "--config"],
                                 ["oracle", "--config"], ["compare", "--config"]])
def test_a_config_that_is_not_utf8_is_one_line_exit_2(tmp_path, capsys, cmd):
    bad = tmp_path / "flipgate.toml"
    bad.write_bytes(b"[gates.x]\ncandidate = \"\xff\xfe\"\n")
    assert main([*cmd, str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "UTF-8" in err, err


def test_an_unexpected_exception_exits_3_with_its_traceback(monkeypatch, capsys, tmp_path):
    import harness.commands.trace as trace_cmd

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(trace_cmd, "run", boom)
    (tmp_path / "t").write_text("x")
    assert main(["trace", str(tmp_path / "t")]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err and "internal error" in err


def test_a_closed_pipe_exits_quietly(files):
    # the reader goes away before flipgate writes (as `flipgate trace X | head -1` does on long output)
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "trace", *[str(files["oracle"])] * 200],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and err == "", err


def _raw_trace(path: Path, case_id: str, vocab: int = 8) -> Path:
    """A trace written byte by byte (the writer's own checks are not what is under test)."""
    ids = np.arange(6, dtype=np.int64)
    logits = np.random.default_rng(0).standard_normal((2, vocab)).astype(np.float32)
    meta = {"format": "flipgate.trace/1", "runner": "test", "variant": "bf16", "vocab_size": str(vocab),
            "cases": json.dumps([case_id])}
    header = {"__metadata__": meta,
              f"{case_id}/input_ids": {"dtype": "I64", "shape": [6], "data_offsets": [0, 48]},
              f"{case_id}/logits": {"dtype": "F32", "shape": [2, vocab], "data_offsets": [48, 48 + 8 * vocab]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + ids.tobytes() + logits.tobytes())
    return path


EVIL = "x\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil"


def test_escape_sequences_in_data_never_reach_the_terminal(tmp_path, capsys):
    trace = _raw_trace(tmp_path / "evil.safetensors", EVIL)
    named = _raw_trace(tmp_path / f"{EVIL}.safetensors", "ok")
    runs = [["trace", str(trace)], ["trace", str(named)], ["trace", str(tmp_path / f"missing{EVIL}")],
            ["gate", "fp16", "--oracle", str(trace), "--candidate", str(trace), "--no-control"],
            ["gate", "fp16", "--oracle", str(named), "--candidate", str(named), "--no-control"]]
    for argv in runs:
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc in (0, 1, 2), (argv, rc, err)
        assert not (set(out + err) & CONTROL), (argv, out + err)
        if argv[0] == "trace":
            # shown, not swallowed: spelled out by the escaper, or as repr() in the reader's refusal
            assert "⟨0x1b⟩" in out + err or "\\x1b" in out + err


def test_everything_a_command_prints_is_escaped(monkeypatch, capsys, tmp_path):
    """The mechanism, whatever the command: stdout and stderr pass through reports.escape.terminal."""
    import harness.commands.trace as trace_cmd

    def noisy(args):
        print(f"progress {EVIL}")
        print(f"warning {EVIL}", file=sys.stderr)
        return 0

    monkeypatch.setattr(trace_cmd, "run", noisy)
    (tmp_path / "t").write_text("x")
    assert main(["trace", str(tmp_path / "t")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("progress x⟨0x1b⟩]0;pwned⟨0x07⟩") and "⟨U+202E⟩evil" in err
    assert not (set(out + err) & CONTROL)
