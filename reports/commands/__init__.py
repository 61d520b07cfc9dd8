"""`flipgate` subcommands of the reports package (one module each, discovered by harness.cli)."""
