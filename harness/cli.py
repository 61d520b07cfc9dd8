"""`flipgate` command line: a thin layer over the library.

Each package keeps its commands in `<package>/commands/<name>.py`, a module with
`register(subparsers)` that adds one subparser and sets `func(args) -> int`. Command modules
import nothing heavy at import time (no torch), so `flipgate --help` stays fast; they import
the library inside `func`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from . import __version__
from .errors import FlipgateError

COMMAND_PACKAGES = ("harness", "oracles", "gates", "reports")


def command_modules() -> list[str]:
    names = []
    for pkg in COMMAND_PACKAGES:
        mod = importlib.import_module(f"{pkg}.commands")
        for info in pkgutil.iter_modules(mod.__path__):
            if not info.name.startswith("_"):
                names.append(f"{pkg}.commands.{info.name}")
    return names


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flipgate",
        description="Numerics validation for quantized LLM bundles: does the quantized model pick the "
                    "same next token as the full-precision oracle wherever the oracle is sure?",
        epilog="example:\n  flipgate compare            # the bundled fixture, every variant, reports\n"
               "  flipgate COMMAND --help     # each command's options and an example",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"flipgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in sorted(command_modules(), key=lambda n: n.rsplit(".", 1)[1]):
        importlib.import_module(name).register(sub)
    return parser


def add_command(sub, name: str, *, help: str, example: str, description: str | None = None):
    """Add a subcommand whose help always ends with an example (every command must have one)."""
    return sub.add_parser(
        name, help=help, description=description or help,
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=_Formatter,
    )


def _quiet_dependencies() -> None:
    """Import-time chatter of the ML stack (optional kernels it cannot load here, deprecations
    inside transformers) is not the user's business; errors still show."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("torchao", "torch.utils._pytree", "coremltools"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*has only been validated with torch.*")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_dependencies()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FlipgateError as e:
        print(f"flipgate {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"flipgate {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
