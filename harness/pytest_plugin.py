"""pytest plugin registered under the `pytest11` entry point: `pytest --gate NAME`.

The gate as a pytest run: one test item per scored position, named `gate[NAME]/<case>/<position>`,
plus one per aggregate bound (`gate[NAME]/min_cosine`, `gate[NAME]/max_kl` when set,
`gate[NAME]/max_defects`). All of them carry the `flipgate` marker, and the gate name and position
class as keywords, so `-m flipgate`, `-k int8hu`, `-k defect`, `-k "not match"` select as expected.

What runs:
  - without `--gate` this plugin does nothing, and imports nothing beyond pytest;
  - `pytest --gate NAME` runs the gate *instead of* the project's tests (an empty folder gets the
    gate; a project's `testpaths` are not collected);
  - `pytest --gate NAME tests/` runs the gate *and* the tests at the paths named.

Outcomes: `match` passes; `tie-flip` and `oracle-artifact` pass but say so (`PASSED (tie-flip)` in
`-v`/`-rA`, a `flipgate` section in `-rA`, `flipgate.*` properties in JUnit XML); `defect` and
`invalid` fail with the flip-report row as the message (a defect that the gate's `max_defects`
allows is an xfail). The models run once, during collection, through the trace cache
(`harness.pipeline.run_gates`); the report is written before the first item runs, and the terminal
summary ends with each gate's one-line verdict and the report's path.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NOTED_CLASSES = {"tie-flip": "t", "oracle-artifact": "a"}  # pass, but are reported (short letters)
FAILING_CLASSES = ("defect", "invalid")
BOUNDS = ("min_cosine", "max_kl", "max_defects")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flipgate", "flipgate: numerics gates for quantized LLM bundles (pytest --gate NAME)")
    group.addoption(
        "--gate", action="append", default=[], metavar="NAME",
        help="run gate NAME as test items, one per scored position plus one per bound (repeatable; 'all' = "
             "every defined gate). Runs instead of the project's tests unless test paths are named too. "
             "Default: none (the plugin does nothing).")
    group.addoption(
        "--gate-config", metavar="FILE", default=None,
        help="gate definitions (TOML). Default: flipgate.toml in the rootdir if present, else the bundled gates.")
    group.addoption(
        "--gate-report-dir", metavar="DIR", default=None,
        help="where the report goes: a new folder DIR/pytest-<UTC time> with each gate's verdict JSON and the "
             "report (html, md, json, csv). Default: <gate-cache>/reports.")
    group.addoption(
        "--gate-cache", metavar="DIR", default=None,
        help="trace cache. Default: $FLIPGATE_CACHE if set, else .flipgate in the rootdir.")
    group.addoption(
        "--gate-refresh", action="store_true", default=False,
        help="recompute cached traces. Default: reuse them.")
    group.addoption(
        "--gate-model", metavar="DIR", default=None,
        help="the oracle's checkpoint folder. Default: the bundled fixture model.")
    group.addoption(
        "--gate-cases", metavar="FILE", default=None,
        help="case set (JSONL). Default: the bundled fixture cases.")
    group.addoption(
        "--gate-oracle", metavar="TRACE", default=None,
        help="judge this oracle trace instead of running the model. Default: run the oracle (cached).")
    group.addoption(
        "--gate-candidate", metavar="TRACE", default=None,
        help="judge this candidate trace (one gate only) instead of running the gate's candidate. "
             "Default: run it (cached).")
    group.addoption(
        "--gate-control", metavar="TRACE", default=None,
        help="use this control trace. Default: run the gate's control, or none with --gate-candidate.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "flipgate(gate, cls): a scored position or bound of a flipgate gate (pytest --gate NAME)")
    if not config.getoption("gate"):
        return
    gates = GateSession.from_config(config)
    config.stash[_SESSION] = gates
    config.pluginmanager.register(gates, "flipgate-gates")
    # A release engineer's `pytest --gate int8hu` means the gate, not the project's whole suite.
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = []


def pytest_unconfigure(config: pytest.Config) -> None:
    gates = config.stash.get(_SESSION, None)
    if gates is not None:
        config.pluginmanager.unregister(gates)
        del config.stash[_SESSION]


_SESSION = pytest.StashKey["GateSession"]()


class GateFailure(Exception):
    """A failing gate item; its message is the whole report, shown without a traceback."""


@dataclass
class Check:
    """The outcome of one gate item, decided from the verdict before the item runs."""

    suffix: str                 # nodeid after `gate[NAME]/`
    outcome: str                # "pass", "fail" or "xfail"
    message: str = ""           # first line: the summary; then the flip-report row
    cls: str = "bound"          # position class, or "bound" for aggregate items
    properties: list[tuple[str, object]] = field(default_factory=list)
    note: str = ""              # for a reported pass (tie-flip, oracle-artifact): why it passes


class GateItem(pytest.Item):
    def __init__(self, *, gate: str, check: Check, verdict_path: Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.gate = gate
        self.check = check
        self.verdict_path = verdict_path
        self.user_properties.extend(check.properties)
        self.add_marker(pytest.mark.flipgate(gate=gate, cls=check.cls))
        self.extra_keyword_matches.update({gate, check.cls})

    def runtest(self) -> None:
        if self.check.note:
            self.add_report_section("call", f"flipgate {self.check.cls}", self.check.note)
        if self.check.outcome == "fail":
            raise GateFailure(self.check.message)
        if self.check.outcome == "xfail":
            pytest.xfail(self.check.message.splitlines()[0])

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GateFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        # domain = nodeid: pytest titles failures and passes with it
        return self.verdict_path or self.path, None, self.nodeid


class GateCollector(pytest.Collector):
    """`gate[NAME]`: the parent of one gate's items (its name is what `-k NAME` matches)."""

    def __init__(self, *, checks: list[Check] | None = None, gate: str = "", verdict_path=None, **kwargs):
        super().__init__(**kwargs)
        self.gate = gate
        self._checks = checks or []
        self._verdict_path = verdict_path

    def collect(self) -> list[GateItem]:
        return [GateItem.from_parent(self, name=f"{self.name}/{c.suffix}", nodeid=f"{self.nodeid}/{c.suffix}",
                                     gate=self.gate, check=c, verdict_path=self._verdict_path)
                for c in self._checks]


class GateSession:
    """The gates of one pytest session: options, the run (once), its items, verdicts and report."""

    def __init__(self, config: pytest.Config, *, names: list[str], gate_config: Path | None,
                 cache_dir: Path, report_dir: Path):
        self.config = config
        self.names = names
        self.gate_config = gate_config
        self.cache_dir = cache_dir
        self.report_dir = report_dir
        self.run = None                 # harness.pipeline.GateRun once collected
        self.verdict_dicts: dict[str, dict] = {}
        self.verdict_paths: dict[str, Path] = {}
        self.report_path: Path | None = None
        self.error: str | None = None
        self.items: dict[str, list[GateItem]] = {}
        self.deselected: set[str] = set()
        self.failed_items: set[str] = set()

    # ---- set-up: everything a usage error can come from is checked before collection ----------

    @classmethod
    def from_config(cls, config: pytest.Config) -> "GateSession":
        from .errors import FlipgateError
        from .pipeline import DEFAULT_CACHE, default_config, gate_names, select_gates

        opt = config.option
        root = _home(config)
        gate_config = Path(opt.gate_config) if opt.gate_config else default_config(root)
        if gate_config is not None and not gate_config.is_file():
            raise pytest.UsageError(f"--gate-config {gate_config}: no such file")
        try:
            names = select_gates(opt.gate, gate_names(gate_config or _bundled_gates()))
        except FlipgateError as e:
            raise pytest.UsageError(f"--gate: {e}") from None
        if opt.gate_candidate and len(names) != 1:
            raise pytest.UsageError(f"--gate-candidate answers one gate, but --gate names {len(names)} "
                                    f"({', '.join(names)})")
        for flag in ("gate_oracle", "gate_candidate", "gate_control"):
            path = getattr(opt, flag)
            if path:
                _check_trace(flag, path)
        if opt.gate_cases and not Path(opt.gate_cases).is_file():
            raise pytest.UsageError(f"--gate-cases {opt.gate_cases}: no such file")
        if opt.gate_model and not Path(opt.gate_model).exists():
            raise pytest.UsageError(f"--gate-model {opt.gate_model}: no such folder")
        cache_dir = Path(opt.gate_cache or os.environ.get("FLIPGATE_CACHE") or root / DEFAULT_CACHE)
        report_dir = Path(opt.gate_report_dir) if opt.gate_report_dir else cache_dir / "reports"
        if report_dir.exists() and not report_dir.is_dir():
            raise pytest.UsageError(f"--gate-report-dir {report_dir}: a file, not a folder")
        return cls(config, names=names, gate_config=gate_config, cache_dir=cache_dir, report_dir=report_dir)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        opt = config.option
        given = [f"{k} {v}" for k, v in (("oracle", opt.gate_oracle), ("candidate", opt.gate_candidate),
                                          ("control", opt.gate_control)) if v]
        return [f"flipgate: gates {', '.join(self.names)}; config {self.gate_config or 'bundled'}; "
                f"cache {self.cache_dir}" + (f"; given {', '.join(given)}" if given else "")]

    # ---- collection: run the gates once, then one item per check ---------------------------------

    def _progress(self, msg: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None and self.config.get_verbosity() >= 0:
            tr.ensure_newline()
            tr.write_line(f"flipgate: {msg}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        # tryfirst: the items must exist before -k/-m deselect among them.
        try:
            self._run_gates()
        except Exception as e:  # a collection error: named, not a crash, and nothing runs
            from .errors import FlipgateError

            if isinstance(e, FlipgateError):
                longrepr = f"flipgate: {e}"
            else:
                import traceback

                longrepr = "flipgate: the gate run failed\n" + traceback.format_exc()
            self.error = longrepr.splitlines()[0]
            nodeid = f"gate[{','.join(self.names)}]"
            session.ihook.pytest_collectreport(report=pytest.CollectReport(nodeid, "failed", longrepr, []))
            return
        xml = _junit(config)
        for name, v in self.verdict_dicts.items():
            if xml is not None:
                xml.add_global_property(f"flipgate.{name}", self.run.verdicts[name].one_line())
            vpath = self.verdict_paths.get(name)
            collector = GateCollector.from_parent(session, name=f"gate[{name}]", nodeid=f"gate[{name}]",
                                                  gate=name, checks=gate_checks(v), verdict_path=vpath)
            new = collector.collect()
            session.ihook.pytest_collectreport(report=pytest.CollectReport(collector.nodeid, "passed", None, new))
            self.items[name] = new
            items.extend(new)

    def _run_gates(self) -> None:
        from .pipeline import run_gates

        opt = self.config.option
        self._progress(f"judging {', '.join(self.names)} (cache {self.cache_dir})")
        self.run = run_gates(
            self.names, config=str(self.gate_config or _bundled_gates()), model=opt.gate_model,
            cases=opt.gate_cases, cache_dir=str(self.cache_dir), refresh=opt.gate_refresh,
            oracle=opt.gate_oracle, candidate=opt.gate_candidate, control=opt.gate_control,
            log=self._progress)
        self.verdict_dicts = {name: v.to_dict() for name, v in self.run.verdicts.items()}
        self.report_path = write_gate_report(self.run, self.report_dir,
                                             title=f"flipgate: pytest --gate {' --gate '.join(self.names)}")
        self.verdict_paths = {name: self.report_path / verdict_file_name(name) for name in self.run.verdicts}

    # ---- reporting -----------------------------------------------------------------------------

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if isinstance(item, GateItem):
            xml = _junit(self.config)
            if xml is not None:  # group a gate's test cases under one class in CI viewers
                xml.node_reporter(item.nodeid).add_attribute("classname", f"flipgate.{item.gate}")

    def pytest_deselected(self, items) -> None:
        self.deselected.update(i.nodeid for i in items if isinstance(i, GateItem))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and report.nodeid.startswith("gate["):
            self.failed_items.add(report.nodeid)

    def pytest_report_teststatus(self, report, config):
        if report.when == "call" and report.passed:
            cls = dict(report.user_properties).get("flipgate.class")
            if cls in NOTED_CLASSES:
                return "passed", NOTED_CLASSES[cls], (f"PASSED ({cls})", {"yellow": True})
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus) -> None:
        # Every bound has an item, so a failed gate fails an item; should a future bound lack one,
        # the exit status still says FAIL (unless the user deselected some of the gate's items).
        if exitstatus != pytest.ExitCode.OK or self.run is None:
            return
        for name, verdict in self.run.verdicts.items():
            ids = {i.nodeid for i in self.items.get(name, [])}
            if not bool(verdict) and not (ids & self.deselected):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        # The outermost wrapper, so these lines come last: after pytest's short test summary.
        result = yield
        from .evidence import evidence_of, label

        tr = terminalreporter
        tr.write_sep("=", "flipgate")
        if self.run is None:
            tr.write_line(f"gates {', '.join(self.names)}: not judged ({self.error or 'not collected'})", red=True)
            return result
        for name, verdict in self.run.verdicts.items():
            shown = {i.nodeid for i in self.items.get(name, [])} - self.deselected
            partial = "" if len(shown) == len(self.items.get(name, [])) else \
                f"   [{len(shown)} of {len(self.items[name])} items selected]"
            evidence = label(evidence_of(verdict.provenance.get("candidate") or {}))  # what the rows are
            tr.write_line(_safe_line(f"{verdict.one_line()}; evidence: {evidence}") + partial, green=bool(verdict),
                          red=not verdict)
        tr.write_line(f"report: {self.report_path}")
        return result


def _bundled_gates() -> Path:
    # named outright: `None` would let the gate loader read a flipgate.toml in the working folder
    from gates.policy import bundled_gates_path

    return bundled_gates_path()


def _home(config: pytest.Config) -> Path:
    """Where the defaults live (flipgate.toml, .flipgate/): the rootdir.

    pytest decides the rootdir before plugins load, so it reads `--gate-oracle PATH` as a test path
    and, with no ini file and no test paths, makes the trace's folder the rootdir; then the working
    directory is what the user meant (it is the rootdir pytest would have chosen).
    """
    if config.inipath is not None or config.args_source == pytest.Config.ArgsSource.ARGS:
        return Path(config.rootpath)
    return Path(config.invocation_params.dir)


def _junit(config: pytest.Config):
    """pytest's JUnit XML writer when --junitxml is on (a private API: without it, nothing is lost
    but the test cases' class name and the per-gate suite properties)."""
    try:
        from _pytest.junitxml import xml_key

        xml = config.stash.get(xml_key, None)
        return xml if xml is not None and hasattr(xml, "node_reporter") and hasattr(xml, "add_global_property") else None
    except (ImportError, AttributeError):
        return None


def _check_trace(flag: str, path: str) -> None:
    from .errors import FlipgateError
    from .trace import open_trace

    try:
        open_trace(path)
    except FlipgateError as e:
        raise pytest.UsageError(f"--{flag.replace('_', '-')}: {e}") from None


def verdict_file_name(gate: str) -> str:
    from reports.output import safe_name

    return f"{safe_name(gate)}.verdict.json"


def write_gate_report(run, parent: Path, *, title: str) -> Path:
    """A new folder `parent/pytest-<UTC time>` holding each gate's verdict JSON (`<gate>.verdict.json`)
    and the report as `report.{html,md,json,csv}`; built aside and renamed, so never half-written.

    No plots: drawing them costs more than the gate itself on small runs; `flipgate report
    <gate>.verdict.json --format html` draws them from the verdict files.
    """
    from reports import build_report, made_info, render
    from reports.output import publish_folder

    from .fileio import write_text_atomic

    report = build_report(list(run.verdicts.values()), title=title, made=made_info())

    def build(tmp: Path) -> None:
        for name, verdict in run.verdicts.items():
            verdict.write(tmp / verdict_file_name(name))
        for fmt in ("html", "md", "json", "csv"):
            write_text_atomic(tmp / f"report.{fmt}", render(report, fmt, plots={}, beside={}))

    return publish_folder(parent, "pytest", build)


def _safe_line(text: str) -> str:
    from reports.escape import visible

    return visible(text)


# ---- what each item says: decided from the verdict dict (flipgate.verdict/1) alone ------------------

def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(x, digits: int = 4) -> str:
    v = _num(x)
    return "NaN" if math.isnan(v) else f"{v:.{digits}f}"


def _tok(p: dict, key: str) -> str:
    from reports.escape import token

    tid = p.get(key)
    if tid is None:
        return "—"
    text = p.get("target_text" if key == "target_token" else f"{key}_text")
    return f"{token(text)} #{tid}" if text is not None else f"#{tid}"


def _prob(p: dict, key: str) -> str:
    return f" (p {_fmt(p[key], 3)})" if p.get(key) is not None else ""


def flip_row_text(v: dict, p: dict) -> str:
    """A position as the flip report shows it, one field a line, token text made visible."""
    from reports.escape import context, visible

    pol = v["policy"]
    space = pol.get("margin_space") or "prob"
    control = (f"top-1 {_tok(p, 'control_top1')}{_prob(p, 'control_top1_prob')}"
               if p.get("control_top1") is not None else "none")
    rank = p.get("oracle_rank_in_candidate")
    lines = [
        f"case       {visible(p['case'])}, row {p['row']} / position {p['position']}",
        f"context    {context(p['context_text']) if p.get('context_text') is not None else '(no tokenizer)'}",
        f"reference  {_tok(p, 'target_token')}",
        f"oracle     top-1 {_tok(p, 'oracle_top1')}{_prob(p, 'oracle_top1_prob')}, "
        f"top-2 {_tok(p, 'oracle_top2')}{_prob(p, 'oracle_top2_prob')}, "
        f"margin {_fmt(p['margin'], 4)} ({space}; confident at >= {pol.get('min_margin')})",
        f"candidate  top-1 {_tok(p, 'candidate_top1')}{_prob(p, 'candidate_top1_prob')}",
        f"control    {control}",
        f"cosine {_fmt(p['cosine'], 6)}, KL {_fmt(p['kl'], 6)}, oracle top-1 rank in candidate "
        f"{'n/a' if rank is None else rank}, top-5 overlap {p.get('top5_overlap')}",
    ]
    return "\n".join(lines)


def position_check(v: dict, p: dict) -> Check:
    cls = str(p["class"])
    pol, summary = v["policy"], v["summary"]
    props: list[tuple[str, object]] = [
        ("flipgate.gate", v["gate"]), ("flipgate.class", cls), ("flipgate.case", p["case"]),
        ("flipgate.row", p["row"]), ("flipgate.position", p["position"]), ("flipgate.margin", p["margin"]),
        ("flipgate.oracle_top1", p["oracle_top1"]), ("flipgate.oracle_top2", p["oracle_top2"]),
        ("flipgate.candidate_top1", p["candidate_top1"]), ("flipgate.control_top1", p["control_top1"]),
        ("flipgate.cosine", p["cosine"]), ("flipgate.kl", p["kl"]),
    ]
    suffix = f"{p['case']}/{p['position']}"
    if cls == "match":
        return Check(suffix, "pass", cls=cls, properties=props)
    row = flip_row_text(v, p)
    if cls == "tie-flip":
        note = (f"tie-flip: the candidate differs where the oracle is not sure (margin {_fmt(p['margin'])} < "
                f"{pol.get('min_margin')}): reported, never fails\n{row}")
        return Check(suffix, "pass", cls=cls, properties=props + [("flipgate.note", note.splitlines()[0])], note=note)
    if cls == "oracle-artifact":
        note = ("oracle-artifact: the control flips to the same token as the candidate, so the oracle's own "
                f"resolution is the likely cause: reported, does not fail the gate\n{row}")
        return Check(suffix, "pass", cls=cls, properties=props + [("flipgate.note", note.splitlines()[0])], note=note)
    if cls == "defect":
        head = (f"defect: candidate top-1 {_tok(p, 'candidate_top1')} where the oracle is sure of "
                f"{_tok(p, 'oracle_top1')} (margin {_fmt(p['margin'])} >= {pol.get('min_margin')}); "
                f"control top-1 {_tok(p, 'control_top1')}")
        allowed = _num(summary.get("defects")) <= _num(pol.get("max_defects", 0))
        if allowed:
            head = f"{head} [allowed: {summary['defects']} defects <= max_defects {pol.get('max_defects')}]"
        return Check(suffix, "xfail" if allowed else "fail", f"{head}\n{row}", cls, props)
    if cls == "invalid":
        who = p.get("nonfinite") or "candidate"
        head = f"invalid: NaN or Inf in the {who.replace('+', ' and the ')} logits at this position (always fails)"
        return Check(suffix, "fail", f"{head}\n{row}", cls, props)
    return Check(suffix, "fail", f"unknown position class {cls!r} (a verdict from another flipgate?)\n{row}",
                 cls, props)


def bound_checks(v: dict) -> list[Check]:
    """One check per aggregate bound the policy sets. NaN never satisfies a bound."""
    pol, s = v["policy"], v["summary"]
    gate = v["gate"]
    base = [("flipgate.gate", gate), ("flipgate.class", "bound")]
    out = []
    if pol.get("min_cosine") is not None:
        bound, got = _num(pol["min_cosine"]), _num(s.get("min_cosine"))
        ok = got >= bound
        worst = min(v["positions"], key=lambda p: _num(p["cosine"]) if not math.isnan(_num(p["cosine"])) else -9,
                    default=None)
        where = f" at {worst['case']}/{worst['position']}" if worst is not None else ""
        msg = "" if ok else f"min_cosine: lowest cosine {_fmt(got, 6)}{where} is below the bound {_fmt(bound, 6)}"
        out.append(Check("min_cosine", "pass" if ok else "fail", msg, "bound",
                         base + [("flipgate.bound", bound), ("flipgate.value", got)]))
    if pol.get("max_kl") is not None:
        bound = _num(pol["max_kl"])
        kls = [_num(p["kl"]) for p in v["positions"]]
        got = _num(s["max_kl"]) if "max_kl" in s else (
            float("nan") if any(math.isnan(k) for k in kls) or not kls else max(kls))
        ok = got <= bound
        msg = "" if ok else f"max_kl: highest KL {_fmt(got, 6)} is above the bound {_fmt(bound, 6)}"
        out.append(Check("max_kl", "pass" if ok else "fail", msg, "bound",
                         base + [("flipgate.bound", bound), ("flipgate.value", got)]))
    bound = _num(pol.get("max_defects", 0))
    got = _num(s.get("defects"))
    ok = got <= bound
    defects = [f"{p['case']}/{p['position']}" for p in v["positions"] if p["class"] == "defect"]
    msg = "" if ok else (f"max_defects: {s.get('defects')} defect(s), more than max_defects {pol.get('max_defects', 0)}: "
                         + ", ".join(defects[:20]) + (" …" if len(defects) > 20 else ""))
    out.append(Check("max_defects", "pass" if ok else "fail", msg, "bound",
                     base + [("flipgate.bound", bound), ("flipgate.value", got)]))
    return out


def gate_checks(v: dict) -> list[Check]:
    """Every item of one gate, in position order then the bounds."""
    return [position_check(v, p) for p in v["positions"]] + bound_checks(v)
