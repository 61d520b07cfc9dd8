"""A float32 oracle that never holds the model: the checkpoint runs one decoder layer at a time.

    StreamedOracle(model_dir).run(sequences)  ->  one CaseTrace per sequence (float32 logits)

Why: a 27B checkpoint in float32 needs ~111 GB, more than the machines that run the gate. The
streamed oracle holds about one layer in float32 plus the activations of the case set:

  1. the model skeleton is built on the meta device (no weight storage; buffers such as the
     rotary inverse frequencies are real) by transformers itself, from the checkpoint's config;
  2. each case runs once through the skeleton's own decoder forward with its layers swapped for
     recorders, which capture exactly the arguments the model hands each layer (rotary cos/sin,
     the masks it builds, position ids) -- so nothing of the model's preamble is re-implemented;
  3. for each layer: its tensors are read from the memory-mapped safetensors files, upcast to
     float32 and assigned into the model's own decoder-layer module, every case's whole
     sequence goes through it, and the weights are dropped before the next layer is read;
  4. the final norm runs on every case, then the lm_head runs in vocabulary chunks, over blocks of
     cases whose logits fit the budget (one block, and one pass over the head, unless the case
     set's logits alone would outgrow a layer or --max-memory).

The logits are bit-identical to the in-memory float32 forward on the fixture
(tests/oracles/test_stream.py): every layer gets the same float32 operands in the same shapes. The
shapes matter because the BLAS picks its kernel, and so its summation order, by them: cases of
equal length run as one batch of at most `batch_size` (the in-memory oracle's grouping rule), and
the head gets the rows the in-memory forward gives it -- the last R+1 positions
(head_rows="keep": `logits_to_keep`, as `flipgate oracle` runs it) or every position
(head_rows="all": a plain `model(input_ids).logits`). Vocabulary chunks of the head are exact on
the fixture; on other shapes a BLAS may sum a chunk in another order (a last-bit difference).

A file is opened (and so memory-mapped) only while one layer or one head chunk is read from it,
so pages of the mapping never pile up in the resident set across layers.
"""

from __future__ import annotations

import json
import math
import re
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from harness.candidates.base import Sequence
from harness.errors import InputError
from harness.trace import CaseTrace

RUNNER = "hf-stream"
HEAD_CHUNK_ALIGN = 256  # vocabulary chunks are multiples of this many rows (BLAS-friendly tiles)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def parse_bytes(text: str | int | float | None, *, flag: str = "--max-memory") -> int | None:
    """'8GB', '512MiB', '1.5g' or a plain byte count -> bytes (None stays None)."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise InputError(f"{flag} {text!r}: expected a size such as 8GB, 512MiB or a byte count")
    return int(float(m.group(1)) * _UNITS[unit])


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc only; elsewhere a no-op).

    A freed layer's tensors sit in glibc's heap, which keeps them unless asked: without this the
    resident set grows by ~half a layer per layer (measured in benchmarks/bench_stream_oracle.py),
    and peak memory would be bounded by the model again, not by one layer.
    """
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _TRIM = getattr(libc, "malloc_trim", False)
        except (OSError, AttributeError):
            pass
    if _TRIM:
        _TRIM(0)


_TRIM = None


def peak_rss_bytes() -> int:
    """This process's peak resident set so far.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own memory; ru_maxrss
    also carries the parent's resident set at fork time across exec. Elsewhere ru_maxrss (macOS
    reports bytes, others KiB).
    """
    import sys

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ---------------------------------------------------------------------------------------------
# Where every tensor lives, from the safetensors headers (read without loading any data)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def nbytes(self, itemsize: int | None = None) -> int:
        return self.numel * (itemsize or _ST_ITEMSIZE.get(self.dtype, 4))


class CheckpointIndex:
    """The tensors of a safetensors checkpoint folder: name -> file, dtype, shape.

    Headers are parsed directly (8-byte length + JSON), so indexing a 50 GB checkpoint reads a few
    kilobytes. A `model.safetensors.index.json`, where present, must agree with the files.
    """

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.files = self._weight_files()
        self.tensors: dict[str, TensorInfo] = {}
        for f in self.files:
            for name, info in _read_header(f).items():
                self.tensors[name] = info
        index = self.model_dir / "model.safetensors.index.json"
        self.index_name = index.name if index.is_file() else ", ".join(f.name for f in self.files)
        if index.is_file():
            self._check_index(index)

    def _weight_files(self) -> list[Path]:
        if not self.model_dir.is_dir():
            raise InputError(f"{self.model_dir}: no such checkpoint folder")
        files = sorted(self.model_dir.glob("*.safetensors"))
        if not files:
            found = sorted(f.name for f in self.model_dir.iterdir()
                           if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack"))
            what = f"its weights are {', '.join(found)}" if found else "it holds no *.safetensors weight files"
            raise InputError(f"{self.model_dir}: cannot stream this checkpoint: {what}; the streamed oracle "
                             f"memory-maps safetensors files only (pickle-based weights are never loaded)")
        return files

    def _check_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise InputError(f"{index}: not a safetensors index (no 'weight_map' object)") from None
        for name, fname in weight_map.items():
            info = self.tensors.get(name)
            if not (self.model_dir / str(fname)).is_file():
                raise InputError(f"{index}: maps tensor {name!r} to {fname}, which does not exist")
            if info is None or info.file.name != fname:
                where = f"it is in {info.file.name}" if info else "no weight file holds it"
                raise InputError(f"{index}: maps tensor {name!r} to {fname}, which does not hold it ({where})")

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def load(self, names: Iterable[str], dtype) -> dict[str, "object"]:
        """Read tensors (memory-mapped), upcast each as soon as it is read; files stay open only meanwhile."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.tensors[n].file, []).append(n)
        out = {}
        for path, group in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for n in group:
                    t = f.get_tensor(n)
                    out[n] = t.to(dtype) if t.is_floating_point() else t
                    del t
        return out

    def load_rows(self, name: str, start: int, stop: int, dtype):
        from safetensors import safe_open

        with safe_open(str(self.tensors[name].file), framework="pt") as f:
            t = f.get_slice(name)[start:stop]
        return t.to(dtype)

    def gather_rows(self, name: str, ids: np.ndarray, dtype):
        """Rows `ids` of a 2-D tensor (an embedding), read run by run of consecutive ids."""
        import torch
        from safetensors import safe_open

        uniq = np.unique(ids)
        rows: dict[int, object] = {}
        with safe_open(str(self.tensors[name].file), framework="pt") as f:
            sl = f.get_slice(name)
            start = 0
            while start < len(uniq):
                stop = start + 1
                while stop < len(uniq) and uniq[stop] == uniq[stop - 1] + 1:
                    stop += 1
                lo, hi = int(uniq[start]), int(uniq[stop - 1]) + 1
                block = sl[lo:hi].to(dtype)
                for k in range(lo, hi):
                    rows[k] = block[k - lo]
                start = stop
        return torch.stack([rows[int(i)] for i in ids])


def _read_header(path: Path) -> dict[str, TensorInfo]:
    import struct

    size = path.stat().st_size
    why = None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                why = "shorter than the 8-byte header length"
            else:
                (hlen,) = struct.unpack("<Q", head)
                if hlen == 0 or 8 + hlen > size or hlen > 100 * 2**20:
                    why = "header length out of range"
                else:
                    header = json.loads(f.read(hlen).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        why = "header is not JSON"
    if why is None and not isinstance(header, dict):
        why = "header is not a JSON object"
    if why:
        raise InputError(f"{path}: cannot be memory-mapped as safetensors ({why}); the streamed oracle "
                         f"reads safetensors weights only")
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        try:
            out[name] = TensorInfo(name, path, str(info["dtype"]), tuple(int(d) for d in info["shape"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: tensor {name!r} has a malformed safetensors header entry") from None
    return out


# ---------------------------------------------------------------------------------------------
# The runner


@dataclass
class StreamStats:
    """What a streamed pass measured: the figures the memory budget is checked against."""

    layers: int = 0
    largest_layer: str = ""
    largest_layer_bytes: int = 0      # float32 weights of the largest decoder layer
    head_bytes: int = 0               # float32 lm_head (never held whole)
    head_chunk_rows: int = 0
    head_chunks: int = 0
    activation_bytes: int = 0         # estimate: hidden states of every case + one layer's intermediates
    logits_bytes: int = 0             # of the whole case set (never held at once when over the block)
    logits_block_bytes: int = 0       # logits held at once: the cases of one head pass
    head_passes: int = 0              # passes over the head (one per logits block)
    need_bytes: int = 0               # the larger phase: layers, or head chunk + logits block
    peak_held_bytes: int = 0          # measured: most weight + hidden-state bytes held at once
    peak_rss_bytes: int = 0
    positions: int = 0
    tokens: int = 0
    load_seconds: float = 0.0
    compute_seconds: float = 0.0
    per_layer_seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("per_layer_seconds")
        return d


class StreamedCheckpoint:
    """A checkpoint as a weightless transformers skeleton plus an index of its safetensors tensors.

    The skeleton (built on the meta device by transformers itself, buffers real) gives the model's
    own modules and forward; `layer_tensors[i]` maps decoder layer i's parameter names to checkpoint
    tensor names, so a runner can read one layer at a time and assign it into the skeleton. Shared by
    the streamed float32 oracle and the streamed fp16 candidate (harness/candidates/streamed.py).
    """

    skeleton_dtype = "float32"

    def __init__(self, model_dir: str | Path, skeleton_dtype: str | None = None):
        self.model_dir = Path(model_dir)
        if skeleton_dtype is not None:
            self.skeleton_dtype = skeleton_dtype
        self.index = CheckpointIndex(self.model_dir)
        self._build_skeleton()
        self._map_names()

    # -- structure ------------------------------------------------------------------------------

    def _build_skeleton(self) -> None:
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        from harness.models import read_config

        cfg = read_config(self.model_dir)
        archs = cfg.get("architectures") or []
        if archs and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")) for a in archs):
            raise InputError(f"{self.model_dir}: {', '.join(archs)} is not a causal language model")
        try:
            config = AutoConfig.from_pretrained(str(self.model_dir))
            with init_empty_weights(include_buffers=False):
                model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, self.skeleton_dtype))
        except (ValueError, KeyError, OSError) as e:
            first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            raise InputError(f"{self.model_dir}: cannot build the model skeleton ({first})") from None
        model.eval()
        self.model = model
        self.config = model.config
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        for attr in ("layers", "embed_tokens", "norm"):
            if not hasattr(self.decoder, attr):
                raise InputError(f"{self.model_dir}: {type(self.decoder).__name__} has no '{attr}'; "
                                 f"layer streaming runs decoders with embed_tokens, layers and norm")
        self.layers = self.decoder.layers
        self.vocab_size = int(self.head.weight.shape[0])
        self.hidden_size = int(self.head.weight.shape[1])

    def _map_names(self) -> None:
        """Skeleton parameter names -> checkpoint tensor names (a multimodal checkpoint keeps its
        decoder under `model.language_model.`)."""
        names = {id(m): n for n, m in self.model.named_modules()}
        self._module_name = names
        embed = f"{names[id(self.decoder.embed_tokens)]}.weight"
        self._prefix_swaps = [("", "")]
        for src, dst in (("model.", "model.language_model."), ("model.", ""), ("", "model.")):
            self._prefix_swaps.append((src, dst))
        for src, dst in self._prefix_swaps:
            if embed.startswith(src) and dst + embed[len(src):] in self.index:
                self._swap = (src, dst)
                break
        else:
            raise InputError(f"{self.model_dir}: the embedding {embed!r} is in none of the safetensors files "
                             f"({self.index.index_name})")
        self.embed_name = self.ckpt_name(embed)
        head = f"{names[id(self.head)]}.weight"
        if self.ckpt_name(head) in self.index:
            self.head_name = self.ckpt_name(head)
        elif getattr(self.config, "tie_word_embeddings", False) or getattr(
                getattr(self.config, "text_config", None), "tie_word_embeddings", False):
            self.head_name = self.embed_name
        else:
            raise InputError(f"{self.model_dir}: the lm_head tensor {self.ckpt_name(head)!r} is missing from "
                             f"{self.index.index_name} (and the config does not tie it to the embedding)")
        self.head_bias_name = None
        if getattr(self.head, "bias", None) is not None:
            self.head_bias_name = self.ckpt_name(f"{names[id(self.head)]}.bias")
        # Every layer's tensors, checked now: a missing one must stop the run before any compute.
        self.layer_tensors: list[dict[str, str]] = []
        for i, layer in enumerate(self.layers):
            prefix = names[id(layer)]
            mapping = {}
            for pname, _ in layer.named_parameters():
                ck = self.ckpt_name(f"{prefix}.{pname}")
                if ck not in self.index:
                    raise InputError(f"{self.model_dir}: layer {i} ({prefix}) lacks tensor {ck!r}: it is in none "
                                     f"of the safetensors files ({self.index.index_name})")
                mapping[pname] = ck
            self.layer_tensors.append(mapping)
        self.norm_tensors = {}
        for pname, _ in self.decoder.norm.named_parameters():
            ck = self.ckpt_name(f"{names[id(self.decoder.norm)]}.{pname}")
            if ck not in self.index:
                raise InputError(f"{self.model_dir}: the final norm lacks tensor {ck!r} "
                                 f"({self.index.index_name})")
            self.norm_tensors[pname] = ck

    def ckpt_name(self, name: str) -> str:
        src, dst = getattr(self, "_swap", ("", ""))
        return dst + name[len(src):] if name.startswith(src) else name

    def layer_bytes(self, i: int, itemsize: int = 4) -> int:
        return sum(self.index.tensors[n].nbytes(itemsize) for n in self.layer_tensors[i].values())



class StreamedOracle(StreamedCheckpoint):
    """The float32 oracle, run layer by layer from the memory-mapped checkpoint.

    Shares the runner interface (`runner`, `variant`, `metadata()`, `run(sequences)`); `run`
    consumes every sequence before yielding, since each layer serves all cases in turn.
    `batch_size` and `head_rows` choose which in-memory forward it reproduces bit for bit (see the
    module docstring); `max_memory` (bytes or '8GB') is checked before any weight is read.
    """

    runner = RUNNER

    def __init__(self, model_dir: str | Path, dtype: str = "float32", max_memory: int | str | None = None,
                 head_chunk_rows: int | None = None, batch_size: int = 1, head_rows: str = "keep",
                 logits_block_bytes: int | None = None, log: Callable[[str], None] | None = None,
                 threads: int | None = None):
        if dtype not in ("float32", "fp32"):
            raise InputError(f"--dtype {dtype!r} with --stream: the streamed oracle runs float32 only "
                             f"(a bfloat16 oracle fits in memory the ordinary way)")
        self.model_dir = Path(model_dir)
        self.dtype = "float32"
        self.variant = "fp32"
        self.max_memory = parse_bytes(max_memory)
        if head_chunk_rows is not None and head_chunk_rows < 1:
            raise InputError(f"head chunk of {head_chunk_rows} rows: must be at least 1")
        self._head_chunk_rows = head_chunk_rows
        self._logits_block_bytes = logits_block_bytes
        if batch_size < 1:
            raise InputError(f"--batch-size {batch_size}: expected a positive integer")
        if head_rows not in ("keep", "all"):
            raise InputError(f"head_rows {head_rows!r}: expected 'keep' or 'all'")
        self.batch_size = batch_size
        self.head_rows = head_rows
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"--threads {threads!r}: expected a positive number of threads")
        self.threads = threads  # None: one for a small model, as the in-memory oracle (harness.models.torch_threads)
        self.log = log or (lambda msg: None)
        StreamedCheckpoint.__init__(self, self.model_dir)
        self.stats = StreamStats(layers=len(self.layers))

    def metadata(self) -> dict[str, str]:
        import torch
        import transformers

        return {"dtype": "float32", "execution": "layer-streamed",
                "head_chunk_rows": str(self.stats.head_chunk_rows), "head_rows": self.head_rows,
                "batch_size": str(self.batch_size), "torch_threads": str(self.torch_threads()),
                "torch_version": torch.__version__, "transformers_version": transformers.__version__}

    def _threads(self):
        from harness.models import torch_threads

        return torch_threads(self.threads, self.hidden_size)

    def torch_threads(self) -> int:
        """The number of torch threads the logits are computed with."""
        import torch

        with self._threads():
            return torch.get_num_threads()

    # -- memory budget --------------------------------------------------------------------------

    def plan(self, sequences: list[Sequence]) -> StreamStats:
        """Size the run from tensor shapes alone; refuse it if it cannot fit `max_memory`.

        The peak is the larger of two phases. Layers: one layer in float32, plus its bf16 bytes
        mapped from the file and one bf16 tensor being upcast, plus every case's hidden states and
        the widest batch's intermediates. Head: one vocabulary chunk of the head, plus the logits
        of one block of cases (blocks are sized to the budget, so the case count does not set the
        peak: each block re-reads the head).
        """
        st = self.stats = StreamStats(layers=len(self.layers))  # each run measures afresh
        sizes = [self.layer_bytes(i) for i in range(len(self.layers))]
        big = int(np.argmax(sizes)) if sizes else 0
        st.largest_layer = self._module_name[id(self.layers[big])] if sizes else ""
        st.largest_layer_bytes = max(sizes, default=0)
        largest_tensor = max((self.index.tensors[n].nbytes() for m in self.layer_tensors for n in m.values()),
                             default=0)
        h = self.hidden_size
        st.tokens = sum(int(s.input_ids.shape[0]) for s in sequences)
        st.positions = sum(s.rows for s in sequences)
        groups = self.groups(sequences)
        batch_tokens = max((sum(int(sequences[i].input_ids.shape[0]) for i in g) for g in groups), default=0)
        widest = max((sum(self.index.tensors[n].shape[0] for n in m.values() if len(self.index.tensors[n].shape) == 2)
                      for m in self.layer_tensors), default=h)
        st.activation_bytes = 4 * (2 * st.tokens * h + 2 * batch_tokens * widest)
        layer_phase = st.largest_layer_bytes * 3 // 2 + largest_tensor + st.activation_bytes
        st.logits_bytes = 4 * st.positions * self.vocab_size
        st.head_bytes = self.vocab_size * h * 4
        group_logits = [4 * len(g) * sequences[g[0]].rows * self.vocab_size for g in groups]
        head_in = 4 * h * sum(len(g) * (sequences[g[0]].rows + 1) for g in groups)
        # a head row in float32 and, while upcast, in bf16 (2 + 4 bytes), + a logits column of the largest batch
        per_row = 6 * h + 4 * batch_tokens
        # Without a budget the head phase stays within the layer phase; with one, within the budget.
        target = self.max_memory if self.max_memory is not None else max(layer_phase, 64 * 2**20)
        block = self._logits_block_bytes if self._logits_block_bytes is not None else (target - head_in) // 2
        block = min(st.logits_bytes, max(max(group_logits, default=0), block))
        rows = self._head_chunk_rows
        if rows is None:
            rows = max(HEAD_CHUNK_ALIGN, (target - head_in - block) // per_row // HEAD_CHUNK_ALIGN * HEAD_CHUNK_ALIGN)
        st.head_chunk_rows = min(rows, self.vocab_size)
        st.head_chunks = -(-self.vocab_size // st.head_chunk_rows)
        st.logits_block_bytes = block
        head_phase = st.head_chunk_rows * per_row + block + head_in
        st.need_bytes = max(layer_phase, head_phase)
        if self.max_memory is not None and st.need_bytes > self.max_memory:
            raise InputError(
                f"--max-memory {fmt_bytes(self.max_memory)} is below the measured need of "
                f"{fmt_bytes(st.need_bytes)} for {self.model_dir.name}: largest layer {st.largest_layer} "
                f"{fmt_bytes(st.largest_layer_bytes)} in float32 (+ its bf16 bytes while read), activations "
                f"{fmt_bytes(st.activation_bytes)}; head phase {fmt_bytes(head_phase)} (lm_head chunk of "
                f"{st.head_chunk_rows} rows, logits block {fmt_bytes(block)})")
        return st

    def _held(self, nbytes: int, what: str) -> None:
        """Track the bytes actually held; stop (not an OOM kill) if they pass the budget."""
        st = self.stats
        st.peak_held_bytes = max(st.peak_held_bytes, nbytes)
        if self.max_memory is not None and nbytes > self.max_memory:
            raise InputError(f"--max-memory {fmt_bytes(self.max_memory)} exceeded while {what}: "
                             f"measured {fmt_bytes(nbytes)} held (planned {fmt_bytes(st.need_bytes)})")

    # -- the pass -------------------------------------------------------------------------------

    def _capture_layer_inputs(self, embeds) -> list[tuple[tuple, dict]]:
        """Run the decoder's own forward with recorders in place of its layers and final norm."""
        import torch
        from torch import nn

        sink: dict[int, tuple[tuple, dict]] = {}

        class _Recorder(nn.Module):
            def __init__(self, i: int):
                super().__init__()
                self.i = i

            def forward(self, hidden_states, *args, **kwargs):
                sink[self.i] = (args, kwargs)
                return hidden_states

        dec = self.decoder
        layers, norm = dec.layers, dec.norm
        try:
            dec.layers = nn.ModuleList([_Recorder(i) for i in range(len(layers))])
            dec.norm = nn.Identity()
            with torch.no_grad():
                dec(inputs_embeds=embeds, use_cache=False)
        finally:
            dec.layers, dec.norm = layers, norm
        if sorted(sink) != list(range(len(layers))):
            raise RuntimeError(f"{type(dec).__name__}.forward called {len(sink)} of {len(layers)} layers")
        return [sink[i] for i in range(len(layers))]

    def groups(self, seqs: list[Sequence]) -> list[list[int]]:
        """Sequences that run as one batch: equal length and row count, at most `batch_size`, in
        order of first appearance -- the in-memory oracle's rule, so the GEMM shapes match too."""
        by_key: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(seqs):
            by_key.setdefault((int(s.input_ids.shape[0]), s.rows), []).append(i)
        out = [m[j:j + self.batch_size] for m in by_key.values() for j in range(0, len(m), self.batch_size)]
        return sorted(out, key=lambda g: g[0])

    def run(self, sequences: Iterable[Sequence]) -> Iterator[CaseTrace]:
        import torch

        seqs = list(sequences)
        if not seqs:
            return
        for s in seqs:
            ids = np.asarray(s.input_ids)
            if ids.ndim != 1 or s.rows < 1 or s.rows > ids.shape[0] - 1:
                raise InputError(f"case {s.case_id!r}: {s.rows} rows do not fit a sequence of {ids.shape[0]} tokens")
            if ids.min() < 0 or ids.max() >= self.vocab_size:
                raise InputError(f"case {s.case_id!r}: token id {int(ids.max())} is outside the model's "
                                 f"vocabulary of {self.vocab_size}")
        st = self.plan(seqs)
        self.log(f"stream: {st.layers} layers, largest {st.largest_layer} {fmt_bytes(st.largest_layer_bytes)} "
                 f"float32; planned need {fmt_bytes(st.need_bytes)}"
                 + (f" of --max-memory {fmt_bytes(self.max_memory)}" if self.max_memory else ""))
        f32 = torch.float32
        groups = self.groups(seqs)
        # no_grad, not inference_mode: weights made under inference_mode are inference tensors, and
        # torch routes a matmul with them (as with any weight that does not require grad) through
        # another kernel path than a loaded model's Parameters -- other last bits.
        with self._threads(), torch.no_grad():
            t0 = time.perf_counter()
            hidden, layer_args = [], []
            for g in groups:
                ids = np.stack([np.asarray(seqs[i].input_ids, dtype=np.int64) for i in g])
                emb = self.index.gather_rows(self.embed_name, ids.reshape(-1), f32).reshape(*ids.shape, -1)
                hidden.append(emb)
                layer_args.append(self._capture_layer_inputs(emb))
            st.load_seconds += time.perf_counter() - t0
            hidden_bytes = sum(h.numel() * 4 for h in hidden)

            for i, layer in enumerate(self.layers):
                t0 = time.perf_counter()
                ck = self.layer_tensors[i]
                loaded = self.index.load(ck.values(), f32)
                weights = {p: loaded.pop(n) for p, n in ck.items()}
                held = sum(w.numel() * w.element_size() for w in weights.values())
                self._held(held + hidden_bytes, f"loading layer {i}")
                layer.load_state_dict(weights, strict=True, assign=True)
                del weights
                t1 = time.perf_counter()
                st.load_seconds += t1 - t0
                for k in range(len(groups)):
                    args, kwargs = layer_args[k][i]
                    out = layer(hidden[k], *args, **kwargs)
                    hidden[k] = out[0] if isinstance(out, tuple) else out
                layer.to("meta")  # drop this layer's weights before the next one is read
                release_freed_memory()
                st.compute_seconds += time.perf_counter() - t1
                st.per_layer_seconds.append(time.perf_counter() - t0)
                self.log(f"stream: layer {i + 1}/{len(self.layers)} {time.perf_counter() - t0:.2f}s")

            norm = self.decoder.norm
            norm.load_state_dict({p: t for p, t in zip(self.norm_tensors, self.index.load(
                self.norm_tensors.values(), f32).values())}, strict=True, assign=True)
            # the head's input rows, sliced as the in-memory forward slices them (see the docstring)
            head_in = []
            for k, g in enumerate(groups):
                h = norm(hidden[k])
                head_in.append(h if self.head_rows == "all" else h[:, -(seqs[g[0]].rows + 1):, :])
            norm.to("meta")
            del hidden

        # Blocks of groups whose logits fit the planned block; each block is one pass over the head.
        blocks: list[list[int]] = [[]]
        held = 0
        for k, g in enumerate(groups):
            size = 4 * len(g) * seqs[g[0]].rows * self.vocab_size
            if blocks[-1] and held + size > st.logits_block_bytes:
                blocks.append([])
                held = 0
            blocks[-1].append(k)
            held += size
        st.head_passes = len(blocks)
        for block in blocks:
            with self._threads(), torch.no_grad():  # not across the yield: the caller's threads are its own
                logits = self._head_pass(seqs, groups, block, head_in)
            st.peak_rss_bytes = peak_rss_bytes()
            for i in sorted(logits):  # a block's cases in input order (one block: all, in order)
                yield CaseTrace(seqs[i].case_id, np.asarray(seqs[i].input_ids, dtype=np.int64), logits.pop(i))

    def _head_pass(self, seqs, groups, block: list[int], head_in) -> dict[int, np.ndarray]:
        """The logits of the groups in `block`, the head read in vocabulary chunks."""
        from torch import nn

        import torch

        st = self.stats
        f32 = torch.float32
        members = [i for k in block for i in groups[k]]
        logits = {i: np.empty((seqs[i].rows, self.vocab_size), dtype=np.float32) for i in members}
        logits_bytes = sum(a.nbytes for a in logits.values())
        in_bytes = sum(head_in[k].numel() * 4 for k in block)
        rows = st.head_chunk_rows
        head_weight, head_bias = self.head.weight, self.head.bias  # the skeleton's (meta) parameters
        for v0 in range(0, self.vocab_size, rows):
            v1 = min(v0 + rows, self.vocab_size)
            t0 = time.perf_counter()
            w = self.index.load_rows(self.head_name, v0, v1, f32)
            b = self.index.load_rows(self.head_bias_name, v0, v1, f32) if self.head_bias_name else None
            self._held(w.numel() * 4 + in_bytes + logits_bytes, f"reading lm_head rows {v0}:{v1}")
            t1 = time.perf_counter()
            st.load_seconds += t1 - t0
            # The chunk goes in as a Parameter that requires grad, as a loaded model's head is:
            # for a non-contiguous input (the logits_to_keep slice of a batch) torch folds the
            # matmul differently for a plain weight tensor, and so sums in another order.
            self.head.weight = nn.Parameter(w, requires_grad=head_weight.requires_grad)
            if b is not None:
                self.head.bias = nn.Parameter(b, requires_grad=head_bias.requires_grad)
            try:
                for k in block:
                    r = seqs[groups[k][0]].rows
                    part = self.head(head_in[k])[:, -(r + 1):-1]
                    for j, i in enumerate(groups[k]):
                        logits[i][:, v0:v1] = part[j].numpy()
                    del part
            finally:
                self.head.weight, self.head.bias = head_weight, head_bias
            del w, b
            release_freed_memory()
            st.compute_seconds += time.perf_counter() - t1
        return logits

    rows = run  # the name the sketch uses


# ---------------------------------------------------------------------------------------------
# `flipgate oracle --stream`


def run_streamed_oracle(*, model: str | Path | None = None, cases: str | Path | None = None,
                        out: str | Path, dtype: str = "float32", sequences: str | Path | None = None,
                        max_memory: str | int | None = None, batch_size: int = 1, shard: str | None = None,
                        min_margin: float = 0.1, min_confident_fraction: float | None = None,
                        device: str = "cpu", stepwise: bool = False, resume: bool = False,
                        trust_remote_code: bool = False, quiet: bool = False, threads: int | None = None,
                        log: Callable[[str], None] | None = None) -> Path:
    """Compute the float32 oracle trace of a case set layer by layer and write it atomically.

    The streamed oracle teacher-forces given sequences (it makes no greedy continuation: that
    would be one pass over every weight per token). A case's continuation comes from the case
    itself or, for cases that give none, from the `sequences` trace -- normally the bf16 oracle's,
    so that `flipgate oracle-diff` can compare the two position by position.
    """
    from harness.cases import load_cases, select_shard, tokenize_case
    from harness.models import load_tokenizer, model_provenance, resolve_model_dir, tokenizer_sha256
    from harness.trace import base_metadata, open_trace, write_trace

    say = (lambda msg: None) if quiet else (log or print)
    for flag, value, ok in (("--device", device, "cpu"), ("--stepwise", stepwise, False), ("--resume", resume, False),
                            ("--trust-remote-code", trust_remote_code, False)):
        if value != ok:
            raise InputError(f"{flag} does not apply to --stream (it runs one layer at a time on the CPU, "
                             f"all cases per layer, with the model's transformers modules)")
    if isinstance(max_memory, dict) or (isinstance(max_memory, str) and "=" in max_memory):
        spec = max_memory if isinstance(max_memory, dict) else dict(
            item.split("=", 1) for item in max_memory.split(",") if "=" in item)
        if set(spec) - {"cpu"}:
            raise InputError(f"--max-memory {max_memory!r}: with --stream give one size (e.g. 8GiB), or cpu=SIZE")
        max_memory = spec["cpu"]
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; --out names the trace file to write")
    if min_confident_fraction is not None and not (0.0 <= min_confident_fraction <= 1.0):
        raise InputError(f"--min-confident-fraction {min_confident_fraction!r}: expected a fraction in [0, 1]")

    model_dir = resolve_model_dir(model)
    oracle = StreamedOracle(model_dir, dtype=dtype, max_memory=max_memory, batch_size=batch_size,
                            log=(lambda msg: None) if quiet else (log or print), threads=threads)
    case_set = load_cases(cases)
    specs = select_shard(case_set.specs, shard)
    if not specs:
        raise InputError(f"--shard {shard}: selects none of the {len(case_set)} cases in {case_set.path}")
    tokenizer = load_tokenizer(model_dir)
    source = open_trace(sequences) if sequences is not None else None
    seqs: list[Sequence] = []
    origin: dict[str, str] = {}
    for spec in specs:
        case = tokenize_case(spec, tokenizer, oracle.vocab_size)
        if case.continuation_ids is not None:
            ids, rows = np.array(case.input_ids, dtype=np.int64), len(case.continuation_ids)
            origin[case.id] = "given"
        elif source is not None:
            if case.id not in source.case_ids:
                raise InputError(f"{source.path}: has no case {case.id!r} of {case_set.path} (line {spec.line})")
            ids, rows = source.input_ids(case.id), source.rows(case.id)
            prompt = np.array(case.prompt_ids, dtype=np.int64)
            if len(ids) - rows != len(prompt) or not np.array_equal(ids[:len(prompt)], prompt):
                raise InputError(f"{source.path}: case {case.id!r} holds another prompt than {case_set.path} "
                                 f"line {spec.line} tokenizes to (same model and case set?)")
            origin[case.id] = "sequences"
        else:
            raise InputError(f"{case_set.path}:{spec.line}: case {case.id!r} gives no continuation, and --stream "
                             f"makes none: pass --sequences TRACE (the bf16 oracle's trace) or give "
                             f"continuation_ids")
        seqs.append(Sequence(case.id, ids, rows))

    from harness.merge import join_cases
    from oracles.hf import low_margin_count

    # Each case goes to a one-case part as its logits are made, and the trace is a streaming copy
    # of the parts: the case set's logits are never all in memory.
    parts = Path(tempfile.mkdtemp(prefix=f".{out.name}.parts-", dir=out.parent if out.parent.is_dir() else None))
    try:
        t0 = time.perf_counter()
        low: dict[str, int] = {}
        where: dict[str, Path] = {}
        for t in oracle.run(seqs):
            low[t.case_id] = low_margin_count(t.logits, min_margin)
            where[t.case_id] = parts / f"case-{len(where):06d}.safetensors"
            write_trace(where[t.case_id], base_metadata(runner=RUNNER, variant=oracle.variant,
                                                        vocab_size=oracle.vocab_size), [t])
        wall = time.perf_counter() - t0
        total = sum(s.rows for s in seqs)
        confident = total - sum(low.values())
        frac = confident / total if total else 0.0
        st = oracle.stats
        say(f"{confident}/{total} scored positions confident (probability margin >= {min_margin:g}); "
            f"{st.layers} layers streamed in {wall:.1f}s ({wall / max(total, 1) * 1e3:.1f} ms/position), "
            f"peak RSS {fmt_bytes(st.peak_rss_bytes)}, largest layer {fmt_bytes(st.largest_layer_bytes)} in float32")
        if min_confident_fraction is not None and frac < min_confident_fraction:
            raise InputError(f"{case_set.path}: only {frac:.1%} of {total} scored positions are confident "
                             f"(margin >= {min_margin:g}), below --min-confident-fraction "
                             f"{min_confident_fraction:g}")
        meta = base_metadata(
            runner=RUNNER, variant=oracle.variant, vocab_size=oracle.vocab_size, model=model_provenance(model_dir),
            tokenizer_sha256=tokenizer_sha256(model_dir), **oracle.metadata(),
            model_id=str(model) if model is not None else str(model_dir), device="cpu", mode="one-pass",
            min_margin=f"{min_margin:g}", margin_space="prob", low_margin=json.dumps(low),
            confident_fraction=f"{frac:.6f}", case_set=json.dumps(case_set.ids), cases_file_sha256=case_set.sha256,
            cases_file=str(case_set.path), shard=shard or "", continuation=json.dumps(origin),
            sequences_from=str(source.path) if source is not None else "", head_passes=str(st.head_passes),
            peak_rss_bytes=str(st.peak_rss_bytes), largest_layer_bytes=str(st.largest_layer_bytes))
        join_cases(out, meta, [(where[s.case_id], s.case_id) for s in seqs])
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    say(f"wrote {out} ({len(seqs)} cases, {total} rows, float32, layer-streamed)")
    return out
