"""Legacy types q8_0, q4_0, q4_1, q5_0, q5_1 (both targets) and q6_0 (ik) against real ggml bytes.

Golden files (tests/fixtures/golden, see README): ``q_ggml`` from mainline, ``q_iknofma`` from ik
built with -ffp-contract=off (our bytes must equal these on every block), ``q_ik`` from the default
FMA ik build (reported: fraction of identical blocks; squared error bounded). ik has no q4_0 golden
(its build crashed in ggml_quantize_chunk for q4_0): ik's q4_0 runs mainline's reference code
without imatrix and ik-MQX with one, which q5_0_imat (same code, nmax 16) and the scalar-spec test
of test_quant_kquants.py hold.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from _golden import GOLDEN, golden_bytes, golden_case, load_golden, quantized  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import quant


def _ggml_values(z, key: str, name: str, shape) -> np.ndarray:
    """ggml's float values of the stored bytes: y_<build> when packed, else gguf's dequantizer."""
    ykey = "y_" + key[2:]
    if ykey in z.files:
        return z[ykey].reshape(shape)
    return gguf.quants.dequantize(z[key], gguf.GGMLQuantizationType[name.upper()]).reshape(shape)


def golden_stats(z, q: np.ndarray, key: str, target: str):
    """(fraction of identical blocks, our SSE / ggml SSE, blocks-equal mask, our y, ggml y)."""
    t = quant.get_type(str(z["type_name"]))
    x = z["x"]
    ref = z[key].reshape(q.shape)
    same = np.all(q.reshape(-1, t.type_size) == ref.reshape(-1, t.type_size), axis=1)
    y = quant.dequantize(q, t.name, x.shape, target)
    y_ref = _ggml_values(z, key, t.name, x.shape)
    sse = np.sum((y - x) ** 2, dtype=np.float64)
    ratio = float(sse / np.sum((y_ref - x) ** 2, dtype=np.float64))
    return float(same.mean()), ratio, same, y, y_ref


def assert_blocks_equal(q: np.ndarray, ref: np.ndarray, block_bytes: int, what: str) -> None:
    """Every block byte-identical; the message names the differing block ids (row, block)."""
    a, b = q.reshape(-1, block_bytes), ref.reshape(-1, block_bytes)
    bad = np.flatnonzero(np.any(a != b, axis=1))
    per_row = q.size // q.shape[0] // block_bytes
    assert bad.size == 0, (f"{what}: {bad.size} of {len(a)} blocks differ, (row, block) "
                           f"{[divmod(int(i), per_row) for i in bad[:8]]}")


def check_golden(stem: str, target: str, keys: tuple[str, ...], golden_bytes: dict):
    """Compare our bytes of a golden file's rows with each of ``keys``; a report."""
    z = load_golden(stem)
    assert keys[0] in z.files, f"{stem}.npz has no {keys[0]}"
    t = quant.get_type(str(z["type_name"]))
    q = quantized(golden_bytes, stem, target)
    assert q.shape == (z["x"].shape[0], int(z["bytes_per_row"]))
    report = {}
    for key in keys:
        if key not in z.files:
            continue
        frac, ratio, same, y, y_ref = golden_stats(z, q, key, target)
        report[key] = (frac, ratio)
        print(f"{stem:16s} {target:8s} vs {key:10s}: identical blocks {frac:.4f}, "
              f"SSE ratio {ratio:.6f}")
        if key == "q_ik":  # FMA build: reported, bounded loosely
            assert ratio <= 1.01
            continue
        assert_blocks_equal(q, z[key], t.type_size, f"{stem} {target} vs {key}")
        assert np.array_equal(y, y_ref), "equal bytes must dequantize to ggml's values"
    return report


LEGACY = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


MAINLINE_STEMS = [f"{n}{s}" for n in LEGACY for s in ("", "_imat")]
IK_STEMS = [f"{n}{s}" for n in ["q8_0", "q4_1", "q5_0", "q5_1", "q6_0"] for s in ("", "_imat")]


def golden_tests(mainline_stems: list[str], ik_stems: list[str]):
    """A family's two golden tests, (mainline vs ggml, ik vs ik built without FMA), for a test
    module to bind as ``test_mainline_golden, test_ik_golden``."""

    @pytest.mark.parametrize("stem", mainline_stems)
    @golden_case(lambda stem: (stem, "mainline"))
    def test_mainline_golden(stem, golden_bytes):
        check_golden(stem, "mainline", ("q_ggml",), golden_bytes)

    @pytest.mark.parametrize("stem", ik_stems)
    @golden_case(lambda stem: (stem, "ik"))
    def test_ik_golden(stem, golden_bytes):
        check_golden(stem, "ik", ("q_iknofma", "q_ik"), golden_bytes)

    return test_mainline_golden, test_ik_golden


def check_fake_quant_is_gguf_dequantize(name: str) -> None:
    """fake_quant of a golden file's rows (with its imatrix) equals gguf-py's dequantizer of our
    packed bytes."""
    z = load_golden(f"{name}_imat")
    x, w = z["x"], z["w"]
    q = quant.quantize(x, name, w)
    ref = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[name.upper()]).reshape(x.shape)
    assert np.array_equal(np.asarray(quant.fake_quant(x, name, w)), ref)


@pytest.mark.parametrize("name", LEGACY)
def test_imatrix_fake_quant_equals_gguf_dequantize_of_bytes(name):
    check_fake_quant_is_gguf_dequantize(name)


def test_q6_0_fake_quant_matches_ik_values():
    z = load_golden("q6_0")
    x = z["x"]
    q = z["q_iknofma"].reshape(x.shape[0], -1)
    y_ik = z["y_iknofma"].reshape(x.shape)
    assert np.array_equal(quant.dequantize(q, "q6_0", x.shape, "ik"), y_ik)
    assert np.array_equal(np.asarray(quant.fake_quant(x, "q6_0", target="ik")), y_ik)


# ---- properties: gguf-py's quantizers are byte-identical to mainline's reference path ----------

SHAPES = [(1, 32), (3, 64), (2, 256)]


@st.composite
def rows(draw, shapes=tuple(SHAPES)):
    r, n = draw(st.sampled_from(shapes))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scale = np.float32(10.0 ** draw(st.floats(-6, 4)))
    x = (rng.standard_normal((r, n)) * scale).astype(np.float32)
    kind = draw(st.sampled_from(["plain", "outlier", "zero", "const", "student"]))
    if kind == "outlier":
        x[0, rng.integers(n)] = scale * 1000
    elif kind == "zero":
        x[-1] = 0
    elif kind == "const":
        x[0] = scale
    elif kind == "student":
        x = (rng.standard_t(2, (r, n)) * scale).astype(np.float32)
    return x


@pytest.mark.parametrize("name", LEGACY)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=rows())
def test_reference_path_equals_gguf_py(name, x):
    qt = gguf.GGMLQuantizationType[name.upper()]
    with np.errstate(all="ignore"):
        ref = gguf.quants.quantize(x, qt).reshape(x.shape[0], -1)
    q = quant.quantize(x, name)
    assert np.array_equal(q, ref)
    y = np.asarray(quant.fake_quant(x, name))
    with np.errstate(all="ignore"):  # an outlier can overflow the f16 scale: inf*0 = NaN, as ggml
        want = gguf.quants.dequantize(ref, qt).reshape(x.shape)
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("name,target", [("q4_0", "mainline"), ("q6_0", "ik")])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=rows(shapes=((24, 1536),)), wseed=st.integers(0, 1000))  # the golden compile
def test_imatrix_path_sane(name, target, x, wseed):
    w = np.random.default_rng(wseed).random(x.shape[1]).astype(np.float32) + 0.01
    y = np.asarray(quant.fake_quant(x, name, w, target))
    fits_f16 = np.max(np.abs(x), axis=1) < 60000  # larger rows overflow the f16 scale, as in ggml
    assert np.all(np.isfinite(y[fits_f16]))
    zero = ~np.any(x, axis=1)
    assert np.all(y[zero] == 0)
    amax = np.max(np.abs(x), axis=1, keepdims=True)
    assert np.all((np.abs(y - x) <= amax * 0.6 + 1e-30)[fits_f16])


test_mainline_golden, test_ik_golden = golden_tests(MAINLINE_STEMS, IK_STEMS)
