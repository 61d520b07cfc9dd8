"""Layer-streamed S=1 emulation: an emulated candidate that never holds the model.

    StreamedCandidate(recipe, model_dir).run(sequences)  ->  one CaseTrace per sequence (float16 rows)

`flipgate capture VARIANT` holds the whole fp16 model (54 GB for a 27B). Token t at layer l
depends only on layer l-1's output at t and on layer l's own state from tokens before t, so the
same S=1 computation can run layer-major instead of token-major:

  1. the model skeleton is built on the meta device by transformers itself (oracles/stream.py's
     `StreamedCheckpoint`, in float16); the recipe is planned on it by module name and shape;
  2. each case's per-step layer arguments (rotary cos/sin, masks, position ids) are recorded once by
     running the skeleton's own decoder forward token by token with recorders in place of its
     layers, exactly as the in-memory decode calls it; the recording cache is advanced one position
     a step through its per-layer API so the decoder's preamble sees the true past length;
  3. for each decoder layer in turn: its tensors are read from the memory-mapped safetensors and
     cast to float16, the planned Linear weights are quantized (the fast path, `harness.quants`, in
     row chunks: a weight's blocks lie along its input axis, so a row chunk quantizes exactly as the
     whole weight), the weights are assigned into the model's own decoder-layer module, and every
     case's tokens go through it one at a time with a cache object of that layer's own (GatedDeltaNet
     conv + recurrent state, attention KV: transformers keeps them per layer, in `cache.layers[i]`);
     every position's output is kept for the next layer and the layer is dropped;
  4. the final norm runs on the scored positions only, then the quantized lm_head in vocabulary
     chunks (each chunk read, quantized, applied to every scored row, dropped).

Every module sees the operands of the in-memory decode in the same shapes ([1, 1, hidden] a step,
the head one row at a time: a batched head would sum in another order), so the rows are
bit-identical to `EmulatedCandidate`'s S=1 rows (tests/harness/test_streamed.py, all six recipes on
the fixture). Memory: one layer (fp16 weights + the quantization of one row chunk) + every
position's hidden state (positions x hidden x 2 bytes) + one layer's cache for one case, then one
head chunk + the logits of a block of cases; `max_memory` refuses a run up front, naming the need.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import InputError
from ..models import torch_threads
from ..quants import ROW_CHUNK_ELEMENTS as QUANT_CHUNK_ELEMENTS
from ..recipe import QuantSpec
from ..trace import CaseTrace
from .base import Sequence
from .emulated import EmulatedCandidate, _cache_keyword

EXECUTION = "layer-streamed"
QUANT_BYTES_PER_ELEMENT = 18     # numpy transients of quantize + dequantize per element of a chunk
HEAD_CHUNK_ALIGN = 256
MIN_HEAD_BUDGET = 64 * 2**20


def fake_quantize_rows(spec: QuantSpec, weight, chunk_elements: int = QUANT_CHUNK_ELEMENTS):
    """The dequantized fp16 value of `weight` ([out, in] fp16 tensor) under `spec`, computed in row
    chunks so the quantizer's float32 transients stay small. Identical to quantizing the whole
    weight at once (`apply_plan`): blocks (and per-channel scales) never span rows."""
    import torch

    from ..quants import quantize_rows

    deq, _ = quantize_rows(spec.scheme(), weight.detach().cpu().numpy(), chunk_elements=chunk_elements)
    return torch.from_numpy(deq)


@dataclass
class StreamedStats:
    """What the streamed capture planned and measured (the figures --max-memory is checked against)."""

    layers: int = 0
    largest_layer: str = ""
    largest_layer_bytes: int = 0    # fp16 weights of the largest decoder layer
    layer_phase_bytes: int = 0      # planned: one layer + its mapped file bytes + reading/quantizing + one cache
    hidden_bytes: int = 0           # every position's hidden state, fp16
    head_bytes: int = 0             # fp16 lm_head (never held whole)
    head_chunk_rows: int = 0
    head_chunks: int = 0
    head_phase_bytes: int = 0       # planned: one head chunk + the logits of one block + the normed rows
    logits_block_bytes: int = 0
    head_passes: int = 0
    need_bytes: int = 0
    peak_rss_bytes: int = 0
    positions: int = 0
    steps: int = 0
    record_seconds: float = 0.0
    load_seconds: float = 0.0       # reading + casting + quantizing weights
    compute_seconds: float = 0.0
    per_layer_seconds: list[float] = field(default_factory=list)


@dataclass
class StreamedCandidate(EmulatedCandidate):
    """An emulated variant decoded S=1 layer by layer from the memory-mapped checkpoint.

    Same rows as `EmulatedCandidate` (fast mode, stepwise); `run` consumes every sequence before
    yielding, since each layer serves all cases in turn.
    """

    max_memory: int | str | None = None
    head_chunk_rows: int | None = None
    log: Callable[[str], None] | None = None
    stats: StreamedStats = field(default_factory=StreamedStats)
    _checkpoint: object = field(default=None, repr=False)

    def __post_init__(self):
        from oracles.stream import parse_bytes

        super().__post_init__()
        if self.mode != "fast" or self.full:
            raise InputError("a streamed capture decodes S=1 with the fast quantization path only")
        self.max_memory = parse_bytes(self.max_memory)
        if self.head_chunk_rows is not None and self.head_chunk_rows < 1:
            raise InputError(f"head chunk of {self.head_chunk_rows} rows: must be at least 1")
        self.log = self.log or (lambda msg: None)

    @property
    def model(self):
        raise AttributeError("a streamed candidate never holds the model (see .checkpoint)")

    @property
    def checkpoint(self):
        if self._checkpoint is None:
            from oracles.stream import StreamedCheckpoint

            ck = StreamedCheckpoint(self.model_dir, "float16")
            ck.model.requires_grad_(False)  # as load_fp16: the kernels differ for weights that require grad
            if ck.vocab_size != self.vocab_size:
                raise InputError(f"{self.model_dir}: lm_head has {ck.vocab_size} rows, config.json says "
                                 f"vocab_size {self.vocab_size}")
            self._checkpoint = ck
        return self._checkpoint

    def metadata(self) -> dict[str, str]:
        st = self.stats
        meta = super().metadata()
        meta.update({"execution": EXECUTION, "head_chunk_rows": str(st.head_chunk_rows),
                     "head_passes": str(st.head_passes), "largest_layer_bytes": str(st.largest_layer_bytes),
                     "planned_need_bytes": str(st.need_bytes), "peak_rss_bytes": str(st.peak_rss_bytes)})
        if self.max_memory is not None:
            meta["max_memory"] = str(self.max_memory)
        return meta

    # -- the memory plan --------------------------------------------------------------------------

    def plan_memory(self, seqs: list[Sequence], plan: dict[str, QuantSpec | None]) -> StreamedStats:
        """Size the run from tensor shapes alone; refuse it (InputError) if it cannot fit max_memory."""
        from oracles.stream import fmt_bytes

        ck = self.checkpoint
        st = self.stats = StreamedStats(layers=len(ck.layers))
        infos = ck.index.tensors
        h, vocab = ck.hidden_size, ck.vocab_size
        sizes = [ck.layer_bytes(i, 2) for i in range(len(ck.layers))]
        big = int(np.argmax(sizes)) if sizes else 0
        st.largest_layer = ck._module_name[id(ck.layers[big])] if sizes else ""
        st.largest_layer_bytes = max(sizes, default=0)
        # reading a tensor: its stored bytes and its fp16 copy; quantizing one: the fp16 input is held
        # while its dequantized copy is built, plus one row chunk's float32 transients
        largest_read = max((infos[n].nbytes() + infos[n].nbytes(2) for m in ck.layer_tensors for n in m.values()),
                           default=0)
        quantized = [infos[n].nbytes(2) for i, m in enumerate(ck.layer_tensors) for p, n in m.items()
                     if plan.get(f"{ck._module_name[id(ck.layers[i])]}.{p.rpartition('.')[0]}") is not None]
        quant = max(quantized, default=0) + (QUANT_CHUNK_ELEMENTS * QUANT_BYTES_PER_ELEMENT if quantized else 0)
        longest = max((int(s.input_ids.shape[0]) for s in seqs), default=0)
        widest = max((infos[n].shape[0] for m in ck.layer_tensors for n in m.values() if len(infos[n].shape) == 2),
                     default=h)
        cache = self._cache_bytes(longest, widest)
        st.steps = sum(int(s.input_ids.shape[0]) - 1 for s in seqs)
        st.positions = sum(s.rows for s in seqs)
        st.hidden_bytes = 2 * st.steps * h + 512 * st.steps  # fp16 rows + a tensor object each
        # the layer's stored bytes stay mapped (resident) while its file is open for reading
        stored = max((sum(infos[n].nbytes() for n in m.values()) for m in ck.layer_tensors), default=0)
        st.layer_phase_bytes = st.largest_layer_bytes + stored + max(largest_read, quant) + cache + 8 * widest
        st.head_bytes = 2 * vocab * h
        normed = (2 * h + 512) * st.positions
        head_quant = plan.get(ck._module_name[id(ck.head)]) is not None
        per_row = (infos[ck.head_name].nbytes() // max(1, vocab)) + 2 * h + (2 * h if head_quant else 0)
        transient = QUANT_CHUNK_ELEMENTS * QUANT_BYTES_PER_ELEMENT if head_quant else 0
        target = self.max_memory - st.hidden_bytes if self.max_memory is not None else max(
            st.layer_phase_bytes, MIN_HEAD_BUDGET)
        logits = [2 * s.rows * vocab for s in seqs]
        block = min(sum(logits), max(max(logits, default=0), (target - normed - transient) // 2))
        rows = self.head_chunk_rows
        if rows is None:
            rows = (target - normed - transient - block) // per_row // HEAD_CHUNK_ALIGN * HEAD_CHUNK_ALIGN
            rows = max(HEAD_CHUNK_ALIGN, rows)
        st.head_chunk_rows = min(rows, vocab)
        st.head_chunks = -(-vocab // st.head_chunk_rows)
        st.logits_block_bytes = block
        st.head_phase_bytes = st.head_chunk_rows * per_row + transient + block + normed
        st.need_bytes = st.hidden_bytes + max(st.layer_phase_bytes, st.head_phase_bytes)
        if self.max_memory is not None and st.need_bytes > self.max_memory:
            raise InputError(
                f"--max-memory {fmt_bytes(self.max_memory)} is below the planned need of {fmt_bytes(st.need_bytes)} "
                f"for {self.model_dir.name} ({self.variant}, streamed): largest layer {st.largest_layer} "
                f"{fmt_bytes(st.largest_layer_bytes)} in fp16 (+ {fmt_bytes(stored)} mapped from the file and "
                f"{fmt_bytes(max(largest_read, quant))} while read and quantized, + {fmt_bytes(cache)} of cache), hidden states of {st.steps} positions "
                f"{fmt_bytes(st.hidden_bytes)}; head phase {fmt_bytes(st.head_phase_bytes)} (lm_head chunk of "
                f"{st.head_chunk_rows} rows, logits block {fmt_bytes(block)})")
        return st

    def _cache_bytes(self, tokens: int, widest: int) -> int:
        """One layer's cache for one case of `tokens` tokens: the larger of an attention layer's KV
        (fp16) and a GatedDeltaNet layer's recurrent (float32) + conv states, from the config; a
        generous guess from the widest Linear when the config does not say."""
        cfg = self.checkpoint.config
        cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
        g = lambda k: getattr(cfg, k, None)  # noqa: E731
        kv_heads = g("num_key_value_heads") or g("num_attention_heads")
        head_dim = g("head_dim") or (g("hidden_size") // g("num_attention_heads") if g("num_attention_heads") else None)
        if not (kv_heads and head_dim):
            return 4 * tokens * widest + widest * widest // 2
        kv = 2 * 2 * tokens * kv_heads * head_dim
        v_heads, dk, dv, k_heads = (g("linear_num_value_heads"), g("linear_key_head_dim"),
                                    g("linear_value_head_dim"), g("linear_num_key_heads"))
        recurrent = 0
        if v_heads and dk and dv and k_heads:
            conv = (2 * k_heads * dk + v_heads * dv) * (g("linear_conv_kernel_dim") or 4) * 2
            recurrent = 4 * v_heads * dk * dv + conv
        return max(kv, recurrent)

    # -- the run ----------------------------------------------------------------------------------

    def run(self, sequences: Iterable[Sequence]) -> Iterator[CaseTrace]:
        seqs = list(sequences)
        ids = [self.check_sequence(s) for s in seqs]
        if not seqs:
            return
        ck = self.checkpoint
        plan = self.recipe.plan(ck.model)
        st = self.plan_memory(seqs, plan)
        from oracles.stream import fmt_bytes

        self.log(f"stream: {st.layers} layers, largest {st.largest_layer} {fmt_bytes(st.largest_layer_bytes)} fp16; "
                 f"planned need {fmt_bytes(st.need_bytes)}"
                 + (f" of --max-memory {fmt_bytes(self.max_memory)}" if self.max_memory else ""))
        with torch_threads(self.threads, ck.hidden_size):
            yield from self._run(seqs, ids, plan)

    def _run(self, seqs: list[Sequence], ids: list[np.ndarray], plan) -> Iterator[CaseTrace]:
        import torch

        from oracles.stream import peak_rss_bytes, release_freed_memory

        ck, st = self.checkpoint, self.stats
        device = torch.device(self.device)
        t0 = time.perf_counter()
        # Each case's embeddings (steps 0..N-2: the last token is never fed) and recorded layer arguments.
        hidden: list[list] = []
        steps: list[list] = []
        for x in ids:
            emb = ck.index.gather_rows(ck.embed_name, x[:-1], torch.float16)
            with torch.inference_mode():
                rows = [emb[t].reshape(1, 1, -1).to(device, copy=True) for t in range(emb.shape[0])]
            del emb
            hidden.append(rows)
            steps.append(self._record_steps(rows))
        st.record_seconds = time.perf_counter() - t0

        for i, layer in enumerate(ck.layers):
            t0 = time.perf_counter()
            layer.load_state_dict(self._layer_weights(i, plan), strict=True, assign=True)
            if device.type != "cpu":
                layer.to(device)
            t1 = time.perf_counter()
            st.load_seconds += t1 - t0
            with torch.inference_mode():
                for c in range(len(seqs)):
                    self._run_layer(i, layer, hidden[c], steps[c])
            layer.to("meta")  # drop this layer's weights before the next one is read
            release_freed_memory()
            st.compute_seconds += time.perf_counter() - t1
            st.per_layer_seconds.append(time.perf_counter() - t0)
            self.log(f"stream: layer {i + 1}/{len(ck.layers)} {time.perf_counter() - t0:.2f}s")
        del steps

        # The final norm on the scored positions only (row k is the output after x[P+k-1]).
        norm = ck.decoder.norm
        norm.load_state_dict(self._weights(ck.norm_tensors, norm), strict=True, assign=True)
        if device.type != "cpu":
            norm.to(device)
        normed = []
        with torch.inference_mode():
            for c, s in enumerate(seqs):
                first = len(ids[c]) - 1 - s.rows
                normed.append([norm(h) for h in hidden[c][first:]])
                hidden[c] = None
        norm.to("meta")
        del hidden
        release_freed_memory()

        blocks: list[list[int]] = [[]]
        held = 0
        for c, s in enumerate(seqs):
            size = 2 * s.rows * self.vocab_size
            if blocks[-1] and held + size > st.logits_block_bytes:
                blocks.append([])
                held = 0
            blocks[-1].append(c)
            held += size
        st.head_passes = len(blocks)
        for block in blocks:
            logits = self._head_pass(block, normed, plan, device)
            st.peak_rss_bytes = peak_rss_bytes()
            for c in block:
                normed[c] = None
                yield CaseTrace(seqs[c].case_id, ids[c], logits.pop(c))

    def _record_steps(self, rows: list) -> list[tuple[tuple, list[tuple[tuple, dict]]]]:
        """Per step: (which template each layer gets, the distinct (args, kwargs) templates), as the
        skeleton's own decoder forward hands them to its layers during an S=1 decode. The cache
        argument is left out: each layer runs with a cache of its own."""
        import torch
        from torch import nn
        from transformers import DynamicCache
        from transformers.cache_utils import CacheLayerMixin

        ck = self.checkpoint
        dec = ck.decoder
        n = len(ck.layers)
        cache = DynamicCache(config=ck.model.config)
        sink: dict[int, tuple[tuple, dict]] = {}

        class _Recorder(nn.Module):
            def __init__(self, i: int):
                super().__init__()
                self.i = i

            def forward(self, hidden_states, *args, **kwargs):
                sink[self.i] = (args, kwargs)
                # A length-tracking (attention) cache layer advances one position, one value wide:
                # the decoder's preamble reads the past length from it (positions, mask sizes).
                if self.i < len(cache.layers) and isinstance(cache.layers[self.i], CacheLayerMixin):
                    z = hidden_states.new_zeros((hidden_states.shape[0], 1, hidden_states.shape[1], 1))
                    cache.update(z, z, self.i)
                return hidden_states

        out: list[tuple[tuple, list[tuple[tuple, dict]]]] = []
        kinds_seen: dict[tuple, tuple] = {}
        layers, norm = dec.layers, dec.norm
        kw = {_cache_keyword(dec): cache, "use_cache": True}
        try:
            dec.layers = nn.ModuleList([_Recorder(i) for i in range(n)])
            dec.norm = nn.Identity()
            with torch.inference_mode():
                for t, h in enumerate(rows):
                    sink.clear()
                    dec(inputs_embeds=h, **kw)
                    if sorted(sink) != list(range(n)):
                        raise RuntimeError(f"{type(dec).__name__}.forward called {len(sink)} of {n} layers")
                    # the preamble must have seen t past tokens, as in the in-memory decode
                    pos = sink[0][1].get("position_ids")
                    if isinstance(pos, torch.Tensor) and int(pos.reshape(-1)[-1]) != t:
                        raise RuntimeError(f"step {t}: the decoder's preamble placed the token at position "
                                           f"{int(pos.reshape(-1)[-1])}: the recording cache does not track "
                                           f"the past length for this model")
                    templates: list[tuple[tuple, dict]] = []
                    keys: list[tuple] = []
                    kinds = []
                    for i in range(n):
                        args, kwargs = sink[i]
                        kwargs = {k: v for k, v in kwargs.items() if v is not cache}
                        key = (tuple(id(a) for a in args), tuple((k, id(v)) for k, v in kwargs.items()))
                        if key not in keys:
                            keys.append(key)
                            templates.append((args, kwargs))
                        kinds.append(keys.index(key))
                    kinds_t = kinds_seen.setdefault(tuple(kinds), tuple(kinds))
                    out.append((kinds_t, templates))
        finally:
            dec.layers, dec.norm = layers, norm
        return out

    def _run_layer(self, i: int, layer, rows: list, steps: list) -> None:
        """One case through decoder layer i, token by token, with a cache of the layer's own."""
        from transformers import DynamicCache

        ck = self.checkpoint
        cache = DynamicCache(config=ck.model.config)
        name = _cache_keyword(layer)
        for t in range(len(rows)):
            kinds, templates = steps[t]
            args, kwargs = templates[kinds[i]]
            out = layer(rows[t], *args, **{**kwargs, name: cache})
            rows[t] = out[0] if isinstance(out, tuple) else out

    def _weights(self, mapping: dict[str, str], module) -> dict[str, object]:
        """`module`'s parameters read from the checkpoint (`mapping`: parameter -> tensor name), each
        cast to the skeleton parameter's dtype, as from_pretrained casts them."""
        params = dict(module.named_parameters())
        by_dtype: dict[object, list[str]] = {}
        for p in mapping:
            by_dtype.setdefault(params[p].dtype, []).append(p)
        out = {}
        for dtype, names in by_dtype.items():
            loaded = self.checkpoint.index.load([mapping[p] for p in names], dtype)
            for p in names:
                out[p] = loaded.pop(mapping[p])
        return out

    def _layer_weights(self, i: int, plan) -> dict[str, object]:
        """Layer i's parameters in fp16, its planned Linear weights quantized (fast path)."""
        import torch

        ck = self.checkpoint
        prefix = ck._module_name[id(ck.layers[i])]
        weights = self._weights(ck.layer_tensors[i], ck.layers[i])
        for p in list(weights):
            module, _, leaf = p.rpartition(".")
            spec = plan.get(f"{prefix}.{module}") if leaf == "weight" else None
            if spec is not None:
                w = weights.pop(p)
                if w.dtype != torch.float16:
                    raise InputError(f"{prefix}.{p}: weight is {w.dtype}; the emulated candidates quantize "
                                     f"the fp16 model")
                weights[p] = fake_quantize_rows(spec, w)
                del w
        return weights

    def _head_pass(self, block: list[int], normed: list, plan, device) -> dict[int, np.ndarray]:
        """The logits of the cases in `block`: the head read and quantized chunk by chunk, each chunk
        applied to every scored row one row at a time (as the S=1 decode applies it)."""
        import torch
        from torch import nn

        from oracles.stream import release_freed_memory

        ck, st = self.checkpoint, self.stats
        spec = plan.get(ck._module_name[id(ck.head)])
        head_weight, head_bias = ck.head.weight, ck.head.bias
        w_dtype = head_weight.dtype
        logits = {c: np.empty((len(normed[c]), self.vocab_size), dtype=np.float16) for c in block}
        rows = st.head_chunk_rows
        try:
            for v0 in range(0, self.vocab_size, rows):
                v1 = min(v0 + rows, self.vocab_size)
                t0 = time.perf_counter()
                w = ck.index.load_rows(ck.head_name, v0, v1, w_dtype)
                if spec is not None:
                    w = fake_quantize_rows(spec, w)
                b = ck.index.load_rows(ck.head_bias_name, v0, v1, head_bias.dtype) if ck.head_bias_name else None
                ck.head.weight = nn.Parameter(w.to(device), requires_grad=False)
                if b is not None:
                    ck.head.bias = nn.Parameter(b.to(device), requires_grad=False)
                t1 = time.perf_counter()
                st.load_seconds += t1 - t0
                with torch.inference_mode():
                    for c in block:
                        out = logits[c]
                        for k, h in enumerate(normed[c]):
                            out[k, v0:v1] = ck.head(h)[0, -1].to(torch.float16).cpu().numpy()
                del w, b
                ck.head.weight, ck.head.bias = head_weight, head_bias
                release_freed_memory()
                st.compute_seconds += time.perf_counter() - t1
        finally:
            ck.head.weight, ck.head.bias = head_weight, head_bias
        return logits


__all__ = ["StreamedCandidate", "StreamedStats", "fake_quantize_rows", "EXECUTION"]
