"""ik_llama.cpp 2-3 bit types: iq3_k, iq2_k (16 blocks of 16), iq2_ks (row-scaled, 8 x 32).

Spec 2.17-2.19; iq2_ks is ik's "slow" quantizer, not the AVX2 "fast" one (gotcha 5).
Kernels (registered for target "ik"):

    quantize_rows(x f32[R, ne0], w f32[ne0] | None) -> uint8[R, meta + ne0/256 * type_size]
    dequantize_rows(q uint8[R, row_bytes], ne0) -> f32[R, ne0]

Helpers:
    iqk_make_qx(s [..., n], nmax, qw [..., n]) -> (scale [...], L [..., n] in 0..2nmax-1)
    exhaustive_iq2(xs [..., B], ws [..., B], triples [3, K]) -> (d, shifted): sorted-range search
Inside, x is viewed as [R, S, 16, 16] (iq2_ks: [R, S, 8, 32]); codes c [R, S, 256].
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _iqk_common as C
from . import _primitives as P
from ._iqk_k import _final_sums, _prepare, _w_quarter
from ._iqk_ks import flat, prepare32


def _sigma_15(s):
    return (jnp.float32(1.5) * s) / jnp.float32(256)


def _low2_qs(code):
    """Low 2 code bits, iq2_k layout: qs[32(p div 4) + 16(b mod 2) + j] bits 2(p mod 4). [R,S,256]
    -> [R,S,64].
    """
    r, s = code.shape[:2]
    return C.pack_lanes((code & 3).reshape(r, s, 2, 4, 32), 2).reshape(r, s, 64)


def _unlow2_qs(qs):
    r, s = qs.shape[:2]
    return C.unpack_lanes(qs.reshape(r, s, 2, 32), 2, 4).reshape(r, s, 256)


def _zero_rows(nonzero, fields):
    blk = jnp.concatenate(fields, axis=-1)
    blk = jnp.where(nonzero[..., None], blk, jnp.uint8(0))
    return blk.reshape(blk.shape[0], -1)


def _dequant16(d, mult, sh, code, name, ne0):
    dl = d[..., None] * mult.astype(jnp.float32)
    v = C.table_values(name, code.reshape(code.shape[:2] + (16, 16)), sh[..., None])
    return (dl[..., None] * v).reshape(d.shape[0], ne0)


# ---------------------------------------------------------------- iq3_k


def _iq3k_quantize(x, w):
    xs, ws = _prepare(x, w, _sigma_15, _w_quarter)
    d_b, sh = C.spm(xs, ws, "iq3nl", 3, 2.0, True)
    sh = sh & (d_b != 0)
    d_b = C.refit(xs, ws, "iq3nl", d_b, sh)
    amax = jnp.max(jnp.abs(d_b), axis=-1)
    live = amax != 0
    dd = amax / jnp.float32(31)
    idd = 1 / jnp.where(live, dd, 1)
    u = jnp.clip(
        P.nearest(jnp.float32(0.5) * (idd[..., None] * jnp.abs(d_b) - jnp.float32(1))), 0, 15
    )
    neg = d_b < 0
    mult = (2 * u + 1) * jnp.where(neg, -1, 1)
    dl = dd[..., None] * mult.astype(jnp.float32)
    code = C.best_index("iq3nl", C.safe_inv(dl)[..., None] * xs, sh[..., None])
    code = jnp.where((dl != 0)[..., None], code, 0)
    q = C.table_values("iq3nl", code, sh[..., None]) * mult[..., None].astype(jnp.float32)
    sqx, sq2 = _final_sums(ws, jnp.where((dl != 0)[..., None], q, 0), xs)
    d = jnp.float32(1.01) * jnp.where(sq2 > 0, sqx / sq2, dd)
    r, s = x.shape[0], x.shape[1] // 256
    code = code.reshape(r, s, 256)
    fields = [
        P.pack_f16(d),
        P.pack_u16(C.bits_u16(sh)),
        P.pack_u16(C.bits_u16(neg)),
        P.pack_nibbles(u[..., 0::2], u[..., 1::2]),
        _low2_qs(code),
        C.pack_lanes((code >> 2).reshape(r, s, 8, 32), 1),
    ]
    return _zero_rows(live, fields)


def _iq3k_dequantize(q, ne0):
    b = q.reshape(q.shape[0], ne0 // 256, 110)
    d = P.unpack_f16(b[..., 0:2])
    sh = C.u16_bits(P.unpack_u16(b[..., 2:4]))
    neg = C.u16_bits(P.unpack_u16(b[..., 4:6]))
    lo, hi = P.unpack_nibbles(b[..., 6:14])
    u = jnp.stack([lo, hi], axis=-1).reshape(b.shape[:2] + (16,)).astype(jnp.int32)
    mult = (2 * u + 1) * (1 - 2 * neg)
    code = (
        _unlow2_qs(b[..., 14:78])
        | C.unpack_lanes(b[..., 78:110], 1, 8).reshape(b.shape[:2] + (256,)) << 2
    )
    return _dequant16(d, mult, sh, code, "iq3nl", ne0)


# ---------------------------------------------------------------- iq2_k


def _scan_sum(a):
    """Sequential float32 sum from 0 over the last axis, as a lax.scan (compiles fast for long
    axes).
    """
    a = jnp.moveaxis(a, -1, 0)
    return lax.scan(lambda c, v: (c + v, None), jnp.zeros(a.shape[1:], jnp.float32), a)[0]


def iqk_make_qx(s, nmax: int, qw):
    """iqk ``make_qx_quants``: symmetric integer scale over the last axis of s (2.1.5)."""
    mx = P.argmax_abs(s)
    zero = mx == 0
    mxs = jnp.where(zero, jnp.float32(1), mx)

    def sums(iscale):
        lv = jnp.clip(P.nearest(iscale[..., None] * s), -nmax, nmax - 1)
        lf = lv.astype(jnp.float32)
        return lv, _scan_sum((qw * s) * lf), _scan_sum((qw * lf) * lf)

    lv, slx, sl2 = sums(jnp.float32(-nmax) / mxs)
    scale = jnp.where(sl2 != 0, slx / jnp.where(sl2 != 0, sl2, 1), jnp.float32(0))

    def body(k, st):
        lv, scale, best = st
        i = (k - 9 + (k >= 9)).astype(jnp.float32)  # -9..-1, 1..9
        cl, cx, c2 = sums(-(jnp.float32(nmax) + jnp.float32(0.1) * i) / mxs)
        ok = (c2 > 0) & (cx * cx > best * c2)
        scale = jnp.where(ok, cx / c2, scale)
        return jnp.where(ok[..., None], cl, lv), scale, jnp.where(ok, scale * cx, best)

    lv, scale, _ = lax.fori_loop(0, 18, body, (lv, scale, scale * slx))
    return jnp.where(zero, jnp.float32(0), scale), jnp.where(zero[..., None], 0, lv + nmax)


def _prefix(ws, xs):
    """Sorted prefix sums sumw, sumx [..., B+1] (C: sumw[j+1] = sumw[j] + w, sumx[j+1] = sumx[j] +
    w*x).
    """
    order = jnp.argsort(xs + jnp.float32(0), axis=-1, stable=True)
    wsrt = jnp.take_along_axis(ws, order, axis=-1)
    xsrt = jnp.take_along_axis(xs, order, axis=-1)
    terms = jnp.moveaxis(jnp.stack([wsrt, wsrt * xsrt], axis=-1), -2, 0)
    zero = jnp.zeros(terms.shape[1:], jnp.float32)
    _, cum = lax.scan(lambda c, v: (c + v, c + v), zero, terms)
    cum = jnp.concatenate([zero[None], cum], axis=0)
    return jnp.moveaxis(cum[..., 0], 0, -1), jnp.moveaxis(cum[..., 1], 0, -1)


_IQ2 = C.TABLES["iq2nl"]
_IQ2_ORDERS = [
    (_IQ2[0:4], False),
    (_IQ2[4:8], True),
    (_IQ2[0:4][::-1], False),
    (_IQ2[4:8][::-1], True),
]


def range_triples(n: int, i1_max: int | None = None, i3_min: int = 0):
    """(i1, i2, i3) in the C loop order, 0 <= i1 <= i2 <= i3 < n (iq2_ks: i1 < 24, i3 >= max(i2,
    8)).
    """
    out = [
        (a, b, c)
        for a, b, c in itertools.combinations_with_replacement(range(n), 3)
        if (i1_max is None or a < i1_max) and c >= max(b, i3_min)
    ]
    return np.array(out, np.int32).T


def _range_sums(pw, px, idx, vals):
    """sumqx, sumq2 [..., K] of K code-range candidates; idx = (i1, i2, i3) int32 [K] each."""
    n = pw.shape[-1] - 1
    at = lambda a, i: jnp.take(a, i, axis=-1)
    sx = [px[..., :1], *(at(px, i) for i in idx), px[..., n:]]
    sw = [pw[..., :1], *(at(pw, i) for i in idx), pw[..., n:]]
    v = [jnp.float32(t) for t in vals]
    sqx = (sx[1] - sx[0]) * v[0]
    sq2 = ((sw[1] - sw[0]) * v[0]) * v[0]
    for k in range(1, 4):
        sqx = sqx + (sx[k + 1] - sx[k]) * v[k]
        sq2 = sq2 + ((sw[k + 1] - sw[k]) * v[k]) * v[k]
    return sqx, sq2


_CHUNK = 128


def _chunked(triples):
    """Pad the candidate list to whole chunks: int32 [3, C, _CHUNK] and a validity mask [C,
    _CHUNK].
    """
    n = triples.shape[1]
    m = -(-n // _CHUNK) * _CHUNK
    t = np.zeros((3, m), np.int32)
    t[:, :n] = triples
    return t.reshape(3, -1, _CHUNK), (np.arange(m) < n).reshape(-1, _CHUNK)


def _accept_seq(state, cand):
    """One step of the C acceptance chain (strict LSQ rule), state (d, best, shifted)."""
    d, best, sh = state
    sqx, sq2, flag, valid = cand
    ok = valid & (sq2 > 0) & (sqx * sqx > best * sq2)
    d = jnp.where(ok, sqx / sq2, d)
    return (d, jnp.where(ok, d * sqx, best), jnp.where(ok, flag, sh)), None


def exhaustive_iq2(xs, ws, triples):
    """Best signed scale and shifted flag of blocks xs [..., B] over sorted code ranges (2.17).

    Candidate sums are computed a chunk at a time (vectorized), then accepted one by one in the
    C loop order (per triple: base ascending, shifted ascending, base descending, shifted
    descending)."""
    pw, px = _prefix(ws, xs)
    t, valid = _chunked(triples)
    t, valid = jnp.asarray(t), jnp.asarray(valid)
    zero = jnp.zeros(xs.shape[:-1], jnp.float32)
    flags = jnp.asarray([f for _, f in _IQ2_ORDERS])

    def body(c, st):
        sums = [_range_sums(pw, px, (t[0, c], t[1, c], t[2, c]), vals) for vals, _ in _IQ2_ORDERS]
        sqx = jnp.moveaxis(jnp.stack([a for a, _ in sums], axis=-1), (-2, -1), (0, 1))
        sq2 = jnp.moveaxis(jnp.stack([b for _, b in sums], axis=-1), (-2, -1), (0, 1))
        ok = jnp.broadcast_to(valid[c][:, None], (_CHUNK, 4))
        fl = jnp.broadcast_to(flags[None, :], (_CHUNK, 4))
        cands = tuple(a.reshape((-1,) + a.shape[2:]) for a in (sqx, sq2, fl, ok))
        return lax.scan(_accept_seq, st, cands)[0]

    d, _, sh = lax.fori_loop(0, t.shape[1], body, (zero, zero, zero.astype(bool)))
    empty = jnp.max(jnp.abs(xs), axis=-1) < jnp.float32(1e-16)
    return jnp.where(empty, jnp.float32(0), d), sh & ~empty


_TRIPLES16 = range_triples(16)


def _iq2k_quantize(x, w):
    xs, ws = _prepare(x, w, _sigma_15, _w_quarter)
    sw = C.seq_sum0(ws)
    d_b, sh = exhaustive_iq2(xs, ws, _TRIPLES16)
    dd, _ = iqk_make_qx(d_b, 8, sw)
    live = (jnp.max(jnp.abs(d_b), axis=-1) != 0) & (dd != 0)
    ls = jnp.clip(P.nearest((1 / jnp.where(live, dd, 1))[..., None] * d_b), -8, 7)
    dl = dd[..., None] * ls.astype(jnp.float32)
    code = C.best_index("iq2nl", C.safe_inv(dl)[..., None] * xs, sh[..., None])
    code = jnp.where((dl != 0)[..., None], code, 0)
    q = C.table_values("iq2nl", code, sh[..., None]) * ls[..., None].astype(jnp.float32)
    sqx, sq2 = _final_sums(ws, jnp.where((dl != 0)[..., None], q, 0), xs)
    d = jnp.float32(1.030) * jnp.where(sq2 > 0, sqx / sq2, dd)
    r, s = x.shape[0], x.shape[1] // 256
    u = ls + 8
    fields = [
        P.pack_f16(d),
        P.pack_u16(C.bits_u16(sh)),
        P.pack_nibbles(u[..., 0::2], u[..., 1::2]),
        _low2_qs(code.reshape(r, s, 256)),
    ]
    return _zero_rows(live, fields)


def _iq2k_dequantize(q, ne0):
    b = q.reshape(q.shape[0], ne0 // 256, 76)
    d = P.unpack_f16(b[..., 0:2])
    sh = C.u16_bits(P.unpack_u16(b[..., 2:4]))
    lo, hi = P.unpack_nibbles(b[..., 4:12])
    ls = jnp.stack([lo, hi], axis=-1).reshape(b.shape[:2] + (16,)).astype(jnp.int32) - 8
    return _dequant16(d, ls, sh, _unlow2_qs(b[..., 12:76]), "iq2nl", ne0)


# ---------------------------------------------------------------- iq2_ks (slow)

_TRIPLES32 = range_triples(32, i1_max=24, i3_min=8)


def _iq2ks_quantize(x, w):
    xs, ws = prepare32(x, w, _sigma_15, _w_quarter)
    r, s = xs.shape[:2]
    sw = C.seq_sum0(ws)
    d_b, sh = exhaustive_iq2(xs, ws, _TRIPLES32)
    dd, big_l = iqk_make_qx(d_b.reshape(r, -1), 16, sw.reshape(r, -1))
    big_l = big_l.reshape(r, s, 8)
    live = (dd != 0)[:, None, None]
    ls = big_l - 16
    dl = dd[:, None, None] * ls.astype(jnp.float32)
    code = C.best_index("iq2nl", C.safe_inv(dl)[..., None] * xs, sh[..., None])
    keep = ((dl != 0) & live)[..., None]
    code = jnp.where(keep, code, 0)
    q = jnp.where(
        keep, C.table_values("iq2nl", code, sh[..., None]) * ls[..., None].astype(jnp.float32), 0
    )
    sqx, sq2 = C.lsq_sums(flat(ws), flat(q), flat(xs))
    d = jnp.where(dd == 0, jnp.float32(0), jnp.float32(1.030) * jnp.where(sq2 > 0, sqx / sq2, dd))
    big_l = jnp.where(live, big_l, 0)
    extra = C.bits_u16(jnp.concatenate([sh.astype(jnp.int32), big_l >> 4], axis=-1))
    qs = C.pack_lanes((code & 3).reshape(r, s, 2, 4, 32), 2).reshape(r, s, 64)
    body = jnp.concatenate(
        [P.pack_u16(extra), P.pack_nibbles(big_l[..., 0::2] & 15, big_l[..., 1::2] & 15), qs], -1
    )
    return jnp.concatenate([P.pack_f16(d), flat(body)], axis=-1)


def _iq2ks_dequantize(q, ne0):
    r, s = q.shape[0], ne0 // 256
    b = q[:, 2:].reshape(r, s, 70)
    extra = C.u16_bits(P.unpack_u16(b[..., 0:2]))
    lo, hi = P.unpack_nibbles(b[..., 2:6])
    u = jnp.stack([lo, hi], axis=-1).reshape(r, s, 8).astype(jnp.int32) | extra[..., 8:] << 4
    code = C.unpack_lanes(b[..., 6:70].reshape(r, s, 2, 32), 2, 4).reshape(r, s, 8, 32)
    dl = P.unpack_f16(q[:, :2])[:, None, None] * (u - 16).astype(jnp.float32)
    return flat(dl[..., None] * C.table_values("iq2nl", code, extra[..., :8, None]))


quantize_iq3_k, dequantize_iq3_k = C.register_pair("iq3_k", _iq3k_quantize, _iq3k_dequantize)
quantize_iq2_k, dequantize_iq2_k = C.register_pair("iq2_k", _iq2k_quantize, _iq2k_dequantize)
quantize_iq2_ks, dequantize_iq2_ks = C.register_pair("iq2_ks", _iq2ks_quantize, _iq2ks_dequantize)
