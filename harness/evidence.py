"""What kind of evidence a trace's rows are (trace metadata `evidence`, DESIGN.md), and its label.

    oracle             the full-precision Hugging Face model (the reference, not a candidate)
    emulation          coreai-opt's quantizer numerics run in torch (`flipgate capture VARIANT`)
    reference-runtime  a Core AI runtime that is not the device's: coreai-core's in-package CPU runtime
                       (`coreai-python:` on Linux). It rounds differently from the device; its rows say
                       nothing about the device's numerics.
    device             the device's Core AI runtime: llm-runner, or coreai.runtime on the macOS framework
    unknown            a runner flipgate does not know that did not say (never read as device)

For the runners flipgate ships, the kind follows from the runner (and, for `coreai-python`, from the
runtime it recorded), whatever a file's `evidence` key claims: a trace cannot promote itself to device
evidence by saying so. A runner flipgate does not know is taken at its word.
"""

from __future__ import annotations

from typing import Mapping

KINDS = ("oracle", "emulation", "reference-runtime", "device", "unknown")

LABELS = {
    "oracle": "oracle",
    "emulation": "emulation",
    "reference-runtime": "Linux reference runtime",
    "device": "device",
    "unknown": "unknown",
}

DESCRIPTIONS = {
    "oracle": "the full-precision Hugging Face model",
    "emulation": "coreai-opt quantizer numerics in torch, not a Core AI runtime",
    "reference-runtime": "coreai-core's in-package CPU runtime, not the device's: its rounding says nothing "
                         "about the device's numerics",
    "device": "the device's Core AI runtime (llm-runner or coreai.runtime on macOS)",
    "unknown": "a runner flipgate does not know, which did not say what it is",
}

_BY_RUNNER = {
    "hf": "oracle",
    "hf-stream": "oracle",
    "emulated": "emulation",
    "coreai-llm-runner": "device",   # llm-runner runs on macOS only
}

# The description PythonCandidate records in `coreai_runtime` (harness.coreai.runtime.backend_description).
_OS_RUNTIME = "Core AI framework"


def evidence_of(meta: Mapping[str, str]) -> str:
    """The evidence kind of a trace (or a verdict's trace record), from its runner first, then its claim."""
    runner = str(meta.get("runner", ""))
    if runner in _BY_RUNNER:
        return _BY_RUNNER[runner]
    if runner == "coreai-python":
        return "device" if str(meta.get("coreai_runtime", "")).startswith(_OS_RUNTIME) else "reference-runtime"
    if runner == "import":  # llm-runner dumps made on a Mac (harness.coreai.dumps)
        return "device" if meta.get("source_runner", "coreai-llm-runner") == "coreai-llm-runner" else "unknown"
    claimed = str(meta.get("evidence", ""))
    return claimed if claimed in KINDS else "unknown"


def label(kind: str) -> str:
    """`device`, `Linux reference runtime`, `emulation`, `oracle`, `unknown`."""
    return LABELS.get(kind, LABELS["unknown"])


def describe(kind: str) -> str:
    """The label with what it means, e.g. `emulation (coreai-opt quantizer numerics in torch, ...)`."""
    return f"{label(kind)} ({DESCRIPTIONS.get(kind, DESCRIPTIONS['unknown'])})"
