"""What a defect count proves: the exact one-sided (Clopper–Pearson) bound, the sizing of a case
set (`flipgate cases size`), and the bound sentence in the verdict and the reports."""

from __future__ import annotations

import math

import pytest

from gates.metrics import (binomial_cdf, clopper_pearson_upper, defect_bound_sentence, defect_rate_upper,
                           positions_needed, rule_of_three)
from harness.cli import main


def test_zero_failures_known_values():
    # n = ceil(ln(0.05) / ln(0.99)) = ceil(298.07) = 299; the rule of three says 3 / 0.01 = 300
    assert positions_needed(0.01, 0.95) == 299 == math.ceil(math.log(0.05) / math.log(0.99))
    assert rule_of_three(0.01) == pytest.approx(300)
    assert abs(positions_needed(0.01, 0.95) - rule_of_three(0.01)) < 2
    assert clopper_pearson_upper(0, 299) < 0.01 < clopper_pearson_upper(0, 298)
    assert positions_needed(0.001, 0.95) == 2995 and positions_needed(0.01, 0.99) == 459
    # the published 27B gate: 16 positions bound the rate only below about 17 %
    assert clopper_pearson_upper(0, 16) == pytest.approx(1 - 0.05 ** (1 / 16)) and 0.17 < clopper_pearson_upper(0, 16) < 0.172
    assert clopper_pearson_upper(0, 1024) == pytest.approx(0.00292124463538803, rel=1e-12)


def test_with_failures_known_values():
    # success-run tables (99 % reliability at 95 %): 1 failure 473, 2 failures 628
    assert positions_needed(0.01, 0.95, defects=1) == 473
    assert positions_needed(0.01, 0.95, defects=2) == 628
    for k, n in ((1, 473), (2, 628), (4, 169), (10, 50)):
        u = clopper_pearson_upper(k, n)
        assert binomial_cdf(k, n, u) == pytest.approx(0.05, rel=1e-9)  # the defining equation
        assert k / n < u < 1
    assert clopper_pearson_upper(3, 3) == 1.0 and clopper_pearson_upper(0, 0) == 1.0


def test_against_the_beta_quantile():
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 1), (0, 169), (1, 20), (4, 169), (17, 1024), (200, 1000)):
        assert clopper_pearson_upper(k, n) == pytest.approx(stats.beta.ppf(0.95, k + 1, n - k), rel=1e-9)
        assert binomial_cdf(k, n, 0.03) == pytest.approx(stats.binom.cdf(k, n, 0.03), rel=1e-9)


def test_the_bound_only_grows_with_defects_and_shrinks_with_positions():
    for n in (10, 100, 1000):
        ups = [clopper_pearson_upper(k, n) for k in range(0, 6)]
        assert ups == sorted(ups) and len(set(ups)) == len(ups)
    assert clopper_pearson_upper(2, 100) > clopper_pearson_upper(2, 200)


def test_sentence_rounds_up_and_says_what_it_counts():
    s = defect_bound_sentence(0, 1024)
    assert s.startswith("0 defects in 1,024 confident positions: the confident defect rate is below 0.293 % at 95 %")
    # 0.29212 % is stated as 0.293 %: rounding down would claim more than was shown
    assert "0.292 %" not in s
    assert "below 17.1 %" in defect_bound_sentence(0, 16)
    assert defect_bound_sentence(1, 473).startswith("1 defect in 473 confident positions")
    assert defect_bound_sentence(0, 0) == "0 defects in 0 confident positions: nothing bounds the confident defect rate"
    assert defect_rate_upper(0, 0) == 1.0


def test_cases_size_command(capsys):
    assert main(["cases", "size", "--rate", "0.01", "--confidence", "0.95"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("299 confident positions") and "rule of three, 3 / rate = 300.0" in out
    assert "below 0.997 % at 95 %" in out
    assert main(["cases", "size", "--rate", "0.01", "--defects", "2"]) == 0
    assert capsys.readouterr().out.startswith("628 confident positions")
    assert main(["cases", "size", "--positions", "1024"]) == 0
    assert "0 defects in 1,024 confident positions: the confident defect rate is below 0.293 % at 95 %" \
        in capsys.readouterr().out
    for bad in (["--rate", "0"], ["--rate", "1.5"], ["--rate", "0.01", "--confidence", "1"], []):
        assert main(["cases", "size", *bad]) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_the_verdict_states_its_bound(tmp_path):
    """The engine's summary carries `defect_rate_upper_95`; `flipgate gate`'s text, the reports'
    summary line (terminal, Markdown, HTML) state it in words."""
    from gates.engine import evaluate
    from gates.policy import GatePolicy
    from gates.report import format_verdict
    from helpers import make_qwen36_scenario
    from reports.model import build_report
    from reports.output import render
    from reports.model import one_line

    paths = make_qwen36_scenario(tmp_path)
    v = evaluate(paths["oracle"], paths["int8hu"], paths["fp16"],
                 policy=GatePolicy(name="int8hu", candidate="int8hu", control="fp16"))
    s = v.summary
    n = s["confident_judged"]
    assert s["defects"] == 0 and n == 15  # 16 rows, one of them a tie
    assert s["defect_rate_upper_95"] == pytest.approx(1 - 0.05 ** (1 / n))
    sentence = f"0 defects in {n} confident positions: the confident defect rate is below 18.2 % at 95 %"  # 18.104 %, rounded up
    assert sentence in defect_bound_sentence(0, n)
    assert sentence in format_verdict(v)
    d = v.to_dict()
    assert sentence in one_line(d)
    report = build_report([d], title="t")
    for fmt in ("md", "html", "terminal"):
        text = render(report, fmt, plots={}) if fmt != "terminal" else _terminal(report)
        assert sentence in text, fmt
    # a verdict read back keeps it; one made before the key existed shows no sentence
    from gates.verdict import Verdict

    back = Verdict.load(v.write(tmp_path / "v.json"))
    assert sentence in one_line(back.to_dict())
    d["summary"].pop("defect_rate_upper_95")
    assert "confident defect rate" not in one_line(d)


def _terminal(report) -> str:
    import io

    from reports.terminal import print_report

    buf = io.StringIO()
    print_report(report, buf, width=400, colour=False)
    return buf.getvalue()
