"""reports/fences.py: the fence helper the Markdown renderers share (it broke the localise <-> markdown
import circle: reports.localise no longer imports reports.markdown)."""

from __future__ import annotations

import subprocess
import sys

from reports.fences import fence_for, longest_backticks


def test_a_fence_is_longer_than_any_backtick_run_inside():
    assert longest_backticks("a ``b`` ````c") == 4
    assert fence_for([]) == "```" and fence_for(["no ticks"]) == "```"
    assert fence_for(["x = `y`", "````"]) == "`````"


def test_localise_does_not_import_the_markdown_renderer():
    code = "import sys, reports.localise; assert 'reports.markdown' not in sys.modules, 'circle is back'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
