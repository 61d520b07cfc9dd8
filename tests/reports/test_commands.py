"""`flipgate report`, `flipgate compare --verdicts`, `flipgate signoff --verdicts`: files, exit codes,
and the rule that a sign-off or comparison never overwrites an earlier one."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from reports.output import publish_folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_every_format(tmp_path, verdict_files, capsys):
    files = [str(verdict_files[g]) for g in ("int8hu", "fp16")]
    assert main(["report", *files, "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# flipgate report") and "| int8hu | int8hu | fp16 | 14/16 | 15/16 |" in md
    assert main(["report", *files, "--format", "json"]) == 0
    assert [v["gate"] for v in json.loads(capsys.readouterr().out)] == ["int8hu", "fp16"]
    assert main(["report", files[0], "--format", "csv"]) == 0
    assert len(pd.read_csv(io.StringIO(capsys.readouterr().out))) == 16
    assert main(["report", files[0]]) == 0
    assert "int8hu: PASS" in capsys.readouterr().out

    out = tmp_path / "out" / "int8hu.html"
    assert main(["report", *files, "--format", "html", "--out", str(out)]) == 0
    written = capsys.readouterr().out.split()
    assert written[0] == str(out) and out.read_text().startswith("<!DOCTYPE html>")
    pngs = sorted(Path(p).name for p in written[1:])
    assert pngs == ["int8hu.cosine.png", "int8hu.margin-cosine.png", "int8hu.position-matrix.png"]
    for p in written[1:]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_all_positions_lists_matches(verdict_files, capsys):
    assert main(["report", str(verdict_files["int8hu"]), "--format", "md", "--all-positions"]) == 0
    md = capsys.readouterr().out
    assert md.count("| match |") == 14 and "All 16 scored positions" in md
    assert main(["report", str(verdict_files["int8hu"]), "--format", "md"]) == 0
    assert "| match |" not in capsys.readouterr().out


def test_report_input_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something/1"}))
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "flipgate.verdict/1" in err and len(err.strip().splitlines()) == 1


def test_compare_writes_every_format_to_a_new_folder(tmp_path, verdict_files, capsys):
    report_dir = tmp_path / "reports"
    args = ["compare", "--verdicts", *map(str, verdict_files.values()), "--report-dir", str(report_dir), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    folder = Path(out.split("report folder: ")[1].split()[0])
    assert folder.parent == report_dir and folder.name.startswith("compare-")
    assert sorted(p.name for p in folder.iterdir()) == [
        "comparison.csv", "comparison.html", "comparison.json", "comparison.md",
        "cosine.png", "margin-cosine.png", "position-matrix.png"]
    assert "![Per-position cosine for every gate](cosine.png)" in (folder / "comparison.md").read_text()
    first = _tree(folder)
    assert main(args) == 0  # a second run leaves the first untouched
    folders = sorted(p for p in report_dir.iterdir())
    assert len(folders) == 2 and _tree(folder) == first
    assert not [p for p in report_dir.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_compare_selects_gates_and_checks_names(tmp_path, verdict_files, capsys):
    base = ["compare", "--verdicts", *map(str, verdict_files.values()), "--report-dir", str(tmp_path), "--quiet"]
    assert main(base + ["--gates", "int8hu,int4lin", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "| int8hu |" in md and "| int4lin |" in md and "| fp16 | fp16 |" not in md
    assert main(base + ["--gates", "int9"]) == 2
    assert "gate 'int9' is not in the verdict files given" in capsys.readouterr().err
    (tmp_path / "x.toml").write_text("")
    assert main(base + ["--config", str(tmp_path / "x.toml")]) == 2
    assert "--config only applies when running gates" in capsys.readouterr().err


def test_signoff_twice_keeps_both(tmp_path, verdict_files, capsys):
    files = [str(p) for p in verdict_files.values()]
    args = ["signoff", "int8hu", "--report-dir", str(tmp_path / "release"), "--verdicts", *files, "--quiet"]
    assert main(args) == 0
    first = Path(capsys.readouterr().out.split("sign-off folder: ")[1].split()[0])
    before = _tree(first)
    assert main(args) == 0
    second = Path(capsys.readouterr().out.split("sign-off folder: ")[1].split()[0])
    assert first != second and first.parent == second.parent
    assert second.name.startswith("signoff-int8hu-")
    assert _tree(first) == before  # the first sign-off is intact, byte for byte
    for folder in (first, second):
        names = sorted(p.name for p in folder.iterdir())
        assert {"signoff.html", "signoff.md", "signoff.json"} <= set(names)
        doc = json.loads((folder / "signoff.json").read_text())
        assert doc["gate"] == "int8hu" and doc["passed"] is True and len(doc["verdicts"]) == len(verdict_files)
        md = (folder / "signoff.md").read_text()
        assert "**Verdict for gate int8hu: PASS**" in md and "## Sign-off" in md and "| decision (ship / do not ship) |   |" in md
        assert "| tokenizer\\_sha256 | cdcd" in md and "## Policy in force" in md


def test_signoff_of_a_failed_gate_exits_1_and_is_still_written(tmp_path, verdict_files, capsys):
    args = ["signoff", "int4lin", "--report-dir", str(tmp_path), "--verdicts", str(verdict_files["int4lin"]),
            str(verdict_files["fp16"]), "--quiet"]
    assert main(args) == 1
    folder = Path(capsys.readouterr().out.split("sign-off folder: ")[1].split()[0])
    doc = json.loads((folder / "signoff.json").read_text())
    assert doc["passed"] is False and [c["gate"] for c in doc["comparison"]] == ["int4lin", "fp16"]


def test_signoff_of_an_unknown_gate_is_an_input_error(tmp_path, verdict_files, capsys):
    args = ["signoff", "int9", "--report-dir", str(tmp_path), "--verdicts", str(verdict_files["fp16"])]
    assert main(args) == 2
    assert "int9" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "verdicts"]  # nothing written


def test_simultaneous_publishes_get_distinct_folders(tmp_path):
    # Four sign-offs finishing in the same second: each gets its own name, none is overwritten.
    barrier = threading.Barrier(4)
    results, errors = [], []

    def one(i: int):
        def build(folder: Path):
            (folder / "signoff.json").write_text(json.dumps({"writer": i}))
            barrier.wait()

        try:
            results.append((i, publish_folder(tmp_path / "release", "signoff-int8hu", build)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({p for _, p in results}) == 4
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == sorted(p.name for _, p in results)
    for i, folder in results:
        assert json.loads((folder / "signoff.json").read_text()) == {"writer": i}


def test_a_failed_build_leaves_nothing(tmp_path):
    def build(folder: Path):
        (folder / "half.html").write_text("<html>")
        raise RuntimeError("renderer broke")

    with pytest.raises(RuntimeError):
        publish_folder(tmp_path, "signoff-x", build)
    assert list(tmp_path.iterdir()) == []


def test_report_dir_that_is_a_file_is_an_input_error(tmp_path, verdict_files, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["signoff", "fp16", "--report-dir", str(f), "--verdicts", str(verdict_files["fp16"]), "--quiet"]) == 2
    assert "--report-dir must be a folder" in capsys.readouterr().err


def _edited(verdict_files, tmp_path, gate="int4lin") -> Path:
    """A failed verdict with a defect listed, its `passed` edited to true (nothing else changed)."""
    d = json.loads(verdict_files[gate].read_text(encoding="utf-8"))
    assert d["passed"] is False and d["summary"]["defects"] == 1
    d["passed"] = True
    path = tmp_path / f"{gate}-edited.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


def test_report_signoff_and_compare_refuse_an_edited_verdict(tmp_path, verdict_files, capsys):
    # main: `report` printed "int4lin: PASS" and `signoff --verdicts` exited 0 with a PASS banner
    edited = _edited(verdict_files, tmp_path)
    runs = {"report": ["report", str(edited)],
            "signoff": ["signoff", "int4lin", "--report-dir", str(tmp_path / "signoffs"), "--verdicts", str(edited)],
            "compare": ["compare", "--report-dir", str(tmp_path / "cmp"), "--verdicts", str(edited),
                        str(verdict_files["int8hu"])]}
    for name, args in runs.items():
        assert main(args) == 2, name
        captured = capsys.readouterr()
        assert "PASS" not in captured.out, name
        err = captured.err.strip()
        assert len(err.splitlines()) == 1 and str(edited) in err, (name, err)
        assert "'passed' is true, but its own positions fail the gate (1 defect" in err, (name, err)
    assert not (tmp_path / "signoffs").exists() and not (tmp_path / "cmp").exists()  # nothing half-written


def test_an_edited_verdict_inside_a_signoff_or_comparison_json_is_refused(tmp_path, verdict_files, capsys):
    d = json.loads(verdict_files["int4lin"].read_text(encoding="utf-8"))
    d["passed"] = True
    bundle = tmp_path / "comparison.json"
    bundle.write_text(json.dumps([json.loads(verdict_files["int8hu"].read_text(encoding="utf-8")), d]))
    assert main(["report", str(bundle)]) == 2
    assert f"{bundle}: verdict 1: 'passed' is true" in capsys.readouterr().err
