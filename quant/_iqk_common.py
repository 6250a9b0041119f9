"""Shared pieces of the ik_llama.cpp IQK quantizers (spec sections 2.1.6, 2.1.7, 2.11, 2.22).

Symbols (numpy shape convention; ``...`` = leading block axes, ``B`` = weights per block):

    TABLES[name]      f32 [2N]: base then shifted table (iq2nl, iq3nl, iq4k, iq5nl, iq6nl)
    best_index(name, x, shifted) -> int32 like x: ik's index-table nearest lookup (2.1.7)
    sanitize(qw, x, B) -> f32 [R, ne0]: QHelper check of the imatrix, per row (2.1.6)
    spm(x, w, name, ntry, step, guarded) -> (d, shifted): block-scale search of [..., B] (2.11)
    lsq_sums(w, q, x) -> (sumqx, sumq2): sequential float32 sums of w*q*x, w*q*q (last axis)
    pack_lanes / unpack_lanes: k small fields per byte; register_pair: jit + register for "ik"

All float arithmetic is float32 in ggml's source order; sums go through ``_primitives.seq_sum``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _primitives as P

_BASE = {
    "iq2nl": [-31, -13, 1, 17],
    "iq3nl": [-63, -40, -23, -10, 1, 13, 28, 47],
    "iq4k": [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
    "iq5nl": [
        -126,
        -114,
        -103,
        -92,
        -83,
        -74,
        -65,
        -57,
        -50,
        -43,
        -36,
        -30,
        -24,
        -18,
        -12,
        -6,
        -1,
        5,
        11,
        17,
        23,
        29,
        36,
        43,
        51,
        59,
        68,
        77,
        87,
        97,
        109,
        121,
    ],
    "iq6nl": [
        -127,
        -121,
        -115,
        -109,
        -104,
        -98,
        -93,
        -88,
        -84,
        -79,
        -74,
        -70,
        -66,
        -62,
        -58,
        -54,
        -51,
        -47,
        -44,
        -40,
        -37,
        -34,
        -31,
        -28,
        -25,
        -22,
        -19,
        -16,
        -13,
        -11,
        -8,
        -5,
        -2,
        0,
        3,
        6,
        9,
        12,
        14,
        17,
        20,
        23,
        27,
        30,
        33,
        36,
        40,
        44,
        47,
        51,
        55,
        59,
        63,
        68,
        72,
        77,
        82,
        87,
        92,
        98,
        103,
        109,
        115,
        121,
    ],
}
_SHIFT = {"iq2nl": None, "iq3nl": 4, "iq4k": 4, "iq5nl": 2, "iq6nl": 1}
_IQ2NL_SHIFTED = [-26, -8, 6, 22]
# index-table sizes of ik's best_index_iq{3,4,5,6}nl
_INDEX_SIZE = {"iq3nl": 111, "iq4k": 241, "iq5nl": 247, "iq6nl": 249}


def _table(name: str) -> np.ndarray:
    base = np.array(_BASE[name], np.float32)
    shifted = np.array(_IQ2NL_SHIFTED, np.float32) if name == "iq2nl" else base + _SHIFT[name]
    return np.concatenate([base, shifted])


TABLES = {name: _table(name) for name in _BASE}


def _index_table(name: str) -> np.ndarray:
    """Entry for t = ix + T[0]: N + k when the midpoint of T[k], T[k+1] lies strictly inside
    (t - 1, t + 1), else the index nearest to t (the rule that regenerates ik's tables)."""
    t_vals = np.array(_BASE[name], np.float64)
    n = len(t_vals)
    mids = (t_vals[:-1] + t_vals[1:]) / 2
    out = np.empty(_INDEX_SIZE[name], np.int32)
    for ix in range(out.size):
        t = ix + t_vals[0]
        inside = np.nonzero((mids > t - 1) & (mids < t + 1))[0]
        out[ix] = n + inside[0] if inside.size else int(np.argmin(np.abs(t_vals - t)))
    return out


INDEX = {name: _index_table(name) for name in _INDEX_SIZE}


def table_values(name: str, code, shifted):
    """Table value of ``code`` in the base (shifted = 0) or shifted half, f32."""
    n = len(_BASE[name])
    return jnp.asarray(TABLES[name])[code + n * shifted.astype(jnp.int32)]


def best_index(name: str, x, shifted):
    """ik's nearest-value lookup of float32 ``x`` in table ``name`` (base or shifted half)."""
    n = len(_BASE[name])
    shifted = jnp.asarray(shifted).astype(jnp.int32)
    if name == "iq2nl":
        return _best_iq2nl(x, shifted)
    tab = jnp.asarray(TABLES[name])
    u0 = tab[n * shifted]
    xc = jnp.clip(x, -1.0e6, 1.0e6)
    ix = P.trunc_int(xc - u0) if name == "iq6nl" else P.trunc_int(xc) - u0.astype(jnp.int32)
    size = _INDEX_SIZE[name]
    e = jnp.asarray(INDEX[name])[jnp.clip(ix, 0, size - 1)]
    e = jnp.where(ix < 0, 0, jnp.where(ix >= size, n - 1, e))
    k = jnp.clip(e - n, 0, n - 2)
    lo = tab[k + n * shifted]
    hi = tab[k + 1 + n * shifted]
    pick = jnp.where(x - lo < hi - x, k, k + 1)
    return jnp.where(e < n, e, pick).astype(jnp.int32)


def _best_iq2nl(x, shifted):
    tab = jnp.asarray(TABLES["iq2nl"])
    off = 4 * shifted
    k = jnp.where(x < tab[1 + off], 0, jnp.where(x > tab[2 + off], 2, 1))
    return jnp.where(x - tab[k + off] < tab[k + 1 + off] - x, k, k + 1).astype(jnp.int32)


def lsq_sums(w, q, x):
    """C ``sumqx += w*q*x; sumq2 += w*q*q`` over the last axis, starting from 0."""
    wq = w * q
    return _sum0(wq * x), _sum0(wq * q)


def _sum0(a):
    return jnp.float32(0) + P.seq_sum(a, -1)


def sigma2_sum(x):
    """Sequential sum of x*x over the last axis (C ``for j: s += x[j]*x[j]``)."""
    return _sum0(x * x)


def sanitize(qw, x, block: int):
    """QHelper::row_weights: imatrix [ne0] -> per-row weights [R, ne0]; a block whose
    sum w², sum x² or sum w|x| is <= B*1e-18 gets all weights 1e-9."""
    r, ne0 = x.shape
    wb = jnp.broadcast_to(qw.astype(jnp.float32), x.shape).reshape(r, ne0 // block, block)
    xb = x.reshape(r, ne0 // block, block)
    lim = jnp.float32(block) * (jnp.float32(1e-9) * jnp.float32(1e-9))
    ok = (_sum0(wb * wb) > lim) & (_sum0(xb * xb) > lim) & (_sum0(wb * jnp.abs(xb)) > lim)
    return jnp.where(ok[..., None], wb, jnp.float32(1e-9)).reshape(r, ne0)


def imatrix_weights(qw, x, sigma2):
    """``qw * sqrtf(sigma2 + x*x)`` with sigma2 broadcast over the trailing axis."""
    return qw * jnp.sqrt(sigma2 + x * x)


def argmax_abs(x):
    """(signed max, |max|) of the last axis, first occurrence wins."""
    m = P.argmax_abs(x)
    return m, jnp.abs(m)


def _better(sqx, sq2, best):
    return (sq2 > 0) & (sqx * sqx > best * sq2)


def _eval_pm(name, x, w, ident, shifted):
    """Plus/minus assignment sums for inverse scale ``ident`` [...] (2.11 step 3)."""
    al = ident[..., None] * x
    sh = shifted[..., None]
    q_p = table_values(name, best_index(name, al, sh), sh)
    q_m = table_values(name, best_index(name, -al, sh), sh)
    return lsq_sums(w, q_p, x), lsq_sums(w, q_m, x)


def _accept(state, sums, flag):
    d, best, sh = state
    for sqx, sq2 in sums:
        ok = _better(sqx, sq2, best)
        d = jnp.where(ok, sqx / sq2, d)
        best = jnp.where(ok, d * sqx, best)
        sh = jnp.where(ok, flag, sh)
    return d, best, sh


def spm(x, w, name: str, ntry: int, step: float, guarded: bool):
    """Signed block scale and shifted flag of every block x [..., B] (weights w [..., B]).

    Blocks whose |max| < 1e-16 give d = 0, shifted = False (the caller's "no result").
    """
    n = len(_BASE[name])
    tab = TABLES[name]
    mx, amax = argmax_abs(x)
    empty = amax < jnp.float32(1e-16)
    mx_safe = jnp.where(empty, jnp.float32(1), mx)
    d0 = -mx_safe / jnp.float32(tab[0])
    no = jnp.zeros(mx.shape, jnp.int32)
    (sp, qp), (sm, qm) = _eval_pm(name, x, w, jnp.float32(1) / d0, no)
    if guarded:
        d = jnp.where(qp > 0, sp / qp, d0)
        best = jnp.where(qp > 0, d * sp, jnp.float32(0))
    else:
        d = sp / qp
        best = d * sp
    state = _accept((d, best, no.astype(bool)), [(sm, qm)], False)

    def body(i, st):
        itry = (i - ntry).astype(jnp.float32)
        for flag, u0 in ((False, tab[0]), (True, tab[n])):
            ident = (itry * jnp.float32(step) + jnp.float32(u0)) / mx_safe
            sums = _eval_pm(name, x, w, ident, no + int(flag))
            st = _accept(st, sums, flag)
        return st

    d, _, sh = lax.fori_loop(0, 2 * ntry + 1, body, state)
    return jnp.where(empty, jnp.float32(0), d), jnp.where(empty, False, sh)


def refit(x, w, name: str, d, shifted):
    """iq5_k/iq6_k/iq3_k refit: codes best(V, x/d), d = sumqx/sumq2 when > 0 (d = 0 kept)."""
    idd = jnp.where(d != 0, jnp.float32(1) / jnp.where(d != 0, d, 1), 0)
    q = table_values(
        name, best_index(name, idd[..., None] * x, shifted[..., None]), shifted[..., None]
    )
    sqx, sq2 = lsq_sums(w, q, x)
    return jnp.where((d != 0) & (sq2 > 0), sqx / sq2, d)


def blocks(a, *shape):
    """Reshape the trailing row axis [R, ne0] to [R, *shape]."""
    return a.reshape(a.shape[:1] + tuple(shape))


def pack_lanes(v, nbits: int):
    """v [..., K, L] small ints -> uint8 [..., L]: byte l = sum_k v[k, l] << (nbits * k)."""
    v = v.astype(jnp.uint32)
    acc = v[..., 0, :]
    for k in range(1, v.shape[-2]):
        acc = acc | v[..., k, :] << (nbits * k)
    return acc.astype(jnp.uint8)


def unpack_lanes(b, nbits: int, k: int):
    """Inverse of ``pack_lanes``: uint8 [..., L] -> int32 [..., K, L]."""
    shifts = (nbits * jnp.arange(k, dtype=jnp.int32))[:, None]
    return (b[..., None, :].astype(jnp.int32) >> shifts) & ((1 << nbits) - 1)


def bits_u16(flags):
    """flags [..., 16] (0/1) -> uint32 holding bit i = flags[i]."""
    return jnp.sum(flags.astype(jnp.uint32) << jnp.arange(16, dtype=jnp.uint32), axis=-1)


def u16_bits(u):
    """uint32 [...] -> int32 [..., 16] bits."""
    return ((u[..., None] >> jnp.arange(16, dtype=jnp.uint32)) & 1).astype(jnp.int32)


def safe_inv(v):
    """C ``v ? 1/v : 0.f``."""
    return jnp.where(v != 0, 1 / jnp.where(v != 0, v, 1), jnp.float32(0))


def register_pair(name: str, qfn, dqfn):
    """Jit ``qfn(x, w)`` / ``dqfn(q, ne0)`` and register them for target "ik"."""
    import jax

    from ._registry import register_dequantizer, register_quantizer

    jq = jax.jit(qfn)
    jd = jax.jit(dqfn, static_argnums=1)

    @register_quantizer(name, "ik")
    def quantize_rows(x, w=None):
        return jq(jnp.asarray(x, jnp.float32), None if w is None else jnp.asarray(w, jnp.float32))

    @register_dequantizer(name, "ik")
    def dequantize_rows(q, ne0):
        return jd(jnp.asarray(q, jnp.uint8), int(ne0))

    return quantize_rows, dequantize_rows


def lsq_sums_of(a, b):
    """Sequential sums (from 0) of precomputed terms a, b over the last axis."""
    return _sum0(a), _sum0(b)


def seq_sum0(a):
    """C ``s = 0; for j: s += a[j]`` over the last axis (float32, in order)."""
    return _sum0(a)
