"""ik_llama.cpp row-scaled types with blocks of 32: iq4_ks, iq5_ks, iq3_ks (spec 2.15, 2.20).

Kernels (registered for target "ik"):

    quantize_rows(x f32[R, ne0], w f32[ne0] | None) -> uint8[R, meta + ne0/256 * type_size]
    dequantize_rows(q uint8[R, row_bytes], ne0) -> f32[R, ne0]

Rows start with the row scale (f32 for iq4_ks/iq5_ks, f16 for iq3_ks). Inside, x is viewed as
[R, S, 8, 32] (S super-blocks of 8 blocks of 32); per-block values are [R, S, 8].
"""

from __future__ import annotations

import jax.numpy as jnp

from . import _iqk_common as C
from . import _primitives as P


def prepare32(x, w, sigma_mul, default):
    """-> xs [R,S,8,32], weights [R,S,8,32] (imatrix: sanitized in blocks of 32)."""
    s = x.shape[1] // 256
    xs = C.blocks(x, s, 8, 32)
    sigma2 = sigma_mul(C.sigma2_sum(C.blocks(x, s, 256)))[:, :, None, None]
    if w is None:
        return xs, default(xs, sigma2)
    qw = C.blocks(C.sanitize(w, x, 32), s, 8, 32)
    return xs, C.imatrix_weights(qw, xs, sigma2)


def sigma_2(s):
    return s * jnp.float32(2.0 / 256)


def w_x2(xs, s):
    return xs * xs


def row_max_abs(d_b):
    """max |d_b| over the row (std::max ignores NaN)."""
    a = jnp.abs(d_b).reshape(d_b.shape[0], -1)
    return jnp.max(jnp.where(jnp.isnan(a), 0, a), axis=-1)


def odd_scales(d_b, dd):
    """iq4_ks block multipliers: u = clamp(nearest(0.5*(id*s + 127)), 0, 127), m = 2u - 127."""
    idd = C.safe_inv(dd)[:, None, None]
    u = jnp.clip(P.nearest(jnp.float32(0.5) * (idd * d_b + jnp.float32(127))), 0, 127)
    return u, 2 * u - 127


def codes_for(name, xs, dd, ls, sh):
    """Codes best(V_b, x/(D*l_b)) and the LSQ values V_b[code]*l_b, both [R,S,8,32]."""
    dl = dd[:, None, None] * ls.astype(jnp.float32)
    code = C.best_index(name, C.safe_inv(dl)[..., None] * xs, sh[..., None])
    q = C.table_values(name, code, sh[..., None]) * ls[..., None].astype(jnp.float32)
    return code, q


def flat(a):
    return a.reshape(a.shape[0], -1)


# ---------------------------------------------------------------- iq4_ks / iq5_ks


def _ks_search(x, w, name, ntry):
    xs, ws = prepare32(x, w, sigma_2, w_x2)
    d_b, sh = C.spm(xs, ws, name, ntry, 1.0, False)
    dd = row_max_abs(d_b) / jnp.float32(127)
    u, ls = odd_scales(d_b, dd)
    code, q = codes_for(name, xs, dd, ls, sh)
    return xs, ws, dd, u, sh, code, q


def _row_d(dd, sqx, sq2):
    return jnp.where(dd == 0, dd, jnp.where(sq2 > 0, sqx / sq2, dd))


def _iq4ks_quantize(x, w):
    xs, ws, dd, u, sh, code, q = _ks_search(x, w, "iq4k", 7)
    a = (ws * q) * xs
    b = (ws * q) * q
    pair = lambda t: flat(t[..., :16] + t[..., 16:])  # C: w1*q1*x1 + w2*q2*x2
    sqx, sq2 = C.lsq_sums_of(pair(a), pair(b))
    live = (dd != 0)[:, None, None]
    scales = sh.astype(jnp.uint32) | jnp.where(live, u, 0).astype(jnp.uint32) << 1
    code = jnp.where(live[..., None], code, 0)
    qs = C.pack_lanes(code.reshape(code.shape[:3] + (2, 16)), 4)
    body = jnp.concatenate(
        [scales.astype(jnp.uint8), flat(qs).reshape(qs.shape[:2] + (128,))], axis=-1
    )
    return jnp.concatenate([P.pack_f32(_row_d(dd, sqx, sq2)), flat(body)], axis=-1)


def _iq5ks_quantize(x, w):
    xs, ws, dd, u, sh, code, q = _ks_search(x, w, "iq5nl", 5)
    sqx, sq2 = C.lsq_sums(flat(ws), flat(q), flat(xs))
    live = (dd != 0)[:, None, None]
    scales = sh.astype(jnp.uint32) | jnp.where(live, u, 0).astype(jnp.uint32) << 1
    code = jnp.where(live[..., None], code, 0)
    qs = C.pack_lanes((code & 15).reshape(code.shape[:2] + (4, 2, 32)), 4)
    qh = C.pack_lanes(code >> 4, 1)
    r, s = code.shape[:2]
    body = jnp.concatenate([scales.astype(jnp.uint8), qs.reshape(r, s, 128), qh], axis=-1)
    return jnp.concatenate([P.pack_f32(_row_d(dd, sqx, sq2)), flat(body)], axis=-1)


def _ks_dequant(d, mult, sh, code, name, ne0):
    """y = (d * m_b) * V_b[code]; d [R], mult/sh [R,S,8], code [R,S,8,32]."""
    dl = d[:, None, None] * mult.astype(jnp.float32)
    return flat(dl[..., None] * C.table_values(name, code, sh[..., None]))[:, :ne0]


def _iq4ks_dequantize(q, ne0):
    r, s = q.shape[0], ne0 // 256
    b = q[:, 4:].reshape(r, s, 136)
    sc = b[..., :8].astype(jnp.int32)
    lanes = C.unpack_lanes(b[..., 8:].reshape(r, s, 8, 16), 4, 2)
    return _ks_dequant(
        P.unpack_f32(q[:, :4]), (sc & 254) - 127, sc & 1, lanes.reshape(r, s, 8, 32), "iq4k", ne0
    )


def _iq5ks_dequantize(q, ne0):
    r, s = q.shape[0], ne0 // 256
    b = q[:, 4:].reshape(r, s, 168)
    sc = b[..., :8].astype(jnp.int32)
    lo = C.unpack_lanes(b[..., 8:136].reshape(r, s, 4, 32), 4, 2).reshape(r, s, 8, 32)
    hi = C.unpack_lanes(b[..., 136:168], 1, 8)
    return _ks_dequant(
        P.unpack_f32(q[:, :4]), (sc & 254) - 127, sc & 1, lo | hi << 4, "iq5nl", ne0
    )


# ---------------------------------------------------------------- iq3_ks


def _iq3ks_quantize(x, w):
    xs, ws = prepare32(x, w, sigma_2, w_x2)
    d_b, sh = C.spm(xs, ws, "iq3nl", 5, 1.0, True)
    dd = -P.argmax_abs(flat(d_b)) / jnp.float32(16)
    ls = jnp.clip(P.nearest(C.safe_inv(dd)[:, None, None] * d_b), -16, 15)
    code, q = codes_for("iq3nl", xs, dd, ls, sh)
    sqx, sq2 = C.lsq_sums(flat(ws), flat(q), flat(xs))
    live = (dd != 0)[:, None, None]
    u = jnp.where(live, ls + 16, 0)
    code = jnp.where(live[..., None], code, 0)
    r, s = code.shape[:2]
    extra = C.bits_u16(jnp.concatenate([u >> 4, sh.astype(jnp.int32)], axis=-1))
    scales = C.pack_lanes((u & 15).reshape(r, s, 2, 4), 4)
    qs = C.pack_lanes((code & 3).reshape(r, s, 2, 4, 32), 2).reshape(r, s, 64)
    qh = C.pack_lanes(code >> 2, 1)
    body = jnp.concatenate([P.pack_u16(extra), scales, qs, qh], axis=-1)
    d = jnp.where(live[:, 0, 0] & (sq2 > 0), sqx / sq2, dd)
    return jnp.concatenate([P.pack_f16(d), flat(body)], axis=-1)


def _iq3ks_dequantize(q, ne0):
    r, s = q.shape[0], ne0 // 256
    b = q[:, 2:].reshape(r, s, 102)
    extra = C.u16_bits(P.unpack_u16(b[..., 0:2]))
    u = C.unpack_lanes(b[..., 2:6], 4, 2).reshape(r, s, 8) | extra[..., :8] << 4
    lo = C.unpack_lanes(b[..., 6:70].reshape(r, s, 2, 32), 2, 4).reshape(r, s, 8, 32)
    hi = C.unpack_lanes(b[..., 70:102], 1, 8)
    return _ks_dequant(P.unpack_f16(q[:, :2]), u - 16, extra[..., 8:], lo | hi << 2, "iq3nl", ne0)


quantize_iq4_ks, dequantize_iq4_ks = C.register_pair("iq4_ks", _iq4ks_quantize, _iq4ks_dequantize)
quantize_iq5_ks, dequantize_iq5_ks = C.register_pair("iq5_ks", _iq5ks_quantize, _iq5ks_dequantize)
quantize_iq3_ks, dequantize_iq3_ks = C.register_pair("iq3_ks", _iq3ks_quantize, _iq3ks_dequantize)
