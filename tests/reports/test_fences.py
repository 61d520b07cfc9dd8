"""reports/fences.py: the fence helper the Markdown renderers share (it broke the localise <-> markdown
import circle: reports.localise no longer imports reports.markdown)."""

from __future__ import annotations

import ast
from pathlib import Path

import reports

from reports.fences import fence_for, longest_backticks


def test_a_fence_is_longer_than_any_backtick_run_inside():
    assert longest_backticks("a ``b`` ````c") == 4
    assert fence_for([]) == "```" and fence_for(["no ticks"]) == "```"
    assert fence_for(["x = `y`", "````"]) == "`````"


def _imports(path: Path) -> set[str]:
    """The reports modules a module imports (relative imports, at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
    return found


def test_no_import_circle_among_the_renderers():
    root = Path(reports.__file__).parent
    graph = {p.stem: _imports(p) for p in root.glob("*.py") if p.stem != "__init__"}
    assert "markdown" not in graph["localise"] and "fences" in graph["localise"]

    def visit(node, path):
        for nxt in sorted(graph.get(node, ())):
            assert nxt not in path, f"import circle: {' -> '.join(path + [nxt])}"
            visit(nxt, path + [nxt])

    for module in graph:
        visit(module, [module])
