"""harness.quants against Apple's quantizer itself, and against two independent implementations.

- coreai-opt (the reference): the same weight through `Quantizer` in eager mode must give the same
  fp16 weight, scales and zero points, bit for bit, for every scheme and width a recipe can name.
- coremltools `linear_quantize_weights` (linear_symmetric, per_block 32) through a real ML Program:
  the same scales; codes that differ only where coremltools' fp16 division rounds differently.
- gguf Q8_0: the same fp16 scale; dequantized values equal wherever the codes agree, and codes
  one apart only where fp32-vs-fp16 scale rounding moves a value across a rounding boundary.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.quants import Asymmetric, QuantizedWeight, Symmetric, SymmetricWithClipping, scheme

COMBOS = [("symmetric_with_clipping", "int8"), ("symmetric_with_clipping", "int4"), ("symmetric", "int8"),
          ("symmetric", "int4"), ("asymmetric", "int4"), ("asymmetric", "int8")]


def awkward_weight(out: int = 48, inp: int = 256, seed: int = 0) -> np.ndarray:
    """fp16 weights whose blocks span magnitudes, signs and edge cases a quantizer can get wrong."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, inp)) * np.exp(rng.uniform(-9, 2, size=(out, inp // 32, 1))).repeat(32, -1).reshape(out, inp)
    w = w.astype(np.float16)
    w[0, :32] = 0                                   # an all-zero block: scale floor, codes 0
    w[1, :32] = np.abs(w[1, :32])                   # all positive: asymmetric range starts at 0
    w[2, :32] = -np.abs(w[2, :32])                  # all negative: symmetric's code -128
    w[3, 5] = np.float16(60000)                     # an outlier near fp16's max
    w[4, 32:64] = np.float16(6e-8)                  # subnormal fp16 values
    w[5, :32] = np.linspace(-1, 1, 32).astype(np.float16)
    w[6, :32] = np.float16(1.0)                     # a constant block
    return w


def coreai_opt_reference(w: np.ndarray, qscheme: str, dtype: str):
    """coreai-opt's eager fake quantization of one fp16 Linear weight -> (weight, scale, zero_point)."""
    import torch
    from coreai_opt.quantization import ModuleQuantizerConfig, QuantizationSpec, Quantizer, QuantizerConfig

    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False).to(torch.float16)
    lin.weight.data = torch.from_numpy(w.copy())
    model = torch.nn.Sequential(lin)
    spec = QuantizationSpec(dtype=getattr(torch, dtype), qscheme=qscheme,
                            granularity={"type": "per_block", "axis": 1, "block_size": 32})
    cfg = QuantizerConfig(global_config=None, execution_mode="eager", module_name_configs={
        "0": ModuleQuantizerConfig(op_input_spec=None, op_output_spec=None, op_state_spec={"weight": spec})})
    prepared = Quantizer(model, cfg).prepare((torch.zeros(1, w.shape[1], dtype=torch.float16),))
    fq = prepared[0].parametrizations.weight[0]
    with torch.no_grad():
        weight = prepared[0].weight.numpy()
    calc = fq.qparams_calculator
    return weight, calc.scale.numpy(), calc.zero_point.numpy()


@pytest.mark.parametrize("qscheme,dtype", COMBOS)
def test_bit_identical_to_coreai_opt(qscheme, dtype):
    w = awkward_weight()
    ref_w, ref_scale, ref_zp = coreai_opt_reference(w, qscheme, dtype)
    q = scheme(qscheme, dtype)
    qw = q.quantize(w)
    ours = q.dequantize(qw)
    assert ours.dtype == np.float16 and ref_w.dtype == np.float16
    assert np.array_equal(ours.view(np.uint16), ref_w.view(np.uint16)), \
        f"{int((ours.view(np.uint16) != ref_w.view(np.uint16)).sum())} weights differ from coreai-opt"
    assert np.array_equal(qw.scales.astype(np.float32), ref_scale.reshape(qw.scales.shape))
    zp = np.zeros_like(qw.scales, dtype=np.int32) if qw.zero_points is None else qw.zero_points.astype(np.int32)
    assert np.array_equal(zp, ref_zp.reshape(zp.shape))


def test_code_ranges_differ_as_documented():
    w = awkward_weight()
    clip = SymmetricWithClipping(8).quantize(w).codes
    sym = Symmetric(8).quantize(w).codes
    assert clip.min() == -127 and clip.max() == 127      # [-127, 127]: a negative maximum keeps its magnitude
    assert sym.min() == -128 and sym.max() == 127        # [-128, 127]: max|w| / 127.5, -max lands on -128
    rows, cols = np.nonzero(sym == -128)                 # only a block's most negative weight gets it
    blocks = w.reshape(w.shape[0], -1, 32)
    assert all(w[r, c] == blocks[r, c // 32].min() for r, c in zip(rows, cols))
    c4 = SymmetricWithClipping(4).quantize(w).codes
    assert c4.min() == -7 and c4.max() == 7
    a4 = Asymmetric(4).quantize(w)
    assert a4.codes.min() >= -8 and a4.codes.max() <= 7 and a4.zero_points is not None


def test_zero_block_and_zero_preserved():
    w = awkward_weight()
    for q in (SymmetricWithClipping(8), Symmetric(8), SymmetricWithClipping(4), Asymmetric(4)):
        out = q.fake_quantize(w)
        assert not out[0, :32].any()                      # a block of zeros stays zeros
        assert np.isfinite(out).all()
        zeros = w == 0
        assert not out[zeros].any()                       # zero is exactly representable in every scheme


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float16, (4, 64), elements=st.floats(-1000, 1000, width=16)),
       st.sampled_from(COMBOS))
def test_error_within_half_a_step(w, combo):
    qscheme, dtype = combo
    q = scheme(qscheme, dtype)
    qw = q.quantize(w)
    out = q.dequantize(qw).astype(np.float64)
    step = np.repeat(qw.scales.astype(np.float64), 32, axis=1)
    err = np.abs(out - w.astype(np.float64))
    # half a step of rounding, plus a clipped extreme and fp16 storage of the result: symmetric clips
    # its maximum by design; asymmetric can clip one end because its scale and zero point are rounded
    # to fp16 (e.g. a block spanning [-209, 605]: scale 3.191, zero point -62, 605 -> code 128 -> 127)
    # and the scale is itself an fp16 value: up to half its ulp times the largest code magnitude (128),
    # which matters for tiny (subnormal) scales, e.g. a block of 6.1e-05 everywhere
    scale_ulp = np.repeat(np.spacing(qw.scales.astype(np.float16)).astype(np.float64), 32, axis=1)
    bound = (step * (1.0 if qscheme in ("symmetric", "asymmetric") else 0.5) + np.abs(out) * 2.0 ** -11
             + 128 * scale_ulp + 1e-7)
    assert (err <= bound).all()


def test_rejects_what_it_cannot_quantize():
    q = SymmetricWithClipping(8)
    with pytest.raises(ValueError, match="does not divide the input width 40"):
        q.quantize(np.zeros((2, 40), np.float16))
    with pytest.raises(ValueError, match="float16"):
        q.quantize(np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="unknown qscheme 'nf4'"):
        scheme("nf4", "int4")
    with pytest.raises(ValueError, match="unknown dtype 'int6'"):
        scheme("symmetric", "int6")


def test_per_channel_is_one_block_over_the_input():
    w = awkward_weight(out=8, inp=96)
    pc = SymmetricWithClipping(8, block_size=None).quantize(w)
    assert pc.scales.shape == (8, 1) and pc.block_size == 96
    expected = (np.abs(w).max(axis=1).astype(np.float32) / np.float32(127)).astype(np.float16)
    assert np.array_equal(pc.scales[:, 0], np.maximum(expected, np.float16(np.finfo(np.float32).eps)))


# -- coremltools: the real linear_quantize_weights on a real ML Program ---------------------------------

def coremltools_codes(w: np.ndarray, dtype: str):
    """coremltools' `linear_quantize_weights(mode="linear_symmetric", dtype, per_block 32)` applied to an
    ML Program holding `w` as an fp16 linear weight; returns the stored (codes, scales)."""
    ct = pytest.importorskip("coremltools")
    import coremltools.optimize as cto
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_to_pymil
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, w.shape[1]), dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.linear(x=x, weight=w, name="y")

    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                         compute_precision=ct.precision.FLOAT16, skip_model_load=True)
    cfg = cto.coreml.OptimizationConfig(global_config=cto.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype=dtype, granularity="per_block", block_size=32, weight_threshold=0))
    quantized = cto.coreml.linear_quantize_weights(mlmodel, cfg)
    loaded = milproto_to_pymil(quantized._spec, specification_version=quantized._spec.specificationVersion,
                               file_weights_dir=quantized.weights_dir)
    ops = [op for op in loaded.functions["main"].operations if op.op_type == "constexpr_blockwise_shift_scale"]
    assert len(ops) == 1, "coremltools did not quantize the weight"
    assert ops[0].offset is None  # symmetric: no zero point stored
    return np.asarray(ops[0].data.val), np.asarray(ops[0].scale.val)


@pytest.mark.parametrize("dtype,bits", [("int8", 8), ("int4", 4)])
def test_coremltools_linear_symmetric_agrees(dtype, bits):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 256)) * 0.05).astype(np.float16)
    ct_codes, ct_scales = coremltools_codes(w, dtype)
    q = SymmetricWithClipping(bits)
    ours = q.quantize(w)
    # Same range ([-127, 127] / [-7, 7], linear_symmetric's restricted range), same fp16 scale max|w|/qmax.
    assert ct_scales.dtype == np.float16
    assert np.array_equal(ct_scales, ours.scales)
    codes = ct_codes.astype(np.int8)
    assert codes.min() >= -q.qmax and codes.max() <= q.qmax
    # Where they differ, coremltools divides in the weight's dtype (w / scale rounded to fp16 first),
    # coreai-opt in fp32: its codes are exactly round_half_even(fp16(w / scale)).
    blocks = w.reshape(64, -1, 32)
    fp16_quotient = (blocks.astype(np.float32) / ours.scales[..., None].astype(np.float32)).astype(np.float16)
    assert np.array_equal(codes, np.clip(np.round(fp16_quotient), -q.qmax, q.qmax).astype(np.int8).reshape(w.shape))
    differ = codes != ours.codes
    assert np.abs(codes.astype(int) - ours.codes)[differ].max(initial=0) <= 1
    exact = (blocks.astype(np.float64) / ours.scales[..., None].astype(np.float64)).reshape(w.shape)
    near_half = np.abs(np.abs(exact - np.floor(exact)) - 0.5) <= np.abs(exact) * 2.0 ** -11
    assert not (differ & ~near_half).any(), "a code differs that fp16 rounding of the quotient does not explain"
    assert differ.mean() < 0.05
    if bits == 8:
        assert differ.any()  # with int8 and these weights, the fp16 quotient does bite somewhere


def test_coremltools_is_not_the_symmetric_scheme():
    """int8hu's head scheme (`symmetric`, [-128, 127], max|w|/127.5) is not coremltools' linear_symmetric."""
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((32, 128)) * 0.05).astype(np.float16)
    ct_codes, ct_scales = coremltools_codes(w, "int8")
    sym = Symmetric(8).quantize(w)
    assert ct_codes.min() >= -127 and sym.codes.min() == -128
    assert (sym.scales < ct_scales).all()  # /127.5 against /127


# -- gguf Q8_0 ------------------------------------------------------------------------------------------

def test_gguf_q8_0_agrees_within_scale_rounding():
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType, dequantize, quantize

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, 512)) * np.exp(rng.uniform(-4, 1, size=(64, 1)))).astype(np.float16)
    packed = quantize(w.astype(np.float32), GGMLQuantizationType.Q8_0)      # 34 bytes per 32 weights
    g_deq = dequantize(packed, GGMLQuantizationType.Q8_0).reshape(w.shape)  # float32
    blocks = packed.reshape(-1, 34)
    g_scales = blocks[:, :2].copy().view(np.float16).reshape(64, 16)
    g_codes = blocks[:, 2:].copy().view(np.int8).reshape(w.shape)

    ours = SymmetricWithClipping(8).quantize(w)
    ours_deq = SymmetricWithClipping(8).dequantize(ours)
    # Q8_0 is the same layout: 32 int8 codes in [-127, 127] per fp16 scale max|w|/127 (the same fp16 value).
    assert np.array_equal(g_scales, ours.scales)
    # But Q8_0 quantizes with the fp32 scale (and x * (1/d), half away from zero), stores it as fp16;
    # coreai-opt quantizes with the fp16 scale. Codes agree except one step apart near a boundary.
    differ = g_codes != ours.codes
    assert np.abs(g_codes.astype(int) - ours.codes)[differ].max(initial=0) <= 1
    assert differ.mean() < 0.05
    x = (w.reshape(64, 16, 32).astype(np.float64) / ours.scales[..., None].astype(np.float64)).reshape(w.shape)
    near_half = np.abs(np.abs(x - np.floor(x)) - 0.5) <= np.abs(x) * 2.0 ** -10 + 1e-6
    assert not (differ & ~near_half).any()
    # Dequantized: identical (after fp16 storage) where the codes agree, within one scale step elsewhere.
    assert np.array_equal(g_deq.astype(np.float16)[~differ], ours_deq[~differ])
    step = np.repeat(ours.scales.astype(np.float32), 32, axis=1)
    fp16_storage = np.abs(ours_deq.astype(np.float32)) * 2.0 ** -11  # ours is stored in fp16, Q8_0's in fp32
    assert (np.abs(g_deq - ours_deq.astype(np.float32)) <= step + fp16_storage).all()


def test_quantized_weight_round_trip_shapes():
    w = awkward_weight(out=16, inp=128)
    qw = Asymmetric(4).quantize(w)
    assert isinstance(qw, QuantizedWeight)
    assert qw.codes.shape == (16, 128) and qw.codes.dtype == np.int8
    assert qw.scales.shape == (16, 4) and qw.scales.dtype == np.float16
    assert qw.zero_points.shape == (16, 4)
    assert Asymmetric(4).dequantize(qw).shape == (16, 128)
