"""Where Core AI can run, and the one line that says so when it cannot.

Measured on coreai-core 1.0.0b3 (read its `coreai/runtime` and `coreai/authoring/asset.py`):
  - macOS 26+: the OS Core AI framework runs assets with specialization options (CPU, GPU,
    Neural Engine), and `llm-runner` (apple/coreai-models, Swift) runs LanguageBundles.
  - elsewhere (Linux): the wheel imports, `SpecializationOptions.*()` raise "only available on
    macOS", but `AIModelAsset.executable()` without options lowers the asset to its portable form
    and runs it on the wheel's own in-package CPU runtime. flipgate uses that for the
    `coreai-python` candidate off macOS and says so in the trace metadata.
  - `llm-runner` is a macOS binary: off macOS it runs only when a path is given explicitly
    (`--llm-runner`), which is how the tests drive an executable stand-in.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

from ..errors import FlipgateError, InputError, PlatformError

MACOS_ONLY = "Core AI runs on macOS 26+; run `llm-runner` on a Mac and use `flipgate import`"
MIN_MACOS = 26
COMPUTE_UNITS = ("cpu", "gpu", "ane", "all")


class RunnerError(FlipgateError):
    """The runtime ran and failed (non-zero exit, no or unreadable output). Exit 2."""


def is_macos() -> bool:
    return sys.platform == "darwin"


def macos_major() -> int | None:
    if not is_macos():
        return None
    try:
        return int(platform.mac_ver()[0].split(".")[0])
    except ValueError:
        return None


def require_macos() -> None:
    """Fail early, with one line, where the macOS Core AI runtime cannot run."""
    major = macos_major()
    if major is None or major < MIN_MACOS:
        raise PlatformError(MACOS_ONLY)


def find_llm_runner(explicit: str | os.PathLike | None = None) -> Path:
    """The `llm-runner` to run: the given path (any platform), else `PATH` on macOS 26+."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.exists():
            found = shutil.which(str(explicit))
            if found is None:
                raise InputError(f"--llm-runner {explicit}: no such file")
            p = Path(found)
        if not p.is_file() or not os.access(p, os.X_OK):
            raise InputError(f"--llm-runner {p}: not an executable file")
        return p
    require_macos()
    found = shutil.which("llm-runner")
    if found is None:
        raise InputError("llm-runner is not on PATH: build it from apple/coreai-models "
                         "(`swift build -c release --product llm-runner`) and pass --llm-runner PATH")
    return Path(found)


def load_runtime():
    """`coreai.runtime`, or the one-line PlatformError where the wheel cannot load here."""
    try:
        import coreai.runtime as rt
    except ImportError as e:
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        if "No module named" in msg:
            raise PlatformError(f"{MACOS_ONLY} (the coreai-core package is not installed: "
                                f"pip install coreai-core)") from None
        raise PlatformError(f"{MACOS_ONLY} (coreai.runtime does not load here: {msg})") from None
    return rt


def uses_os_runtime(rt) -> bool:
    """True where assets run on the OS Core AI framework (macOS 27+ with the wheel), False where they
    run on coreai-core's in-package runtime."""
    return bool(getattr(rt, "_use_os_coreai", False))


def backend_description(rt) -> str:
    if uses_os_runtime(rt):
        return f"Core AI framework (macOS {platform.mac_ver()[0]})"
    where = f"macOS {platform.mac_ver()[0]}" if is_macos() else f"{platform.system()} {platform.machine()}"
    return f"coreai-core in-package runtime ({where})"
