"""K-quants q2_K..q6_K against real ggml bytes (tests/fixtures/golden) and the scale searches
against a plain scalar transcription of the spec (section 2.1).

Golden files: ``x`` [24, 1536], ``w`` (imatrix or empty), ``q_ggml`` (mainline, no FMA),
``q_iknofma`` (ik built with -ffp-contract=off), ``q_ik`` (ik's default FMA build; compared by
squared error only).
"""

from __future__ import annotations

import time

import gguf
import jax
import numpy as np
import pytest
from _golden import golden_bytes, golden_case, load_golden, quantized  # noqa: F401
from test_quant_legacy import assert_blocks_equal

import quant
from quant import _scale_search as ss
from quant._registry import dequantizer

TYPES = ["q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]
BLOCK_BYTES = {"q2_K": 84, "q3_K": 110, "q4_K": 144, "q5_K": 176, "q6_K": 210}


def _golden(name: str):
    z = load_golden(name)
    return {k: z[k] for k in z.files}


def _sse(q: np.ndarray, t: str, x: np.ndarray) -> float:
    rows = np.asarray(q, np.uint8).reshape(x.shape[0], -1)
    y = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType[t.upper()])
    return float(np.sum((y.astype(np.float64) - x) ** 2))


CASES = [(t, suffix, target) for t in TYPES for suffix in ("", "_imat")
         for target in ("mainline", "ik")]


@pytest.mark.parametrize("t,suffix,target", CASES, ids=[f"{t}{s}-{g}" for t, s, g in CASES])
@golden_case(lambda t, suffix, target: (t + suffix, target))
def test_bytes_match_ggml(t, suffix, target, golden_bytes):
    g = _golden(t + suffix)
    x = g["x"]
    q = quantized(golden_bytes, t + suffix, target)
    ref = g["q_ggml"] if target == "mainline" else g["q_iknofma"]
    assert_blocks_equal(q, ref, BLOCK_BYTES[t], f"{t}{suffix} {target}")
    if target == "ik":  # the FMA build differs in a few codes; stay within 0.5% of its error
        assert _sse(q, t, x) <= 1.005 * _sse(g["q_ik"], t, x)


@pytest.mark.parametrize("t", TYPES)
def test_dequantize_equals_gguf(t):
    g = _golden(t + "_imat")
    for key in ("q_ggml", "q_ik"):
        rows = g[key].reshape(24, -1)
        ours = np.asarray(dequantizer(t)(rows, 1536))
        ref = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType[t.upper()])
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_fake_quant_is_dequantized_ggml_bytes():
    g = _golden("q4_K")
    y = np.asarray(quant.fake_quant(g["x"], "q4_K"))
    ref = gguf.quants.dequantize(g["q_ggml"].reshape(24, -1), gguf.GGMLQuantizationType.Q4_K)
    np.testing.assert_array_equal(y, ref)


def test_zero_rows_give_zero_blocks():
    x = np.zeros((24, 1536), np.float32)  # the golden shape: the golden tests' compile
    for t in ("q3_K", "q6_K"):  # symmetric types store d = 0 and (q6_K) an all-zero block
        y = np.asarray(quant.fake_quant(x, t))
        assert not np.any(y)
    assert not np.any(quant.quantize(x, "q6_K"))


# ------------------------------------------------------ scale searches vs a scalar transcription


F = np.float32


def _near(v) -> int:
    return int(np.rint(F(v)))  # ties to even, like ggml's nearest_int


def _seqf(vals) -> F:
    acc = F(0)
    for v in vals:
        acc = F(acc + F(v))
    return acc


def ref_mqx(x, w, nmax, ik=False):
    """Spec 2.1.1 / 2.1.5 (ik-MQX) with explicit weights, scalar float32."""
    n = len(x)
    mx = F(0)
    for v in x:
        if abs(v) > abs(mx):
            mx = v
    if abs(mx) < F(1e-15):
        return F(0), [0] * n

    def stats(isc):
        ls = [max(-nmax, min(nmax - 1, _near(F(isc * x[i])))) for i in range(n)]
        slx = _seqf(F(F(w[i] * x[i]) * F(ls[i])) for i in range(n))
        return ls, slx, _seqf(F(F(w[i] * F(ls[i])) * F(ls[i])) for i in range(n))

    ls, slx, sl2 = stats(F(F(-nmax) / mx))
    scale = F(slx / sl2) if sl2 != 0 else F(0)
    best = F(scale * slx)
    cands = []
    for i in range(-9, 10):
        step = F(F(0.1) * F(i))
        if i or ik:
            cands.append(-(F(nmax) + step))
        if ik:
            cands.append(F(nmax - 1) + step)
    for num in cands:
        l2, a, b = stats(F(num / mx))
        if b > 0 and F(a * a) > F(best * b):
            ls, slx, sl2, scale = l2, a, b, F(a / b)
            best = F(scale * a)
    for _ in range(n * (2 * nmax - 1) if ik else 0):
        g = [F(F(scale * w[j]) * F(x[j] - F(scale * F(ls[j])))) for j in range(n)]
        up = [g[j] > 0 and ls[j] < nmax - 1 for j in range(n)]
        down = [g[j] < 0 and ls[j] > -nmax for j in range(n)]
        cand = [abs(g[j]) if up[j] or down[j] else F(0) for j in range(n)]
        j = int(np.argmax(cand))
        if cand[j] <= 0:
            break
        d = 1 if g[j] > 0 else -1
        a = F(slx + d * F(w[j] * x[j]))
        b = F(sl2 + d * F(w[j] * F(2 * ls[j] + d)))
        if not (b > 0 and F(a * a) > F(best * b)):
            break
        slx, sl2, ls[j] = a, b, ls[j] + d
        scale = F(a / b)
        best = F(scale * a)
    return scale, [v + nmax for v in ls]


def ref_mqkx(x, w, nmax, rmin, rdelta, nstep):
    """Spec 2.1.3 (mainline make_qkx2_quants, squared error), scalar float32."""
    n = len(x)
    mn, mx = F(min(min(x), 0)), F(max(x))
    sw, sx = _seqf(w), _seqf(F(w[i] * x[i]) for i in range(n))
    if mx == mn:
        return F(0), F(-mn), [0] * n

    def err(s, m, ls):
        return _seqf(F(w[i] * F(F(F(F(s * F(ls[i])) + m) - x[i]) ** 2)) for i in range(n))

    isc = F(F(nmax) / F(mx - mn))
    scale = F(F(1) / isc)
    ls = [max(0, min(nmax, _near(F(isc * F(x[i] - mn))))) for i in range(n)]
    best = err(scale, mn, ls)
    for k in range(nstep + 1):
        isc = F(F(F(F(rmin) + F(F(rdelta) * F(k))) + F(nmax)) / F(mx - mn))
        la = [max(0, min(nmax, _near(F(isc * F(x[i] - mn))))) for i in range(n)]
        sl = _seqf(F(w[i] * F(la[i])) for i in range(n))
        sl2 = _seqf(F(F(w[i] * F(la[i])) * F(la[i])) for i in range(n))
        sxl = _seqf(F(F(w[i] * F(la[i])) * x[i]) for i in range(n))
        d = F(F(sw * sl2) - F(sl * sl))
        if d > 0:
            s = F(F(F(sw * sxl) - F(sx * sl)) / d)
            m = F(F(F(sl2 * sx) - F(sl * sxl)) / d)
            if m > 0:
                m, s = F(0), F(sxl / sl2)
            e = err(s, m, la)
            if e < best:
                ls, best, scale, mn = la, e, s, m
    return scale, F(-mn), ls


def _groups(seed: int, n: int, count: int = 48):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(4, (count, n)) * 0.03).astype(np.float32)
    x[0] = 0.0
    x[1, 3] = 0.4  # outlier
    w = (rng.random((count, n)) * np.sqrt(1e-3 + x * x)).astype(np.float32)
    return x, w


@pytest.mark.parametrize("ik", [False, True], ids=["mainline", "ik"])
def test_make_qx_quants_matches_scalar_spec(ik):
    x, w = _groups(1, 32)
    mqx = jax.jit(lambda x, w: ss.make_qx_quants(x, w, 8, ik=ik))  # as the q4_0 imatrix path
    scale, codes = mqx(x, w)
    for g in range(len(x)):
        rs, rl = ref_mqx(list(x[g]), list(w[g]), 8, ik)
        assert list(np.asarray(codes[g])) == rl, g
        assert np.float32(scale[g]) == rs, g


def test_make_qkx_quants_matches_scalar_spec():
    x, w = _groups(2, 32)
    # the q4_1 imatrix parameters
    mqkx = jax.jit(lambda x, w: ss.make_qkx_quants(x, w, 15, -0.9, 0.05, 36, False, "eq"))
    scale, the_min, codes = mqkx(x, w)
    for g in range(len(x)):
        rs, rm, rl = ref_mqkx(list(x[g]), list(w[g]), 15, -0.9, 0.05, 36)
        assert list(np.asarray(codes[g])) == rl, g
        assert (np.float32(scale[g]), np.float32(the_min[g])) == (rs, rm), g


def test_ik_mqkx_never_worse_than_mainline():
    """ik-MQKX tries the same candidates and then only accepts improving greedy steps."""
    x, w = _groups(3, 32)
    main = jax.jit(lambda x, w: ss.make_qkx_quants(x, w, 15, -0.9, 0.05, 36, False, "le"))
    ik = jax.jit(lambda x, w: ss.make_qkx3_ik(x, w, 15, -0.9, 0.05, 36))
    s1, m1, l1 = (np.asarray(a) for a in main(x, w))
    s2, m2, l2 = (np.asarray(a) for a in ik(x, w))
    e1 = np.sum(w * (s1[:, None] * l1 - m1[:, None] - x) ** 2, axis=1, dtype=np.float64)
    e2 = np.sum(w * (s2[:, None] * l2 - m2[:, None] - x) ** 2, axis=1, dtype=np.float64)
    assert np.all(e2 <= e1 * (1 + 1e-5) + 1e-12)
    assert np.any(e2 < e1 * (1 - 1e-4))  # the greedy phase does move codes on these groups


@pytest.mark.heavy
@pytest.mark.parametrize("target", ["mainline", "ik"])
@pytest.mark.parametrize("t", TYPES)
def test_speed_576x1536(t, target):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((576, 1536)) * 0.02).astype(np.float32)
    w = rng.random(1536).astype(np.float32)
    for imat in (None, w):
        quant.quantize(x, t, imatrix=imat, target=target)  # compile
        t0 = time.perf_counter()
        quant.quantize(x, t, imatrix=imat, target=target)
        assert time.perf_counter() - t0 < 3.0


def test_ik_q2k_ternary_detector_per_chunk():
    """ik q2_K without imatrix: a chunk of ceil(16384/ne0) = 4 rows of ne0 = 4096 that is
    ternary (values -M, 0, M) is stored as d = dmin = M, scales 0x11, q = l + 1 and dequantizes
    exactly; the next chunk (gaussian) is quantized as if alone.  A detector over the whole
    tensor would pass (the small gaussian rows barely add to the residual) and store the
    gaussian rows as ternary too."""
    rng = np.random.default_rng(3)
    m = np.float32(0.5)
    x = np.concatenate([m * rng.integers(-1, 2, (4, 4096)).astype(np.float32),
                        (rng.standard_normal((4, 4096)) * 0.02).astype(np.float32)])
    q = quant.quantize(x, "q2_K", target="ik")
    blocks = q[:4].reshape(-1, 84)
    assert np.all(blocks[:, :16] == 0x11)
    assert np.all(blocks[:, 80:84].copy().view(np.float16) == np.float16(m))
    np.testing.assert_array_equal(quant.dequantize(q[:4], "q2_K", (4, 4096), "ik"), x[:4])
    np.testing.assert_array_equal(q[4:], quant.quantize(x[4:], "q2_K", target="ik"))
    assert not np.all(q[4:].reshape(-1, 84)[:, :16] == 0x11)
