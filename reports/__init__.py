"""Renderers of verdicts: terminal, Markdown, HTML, JSON, CSV."""
