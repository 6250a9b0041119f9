"""Public quantize / dequantize / fake_quant API and the float32 primitives the kernels rely on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quant
from quant import _primitives as P
from quant._api import _jit_dequant, _jit_quant
from quant._slices import SLICE_WEIGHTS, chunk_rows, slice_rows

RNG = np.random.default_rng(1234)


def _rows(r: int, n: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal((r, n)) * scale).astype(np.float32)


# ---- primitives against plain float32 numpy / hand-computed cases -------------------------------

def test_no_fma_contraction_on_this_backend():
    assert not P.fma_contracted(), "XLA fused a*b + c: import quant before any jax computation"


def test_nearest_rounds_half_to_even():
    v = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 7.4999995, -3.5000002])
    assert np.asarray(P.nearest(v)).tolist() == [0, 2, 2, 0, -2, -2, 0, 7, -4]


def test_roundf_away_and_trunc():
    v = np.float32([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -1.7, 126.5])
    assert np.asarray(P.roundf_away(v)).tolist() == [1, 2, 3, -1, -3, 0, -2, 127]
    assert np.asarray(P.trunc_int(np.float32([1.9, -1.9, 15.5, -0.2]))).tolist() == [1, -1, 15, 0]


def test_fp16_round_matches_numpy_half():
    v = _rows(1, 4096, 100.0)[0]
    v[:3] = [65520.0, 1e-8, -70000.0]  # overflow to inf, underflow, negative overflow
    with np.errstate(over="ignore"):
        want = v.astype(np.float16).astype(np.float32)
    assert np.array_equal(np.asarray(P.fp16_round(v)), want)


@pytest.mark.parametrize("n", [7, 32, 300])
def test_seq_sum_is_left_to_right(n):
    a = _rows(5, n, 1e3)
    a[:, 1] = 1e8  # a tree sum would round differently
    ref = np.zeros(5, np.float32)
    for i in range(n):
        ref = ref + a[:, i]
    assert np.array_equal(np.asarray(jax.jit(P.seq_sum)(a)), ref)


def test_argmax_abs_first_occurrence_signed():
    x = np.float32([[1, -3, 3, 2], [0, 0, 0, 0], [-2, 2, 1, 1]])
    assert np.asarray(P.argmax_abs(x)).tolist() == [-3, 0, -2]


def test_div_is_ieee_under_jit():
    a, b = _rows(64, 64), _rows(64, 1)[:, 0]
    got = jax.jit(lambda a, b: (P.div(a, b[:, None]), P.div(a, 127.0), P.div(a, 1536.0)))(a, b)
    want = (a / b[:, None], a / np.float32(127), a / np.float32(1536))
    for g, w in zip(got, want):
        assert np.array_equal(np.asarray(g), w)


def test_byte_packing_round_trips():
    x = _rows(3, 8, 10.0)
    assert np.array_equal(np.asarray(P.pack_f16(x)).reshape(3, -1), x.astype("<f2").view(np.uint8))
    assert np.array_equal(np.asarray(P.unpack_f32(P.pack_f32(x))), x)
    assert np.array_equal(np.asarray(P.pack_f32(x)).reshape(3, -1), x.astype("<f4").view(np.uint8))
    u = np.uint32([0, 1, 0xDEADBEEF])
    assert np.array_equal(np.asarray(P.unpack_u32(P.pack_u32(u))), u)
    assert np.asarray(P.pack_bits(np.array([1, 0, 1, 1, 0, 0, 0, 1]))).tolist() == [0x8D]
    lo, hi = P.unpack_nibbles(P.pack_nibbles(np.uint8([3, 15]), np.uint8([9, 0])))
    assert np.asarray(lo).tolist() == [3, 15] and np.asarray(hi).tolist() == [9, 0]


K4 = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def test_best_index_int8_against_brute_force():
    x = RNG.uniform(-140, 130, 20000).astype(np.float32)
    x[:4] = [-115.5, 1.0, 200.0, -4.5]  # exact midpoints go to the upper index
    k = np.float32(K4)
    d = np.abs(x[:, None] - k[None, :])
    brute = np.argmin(d, axis=1)
    ties = np.isclose(np.sort(d, axis=1)[:, 0], np.sort(d, axis=1)[:, 1], rtol=0, atol=0)
    brute[ties] += 1
    assert np.array_equal(np.asarray(P.best_index_int8(K4, x)), brute)


def test_ik_index_table_rule():
    tab = P.nl_index_table(K4, 241)
    # hand-checked entries: t=-127 -> 0; t=-116 and -115 straddle the midpoint -115.5 -> 16+0;
    # t=-114 -> 1; t=113 (ix 240) -> 15
    assert tab[0] == 0 and tab[11] == 16 and tab[12] == 16 and tab[13] == 1 and tab[240] == 15
    # ik's table and mainline's search agree for this table, even next to integers and midpoints
    # (quant/_iq4.py relies on it)
    near = [float(t) for t in range(-130, 118)] + [(a + b) / 2 for a, b in zip(K4, K4[1:])]
    steps = np.arange(-256, 257, dtype=np.int32)
    x = np.concatenate([(np.float32(p).view(np.int32) + steps).view(np.float32) for p in near if p])
    x = np.concatenate([x, RNG.uniform(-140, 130, 20000).astype(np.float32)])
    got = np.asarray(P.best_index_table(K4, tab, x))
    assert np.array_equal(got, np.asarray(P.best_index_int8(K4, x)))


# ---- API behaviour ------------------------------------------------------------------------------

def test_quantize_shape_dtype_and_dequantize_shape():
    x = _rows(6, 64).reshape(2, 3, 64)
    q = quant.quantize(x, "q8_0")
    assert q.dtype == np.uint8 and q.shape == (6, 2 * 34)
    y = quant.dequantize(q, "q8_0", (2, 3, 64))
    assert y.shape == (2, 3, 64) and y.dtype == np.float32
    fq = quant.fake_quant(x, "q8_0")
    assert isinstance(fq, jax.Array) and fq.shape == x.shape
    assert np.array_equal(np.asarray(fq), y)


def _compiled(name, with_w, ne0):
    q, d = _jit_quant(name, "mainline", with_w), _jit_dequant(name, "mainline", ne0)
    return q._cache_size() + d._cache_size()


def test_fake_quant_compiles_once_per_slice_shape():
    before = _compiled("q4_0", False, 416)  # a row length no other test uses
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((5, 416)).astype(np.float32)
        quant.fake_quant(x, "q4_0")
    assert _compiled("q4_0", False, 416) == before + 2  # one quantizer and one dequantizer program
    quant.quantize(_rows(5, 416), "q4_0")  # quantize shares the compiled quantizer
    quant.fake_quant(_rows(7, 416), "q4_0")  # 5 and 7 rows both run as a slice of 8
    assert _compiled("q4_0", False, 416) == before + 2
    quant.fake_quant(_rows(9, 416), "q4_0")  # the next power of two compiles once more
    assert _compiled("q4_0", False, 416) == before + 4


def test_large_tensors_share_one_slice_program():
    s = slice_rows(10**6, 96)
    before = _compiled("q8_0", False, 96)
    x = _rows(3 * s + 5, 96)
    q = quant.quantize(x, "q8_0")
    assert _compiled("q8_0", False, 96) == before + 1
    quant.quantize(x[: 2 * s + 1], "q8_0")  # another size above one slice: no new program
    assert _compiled("q8_0", False, 96) == before + 1
    # slicing and padding do not change a byte: the rows around a slice boundary, alone
    assert np.array_equal(q[s - 3:s + 2], quant.quantize(x[s - 3:s + 2], "q8_0"))
    assert np.array_equal(quant.dequantize(q, "q8_0", x.shape),
                          np.asarray(quant.fake_quant(x, "q8_0")))


def test_slice_rows_bounds_weights_and_keeps_chunks():
    for ne0 in (32, 640, 2048, 5376, 21504, 262144):
        s = slice_rows(10**7, ne0)
        assert s * ne0 <= max(SLICE_WEIGHTS, ne0 * chunk_rows(ne0))
        assert s % chunk_rows(ne0) == 0
    assert [slice_rows(n, 640) for n in (1, 2, 3, 24, 500, 806, 5000)] == [1, 2, 4, 32, 512, 806,
                                                                             806]


def test_fake_quant_with_imatrix_compiles_once():
    before = _compiled("q5_0", True, 352)
    for seed in range(2):
        rng = np.random.default_rng(seed)
        quant.fake_quant(rng.standard_normal((3, 352)).astype(np.float32), "q5_0",
                         imatrix=rng.random(352).astype(np.float32))
    assert _compiled("q5_0", True, 352) == before + 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected_with_row(bad):
    x = _rows(4, 32)
    x[2, 5] = bad
    with pytest.raises(quant.UserError, match="row 2"):
        quant.quantize(x, "q8_0")
    with pytest.raises(quant.UserError, match="row 2"):
        quant.fake_quant(x, "q4_0")


def test_errors():
    x = _rows(2, 32)
    with pytest.raises(quant.UnknownTypeError):
        quant.quantize(x, "q9_9")
    with pytest.raises(quant.TargetError, match="ik"):
        quant.quantize(x, "q6_0", target="mainline")
    with pytest.raises(quant.TargetError):
        quant.fake_quant(x, "tq2_0", target="ik")
    with pytest.raises(quant.KernelMissingError):
        quant.quantize(_rows(2, 256), "tq2_0")  # dequantizer only
    with pytest.raises(quant.FallbackError):
        quant.quantize(_rows(2, 48), "q4_0")
    with pytest.raises(quant.UserError, match="imatrix"):
        quant.quantize(x, "q4_0", imatrix=np.ones(16, np.float32))
    with pytest.raises(quant.UserError, match="imatrix"):
        quant.quantize(x, "q4_0", imatrix=np.full(32, np.nan, np.float32))


def test_rejects_traced_input():
    with pytest.raises(quant.UserError, match="traced"):
        jax.jit(lambda x: quant.fake_quant(x, "q8_0"))(jnp.zeros((1, 32)))


@pytest.mark.parametrize("name", ["f32", "f16", "bf16"])
def test_float_types_match_gguf(name):
    import gguf

    x = _rows(3, 64, 50.0)
    q = quant.quantize(x, name)
    qt = gguf.GGMLQuantizationType[name.upper()]
    ref = gguf.quants.quantize(x, qt).view(np.uint8).reshape(3, -1)
    assert np.array_equal(q, ref)
    want = gguf.quants.dequantize(ref, qt).reshape(x.shape)
    assert np.array_equal(quant.dequantize(q, name, x.shape), want)


def test_expert_imatrix_quantizes_each_slice_with_its_row():
    x = _rows(6, 64).reshape(2, 3, 64)
    w = np.random.default_rng(5).random((2, 64)).astype(np.float32)
    q = quant.quantize(x, "q4_1", w)
    for e in range(2):
        assert np.array_equal(q[3 * e:3 * e + 3], quant.quantize(x[e], "q4_1", w[e]))
    fq = np.asarray(quant.fake_quant(x, "q4_1", w))
    assert np.array_equal(fq, quant.dequantize(q, "q4_1", x.shape))
