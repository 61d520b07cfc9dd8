"""Weight quantization schemes, numerics identical to Apple's quantizer (`coreai-opt`).

One small class per scheme, in the manner of gguf-py's `quants.py`: `quantize` turns an fp16
weight `[out, in]` into integer codes plus one fp16 scale (and, for the asymmetric scheme, one
zero point) per block of the input axis; `dequantize` turns them back into the fp16 weight the
model computes with; `fake_quantize` is the two in a row.

Where the numbers come from (coreai-opt 0.4 eager mode, weight-only, observer = min/max):
  - the block's range is taken in the weight's own dtype (fp16), exactly;
  - the scale is computed by torchao's `choose_qparams_affine_with_min_max` **in fp16**
    (one fp16 rounding of max / divisor), then clamped to at least fp32 eps;
  - codes are `round_half_even(w / scale)` in **fp32**, clamped to the scheme's range;
  - the dequantized value is `(q - zp) * scale` in fp32 (exact: at most 8 x 11 significant bits),
    rounded once to fp16.
So a weight's dequantized value depends only on the weight: computing it once and storing it is
bit-identical to coreai-opt's fake quantization on every forward (tests/harness/test_emulated.py
checks logits; tests/harness/test_quants.py checks the tensors against coreai-opt itself and
against coremltools and gguf).

Every step below is one numpy operation whose float16 result is computed in float32 and rounded
once, the way torch computes a float16 operation on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

F16 = np.float16
F32 = np.float32
# torchao's clamp floor for the scale (coreai-opt passes eps = finfo(float32).eps); a block of
# zeros gets this scale and all-zero codes.
SCALE_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes (int8 storage, int4 values in [-8, 7]) with one fp16 scale per block."""

    codes: np.ndarray          # int8 [out, in]
    scales: np.ndarray         # float16 [out, in // block_size]
    zero_points: np.ndarray | None  # int8 [out, in // block_size], asymmetric only
    block_size: int
    scheme: str

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]


def _f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=F32).astype(F16)


class BlockQuant:
    """A per-block integer scheme along axis 1 of a `[out, in]` weight (coreai-opt's `per_block`,
    `axis: 1`; `per_channel` on axis 0 is the same with one block spanning the whole input)."""

    name: ClassVar[str]
    qscheme: ClassVar[str]

    def __init__(self, bits: int, block_size: int | None = 32):
        if bits not in (4, 8):
            raise ValueError(f"{self.qscheme}: {bits}-bit codes are not supported (int4 or int8)")
        self.bits = bits
        self.block_size = block_size  # None: one block over the whole input axis (per channel)
        self.qmin, self.qmax = self.code_range(bits)

    def __repr__(self) -> str:
        blk = "per_channel" if self.block_size is None else f"block {self.block_size}"
        return f"{type(self).__name__}(int{self.bits}, {blk})"

    @classmethod
    def code_range(cls, bits: int) -> tuple[int, int]:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    # -- shared plumbing ------------------------------------------------------------------------

    def _blocks(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w)
        if w.ndim != 2:
            raise ValueError(f"expected a 2-D [out, in] weight, got shape {w.shape}")
        if w.dtype != F16:
            raise ValueError(f"expected a float16 weight (the model is quantized from fp16), got {w.dtype}")
        out, inp = w.shape
        bs = inp if self.block_size is None else self.block_size
        if inp % bs:
            raise ValueError(f"block size {bs} does not divide the input width {inp}")
        return w.reshape(out, inp // bs, bs)

    def quantize(self, w: np.ndarray) -> QuantizedWeight:
        # fp16 values are exact in fp32, and numpy's fp32 loops are far faster than its fp16 ones
        blocks = self._blocks(w).astype(F32)
        scales, zps = self._qparams(blocks)
        x = blocks / scales[..., None].astype(F32)
        q = np.round(x)  # numpy rounds half to even, like torch.round
        if zps is not None:
            q = q + zps[..., None].astype(F32)
        q = np.clip(q, self.qmin, self.qmax).astype(np.int8).reshape(w.shape)
        return QuantizedWeight(q, scales, None if zps is None else zps.astype(np.int8),
                               blocks.shape[-1], self.name)

    def dequantize(self, qw: QuantizedWeight) -> np.ndarray:
        out, inp = qw.codes.shape
        q = qw.codes.reshape(out, inp // qw.block_size, qw.block_size).astype(F32)
        if qw.zero_points is not None:
            q = q - qw.zero_points[..., None].astype(F32)
        return (q * qw.scales[..., None].astype(F32)).astype(F16).reshape(out, inp)

    def fake_quantize(self, w: np.ndarray) -> np.ndarray:
        return self.dequantize(self.quantize(w))

    def _qparams(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """blocks: the fp16 weight's values as float32 [out, n_blocks, block] -> fp16 scales, zero points."""
        raise NotImplementedError


class SymmetricWithClipping(BlockQuant):
    """Matches coreai-opt `qscheme: symmetric_with_clipping`: codes in [-127, 127] (int4: [-7, 7]),
    scale = max|w| / 127 (int4: / 7), zero point 0. The published int8 recipes use this; it is also
    coremltools' `linear_symmetric` and the layout of gguf's Q8_0."""

    name = "symmetric_with_clipping"
    qscheme = "symmetric_with_clipping"

    @classmethod
    def code_range(cls, bits: int) -> tuple[int, int]:
        hi = (1 << (bits - 1)) - 1
        return -hi, hi

    def _qparams(self, blocks):
        amax = np.abs(blocks).max(axis=-1)
        scale = _f16(amax / F32((self.qmax - self.qmin) / 2))
        return np.maximum(scale, F16(SCALE_EPS)), None


class Symmetric(BlockQuant):
    """Matches coreai-opt `qscheme: symmetric` (torchao MappingType.SYMMETRIC): codes in
    [-128, 127] (int4: [-8, 7]), scale = max|w| / 127.5 (int4: / 7.5), zero point 0; the most
    negative weight of a block may take code -128 and the most positive is clipped to 127.
    int8hu's head uses it."""

    name = "symmetric"
    qscheme = "symmetric"

    def _qparams(self, blocks):
        amax = np.abs(blocks).max(axis=-1)
        scale = _f16(amax / F32((self.qmax - self.qmin) / 2))
        return np.maximum(scale, F16(SCALE_EPS)), None


class Asymmetric(BlockQuant):
    """Matches coreai-opt `qscheme: asymmetric` with the default `qformulation: zp` (torchao
    MappingType.ASYMMETRIC): the block's range [min(w, 0), max(w, 0)] maps onto [-8, 7] (int8:
    [-128, 127]); scale = (max - min) / 15 (int8: / 255) and zero point
    clamp(-8 - round(min / scale)), each step rounded to fp16 as torchao does on fp16 weights.
    mixed's MLP uses it at int4."""

    name = "asymmetric"
    qscheme = "asymmetric"

    def _qparams(self, blocks):
        lo = np.minimum(blocks.min(axis=-1), F32(0))
        hi = np.maximum(blocks.max(axis=-1), F32(0))
        span = _f16(hi - lo)
        scale = _f16(span.astype(F32) / F32(self.qmax - self.qmin))
        scale = np.maximum(scale, F16(SCALE_EPS))
        shift = np.round(_f16(lo / scale.astype(F32)))
        zp = _f16(F32(self.qmin) - shift.astype(F32))
        zp = np.clip(zp, self.qmin, self.qmax)
        return scale, zp.astype(np.int32)


SCHEMES: dict[str, type[BlockQuant]] = {
    cls.qscheme: cls for cls in (SymmetricWithClipping, Symmetric, Asymmetric)
}
DTYPE_BITS = {"int8": 8, "int4": 4}


# Weights are quantized in row chunks of about this many elements: blocks (and per-channel scales)
# lie along a row, so a row chunk quantizes exactly as the whole weight does, while numpy's float32
# transients (about 18 bytes an element) stay small: 23 GB for a 248320 x 5120 head at once.
ROW_CHUNK_ELEMENTS = 1 << 20


def quantize_rows(q: BlockQuant, w: np.ndarray, *, keep_codes: bool = False, out: np.ndarray | None = None,
                  chunk_elements: int = ROW_CHUNK_ELEMENTS) -> tuple[np.ndarray, QuantizedWeight | None]:
    """(dequantized fp16 weight, its codes and scales if `keep_codes`) of `w` [out, in], chunk by chunk.
    `out` may be `w` itself: each row chunk is quantized before its rows are overwritten."""
    deq = np.empty(w.shape, dtype=F16) if out is None else out
    parts: list[QuantizedWeight] = []
    step = max(1, chunk_elements // max(1, w.shape[1]))
    for r0 in range(0, w.shape[0], step):
        qw = q.quantize(w[r0:r0 + step])
        deq[r0:r0 + step] = q.dequantize(qw)
        if keep_codes:
            parts.append(qw)
    if not keep_codes:
        return deq, None
    if len(parts) == 1:
        return deq, parts[0]
    zps = [p.zero_points for p in parts]
    return deq, QuantizedWeight(np.concatenate([p.codes for p in parts]), np.concatenate([p.scales for p in parts]),
                                None if zps[0] is None else np.concatenate(zps), parts[0].block_size, parts[0].scheme)


def scheme(qscheme: str, dtype: str, block_size: int | None = 32) -> BlockQuant:
    """The scheme object for a recipe's (qscheme, dtype, block size)."""
    try:
        cls = SCHEMES[qscheme]
    except KeyError:
        raise ValueError(f"unknown qscheme {qscheme!r} (known: {', '.join(SCHEMES)})") from None
    try:
        bits = DTYPE_BITS[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_BITS)}, fp16)") from None
    return cls(bits, block_size)
