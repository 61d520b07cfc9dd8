"""The CLI: --help/--version, every command documented with an example, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import __version__
from harness.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"flipgate {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out


def test_console_script_runs_without_importing_torch():
    code = ("import sys; from harness.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'flipgate --help imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_command_has_an_example_and_is_in_the_readme(name):
    help_text = _subcommands()[name].format_help()
    assert re.search(r"example:\n  flipgate " + re.escape(name), help_text), help_text
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"`flipgate {name}`" in readme, f"README.md does not document `flipgate {name}`"


def test_input_errors_are_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"not a trace")
    assert main(["trace", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "not a safetensors file" in err
