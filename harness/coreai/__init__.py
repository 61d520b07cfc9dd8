"""Core AI: the llm-runner logits format, LanguageBundles and their assets, where the runtime runs.

    logits_file   `llm-runner --save-logits` files (read, write) and the teacher-forcing row map
    bundle        LanguageBundle metadata.json + tokenizer, the compiled asset's audit, variant checks
    runtime       platform checks and the one-line refusal where Core AI cannot run

The candidates that run bundles are in `harness.candidates.coreai`; `flipgate import` and
`flipgate inspect` are the commands.
"""
