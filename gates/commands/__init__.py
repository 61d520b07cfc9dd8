"""`flipgate` subcommands of the gates package (one module each, discovered by harness.cli)."""
