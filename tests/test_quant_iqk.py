"""ik-only IQK quantizers against real ik_llama.cpp bytes (tests/fixtures/golden, spec 2.11-2.22).

Goldens hold 24 rows x 1536 quantized by ik built without FMA contraction (``q_iknofma``) and
as users build it (``q_ik``), plus ggml's ``to_float`` of both.  Blocks = 256-weight super-blocks
(row meta such as the row scale compared separately).  iq2_ks has no golden:
``fixtures/iq2_ks_slow_ik.npz`` holds the bytes (and ``dequantize_row_iq2_ks`` output) of ik's
slow iq2_ks quantizer (iqk_quantize.cpp of the golden's ik commit compiled with
-ffp-contract=off, called with user_data = NULL) for the x / w of ``golden/iq2_kl{,_imat}.npz``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _golden import GOLDEN, golden_bytes, golden_case, load_golden, quantized  # noqa: F401
from test_quant_legacy import assert_blocks_equal

import quant
from quant import _iqk_common as C
from quant import _registry as R
from quant._catalog import get_type
from quant._iqk_k import dequantize_iq6_k_poly
from quant._primitives import fma_contracted

TYPES = [
    "iq2_k",
    "iq3_k",
    "iq4_k",
    "iq5_k",
    "iq6_k",
    "iq3_ks",
    "iq4_ks",
    "iq5_ks",
    "iq4_kss",
    "iq2_kl",
]
FILES = [t + s for t in TYPES for s in ("", "_imat")]
# identical-block fraction of the golden ik (FMA) build vs the no-FMA build, per file
IK_VS_NOFMA = {
    "iq2_k": 1.0,
    "iq2_k_imat": 1.0,
    "iq3_k": 1.0,
    "iq3_k_imat": 1.0,
    "iq3_ks": 1.0,
    "iq3_ks_imat": 1.0,
    "iq4_k": 0.9931,
    "iq4_k_imat": 1.0,
    "iq4_ks": 0.9931,
    "iq4_ks_imat": 0.9931,
    "iq4_kss": 1.0,
    "iq4_kss_imat": 1.0,
    "iq5_k": 0.9931,
    "iq5_k_imat": 0.9861,
    "iq5_ks": 1.0,
    "iq5_ks_imat": 0.9583,
    "iq6_k": 0.9722,
    "iq6_k_imat": 0.9931,
    "iq2_kl": 0.9583,
    "iq2_kl_imat": 1.0,
}


def _load(name):
    z = load_golden(name)
    w = z["w"] if z["w"].size else None
    return z, z["x"], w


def _type(name):
    return name.replace("_imat", "")


def _split(q, t, ne0):
    """Rows -> (row meta [R, meta], super-blocks [R, S, type_size])."""
    ty = get_type(t)
    q = q.reshape(-1, ty.row_nbytes(ne0))
    return q[:, : ty.row_meta], q[:, ty.row_meta :].reshape(q.shape[0], -1, ty.type_size)


def _same_blocks(a, b, t, ne0):
    return float(np.mean(np.all(_split(a, t, ne0)[1] == _split(b, t, ne0)[1], axis=-1)))


def _sse(t, q, x):
    y = np.asarray(R.dequantizer(t, "ik")(q.reshape(x.shape[0], -1), x.shape[1]))
    return float(np.sum((y.astype(np.float64) - x) ** 2))


def test_no_fma_on_cpu():
    assert not fma_contracted()


def _check_file(name, golden_bytes):
    t = _type(name)
    z, x, w = _load(name)
    q = quantized(golden_bytes, name, "ik")
    assert q.shape == (24, get_type(t).row_nbytes(1536))
    nofma = z["q_iknofma"].reshape(q.shape)
    meta, blocks = _split(q, t, 1536)
    ref_meta, ref_blocks = _split(nofma, t, 1536)
    assert np.array_equal(meta, ref_meta), f"{name}: row meta (row scales) differ"
    assert_blocks_equal(blocks, ref_blocks, get_type(t).type_size, f"{name} vs ik no-FMA")
    ik = z["q_ik"].reshape(q.shape)
    assert _same_blocks(q, ik, t, 1536) >= IK_VS_NOFMA[name] - 0.02
    assert _sse(t, q, x) <= 1.005 * _sse(t, ik, x)


@pytest.mark.parametrize("name", FILES)
@golden_case(lambda name: (name, "ik"))
def test_quantize_matches_ik_nofma(name, golden_bytes):
    _check_file(name, golden_bytes)


@pytest.mark.parametrize("name", FILES)
def test_dequantize_matches_ggml(name):
    t = _type(name)
    z, _, _ = _load(name)
    q = z["q_iknofma"].reshape(24, -1)
    y = np.asarray(R.dequantizer(t, "ik")(q, 1536))
    if t != "iq6_k":
        np.testing.assert_array_equal(y, z["y_iknofma"])
        return
    np.testing.assert_array_equal(np.asarray(dequantize_iq6_k_poly(q, 1536)), z["y_iknofma"])
    # table vs ggml's cubic: at most 0.49 table units apart, and not identical (gotcha 9)
    assert np.all(np.abs(y - z["y_iknofma"]) <= 0.5 * np.abs(_iq6_block_scales(q)))
    assert not np.array_equal(y, z["y_iknofma"])


def _iq6_block_scales(q):
    """d * l_b per weight [24, 1536], read from the raw bytes."""
    b = q.reshape(24, 6, 212)
    d = b[..., 0:2].copy().view(np.float16).astype(np.float32)[..., 0]
    ls = b[..., 4:20].view(np.int8).astype(np.float32)
    return np.repeat((d[..., None] * ls).reshape(24, -1), 16, axis=1)


@pytest.mark.parametrize("imat", [False, True])
def test_iq2_ks_matches_ik_slow_quantizer(imat):
    _, x, w = _load("iq2_kl_imat" if imat else "iq2_kl")
    path = GOLDEN.parent / "iq2_ks_slow_ik.npz"
    if not path.is_file():
        pytest.skip(f"fixture tests/fixtures/{path.name} missing (see the module docstring)")
    ref = np.load(path)
    key = "imat" if imat else "none"
    q = np.asarray(R.quantizer("iq2_ks", "ik")(x, w))
    assert q.shape == ref["q_" + key].shape == (24, get_type("iq2_ks").row_nbytes(1536))
    np.testing.assert_array_equal(q, ref["q_" + key])
    y = np.asarray(R.dequantizer("iq2_ks", "ik")(ref["q_" + key], 1536))
    np.testing.assert_array_equal(y, ref["y_" + key])


def test_fake_quant_is_roundtrip(golden_bytes):
    _, x, w = _load("iq4_ks_imat")
    got = np.asarray(quant.fake_quant(x, "iq4_ks", imatrix=w, target="ik"))
    q = quantized(golden_bytes, "iq4_ks_imat", "ik")
    np.testing.assert_array_equal(got, np.asarray(R.dequantizer("iq4_ks", "ik")(q, 1536)))


def test_sanitizer_replaces_dead_imatrix_blocks():
    """A 32-block whose imatrix is all zero quantizes as if its weights were 1e-9 (spec 2.1.6)."""
    _, x, w = _load("iq4_ks_imat")  # all 24 rows: the golden case's compile
    w0 = w.copy()
    w0[64:96] = 0.0
    w1 = w0.copy()
    w1[64:96] = np.float32(1e-9)
    q0, q1 = (quant.quantize(x, "iq4_ks", wi, "ik") for wi in (w0, w1))
    np.testing.assert_array_equal(q0, q1)
    assert not np.array_equal(q0, quant.quantize(x, "iq4_ks", w, "ik"))  # the block matters


@pytest.mark.parametrize("name", ["iq3nl", "iq4k", "iq5nl", "iq6nl"])
def test_index_lookup_is_nearest(name):
    """Away from integer midpoints the index tables give the nearest value (ties: upper)."""
    tab = C.TABLES[name]
    n = tab.size // 2
    rng = np.random.default_rng(1)
    v = np.concatenate(
        [rng.uniform(-140, 140, 4000), (tab[: n - 1] + tab[1:n]) / 2 + 0.25]
    ).astype(np.float32)
    got = np.asarray(C.best_index(name, v, np.zeros(v.shape, np.int32)))
    base = tab[:n].astype(np.float64)
    want = np.array(
        [int(np.argmin(np.abs(base - t) - 1e-9 * np.arange(n))) for t in v.astype(np.float64)]
    )
    assert np.array_equal(got, want)
