"""Loading Hugging Face checkpoints, and their provenance (shared by oracles and candidates).

torch and transformers are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
from importlib import resources
from pathlib import Path

from .errors import InputError
from .fileio import note_input, sha256_file

DTYPES = ("bfloat16", "float32", "float16")
SMALL_MODEL_HIDDEN = 1024  # at or below this hidden size a model runs on one torch thread (torch_threads)


def fixture_model_path() -> Path:
    """The bundled tiny Qwen3.5-architecture checkpoint (the embedded default model)."""
    return Path(str(resources.files("harness") / "data" / "fixture-model"))


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """A local checkpoint folder (default: the bundled fixture). Hub ids need a local copy here."""
    if model is None:
        return fixture_model_path()
    p = Path(model)
    if p.is_dir():
        return p
    if p.exists():
        raise InputError(f"{p}: a model must be a checkpoint folder (config.json + *.safetensors), not a file")
    try:  # a hub id already in the local Hugging Face cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception:
        raise InputError(f"{model}: no such model folder (and not in the local Hugging Face cache)") from None


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        found = sorted(f.name for f in model_dir.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        extra = f" (found {', '.join(found)}: pickle-based weights are never loaded)" if found else ""
        raise InputError(f"{model_dir}: no *.safetensors weights{extra}")
    return files


def weights_sha256(model_dir: Path) -> dict[str, str]:
    for f in weight_files(model_dir):
        note_input(f)  # this run must not overwrite the weights (harness.fileio)
    return {f.name: sha256_file(f) for f in weight_files(model_dir)}


def tokenizer_sha256(model_dir: Path) -> str:
    """sha256 of tokenizer.json: the vocabulary and merges that decide every token id."""
    tj = Path(model_dir) / "tokenizer.json"
    return sha256_file(tj) if tj.is_file() else ""


def model_provenance(model_dir: Path) -> str:
    """The trace metadata `model` value: path plus weight hashes."""
    return json.dumps({"path": str(model_dir), "sha256": weights_sha256(model_dir)}, sort_keys=True)


def read_config(model_dir: Path) -> dict:
    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        raise InputError(f"{model_dir}: no config.json (not a Hugging Face checkpoint folder)")
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg}: malformed JSON ({e.msg}, line {e.lineno})") from None


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise InputError(f"--dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise InputError(f"{model_dir}: cannot load the tokenizer ({e.__class__.__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_causal_lm(model_dir: Path, dtype: str = "bfloat16", *, device_map=None, max_memory=None,
                   trust_remote_code: bool = False):
    """Load a causal LM with transformers, safetensors only; the text decoder of a multimodal
    Qwen3.5 checkpoint is returned as a causal LM of its own.
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg = read_config(model_dir)
    weight_files(model_dir)
    archs = cfg.get("architectures") or []
    if archs and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")) for a in archs):
        raise InputError(f"{model_dir}: {', '.join(archs)} is not a causal language model")
    kwargs = dict(dtype=torch_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except (ValueError, KeyError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise InputError(f"{model_dir}: cannot load as a causal LM ({first})") from None
    model.eval()
    return model


@contextlib.contextmanager
def torch_threads(threads: int | None = None, hidden_size: int | None = None):
    """Run with `threads` torch intra-op threads (None: one for a small model, else torch's choice).

    A step of a small model is a few hundred tiny kernels: a second intra-op thread costs more in
    hand-offs than it saves, and on a busy machine spinning threads made the fixture's fp16 S=1
    decode 60x slower than on one thread (fp16 depthwise conv: 0.17 s a call on 2 threads, 14 ms on 1).
    """
    import torch

    if threads is None and hidden_size is not None and hidden_size <= SMALL_MODEL_HIDDEN:
        threads = 1
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def hidden_size_of(model) -> int | None:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    return getattr(cfg, "hidden_size", None)
