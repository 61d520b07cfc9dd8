"""`flipgate` subcommands of the oracles package (one module each, discovered by harness.cli)."""
