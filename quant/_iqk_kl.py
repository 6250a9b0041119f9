"""ik_llama.cpp iq2_kl: row-scaled 2.69 bpw; weight pairs coded on a 32-point grid of iq3nl pairs.

Kernels (registered for target "ik"):

    quantize_rows(x f32[R, ne0], w f32[ne0] | None) -> uint8[R, 2 + ne0/256 * 86]
    dequantize_rows(q uint8[R, row_bytes], ne0) -> f32[R, ne0]

Row = d:f16, then per 256: scales_h:u16 (2 high bits of block b at bit 2b), scales_l[4]
(nibble b div 4 of byte b mod 4), qs[64] (low nibble of pair code j of block b: byte
16(b div 2) + j, nibble b mod 2), qh[16] (code bit 4: byte j, bit b). y = d*(u_b - 32)*GRID[code].
Quantizer (ik iqk_quantize.cpp; spec 2.21 gives only the layout): per 32-block a signed scale
search over the grid (11 trial scales, plus/minus codes), row scale -max/32, per block the best
of l-1, l, l+1 by weighted error, LSQ refit of d times 1.025. Pairs [R, S, 8, 16, 2].
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _iqk_common as C
from . import _primitives as P
from ._iqk_ks import flat

# pair index of the (i1, i2) iq3nl code pair, 8*i1 + i2; negative: -(neighbour list + 1)
_K_INDEX = np.array(
    [
        -1,
        -2,
        0,
        -3,
        -4,
        1,
        -5,
        -6,
        2,
        -7,
        -8,
        3,
        -9,
        4,
        -10,
        5,
        -11,
        6,
        7,
        -12,
        8,
        9,
        10,
        -13,
        11,
        -14,
        -15,
        -16,
        12,
        13,
        -17,
        14,
        -18,
        -19,
        15,
        16,
        17,
        18,
        19,
        -20,
        -21,
        20,
        21,
        22,
        23,
        24,
        -22,
        -23,
        25,
        -24,
        26,
        -25,
        27,
        -26,
        28,
        29,
        -27,
        -28,
        30,
        -29,
        -30,
        31,
        -31,
        -32,
    ],
    np.int32,
)
_NEIGHBOURS = np.array(
    [
        [2, 0, 6, 11, 7, 3, 8, 15],
        [0, 2, 3, 6, 7, 1, 8, 4],
        [0, 1, 3, 4, 8, 7, 9, 6],
        [1, 0, 3, 4, 8, 9, 7, 10],
        [1, 4, 5, 10, 9, 3, 8, 0],
        [5, 1, 4, 10, 9, 14, 8, 3],
        [6, 2, 7, 0, 3, 11, 8, 15],
        [3, 7, 0, 6, 8, 4, 12, 9],
        [3, 4, 8, 9, 1, 7, 12, 10],
        [4, 10, 5, 9, 1, 8, 13, 14],
        [11, 2, 6, 7, 20, 15, 25, 21],
        [8, 7, 3, 12, 9, 16, 17, 13],
        [14, 5, 10, 19, 9, 13, 4, 18],
        [6, 15, 7, 11, 20, 21, 16, 2],
        [15, 7, 16, 6, 21, 12, 17, 22],
        [12, 16, 17, 8, 15, 7, 13, 22],
        [19, 10, 13, 18, 14, 9, 12, 24],
        [11, 20, 25, 6, 15, 2, 21, 7],
        [20, 15, 21, 6, 11, 7, 16, 26],
        [14, 19, 29, 10, 28, 18, 13, 24],
        [25, 11, 20, 21, 15, 6, 26, 30],
        [19, 24, 28, 18, 29, 23, 13, 17],
        [29, 19, 14, 28, 24, 18, 10, 13],
        [20, 26, 21, 25, 30, 15, 22, 16],
        [27, 26, 22, 23, 21, 30, 16, 24],
        [27, 24, 28, 31, 23, 18, 22, 17],
        [25, 30, 20, 26, 21, 11, 15, 22],
        [30, 26, 25, 20, 21, 27, 22, 15],
        [30, 27, 31, 26, 22, 23, 21, 24],
        [31, 27, 30, 26, 28, 23, 22, 24],
        [31, 28, 29, 27, 24, 23, 19, 18],
        [29, 28, 31, 24, 19, 27, 14, 18],
    ],
    np.int32,
)


def _grid() -> np.ndarray:
    vals = C.TABLES["iq3nl"][:8]
    g = np.zeros((32, 2), np.float32)
    for j, i in enumerate(_K_INDEX):
        if i >= 0:
            g[i] = vals[j // 8], vals[j % 8]
    return g


GRID = _grid()  # f32 [32, 2], equals ggml's iq2kl_values (low byte, high byte)


def _index(ident, xp, wp):
    """Grid code of each pair xp [..., 16, 2] at inverse scale ident [...] (ik's ``index``)."""
    sx = ident[..., None, None] * xp
    lv = C.best_index("iq3nl", sx, jnp.zeros(sx.shape, jnp.int32))
    i = jnp.asarray(_K_INDEX)[8 * lv[..., 0] + lv[..., 1]]
    neigh = jnp.asarray(_NEIGHBOURS)[jnp.clip(-i - 1, 0, 31)]
    g = jnp.asarray(GRID)[neigh]
    d1 = g[..., 0] - sx[..., 0:1]
    d2 = g[..., 1] - sx[..., 1:2]
    score = (wp[..., 0:1] * d1) * d1 + (wp[..., 1:2] * d2) * d2
    pick = jnp.take_along_axis(neigh, jnp.argmin(score, axis=-1)[..., None], axis=-1)[..., 0]
    return jnp.where(i >= 0, i, pick)


def _pair_sums(wp, q, xp):
    """C: sumqx += w1*q1*x1 + w2*q2*x2; sumq2 += w1*q1*q1 + w2*q2*q2 over the pairs (last-but-one
    axis).
    """
    a = (wp * q) * xp
    b = (wp * q) * q
    return C.lsq_sums_of(a[..., 0] + a[..., 1], b[..., 0] + b[..., 1])


def _search(xp, wp, mx):
    """Signed block scales [R,S,8]: itry -5..5 on id = (itry - 63)/max, plus and minus codes."""

    def sums(ident):
        out = []
        for sgn in (1, -1):
            q = jnp.asarray(GRID)[_index(ident * sgn, xp, wp)]
            out.append(_pair_sums(wp, q, xp))
        return out

    (sp, qp), (sm, qm) = sums(jnp.float32(1) / (-mx / jnp.float32(-63)))
    d = sp / qp
    best = d * sp

    def accept(st, cands):
        d, best = st
        for sqx, sq2 in cands:
            ok = (sq2 > 0) & (sqx * sqx > best * sq2)
            d = jnp.where(ok, sqx / sq2, d)
            best = jnp.where(ok, d * sqx, best)
        return d, best

    st = accept((d, best), [(sm, qm)])

    def body(i, st):
        return accept(st, sums(((i - 5).astype(jnp.float32) + jnp.float32(-63)) / mx))

    return lax.fori_loop(0, 11, body, st)[0]


def _weights(x, w):
    r, ne0 = x.shape
    xs = x.reshape(r, ne0 // 256, 8, 32)
    if w is None:
        return xs, jnp.abs(xs)
    sigma2 = C.sigma2_sum(x.reshape(r, ne0 // 256, 256)) * jnp.float32(2.25 / 256)
    qw = C.sanitize(w, x, 32).reshape(xs.shape)
    return xs, C.imatrix_weights(qw, xs, sigma2[:, :, None, None])


def _best_ls(xp, wp, dd, ls):
    """Of l-1, l, l+1 (within -32..31) the one with the least weighted error, first on ties."""
    scores = []
    for o in (-1, 0, 1):
        c = ls + o
        dl = dd[:, None, None] * c.astype(jnp.float32)
        g = jnp.asarray(GRID)[_index(C.safe_inv(dl), xp, wp)]
        e = dl[..., None, None] * g - xp
        t = (wp * e) * e
        s = C.seq_sum0(t[..., 0] + t[..., 1])
        scores.append(jnp.where((c >= -32) & (c <= 31), s, jnp.inf))
    return ls - 1 + jnp.argmin(jnp.stack(scores, axis=-1), axis=-1)


def _iq2kl_quantize(x, w):
    xs, ws = _weights(x, w)
    r, s = xs.shape[:2]
    xp, wp = xs.reshape(r, s, 8, 16, 2), ws.reshape(r, s, 8, 16, 2)
    mx, amax = C.argmax_abs(xs)
    empty = amax < jnp.float32(1e-16)
    d_b = jnp.where(empty, jnp.float32(0), _search(xp, wp, jnp.where(empty, 1, mx)))
    max_scale = P.argmax_abs(flat(d_b))
    live = max_scale != 0
    dd = -max_scale / jnp.float32(32)
    idd = 1 / jnp.where(live, dd, 1)
    ls = _best_ls(xp, wp, dd, jnp.clip(P.nearest(idd[:, None, None] * d_b), -32, 31))
    dl = dd[:, None, None] * ls.astype(jnp.float32)
    code = jnp.where((ls != 0)[..., None], _index(C.safe_inv(dl), xp, wp), 0)
    q = jnp.asarray(GRID)[code] * ls[..., None, None].astype(jnp.float32)
    sqx, sq2 = _pair_sums(
        flat(wp).reshape(r, -1, 2), flat(q).reshape(r, -1, 2), flat(xp).reshape(r, -1, 2)
    )
    d = jnp.where(live, jnp.float32(1.025) * jnp.where(sq2 > 0, sqx / sq2, dd), jnp.float32(0))
    u = jnp.where(live[:, None, None], ls + 32, 0)
    code = jnp.where(live[:, None, None, None], code, 0)
    sh = jnp.sum((u >> 4).astype(jnp.uint32) << (2 * jnp.arange(8, dtype=jnp.uint32)), axis=-1)
    sl = C.pack_lanes((u & 15).reshape(r, s, 2, 4), 4)
    qs = C.pack_lanes((code & 15).reshape(r, s, 4, 2, 16), 4).reshape(r, s, 64)
    qh = C.pack_lanes(code >> 4, 1)
    body = jnp.concatenate([P.pack_u16(sh), sl, qs, qh], axis=-1)
    return jnp.concatenate([P.pack_f16(d), flat(body)], axis=-1)


def _iq2kl_dequantize(q, ne0):
    r, s = q.shape[0], ne0 // 256
    b = q[:, 2:].reshape(r, s, 86)
    sh = P.unpack_u16(b[..., 0:2]).astype(jnp.int32)
    u = (
        C.unpack_lanes(b[..., 2:6], 4, 2).reshape(r, s, 8)
        | ((sh[..., None] >> (2 * jnp.arange(8))) & 3) << 4
    )
    lo = C.unpack_lanes(b[..., 6:70].reshape(r, s, 4, 16), 4, 2).reshape(r, s, 8, 16)
    code = lo | C.unpack_lanes(b[..., 70:86], 1, 8) << 4
    dl = P.unpack_f16(q[:, :2])[:, None, None] * (u - 32).astype(jnp.float32)
    return flat(dl[..., None, None] * jnp.asarray(GRID)[code])


quantize_iq2_kl, dequantize_iq2_kl = C.register_pair("iq2_kl", _iq2kl_quantize, _iq2kl_dequantize)
