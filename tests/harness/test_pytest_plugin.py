"""`pytest --gate NAME` (harness/pytest_plugin.py), checked with pytest's own `pytester`.

Most runs judge given traces (the synthetic Qwen3.6-27B scenario of tests/helpers.py) in-process,
which takes a second; one class runs the models on the embedded default, once, into a shared
trace cache that its later runs reuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from helpers import QWEN36_ARTIFACT_ROW, QWEN36_CASE, QWEN36_DEFECT_ROW, QWEN36_TIE_ROW, make_case, \
    make_qwen36_scenario, qwen36_oracle_logits

pytest_plugins = ("pytester",)

PROMPT = len(qwen36_oracle_logits()[0])  # scored position = prompt length + row
ARTIFACT = f"{QWEN36_CASE}/{PROMPT + QWEN36_ARTIFACT_ROW}"
TIE = f"{QWEN36_CASE}/{PROMPT + QWEN36_TIE_ROW}"
DEFECT = f"{QWEN36_CASE}/{PROMPT + QWEN36_DEFECT_ROW}"
OPTIONS = ("--gate", "--gate-config", "--gate-report-dir", "--gate-cache", "--gate-refresh", "--gate-model",
           "--gate-cases", "--gate-oracle", "--gate-candidate", "--gate-control")


@pytest.fixture
def qwen36(tmp_path):
    return make_qwen36_scenario(tmp_path)


def given(paths: dict, candidate: str, control: str | None = "fp16") -> list[str]:
    # `--opt=PATH`: pytest takes a separate PATH for a test path when it picks the rootdir
    args = [f"--gate-oracle={paths['oracle']}", f"--gate-candidate={paths[candidate]}"]
    return args + ([f"--gate-control={paths[control]}"] if control else [])


def junit_cases(path: Path) -> dict[str, dict]:
    """testcase name -> {"outcome", "classname", "properties", "message"} from a JUnit XML file."""
    out = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome, message = tag, el.get("message", "")
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        rec = {"outcome": outcome, "classname": tc.get("classname"), "properties": props, "message": message}
        out[tc.get("name")] = rec
        # pytest >= 9.2 writes the item name with '/' as '.' (gate[int8hu].qwen36.12); index both spellings
        out.setdefault(tc.get("name").replace(".", "/"), rec)
    return out


def suite_properties(path: Path) -> dict[str, str]:
    suite = ET.parse(path).getroot().find("testsuite")
    props = suite.find("properties")
    return {} if props is None else {p.get("name"): p.get("value") for p in props.iter("property")}


def report_folder(result) -> Path:
    lines = [ln for ln in result.outlines if ln.startswith("report: ")]
    assert len(lines) == 1, result.outlines[-10:]
    return Path(lines[0][len("report: "):])


def expected_outcome(verdict: dict, p: dict) -> str:
    """What a position's item must do, from the verdict JSON alone (DESIGN.md, "Gate rule")."""
    if p["class"] in ("match", "tie-flip", "oracle-artifact"):
        return "passed"
    if p["class"] == "defect" and verdict["summary"]["defects"] <= verdict["policy"]["max_defects"]:
        return "skipped"  # xfail: allowed by max_defects (JUnit writes an xfail as skipped)
    return "failure"


def assert_items_agree(junit: Path, verdict_path: Path) -> dict[str, dict]:
    """Every item's JUnit outcome is what the verdict written beside it says; returns the cases."""
    v = json.loads(verdict_path.read_text(encoding="utf-8"))
    cases = junit_cases(junit)
    gate = v["gate"]
    ids = set()
    for p in v["positions"]:
        name = f"gate[{gate}]/{p['case']}/{p['position']}"
        ids.add(name)
        assert cases[name]["outcome"] == expected_outcome(v, p), (name, p["class"], cases[name])
        assert cases[name]["properties"]["flipgate.class"] == p["class"]
        assert cases[name]["classname"] == f"flipgate.{gate}"
    s, pol = v["summary"], v["policy"]
    bounds = {"min_cosine": isinstance(s["min_cosine"], float) and s["min_cosine"] >= pol["min_cosine"],
              "max_defects": s["defects"] <= pol["max_defects"]}
    if pol.get("max_kl") is not None:
        bounds["max_kl"] = s["max_kl"] <= pol["max_kl"]
    for bound, ok in bounds.items():
        name = f"gate[{gate}]/{bound}"
        ids.add(name)
        assert cases[name]["outcome"] == ("passed" if ok else "failure"), (name, cases[name])
    assert {n for n in cases if n.startswith(f"gate[{gate}]/")} == ids  # nothing more, nothing less
    failed = any(c["outcome"] == "failure" for n, c in cases.items() if n in ids)
    assert failed == (not v["passed"])
    return cases


# ---- without --gate ---------------------------------------------------------------------------------

def test_help_lists_every_option_with_its_default(pytester):
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    section = out[out.index("flipgate: numerics gates"):]
    section = section[:section.index("\n\n")]
    for opt in OPTIONS:
        assert f"  {opt}" in section, opt
    assert section.count("Default:") == len(OPTIONS)
    flat = " ".join(section.split())
    assert "flipgate.toml in the rootdir if present, else the bundled gates" in flat
    assert "Default: <gate-cache>/reports" in flat
    assert "$FLIPGATE_CACHE if set, else .flipgate in the rootdir" in flat


PROJECT_TESTS = """
    import pytest

    def test_ok():
        assert 1 + 1 == 2

    def test_broken():
        assert 1 + 1 == 3

    @pytest.mark.skip(reason="not today")
    def test_skipped():
        pass
"""


def test_without_gate_the_projects_tests_run_unchanged(pytester):
    pytester.makepyfile(test_project=PROJECT_TESTS)
    with_plugin = pytester.runpytest("-v")
    without = pytester.runpytest("-v", "-p", "no:flipgate")
    with_plugin.assert_outcomes(passed=1, failed=1, skipped=1)
    without.assert_outcomes(passed=1, failed=1, skipped=1)
    assert with_plugin.ret == without.ret == pytest.ExitCode.TESTS_FAILED
    assert "gate[" not in with_plugin.stdout.str()
    assert "flipgate: gates" not in with_plugin.stdout.str()
    assert not any(ln.strip("= ") == "flipgate" for ln in with_plugin.outlines)  # no summary section


def _modules_after(pytester, args: list[str]) -> dict:
    """Run pytest.main(args) in a fresh interpreter; which modules did it import?"""
    script = textwrap.dedent(f"""
        import json, sys
        import pytest
        rc = pytest.main({args!r})
        print("MODULES=" + json.dumps({{"rc": int(rc), "plugin": "harness.pytest_plugin" in sys.modules,
            "heavy": sorted(m for m in ("torch", "transformers", "gates", "harness.pipeline", "harness.trace",
                                        "reports", "oracles", "numpy") if m in sys.modules)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=pytester.path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES=")]
    assert line, proc.stdout + proc.stderr
    return json.loads(line[-1][len("MODULES="):])


def test_without_gate_the_plugin_imports_nothing_heavy(pytester):
    pytester.makepyfile(test_project="def test_ok():\n    assert True\n")
    seen = _modules_after(pytester, ["-q", "-p", "no:cacheprovider"])
    assert seen["rc"] == 0
    assert seen["plugin"], "the flipgate plugin was not loaded: this check would prove nothing"
    assert [m for m in seen["heavy"] if m != "numpy"] == []


def test_judging_given_traces_never_imports_torch(pytester, qwen36):
    seen = _modules_after(pytester, ["-q", "-p", "no:cacheprovider", "--gate", "int8hu", *given(qwen36, "int8hu"),
                                     "--gate-cache", str(pytester.path / "cache")])
    assert seen["rc"] == 0
    assert "gates" in seen["heavy"]  # the gate did run
    assert "torch" not in seen["heavy"] and "transformers" not in seen["heavy"]


# ---- usage errors --------------------------------------------------------------------------------

def test_unknown_gate_is_a_usage_error_listing_the_gates(pytester):
    result = pytester.runpytest("--gate", "int9")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "unknown gate 'int9'" in err
    for name in ("fp16", "int8lin", "int8hu", "int4lin", "mixed"):
        assert name in err


def test_usage_errors_name_the_option_and_file(pytester, qwen36):
    bad = pytester.path / "not-a-trace.safetensors"
    bad.write_text("hello", encoding="utf-8")
    result = pytester.runpytest("--gate", "int8hu", "--gate-oracle", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--gate-oracle" in result.stderr.str() and "not-a-trace.safetensors" in result.stderr.str()

    result = pytester.runpytest("--gate", "int8hu", "--gate", "int4lin", *given(qwen36, "int8hu"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--gate-candidate answers one gate" in result.stderr.str()

    result = pytester.runpytest("--gate", "int8hu", "--gate-config", "missing.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "missing.toml" in result.stderr.str()


def test_traces_that_disagree_are_a_collection_error_without_traceback(pytester, qwen36, tmp_path):
    from harness.trace import base_metadata, write_trace

    other = write_trace(tmp_path / "other.safetensors", base_metadata(runner="t", variant="int8hu", vocab_size=256),
                        [make_case("elsewhere", vocab=256)])
    result = pytester.runpytest("--gate", "int8hu", "--gate-oracle", str(qwen36["oracle"]),
                                "--gate-candidate", str(other), f"--gate-cache={tmp_path / 'cache'}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    assert "ERROR collecting gate[int8hu]" in out
    assert f"case '{QWEN36_CASE}' of the oracle is missing" in out
    assert "Traceback" not in out
    assert "int8hu: not judged" in out


# ---- given traces: the synthetic Qwen3.6-27B scenario ------------------------------------------------

def test_int8hu_on_the_qwen36_scenario_passes_and_reports_its_flips(pytester, qwen36, tmp_path):
    junit = tmp_path / "int8hu.xml"
    result = pytester.runpytest("--gate", "int8hu", *given(qwen36, "int8hu"), f"--gate-cache={tmp_path / 'c'}",
                                f"--gate-report-dir={tmp_path / 'reports'}", f"--junitxml={junit}", "-v", "-rA")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=16 + 2)  # 16 positions, min_cosine and max_defects (no max_kl set)
    result.stdout.fnmatch_lines([
        f"gate?int8hu?/{ARTIFACT} PASSED (oracle-artifact)*",
        f"gate?int8hu?/{TIE} PASSED (tie-flip)*",
        "gate?int8hu?/min_cosine PASSED*",
        "gate?int8hu?/max_defects PASSED*",
    ])
    # -rA: the reported passes carry the flip row, titled by the item
    result.stdout.fnmatch_lines([f"*flipgate oracle-artifact*", "oracle-artifact: the control flips to the same*",
                                 f"case       {QWEN36_CASE}, row {QWEN36_ARTIFACT_ROW} / position {PROMPT + QWEN36_ARTIFACT_ROW}"])
    result.stdout.fnmatch_lines([f"PASSED (tie-flip) gate?int8hu?/{TIE}"])
    # the summary ends with the verdict line and the report path
    tail = result.outlines[-3:]
    assert tail[0].startswith("int8hu: PASS — exact 14/16, rule 15/16, 0 defects, 1 oracle-artifact"), tail
    assert "; evidence: " in tail[0]  # the line names what the candidate's rows are
    assert tail[1].startswith("report: ") and tail[2].startswith("=") and "18 passed" in tail[2]
    folder = report_folder(result)
    assert folder.parent == tmp_path / "reports" and folder.name.startswith("pytest-")
    assert {"int8hu.verdict.json", "report.html", "report.md", "report.json", "report.csv"} <= \
        {p.name for p in folder.iterdir()}
    cases = assert_items_agree(junit, folder / "int8hu.verdict.json")
    assert cases[f"gate[int8hu]/{TIE}"]["properties"]["flipgate.note"].startswith("tie-flip:")
    assert cases[f"gate[int8hu]/{ARTIFACT}"]["properties"]["flipgate.note"].startswith("oracle-artifact:")
    assert suite_properties(junit)["flipgate.int8hu"].startswith("int8hu: PASS")


def test_int4lin_on_the_qwen36_scenario_fails_on_its_defect(pytester, qwen36, tmp_path):
    junit = tmp_path / "int4lin.xml"
    result = pytester.runpytest("--gate", "int4lin", *given(qwen36, "int4lin"), f"--gate-cache={tmp_path / 'c'}",
                                f"--junitxml={junit}", "-rA")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    folder = report_folder(result)
    assert folder.parent == tmp_path / "c" / "reports"  # the default: under the cache
    cases = assert_items_agree(junit, folder / "int4lin.verdict.json")
    assert cases[f"gate[int4lin]/{DEFECT}"]["outcome"] == "failure"
    assert cases["gate[int4lin]/max_defects"]["outcome"] == "failure"
    assert cases[f"gate[int4lin]/{ARTIFACT}"]["outcome"] == "passed"
    # the failure reads like the flip report row: context, oracle top-1/top-2 and margin, candidate, control
    _, logits, top1, top2 = qwen36_oracle_logits()
    r = QWEN36_DEFECT_ROW
    msg = cases[f"gate[int4lin]/{DEFECT}"]["message"]
    v = json.loads((folder / "int4lin.verdict.json").read_text(encoding="utf-8"))
    pos = next(p for p in v["positions"] if p["row"] == r)
    margin, p1, p2 = pos["margin"], pos["oracle_top1_prob"], pos["oracle_top2_prob"]
    assert abs(margin - 0.69) < 0.01 and abs(p1 - 0.8) < 0.01  # as designed (bf16 oracle)
    assert msg.startswith(f"defect: candidate top-1 #{top2[r]} where the oracle is sure of #{top1[r]} "
                          f"(margin {margin:.4f} >= 0.1)")
    assert (f"oracle     top-1 #{top1[r]} (p {p1:.3f}), top-2 #{top2[r]} (p {p2:.3f}), "
            f"margin {margin:.4f} (prob; confident at >= 0.1)") in msg
    assert f"control    top-1 #{top1[r]}" in msg and "context    " in msg
    result.stdout.fnmatch_lines([f"FAILED gate?int4lin?/{DEFECT} - defect: candidate top-1 #{top2[r]}*"])
    assert result.outlines[-3].startswith("int4lin: FAIL — ") and "1 defect," in result.outlines[-3]
    assert suite_properties(junit)["flipgate.int4lin"].startswith("int4lin: FAIL")


def test_fp16_without_a_control_counts_the_artifact_as_a_defect(pytester, qwen36, tmp_path):
    junit = tmp_path / "fp16.xml"
    result = pytester.runpytest("--gate", "fp16", *given(qwen36, "fp16", control=None),
                                f"--gate-cache={tmp_path / 'c'}", f"--junitxml={junit}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    cases = assert_items_agree(junit, report_folder(result) / "fp16.verdict.json")
    assert cases[f"gate[fp16]/{ARTIFACT}"]["outcome"] == "failure"
    assert "control    none" in cases[f"gate[fp16]/{ARTIFACT}"]["message"]


def test_trace_paths_given_apart_from_their_flag_leave_the_defaults_in_the_working_folder(pytester, qwen36,
                                                                                         monkeypatch):
    monkeypatch.delenv("FLIPGATE_CACHE", raising=False)
    # pytest picks the rootdir before plugins load, so it takes these paths for test paths
    result = pytester.runpytest("--gate", "int8hu", "--gate-oracle", str(qwen36["oracle"]),
                                "--gate-candidate", str(qwen36["int8hu"]), "--gate-control", str(qwen36["fp16"]))
    assert result.ret == pytest.ExitCode.OK
    assert report_folder(result).parent == pytester.path / ".flipgate" / "reports"


def test_max_defects_from_the_rootdir_config_turns_the_defect_into_an_xfail(pytester, qwen36, tmp_path):
    pytester.makefile(".toml", flipgate="[gates.int4lin]\nmax_defects = 1\nmin_cosine = 0.5\n")
    junit = tmp_path / "j.xml"
    result = pytester.runpytest("--gate", "int4lin", *given(qwen36, "int4lin"), f"--gate-cache={tmp_path / 'c'}",
                                f"--junitxml={junit}", "-rx")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=17, xfailed=1)
    result.stdout.fnmatch_lines([f"XFAIL gate?int4lin?/{DEFECT} - defect: *allowed: 1 defects <= max_defects 1*"])
    assert "flipgate.toml" in result.stdout.str()  # the header names the config in use
    assert_items_agree(junit, report_folder(result) / "int4lin.verdict.json")


def test_nan_in_the_candidate_never_passes(pytester, qwen36, tmp_path):
    from harness.trace import CaseTrace, base_metadata, open_trace, write_trace

    src = open_trace(qwen36["int8hu"])
    case = src.case(QWEN36_CASE)
    logits = case.logits.copy()
    logits[QWEN36_TIE_ROW + 1, 7] = np.nan
    bad = write_trace(tmp_path / "nan.safetensors", base_metadata(runner="t", variant="int8hu", vocab_size=256,
                                                                  tokenizer_sha256=src.tokenizer_sha256),
                      [CaseTrace(QWEN36_CASE, case.input_ids, logits)])
    junit = tmp_path / "j.xml"
    result = pytester.runpytest("--gate", "int8hu", f"--gate-oracle={qwen36['oracle']}", f"--gate-candidate={bad}",
                                f"--gate-control={qwen36['fp16']}", f"--gate-cache={tmp_path / 'c'}",
                                f"--junitxml={junit}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    cases = assert_items_agree(junit, report_folder(result) / "int8hu.verdict.json")
    nan_item = f"gate[int8hu]/{QWEN36_CASE}/{PROMPT + QWEN36_TIE_ROW + 1}"
    assert cases[nan_item]["outcome"] == "failure"
    assert cases[nan_item]["message"].startswith("invalid: NaN or Inf in the candidate logits")
    assert cases["gate[int8hu]/min_cosine"]["outcome"] == "failure"
    assert "NaN" in cases["gate[int8hu]/min_cosine"]["message"]


def test_a_max_kl_bound_gets_its_own_item(pytester, qwen36, tmp_path):
    pytester.makefile(".toml", flipgate="[gates.int8hu]\nmax_kl = 1e-6\n")
    junit = tmp_path / "j.xml"
    result = pytester.runpytest("--gate", "int8hu", *given(qwen36, "int8hu"), f"--gate-cache={tmp_path / 'c'}",
                                f"--junitxml={junit}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=16 + 2, failed=1)
    cases = assert_items_agree(junit, report_folder(result) / "int8hu.verdict.json")
    assert cases["gate[int8hu]/max_kl"]["message"].startswith("max_kl: highest KL ")
    assert "above the bound 0.000001" in cases["gate[int8hu]/max_kl"]["message"]


def test_selection_and_verbosity_flags_work_on_gate_items(pytester, qwen36, tmp_path):
    args = ["--gate", "int4lin", *given(qwen36, "int4lin"), f"--gate-cache={tmp_path / 'c'}"]
    result = pytester.runpytest(*args, "-k", "tie-flip or oracle-artifact")
    assert result.ret == pytest.ExitCode.OK  # the failing items are deselected
    result.assert_outcomes(passed=1, deselected=17)  # int4lin has no tie-flip, one oracle-artifact
    assert "[1 of 18 items selected]" in result.stdout.str()

    result = pytester.runpytest(*args, "-m", "flipgate", "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=QWEN36_DEFECT_ROW, failed=1)  # stops at the defect row

    result = pytester.runpytest(*args, "-q")
    assert not any(ln.startswith("flipgate: judging") for ln in result.outlines)  # -q: no progress lines
    assert result.outlines[-1].startswith("1 failed") or "failed" in result.outlines[-1]
    assert any(ln.startswith("int4lin: FAIL") for ln in result.outlines)

    result = pytester.runpytest(*args, "--collect-only", "-q")
    assert f"gate[int4lin]/{DEFECT}" in result.outlines
    assert "gate[int4lin]/max_defects" in result.outlines


def test_gate_runs_instead_of_the_projects_tests_unless_their_paths_are_named(pytester, qwen36, tmp_path):
    pytester.makepyfile(test_project=PROJECT_TESTS)
    args = ["--gate", "int8hu", *given(qwen36, "int8hu"), f"--gate-cache={tmp_path / 'c'}"]
    only_gate = pytester.runpytest(*args)
    only_gate.assert_outcomes(passed=18)
    assert only_gate.ret == pytest.ExitCode.OK
    both = pytester.runpytest(*args, "test_project.py")
    both.assert_outcomes(passed=19, failed=1, skipped=1)
    assert both.ret == pytest.ExitCode.TESTS_FAILED


# ---- the models, on the embedded default -----------------------------------------------------------

@pytest.fixture(scope="class")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gate-cache")


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny fp16 model is fastest on one thread of a busy machine


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
class TestEmbeddedDefault:
    """`pytest --gate int8hu` in an empty folder: the bundled fixture model and cases, really run.

    In a subprocess: torch cannot be imported twice, and pytester's in-process runs forget the
    modules each run imported.
    """

    def test_int8hu_in_an_empty_folder_passes(self, pytester, model_cache, tmp_path):
        junit = tmp_path / "j.xml"
        result = pytester.runpytest_subprocess("--gate", "int8hu", f"--gate-cache={model_cache}",
                                               f"--junitxml={junit}", timeout=1800)
        assert result.ret == pytest.ExitCode.OK, result.outlines[-30:]
        progress = [ln for ln in result.outlines if ln.startswith("flipgate: ")]
        assert any(ln.startswith("flipgate: oracle: running") for ln in progress), progress
        assert any(ln.startswith("flipgate: int8hu: running") for ln in progress), progress
        assert any(ln.startswith("flipgate: fp16: running") for ln in progress), progress
        folder = report_folder(result)
        verdict = json.loads((folder / "int8hu.verdict.json").read_text(encoding="utf-8"))
        assert verdict["passed"] is True and verdict["summary"]["positions"] == 11 * 16
        # a tokenizer is known: the rows carry token text
        assert all("context_text" in p for p in verdict["positions"])
        assert_items_agree(junit, folder / "int8hu.verdict.json")
        assert result.outlines[-3].startswith("int8hu: PASS — ")

    def test_int4lin_agrees_with_its_verdict_and_reuses_the_cache(self, pytester, model_cache, tmp_path):
        traces = model_cache / "traces"
        before = {p.name: p.stat().st_mtime_ns for p in traces.iterdir()}
        junit = tmp_path / "j.xml"
        result = pytester.runpytest_subprocess("--gate", "int4lin", f"--gate-cache={model_cache}",
                                               f"--junitxml={junit}", timeout=1800)
        progress = [ln for ln in result.outlines if ln.startswith("flipgate: ")]
        assert any(ln.startswith("flipgate: oracle: cached") for ln in progress), progress
        assert any(ln.startswith("flipgate: fp16: cached") for ln in progress), progress
        assert any(ln.startswith("flipgate: int4lin: running") for ln in progress), progress
        after = {p.name: p.stat().st_mtime_ns for p in traces.iterdir()}
        assert {k: after[k] for k in before} == before  # nothing recomputed
        assert len(after) == len(before) + 1
        folder = report_folder(result)
        verdict = json.loads((folder / "int4lin.verdict.json").read_text(encoding="utf-8"))
        assert_items_agree(junit, folder / "int4lin.verdict.json")
        assert result.ret == (pytest.ExitCode.OK if verdict["passed"] else pytest.ExitCode.TESTS_FAILED)
        assert result.outlines[-3].startswith(f"int4lin: {'PASS' if verdict['passed'] else 'FAIL'} — ")
