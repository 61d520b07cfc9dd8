"""flipgate: numerics validation harness for quantized LLM bundles (Apple Core AI).

`harness` holds cases, traces, candidate runners, the CLI and the pytest plugin. The other
top-level packages are `oracles` (reference runners), `gates` (the judge) and `reports`.
"""

__version__ = "0.1.0"
