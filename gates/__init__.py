"""The gate engine: the margin rule, control attribution, metrics, named gates and verdicts (pure numpy)."""
