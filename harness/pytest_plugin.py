"""pytest plugin registered under the `pytest11` entry point: `pytest --gate NAME`.

Kept import-light: nothing heavy (torch, transformers) is imported unless --gate is given.
"""
