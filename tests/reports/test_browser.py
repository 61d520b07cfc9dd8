"""The HTML reports in a real browser: headless Chromium loads each page, runs its scripts, and the
test reads the DOM it dumps — tables and plots present, images decoded, links resolving — and checks
that no script or element from token text came alive. Screenshots are kept in the test's tmp folder
(CI keeps them as artifacts).
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reports import build_report, render
from reports.output import write_comparison

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium on PATH (tried " + ", ".join(CHROMIUM_NAMES) + "); `.ci/run` installs "
                "Debian's `chromium` package, which failed or was not run here")


def _run_chromium(tmp_path: Path, page: Path, *mode: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    profile = tmp_path / "chromium-profile"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--virtual-time-budget=4000", *mode, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def dump_dom(tmp_path: Path, page: Path) -> str:
    proc = _run_chromium(tmp_path, page, "--dump-dom")
    assert proc.returncode == 0 and "<html" in proc.stdout, f"chromium failed: {proc.stderr[-2000:]}"
    return proc.stdout


def screenshot(tmp_path: Path, page: Path, name: str) -> Path:
    shot = tmp_path / f"{name}.png"
    proc = _run_chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1400,2400")
    assert proc.returncode == 0 and shot.is_file(), f"chromium screenshot failed: {proc.stderr[-2000:]}"
    return shot


class Dom(HTMLParser):
    """Elements (tag, attrs, parent ids) and text of a dumped DOM, enough to query it."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.text_parts: list[str] = []
        self._script_depth = 0
        self.script_bodies: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: (v or "") for k, v in attrs}))
        if tag == "script":
            self._script_depth += 1
            self.script_bodies.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._script_depth -= 1

    def handle_data(self, data):
        if self._script_depth:
            self.script_bodies[-1] += data
        else:
            self.text_parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def find(self, tag: str | None = None, **attrs) -> list[dict]:
        return [a for t, a in self.elements if (tag is None or t == tag)
                and all(a.get(k.rstrip("_").replace("_", "-")) == v for k, v in attrs.items())]

    def root(self) -> dict:
        return self.find("html")[0]


def injection_problems(dom: Dom, own_script: str) -> list[str]:
    """Everything that would show token text turned into live markup."""
    problems = []
    body = dom.find("body")[0]
    if "data-pwned" in body or any("data-pwned" in a for _, a in dom.elements):
        problems.append("a script from token text ran (data-pwned is set)")
    scripts = dom.find("script")
    if len(scripts) != 1 or dom.script_bodies[0].strip() != own_script.strip():
        problems.append(f"{len(scripts)} script elements; only the report's own may exist")
    for tag, a in dom.elements:
        handlers = [k for k in a if k.startswith("on")]
        if handlers:
            problems.append(f"<{tag}> carries event handler attributes {handlers}")
        if tag == "img" and not a.get("src", "").startswith("data:image/png;base64,"):
            problems.append(f"<img src={a.get('src')!r}> is not one of the report's plots")
        if tag in ("b", "table") and not (a.get("id") or a.get("class")):
            problems.append(f"a bare <{tag}> element: markup from a name or token")
    return problems


@pytest.fixture(scope="module")
def own_script():
    from reports.html import _SCRIPT

    return _SCRIPT


def test_comparison_page_in_chromium(tmp_path, seed, own_script):
    folder, files = write_comparison(tmp_path / "reports", build_report(seed, title="flipgate comparison"))
    dom = Dom(dump_dom(tmp_path, files["html"]))
    shot = screenshot(tmp_path, files["html"], "comparison-screenshot")

    assert dom.root().get("data-report-ready") == "1", "the report's own script did not run"
    assert injection_problems(dom, own_script) == []
    # Comparison table: one row per gate, verdict badges as the verdicts say.
    assert len(dom.find("table", id="comparison-table")) == 1
    rows = dom.find("tr", data_gate_passed="true") + dom.find("tr", data_gate_passed="false")
    assert len(rows) == len(seed) and len(dom.find("tr", data_gate_passed="true")) == 1
    assert dom.find("header", id="banner")[0]["data-passed"] == "false"
    assert "1 of 5 gates pass" in dom.text and "pass: int8hu" in dom.text
    # Position matrix: 5 gates × 16 positions, the seed's classes in its cells.
    cells = [a for t, a in dom.elements if t == "td" and "data-class" in a]
    assert len(cells) == 5 * 16
    counts = {c: sum(a["data-class"] == c for a in cells) for c in ("defect", "oracle-artifact", "tie-flip", "invalid")}
    assert counts == {"defect": 3, "oracle-artifact": 2, "tie-flip": 1, "invalid": 1}
    # Every flip in the matrix links to a row of a flip table that exists.
    ids = {a["id"] for _, a in dom.elements if "id" in a}
    links = [a["href"][1:] for t, a in dom.elements if t == "a" and a.get("href", "").startswith("#pos-")]
    assert len(links) == 7 and all(link in ids for link in links)
    # The two plots are there and the browser decoded them to real pictures.
    for name in ("cosine", "margin-cosine"):
        img = dom.find("img", id=f"plot-{name}")
        assert img, f"plot {name} missing"
        w, _, hgt = img[0].get("data-decoded", "0x0").partition("x")
        assert int(w) >= 600 and int(hgt) >= 300, img[0].get("data-decoded")
        assert (folder / f"{name}.png").is_file()
    assert len(dom.find("table", class_="flips")) == 5
    assert shot.stat().st_size > 50_000


def test_hostile_tokens_stay_text_in_chromium(tmp_path, evil, own_script):
    page = tmp_path / "hostile.html"
    page.write_text(render(build_report([evil], all_positions=True, title="hostile <b>title</b>"), "html"),
                    encoding="utf-8")
    dom = Dom(dump_dom(tmp_path, page))
    screenshot(tmp_path, page, "hostile-screenshot")

    assert dom.root().get("data-report-ready") == "1", "the report's own script did not run"
    assert injection_problems(dom, own_script) == []
    text = dom.text
    # The hostile strings are on the page, as text a reader can see.
    assert "<script>document.body.setAttribute('data-pwned','1')</script>" in text
    assert "<img␣src=x␣onerror=\"document.body.setAttribute('data-pwned','2')\">" in text
    assert "evil<i>gate</i>" in text and "evil<b>case</b>|1" in text and "hostile <b>title</b>" in text
    assert "$x^2$␣</td></tr></table>" in text
    # Control bytes, bidi marks and broken UTF-8 are spelled out, never present raw.
    assert "⟨0x1b⟩[31mred⟨0x1b⟩[0m" in text and "⟨U+202E⟩RTL" in text and "a\\nb" in text
    assert "⟨0x80⟩⟨0xff⟩␣half" in text and "⟨U+200B⟩⟨U+2067⟩rtl" in text
    assert not any(c in text for c in "\x1b\u202e\u2067\u200b")


def test_the_checker_catches_an_escaping_bug(tmp_path, evil, own_script):
    # Positive control: the same page with one token left unescaped must be flagged.
    html_text = render(build_report([evil], all_positions=True), "html")
    escaped = "&lt;img␣src=x␣onerror=&quot;document.body.setAttribute(&#x27;data-pwned&#x27;,&#x27;2&#x27;)&quot;&gt;"
    assert escaped in html_text
    broken = html_text.replace(escaped, "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">", 1)
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    problems = injection_problems(Dom(dump_dom(tmp_path, page)), own_script)
    assert any("event handler" in p for p in problems) and any("<img src='x'>" in p for p in problems)
