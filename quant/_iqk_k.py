"""ik_llama.cpp super-block types with 16 blocks of 16: iq4_k, iq5_k, iq6_k (spec 2.12-2.14).

Kernels (registered for target "ik"):

    quantize_rows(x f32[R, ne0], w f32[ne0] | None) -> uint8[R, ne0/256 * type_size]
    dequantize_rows(q uint8[R, row_bytes], ne0) -> f32[R, ne0]
    dequantize_iq6_k_poly(q, ne0): ggml's scalar iq6_k to_float (cubic, not the table; gotcha 9)

Inside, x is viewed as [R, S, 16, 16] (S super-blocks of 16 blocks of 16); codes c [R, S, 256].
"""

from __future__ import annotations

import jax.numpy as jnp

from . import _iqk_common as C
from . import _primitives as P


def _weights(xs, qw, sigma2, default):
    """xs [R,S,16,16]; qw [R,S,16,16] sanitized imatrix or None; sigma2 [R,S]."""
    s = sigma2[:, :, None, None]
    if qw is None:
        return default(xs, s)
    return C.imatrix_weights(qw, xs, s)


def _prepare(x, w, sigma_mul, default):
    ne0 = x.shape[1]
    xs = C.blocks(x, ne0 // 256, 16, 16)
    sumx2 = C.sigma2_sum(C.blocks(x, ne0 // 256, 256))
    sigma2 = sigma_mul(sumx2)
    qw = None if w is None else C.blocks(C.sanitize(w, x, 16), ne0 // 256, 16, 16)
    return xs, _weights(xs, qw, sigma2, default)


def _w_x2(xs, s):
    return xs * xs


def _w_quarter(xs, s):
    return jnp.float32(0.25) * s + xs * xs


def _final_sums(ws, q, xs):
    """Sequential LSQ sums over the whole super-block (block by block), [R,S]."""
    r, s = xs.shape[:2]
    return C.lsq_sums(ws.reshape(r, s, 256), q.reshape(r, s, 256), xs.reshape(r, s, 256))


def _scales_6bit(u):
    """u [R,S,16] in 0..63 -> (scales_h uint8[R,S,4], scales_l uint8[R,S,8])."""
    lo = P.pack_nibbles(u[..., 0::2] & 15, u[..., 1::2] & 15)
    hi = (u >> 4).reshape(u.shape[:-1] + (4, 4))
    sh = hi[..., 0] | hi[..., 1] << 2 | hi[..., 2] << 4 | hi[..., 3] << 6
    return sh.astype(jnp.uint8), lo


def _unscales_6bit(sh, sl):
    lo = jnp.stack(P.unpack_nibbles(sl), axis=-1).reshape(sl.shape[:-1] + (16,)).astype(jnp.int32)
    hi = (sh[..., :, None].astype(jnp.int32) >> (2 * jnp.arange(4))) & 3
    return lo | hi.reshape(sh.shape[:-1] + (16,)) << 4


def _qs_4bit_pairs(c):
    """iq4_nl layout per 32: byte 16i+j = c[32i+j] | c[32i+16+j] << 4; [R,S,256] -> [R,S,128]."""
    v = c.reshape(c.shape[:2] + (8, 2, 16))
    return P.pack_nibbles(v[..., 0, :], v[..., 1, :]).reshape(c.shape[:2] + (128,))


def _unqs_4bit_pairs(qs):
    lo, hi = P.unpack_nibbles(qs.reshape(qs.shape[:2] + (8, 16)))
    return jnp.stack([lo, hi], axis=-2).reshape(qs.shape[:2] + (256,)).astype(jnp.int32)


def _qs_4bit_iq5(c):
    """Low nibbles of 5/6-bit codes: byte 32(p div 2) + 16(b mod 2) + j, nibble p mod 2."""
    v = (c & 15).reshape(c.shape[:2] + (4, 2, 2, 16))
    return P.pack_nibbles(v[..., 0, :, :], v[..., 1, :, :]).reshape(c.shape[:2] + (128,))


def _unqs_4bit_iq5(qs):
    lo, hi = P.unpack_nibbles(qs.reshape(qs.shape[:2] + (4, 2, 16)))
    return jnp.stack([lo, hi], axis=-3).reshape(qs.shape[:2] + (256,)).astype(jnp.int32)


def _qh_bits(h, nbits):
    """High code bits h [R,S,256] -> qh: 32-pair p at bit nbits*(p mod k), k = 8/nbits per byte."""
    r, s = h.shape[:2]
    k = 8 // nbits
    return C.pack_lanes(h.reshape(r, s, 8 // k, k, 32), nbits).reshape(r, s, -1)


def _unqh_bits(qh, nbits):
    r, s = qh.shape[:2]
    return C.unpack_lanes(qh.reshape(r, s, -1, 32), nbits, 8 // nbits).reshape(r, s, 256)


def _rows(parts):
    """Concatenate per-super-block byte fields [R,S,k_i] into rows [R, S*sum(k)]."""
    blk = jnp.concatenate(parts, axis=-1)
    return blk.reshape(blk.shape[0], -1)


# ---------------------------------------------------------------- iq4_k


def _iq4k_quantize(x, w):
    xs, ws = _prepare(x, w, lambda s: s * jnp.float32(2.0 / 256), _w_x2)
    d_b, sh = C.spm(xs, ws, "iq4k", 7, 1.0, False)
    dd = -P.argmax_abs(d_b) / jnp.float32(32)
    ls = jnp.clip(P.nearest(C.safe_inv(dd)[..., None] * d_b), -32, 31)
    dl = dd[..., None] * ls.astype(jnp.float32)
    code = C.best_index("iq4k", C.safe_inv(dl)[..., None] * xs, sh[..., None])
    q = C.table_values("iq4k", code, sh[..., None]) * ls[..., None].astype(jnp.float32)
    sqx, sq2 = _final_sums(ws, q, xs)
    d = jnp.where(sq2 > 0, sqx / sq2, dd)
    sch, scl = _scales_6bit((ls + 32).astype(jnp.uint32))
    fields = [
        P.pack_f16(d),
        P.pack_u16(C.bits_u16(sh)),
        sch,
        scl,
        _qs_4bit_pairs(code.reshape(q.shape[:2] + (256,))),
    ]
    return _rows(fields)


def _iq4k_dequantize(q, ne0):
    b = q.reshape(q.shape[0], ne0 // 256, 144)
    d = P.unpack_f16(b[..., 0:2])
    sh = C.u16_bits(P.unpack_u16(b[..., 2:4]))
    ls = _unscales_6bit(b[..., 4:8], b[..., 8:16]) - 32
    code = _unqs_4bit_pairs(b[..., 16:144])
    return _dequant(d, ls, sh, code, "iq4k", ne0)


def _dequant(d, ls, sh, code, name, ne0):
    """y = (d * l_b) * V_b[code]; d [R,S], ls/sh [R,S,16], code [R,S,256]."""
    dl = d[..., None] * ls.astype(jnp.float32)
    v = C.table_values(name, code.reshape(code.shape[:2] + (16, 16)), sh[..., None])
    return (dl[..., None] * v).reshape(d.shape[0], ne0)


# ---------------------------------------------------------------- iq5_k / iq6_k


def _iq56_search(x, w, name, nmax):
    """Shared part of iq5_k / iq6_k: block scales, integer scales and codes (2.13, 2.14)."""
    xs, ws = _prepare(x, w, lambda s: (jnp.float32(2) * s) / jnp.float32(256), _w_quarter)
    d_b, sh = C.spm(xs, ws, name, 5, 1.0, False)
    d_b = C.refit(xs, ws, name, d_b, sh)
    max_scale = P.argmax_abs(d_b)
    nonzero = max_scale != 0
    dd = -max_scale / jnp.float32(nmax)
    idd = 1 / jnp.where(nonzero, dd, 1)
    ls = jnp.clip(P.nearest(idd[..., None] * d_b), -nmax, nmax - 1 if nmax == 32 else nmax)
    dl = dd[..., None] * ls.astype(jnp.float32)
    idl = 1 / jnp.where(dl != 0, dl, 1)
    code = C.best_index(name, idl[..., None] * xs, sh[..., None])
    code = jnp.where((dl != 0)[..., None], code, 0)
    q = C.table_values(name, code, sh[..., None]) * ls[..., None].astype(jnp.float32)
    q = jnp.where((dl != 0)[..., None], q, 0)
    sqx, sq2 = _final_sums(ws, q, xs)
    d = jnp.where(sq2 > 0, sqx / sq2, dd)
    r, s = x.shape[0], x.shape[1] // 256
    return nonzero, d, sh, ls, code.reshape(r, s, 256)


def _zero_sb(nonzero, fields):
    """All-zero super-block bytes where no block had a scale."""
    blk = jnp.concatenate(fields, axis=-1)
    blk = jnp.where(nonzero[..., None], blk, jnp.uint8(0))
    return blk.reshape(blk.shape[0], -1)


def _iq5k_quantize(x, w):
    nz, d, sh, ls, code = _iq56_search(x, w, "iq5nl", 32)
    sch, scl = _scales_6bit((ls + 32).astype(jnp.uint32))
    fields = [
        P.pack_f16(d),
        P.pack_u16(C.bits_u16(sh)),
        sch,
        scl,
        _qs_4bit_iq5(code),
        _qh_bits(code >> 4, 1),
    ]
    return _zero_sb(nz, fields)


def _iq5k_dequantize(q, ne0):
    b = q.reshape(q.shape[0], ne0 // 256, 176)
    d = P.unpack_f16(b[..., 0:2])
    sh = C.u16_bits(P.unpack_u16(b[..., 2:4]))
    ls = _unscales_6bit(b[..., 4:8], b[..., 8:16]) - 32
    code = _unqs_4bit_iq5(b[..., 16:144]) | _unqh_bits(b[..., 144:176], 1) << 4
    return _dequant(d, ls, sh, code, "iq5nl", ne0)


def _iq6k_quantize(x, w):
    nz, d, sh, ls, code = _iq56_search(x, w, "iq6nl", 127)
    scales = (ls & 0xFF).astype(jnp.uint8)
    fields = [
        P.pack_f16(d),
        P.pack_u16(C.bits_u16(sh)),
        scales,
        _qs_4bit_iq5(code),
        _qh_bits(code >> 4, 2),
    ]
    return _zero_sb(nz, fields)


def _iq6k_fields(q, ne0):
    b = q.reshape(q.shape[0], ne0 // 256, 212)
    d = P.unpack_f16(b[..., 0:2])
    sh = C.u16_bits(P.unpack_u16(b[..., 2:4]))
    ls = b[..., 4:20].astype(jnp.int8).astype(jnp.int32)
    code = _unqs_4bit_iq5(b[..., 20:148]) | _unqh_bits(b[..., 148:212], 2) << 4
    return d, sh, ls, code


def _iq6k_dequantize(q, ne0):
    d, sh, ls, code = _iq6k_fields(q, ne0)
    return _dequant(d, ls, sh, code, "iq6nl", ne0)


def dequantize_iq6_k_poly(q, ne0):
    """ggml's scalar iq6_k to_float: dl * (A + c*(B + c*(-C + c*D)) + shift), cubic in c."""
    d, sh, ls, code = _iq6k_fields(q, ne0)
    c = code.reshape(code.shape[:2] + (16, 16)).astype(jnp.float32)
    poly = jnp.float32(-127.0) + c * (
        jnp.float32(6.2568) + c * (-jnp.float32(0.11218) + c * jnp.float32(0.0011972))
    )
    v = poly + sh[..., None].astype(jnp.float32)
    dl = d[..., None] * ls.astype(jnp.float32)
    return (dl[..., None] * v).reshape(d.shape[0], ne0)


quantize_iq4_k, dequantize_iq4_k = C.register_pair("iq4_k", _iq4k_quantize, _iq4k_dequantize)
quantize_iq5_k, dequantize_iq5_k = C.register_pair("iq5_k", _iq5k_quantize, _iq5k_dequantize)
quantize_iq6_k, dequantize_iq6_k = C.register_pair("iq6_k", _iq6k_quantize, _iq6k_dequantize)
