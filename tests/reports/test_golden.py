"""Golden files: the Markdown and JSON of a fixed synthetic verdict set must not change by accident.

Regenerate after an intended change with `FLIPGATE_REGEN_GOLDEN=1 pytest tests/reports/test_golden.py`
and read the diff before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from reports import build_report, render
from reports.data import json_ready

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("FLIPGATE_REGEN_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run with FLIPGATE_REGEN_GOLDEN=1 once and review it"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name} differs from its golden file (FLIPGATE_REGEN_GOLDEN=1 to accept)"


def test_comparison_markdown(seed):
    md = render(build_report(seed, title="flipgate comparison"), "md", beside={"cosine": "cosine.png"})
    check_golden("comparison.md", md)


def test_comparison_markdown_all_positions(seed):
    md = render(build_report(seed[1:2], title="int8hu, every position", all_positions=True), "md")
    check_golden("int8hu-all-positions.md", md)


def test_signoff_markdown(seed, evil, fixed_made):
    report = build_report(seed + [evil], subject="int8hu", made=fixed_made, title="flipgate sign-off: int8hu")
    check_golden("signoff-int8hu.md", render(report, "md"))


def test_hostile_tokens_markdown(evil, fixed_made):
    report = build_report([evil], subject=evil["gate"], made=fixed_made, all_positions=True)
    check_golden("hostile.md", render(report, "md"))


def test_verdicts_json(seed):
    text = render(build_report(seed), "json")
    check_golden("verdicts.json", text)
    # The JSON is the verdict schema itself: it reads back to the same verdicts (NaN included).
    back = json.loads(text)
    assert [v["gate"] for v in back] == [v["gate"] for v in seed]
    assert back == json_ready(seed)  # NaN written as "NaN", as the gate engine writes it
    assert back[-1]["summary"]["min_cosine"] == "NaN"


def test_signoff_json(seed, fixed_made):
    text = render(build_report(seed, subject="int8hu", made=fixed_made), "json")
    check_golden("signoff-int8hu.json", text)
    doc = json.loads(text)
    assert doc["schema"] == "flipgate.signoff/1" and doc["gate"] == "int8hu" and doc["passed"] is True
    assert set(doc["signoff"]) == {"name", "date", "decision", "signature", "notes"}
    assert all(v is None for v in doc["signoff"].values())


def test_single_verdict_json_is_the_verdict_object(seed):
    back = json.loads(render(build_report(seed[:1]), "json"))
    assert isinstance(back, dict) and back["gate"] == "fp16" and back["positions"] == seed[0]["positions"]
