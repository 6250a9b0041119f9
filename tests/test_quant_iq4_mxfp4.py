"""iq4_nl, iq4_xs, mxfp4 against real ggml bytes; JAX dequantizers of the gguf-only types."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from _golden import GOLDEN, golden_bytes, golden_case, load_golden  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_quant_legacy import check_fake_quant_is_gguf_dequantize, golden_tests, rows

import quant

IQ4 = ["iq4_nl", "iq4_xs"]
STEMS = [f"{n}{s}" for n in IQ4 + ["mxfp4"] for s in ("", "_imat")]  # both targets


test_mainline_golden, test_ik_golden = golden_tests(STEMS, STEMS)


@pytest.mark.parametrize("name", IQ4 + ["mxfp4"])
def test_fake_quant_equals_gguf_dequantize_of_bytes(name):
    check_fake_quant_is_gguf_dequantize(name)


GRID_TYPES = ["iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s"]


@pytest.mark.parametrize("name", GRID_TYPES)
def test_grid_dequantizer_equals_gguf_on_ggml_bytes(name):
    stem = name if (GOLDEN / f"{name}.npz").exists() else f"{name}_imat"
    z = load_golden(stem)
    q = z["q_ggml"]
    want = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[name.upper()]).reshape(z["x"].shape)
    got = quant.dequantize(q, name, z["x"].shape)
    assert np.array_equal(got, want)
    assert np.mean((got - z["x"]) ** 2) < np.mean(z["x"] ** 2)  # the bytes really encode x


@pytest.mark.parametrize("name,block", [("tq1_0", 256), ("tq2_0", 256), ("nvfp4", 64)])
def test_other_dequantizers_equal_gguf_on_random_bytes(name, block):
    t = quant.get_type(name)
    q = np.random.default_rng(7).integers(0, 256, (3, 4 * t.type_size), dtype=np.uint8)
    if name == "nvfp4":
        q.reshape(3, 4, 36)[..., :4] &= 0x7F  # unsigned E4M3 scales
    else:  # keep the f16 scale finite
        q.reshape(3, 4, t.type_size)[..., -1] &= 0x3B
    want = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[name.upper()]).reshape(3, -1)
    assert np.array_equal(quant.dequantize(q, name, (3, 4 * block)), want)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=rows())
def test_mxfp4_equals_gguf_py(x):
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType.MXFP4).reshape(x.shape[0], -1)
    assert np.array_equal(quant.quantize(x, "mxfp4"), ref)


@pytest.mark.parametrize("name,target", [("iq4_nl", "mainline"), ("iq4_xs", "ik")])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(x=rows(shapes=((24, 1536),)), with_w=st.booleans())  # the golden shape: no new compile
def test_iq4_sane(name, target, x, with_w):
    w = np.random.default_rng(0).random(x.shape[1]).astype(np.float32) + 0.01 if with_w else None
    y = np.asarray(quant.fake_quant(x, name, w, target))
    amax = np.max(np.abs(x), axis=1, keepdims=True)
    fits_f16 = amax[:, 0] < 60000
    assert np.all(np.isfinite(y[fits_f16]))
    assert np.all(y[~np.any(x, axis=1)] == 0)
    # the error bound needs fp16 block scales in the normal range (d ~ amax / 4064 >= 2^-14);
    # smaller rows get subnormal scales, in ggml as here
    normal = fits_f16 & (amax[:, 0] >= 4064 * 2.0 ** -14)
    assert np.all((np.abs(y - x) <= amax * 0.6)[normal])


def test_mxfp4_exponent_matches_libm_log2f_near_powers_of_two():
    import ctypes
    import ctypes.util

    from quant._mxfp4 import floor_log2f

    path = ctypes.util.find_library("m")
    if path is None:
        pytest.skip("no C math library (libm) to compare log2f with")
    libm = ctypes.CDLL(path)
    libm.log2f.restype, libm.log2f.argtypes = ctypes.c_float, [ctypes.c_float]
    vals = []
    for k in range(-120, 121, 1):
        v = np.float32(2.0**k)
        vals += [v, np.nextafter(v, np.float32(np.inf))]
        for _ in range(12):
            v = np.nextafter(v, np.float32(0))
            vals.append(v)
    vals = np.array(vals, np.float32)
    want = np.array([int(np.floor(libm.log2f(float(v)))) for v in vals])
    assert np.array_equal(np.asarray(floor_log2f(vals)), want)
