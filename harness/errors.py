"""Errors that the CLI turns into one line and an exit status.

Anything the user can fix (a bad file, a bad flag, a bad key) is an `InputError`: exit 2.
A gate that ran and failed is not an exception; the CLI exits 1 for it.
"""


class FlipgateError(Exception):
    """Base class; the message is one line that names the file, case, line or key at fault."""

    exit_code = 2


class InputError(FlipgateError):
    """Bad input: usage, files, configuration. Exit 2."""


class TraceError(InputError):
    """A trace file breaks `flipgate.trace/1`."""

    def __init__(self, path, rule: str, case: str | None = None):
        self.path = str(path)
        self.case = case
        self.rule = rule
        where = f"{self.path}" + (f": case {case!r}" if case is not None else "")
        super().__init__(f"{where}: {rule}")


class PlatformError(FlipgateError):
    """The real thing cannot run on this machine (e.g. the Core AI runtime off macOS). Exit 2."""
