"""`flipgate` command line: a thin layer over the library.

Each package keeps its commands in `<package>/commands/<name>.py`, a module with
`register(subparsers)` that adds one subparser and sets `func(args) -> int`. Command modules
import nothing heavy at import time (no torch), so `flipgate --help` stays fast; they import
the library inside `func`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import pkgutil
import sys
import traceback
from typing import Sequence

from . import __version__
from .errors import FlipgateError, InputError

# exit statuses (DESIGN.md): 0 done/pass, 1 the gate failed, 2 bad input or environment, 3 a bug
EXIT_INTERNAL = 3

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
    parser.set_defaults(_commands=sub.choices)
    return parser


def add_command(sub, name: str, *, help: str, example: str, description: str | None = None):
    """Add a subcommand whose help always ends with an example (every command must have one)."""
    return sub.add_parser(
        name, help=help, description=description or help,
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=_Formatter,
    )


# ---- paths: every file option says whether it is read or written ----------------------------------
#
# Commands declare their path options with `input_path` / `output_path` / `output_dir` instead of a
# bare add_argument. Before a command runs, `main` checks them all at once (`check_paths`): inputs
# exist and can be read, outputs can be written and name no input (nor each other), by any name.
# While it runs, the inputs are recorded (harness.fileio.input_scope), so a write that would replace
# one — a default output name, a path from a config file — is refused at the last moment too.

INPUT, OUTPUT, OUTPUT_DIR = "input", "output", "output-dir"


def _declare(action: argparse.Action, role: str, *, kind: str = "file", stdout: bool = False) -> argparse.Action:
    action.flipgate_role = (role, kind, stdout)
    return action


def input_path(p, *flags, kind: str = "file", **kw) -> argparse.Action:
    """An option naming a file the command reads. kind: "file" (must exist and be readable: checked up
    front), "dir" (a folder: checked up front), "any" (a folder or a name resolved later, e.g. a hub id),
    "cases" (a case file, or a bundled case set's name: the file it names is checked)."""
    return _declare(p.add_argument(*flags, **kw), INPUT, kind=kind)


def output_path(p, *flags, stdout: bool = False, **kw) -> argparse.Action:
    """An option naming a file the command writes; `stdout=True`: `-` means standard output."""
    return _declare(p.add_argument(*flags, **kw), OUTPUT, stdout=stdout)


def output_dir(p, *flags, **kw) -> argparse.Action:
    """An option naming a folder the command writes new files or folders into."""
    return _declare(p.add_argument(*flags, **kw), OUTPUT_DIR)


def _label(action: argparse.Action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--")]
    if longs or action.option_strings:
        return (longs or action.option_strings)[0]
    return action.metavar if isinstance(action.metavar, str) else action.dest.upper()


def declared_paths(cmd_parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple]:
    """(label, role, kind, stdout, value) for each declared path option given a value."""
    out = []
    for action in cmd_parser._actions:
        role = getattr(action, "flipgate_role", None)
        value = getattr(args, action.dest, None) if role else None
        if role is None or value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            out.append((_label(action), *role, str(v)))
    return out


def check_paths(paths: list[tuple]) -> None:
    """Refuse (InputError, one line) unreadable inputs, unwritable outputs and an output that names an input."""
    from .fileio import STDOUT, check_input_file, check_output_dir, check_output_path, check_outputs

    inputs: dict[str, list[str]] = {}
    outputs: dict[str, list[str]] = {}
    for label, role, kind, stdout, value in paths:
        if role == INPUT:
            if kind == "cases":
                from .cases import resolve_cases_path

                kind, value = "file", str(resolve_cases_path(value))
            if kind == "file":
                check_input_file(value, label)
            elif kind == "dir" and not os.path.isdir(value):
                raise InputError(f"{label} {value}: " + ("not a folder" if os.path.exists(value) else "no such folder"))
            inputs.setdefault(label, []).append(value)
        elif role == OUTPUT:
            if value == STDOUT and not stdout:
                raise InputError(f"{label} -: this output cannot go to standard output; name a file (./- for a "
                                 "file called '-')")
            check_output_path(value, label)
            outputs.setdefault(label, []).append(value)
        else:
            check_output_dir(value, label)
    check_outputs(outputs, inputs)
    # an output folder that is an input file is refused by check_output_dir (a file, not a folder)


def note_inputs(paths: list[tuple]) -> None:
    from .fileio import note_input

    for label, role, _kind, _stdout, value in paths:
        if role == INPUT and os.path.exists(value):
            note_input(value, f"{label} {value}")


# ---- the terminal: escaped, and a closed pipe is not an error ----------------------------------

class _PipeSafe:
    """A stream whose reader may go away (`flipgate trace X | head -1`): the first write to a closed
    pipe points the descriptor at /dev/null and drops what follows, so the command finishes its work
    and exits with its own status, without a BrokenPipeError."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_pipe = False

    def _broken(self) -> None:
        self.closed_pipe = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, data):
        if self.closed_pipe:
            return len(data)
        try:
            return self._stream.write(data)
        except BrokenPipeError:
            self._broken()
            return len(data)
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise
            self._broken()
            return len(data)

    def flush(self):
        if self.closed_pipe:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._broken()
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise
            self._broken()

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _Terminal(_PipeSafe):
    """sys.stdout / sys.stderr while a command runs: text is passed through `reports.escape.terminal`
    (nothing a case id, a prompt or a file name holds can steer the terminal), `.unescaped` is the
    same stream without escaping (for renderers that escape their data themselves and emit styling,
    such as rich) and `.buffer` writes bytes as they are (data formats written to `-`)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.unescaped = _PipeSafe(stream)
        raw = getattr(stream, "buffer", None)
        self.buffer = _PipeSafe(raw) if raw is not None else None
        from reports.escape import terminal

        self._escape = terminal

    def write(self, data):
        return super().write(self._escape(data))


def unescaped(stream):
    """The stream without the CLI's terminal escaping: for text already escaped (and styled) by its renderer."""
    return getattr(stream, "unescaped", stream)


def write_data(text: str) -> None:
    """A data format (JSON, CSV, Markdown, HTML) on standard output: as it is into a file or a pipe,
    escaped like any other text when standard output is a terminal."""
    out = sys.stdout
    (out if out.isatty() else unescaped(out)).write(text)


@contextlib.contextmanager
def _terminal_streams():
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Terminal(out), _Terminal(err)
    try:
        yield
    finally:
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        sys.stdout, sys.stderr = out, err


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
    from .fileio import input_scope

    with _terminal_streams(), input_scope():
        return _run(args)


def _run(args) -> int:
    try:
        paths = declared_paths(args._commands[args.command], args)
        check_paths(paths)  # before any work: nothing is read, computed or written for a bad path
        note_inputs(paths)
        return int(args.func(args) or 0)
    except FlipgateError as e:
        print(f"flipgate {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"flipgate {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # a closed pipe that got past the streams (a library's own handle):
        return 141  # what a shell reports for a tool stopped by SIGPIPE; never a pass
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        # a file the environment would not give us, named by the error itself
        if e.filename is None:
            return _internal_error(args)
        print(f"flipgate {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) :
            where = f"{e.filename}: " if e.filename else ""
            print(f"flipgate {args.command}: error: {where}{e.strerror}", file=sys.stderr)
            return 2
        return _internal_error(args)
    except Exception:
        return _internal_error(args)


def _internal_error(args) -> int:
    """An exception nobody expected is a bug: the traceback, and a status of its own (never 1, which
    means "the gate failed", nor 2)."""
    traceback.print_exc()
    print(f"flipgate {args.command}: internal error (a bug in flipgate; please report it with the traceback "
          f"above); exit {EXIT_INTERNAL}", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
