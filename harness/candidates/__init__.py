"""Candidate runners: what is judged against the oracle.

Every runner shares one small interface (`Candidate` in base.py): given the teacher-forced
sequences (normally taken from the oracle trace), yield one CaseTrace per case. Runners are
looked up lazily by the prefix of a candidate spec, so nothing heavy is imported until one runs:

    int8hu                  emulated variant (recipe name), harness.candidates.emulated
                            (stream=True: layer by layer from disk, harness.candidates.streamed)
    coreai:BUNDLE_DIR       llm-runner on macOS, harness.candidates.coreai
    coreai-python:BUNDLE    coreai.runtime in-process on macOS
    trace:FILE              an existing trace (imported dumps, other runtimes)
"""

from __future__ import annotations

import importlib

from ..errors import InputError
from .base import Candidate, Sequence, capture_to_trace, sequences_from_trace

# prefix -> "module:factory"; factory(spec_rest: str, **options) -> Candidate
RUNNERS: dict[str, str] = {
    "coreai": "harness.candidates.coreai:llm_runner_candidate",
    "coreai-python": "harness.candidates.coreai:python_candidate",
    "trace": "harness.candidates.base:trace_candidate",
}
DEFAULT_RUNNER = "harness.candidates.emulated:emulated_candidate"


def resolve(spec: str, **options) -> Candidate:
    """Build the candidate a spec names (`int8hu`, `coreai:/path/bundle`, `trace:file`)."""
    prefix, sep, rest = spec.partition(":")
    target = RUNNERS.get(prefix) if sep else None
    if target is None:
        target, rest = DEFAULT_RUNNER, spec
    mod_name, _, fn = target.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), fn)
    except (ImportError, AttributeError) as e:
        raise InputError(f"candidate {spec!r}: runner {target} is not available ({e})") from None
    return factory(rest, **options)


__all__ = ["Candidate", "Sequence", "resolve", "capture_to_trace", "sequences_from_trace", "RUNNERS"]
