"""`flipgate` subcommands of the harness package (one module each, discovered by harness.cli)."""
