"""K-quants q2_K, q3_K, q4_K, q5_K, q6_K (spec 2.6-2.9): quantizers (both targets), dequantizers.

Rows are split into super-blocks of 256 (B = R * ne0/256 of them, all processed at once):

    quantize_rows(x f32 [R, ne0], w f32 [ne0] | None) -> uint8 [R, ne0/256 * type_size]
    dequantize_rows(q uint8 [R, row_bytes], ne0)        -> f32 [R, ne0]

Block layouts (bytes per super-block): q2_K scales[16] qs[64] d dmin (84); q3_K hmask[32]
qs[64] scales[12] d (110); q4_K d dmin scales[12] qs[128] (144); q5_K d dmin scales[12] qh[32]
qs[128] (176); q6_K ql[128] qh[64] scales[16] d (210). "mainline" runs ggml's ref functions
without imatrix and its impl functions with one; "ik" runs the same layouts with ik's searches
(spec 2.1.5, gotcha 4). Both match the C sources (built without FMA) bit for bit, on any x86 CPU
whether or not XLA may use FMAs (see ``_scale_search`` for how). ik q2_K's ternary detector
looks at each chunk of ceil(16384/ne0) rows, as multi-threaded llama-quantize calls it (spec
3.5; quant's row slices are whole chunks); not reproduced: its sums are XLA sums, not sequential.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ._primitives import argmax_abs, f16_bits, fp16_round
from ._registry import register_dequantizer, register_quantizer
from ._slices import chunk_rows
from ._scale_search import (
    _cdiv,
    _div,
    _mul,
    _near,
    _nf,
    _seq,
    make_q3_quants,
    make_qkx3_ik,
    make_qkx_quants,
    make_qp_quants,
    make_qx_quants,
)

QK = 256
_F32 = jnp.float32
_U8 = jnp.uint8


# -------------------- helpers


def _superblocks(x, w):
    """x [R, ne0] -> [B, 256]; w [ne0] -> [B, 256] (broadcast over rows) or None."""
    r, ne0 = x.shape
    xb = jnp.asarray(x, _F32).reshape(r * (ne0 // QK), QK)
    if w is None:
        return xb, None
    wb = jnp.broadcast_to(jnp.asarray(w, _F32).reshape(1, ne0 // QK, QK), (r, ne0 // QK, QK))
    return xb, wb.reshape(xb.shape)


def _rows(parts, r):
    """Concatenate per-block byte fields [B, k_i] into rows [R, nb * sum k_i]."""
    blocks = jnp.concatenate([p.astype(_U8) for p in parts], axis=-1)
    return blocks.reshape(r, -1)


def _f16_bytes(v):
    """f32 [B] -> uint8 [B, 2] little-endian half (round to nearest even)."""
    u = f16_bits(v)
    return jnp.stack([u & 0xFF, u >> 8], axis=-1).astype(_U8)


def _f16_from(b):
    """uint8 [..., 2] -> f32."""
    u = b[..., 0].astype(jnp.uint16) | (b[..., 1].astype(jnp.uint16) << 8)
    return jax.lax.bitcast_convert_type(u, jnp.float16).astype(_F32)


def _sigma2(xb, factor: float):
    """factor * sum(x^2) / 256 over each super-block, sequential float32 (C: factor*sumx2/QK_K)."""
    s = _seq(_mul(xb, xb))
    return _div(s if factor == 1.0 else _F32(factor) * s, _F32(QK))


def _imat_weights(xb, wb, sig2):
    """qw * sqrt(sigma2 + x^2)."""
    return _mul(wb, jnp.sqrt(sig2[:, None] + _mul(xb, xb)))


def _pack_2bit(l):
    """codes [B, 256] in 0..3 -> qs [B, 64] (q2_K/q3_K order)."""
    l = l.reshape(-1, 2, 4, 32).astype(jnp.int32)
    q = l[:, :, 0] | (l[:, :, 1] << 2) | (l[:, :, 2] << 4) | (l[:, :, 3] << 6)
    return q.reshape(-1, 64)


def _unpack_2bit(qs):
    q = qs.reshape(-1, 2, 1, 32).astype(jnp.int32) >> (2 * jnp.arange(4)).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK)


def _requant(xg, l_old, dgrp, mgrp, lo, hi, off=0):
    """Re-quantize with the stored scales: groups with dgrp == 0 keep their search codes."""
    mgrp, dgrp = _nf(mgrp), _nf(dgrp)
    safe = jnp.where(dgrp == 0, 1, dgrp)[..., None]
    q = jnp.clip(_near(_div(xg + mgrp[..., None], safe)), lo, hi) + off
    return jnp.where((dgrp == 0)[..., None], l_old, q)


# -------------------- q2_K


def _q2k_scale_bytes(s, m):
    """Reference path: 4-bit scales/mins from the group maxima (no clamp; C stores uint8)."""
    max_s = jnp.maximum(jnp.max(s, axis=-1), 0)
    max_m = jnp.maximum(jnp.max(m, axis=-1), 0)
    inv_s = _div(_F32(15), jnp.where(max_s > 0, max_s, 1))
    inv_m = _div(_F32(15), jnp.where(max_m > 0, max_m, 1))
    sc = jnp.where(max_s[:, None] > 0, _near(inv_s[:, None] * s), 0)
    mn = jnp.where(max_m[:, None] > 0, _near(inv_m[:, None] * m), 0)
    byte = (sc & 0xFF) | ((mn << 4) & 0xFF)
    d = jnp.where(max_s > 0, _cdiv(max_s, 15.0), 0)
    dmin = jnp.where(max_m > 0, _cdiv(max_m, 15.0), 0)
    return byte, d, dmin


def _q2k_ref(xb, ik):
    xg = xb.reshape(-1, 16, 16)
    s, m, l = make_qkx_quants(xg, jnp.abs(xg), 3, -0.5, 0.1, 15, True, "ik" if ik else "eq")
    byte, d, dmin = _q2k_scale_bytes(s, m)
    dg = fp16_round(d)[:, None] * (byte & 0xF).astype(_F32)
    mg = fp16_round(dmin)[:, None] * (byte >> 4).astype(_F32)
    return byte, d, dmin, _requant(xg, l, dg, mg, 0, 3)


def _q2k_imat(xb, wb, ik):
    xg = xb.reshape(-1, 16, 16)
    wg = _imat_weights(xb, wb, _sigma2(xb, 0.75 if ik else 1.0)).reshape(xg.shape)
    sw = _seq(wg)
    if ik:
        s, m, l = make_qkx3_ik(xg, wg, 3, -0.9, 0.05, 36)
    else:
        s, m, l = make_qkx_quants(xg, wg, 3, -0.9, 0.05, 36, False, "le")
    dm, ls = make_qp_quants(s, sw, 15, ik)
    mm, lm = make_qp_quants(m, sw, 15, ik)
    byte = ls | (lm << 4)
    if not ik:
        dg = fp16_round(dm)[:, None] * ls.astype(_F32)
        mg = fp16_round(mm)[:, None] * lm.astype(_F32)
        return byte, dm, mm, _requant(xg, l, dg, mg, 0, 3)
    dg = _mul(dm[:, None], ls.astype(_F32))
    mg = _mul(mm[:, None], lm.astype(_F32))
    idg = jnp.where(dg != 0, _div(_F32(1), jnp.where(dg != 0, dg, 1)), 0)
    q = jnp.clip(_near((xg + mg[..., None]) * idg[..., None]), 0, 3)
    return byte, dm, mm, q


def _ternary(x, blocks):
    """ik q2_K without imatrix: TriNet detector per chunk of rows (spec 2.6 (a), 3.5).

    x [R, ne0] (zero rows, e.g. a slice's padding, change no chunk's outcome); the C sums are
    sequential over the chunk, here they are XLA sums (matters only at the threshold).
    """
    r, ne0 = x.shape
    c = chunk_rows(ne0)
    n = -(-r // c)
    xc = jnp.pad(x, ((0, n * c - r), (0, 0))).reshape(n, c * ne0)
    amax = jnp.max(jnp.abs(xc), axis=1, keepdims=True)
    t = jnp.where(xc < -0.5 * amax, -1.0, jnp.where(xc < 0.5 * amax, 0.0, 1.0)).astype(_F32)
    hit = jnp.sum((xc - amax * t) ** 2, axis=1) < _F32(0.1) * jnp.sum(xc * xc, axis=1)
    per_block = ne0 // QK
    hit_b = jnp.repeat(jnp.repeat(hit, c)[:r], per_block)
    amax_b = jnp.repeat(jnp.repeat(amax[:, 0], c)[:r], per_block)
    byte, d, dmin, l = blocks
    l3 = (t.reshape(-1)[: r * ne0].reshape(l.shape) + 1).astype(l.dtype)
    hl = hit_b.reshape((-1,) + (1,) * (l.ndim - 1))
    return (jnp.where(hit_b[:, None], 0x11, byte), jnp.where(hit_b, amax_b, d),
            jnp.where(hit_b, amax_b, dmin), jnp.where(hl, l3, l))


@partial(jax.jit, static_argnames=("ik",))
def _q2k(x, w, ik: bool):
    xb, wb = _superblocks(x, w)
    if wb is None:
        out = _q2k_ref(xb, ik)
        if ik:
            out = _ternary(jnp.asarray(x, _F32), out)
    else:
        out = _q2k_imat(xb, wb, ik)
    byte, d, dmin, l = out
    parts = [byte, _pack_2bit(l.reshape(-1, QK)), _f16_bytes(d), _f16_bytes(dmin)]
    return _rows(parts, x.shape[0])


@register_quantizer("q2_K", "mainline")
def quantize_q2_k(x, w=None):
    return _q2k(x, w, False)


@register_quantizer("q2_K", "ik")
def quantize_q2_k_ik(x, w=None):
    return _q2k(x, w, True)


@register_dequantizer("q2_K")
@partial(jax.jit, static_argnums=1)
def dequantize_q2_k(q, ne0: int):
    b = jnp.asarray(q, _U8).reshape(-1, 84)
    sc = b[:, :16].astype(jnp.int32)
    dl = _f16_from(b[:, 80:82])[:, None] * (sc & 0xF).astype(_F32)
    ml = _f16_from(b[:, 82:84])[:, None] * (sc >> 4).astype(_F32)
    l = _unpack_2bit(b[:, 16:80]).reshape(-1, 16, 16).astype(_F32)
    return (_nf(dl[..., None] * l) - ml[..., None]).reshape(-1, ne0)


# -------------------- q3_K


def _pack_q3_scales(ls):
    """6-bit codes [B, 16] (0..63) -> scales [B, 12]."""
    ls = ls.astype(jnp.int32)
    low = ls[:, :8] & 0xF | ((ls[:, 8:] & 0xF) << 4)
    hi = ls >> 4
    high = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return jnp.concatenate([low, high], axis=-1)


def _unpack_q3_scales(sb):
    sb = sb.astype(jnp.int32)
    low = jnp.concatenate([sb[:, :8] & 0xF, sb[:, :8] >> 4], axis=-1)
    high = jnp.concatenate([(sb[:, 8:12] >> (2 * k)) & 3 for k in range(4)], axis=-1)
    return (low | (high << 4)) - 32


def _q3k_ref(xb):
    xg = xb.reshape(-1, 16, 16)
    s, l = make_q3_quants(xg, 4)
    mx = argmax_abs(s)
    ok = mx != 0
    iscale = _div(_F32(-32), jnp.where(ok, mx, 1))
    ls = jnp.where(ok[:, None], jnp.clip(_near(iscale[:, None] * s), -32, 31) + 32, 0)
    return xg, l, ls, jnp.where(ok, _div(_F32(1), iscale), 0)


def _q3k_imat(xb, wb, ik):
    xg = xb.reshape(-1, 16, 16)
    wg = _imat_weights(xb, wb, _sigma2(xb, 2.0)).reshape(xg.shape)
    s, l = make_qx_quants(xg, wg, 4, ik)
    d, ls = make_qx_quants(s, _seq(wg), 32, ik)
    return xg, l, ls, d


@partial(jax.jit, static_argnames=("ik",))
def _q3k(x, w, ik: bool):
    xb, wb = _superblocks(x, w)
    xg, l, ls, d = _q3k_ref(xb) if wb is None else _q3k_imat(xb, wb, ik)
    dg = fp16_round(d)[:, None] * (ls - 32).astype(_F32)
    l = _requant(xg, l, dg, jnp.zeros_like(dg), -4, 3, 4).reshape(-1, QK)
    hbits = (l > 3).astype(jnp.int32).reshape(-1, 8, 32)
    hmask = sum(hbits[:, k] << k for k in range(8))
    parts = [hmask, _pack_2bit(l & 3), _pack_q3_scales(ls), _f16_bytes(d)]
    return _rows(parts, x.shape[0])


@register_quantizer("q3_K", "mainline")
def quantize_q3_k(x, w=None):
    return _q3k(x, w, False)


@register_quantizer("q3_K", "ik")
def quantize_q3_k_ik(x, w=None):
    return _q3k(x, w, True)


@register_dequantizer("q3_K")
@partial(jax.jit, static_argnums=1)
def dequantize_q3_k(q, ne0: int):
    b = jnp.asarray(q, _U8).reshape(-1, 110)
    hbit = (b[:, None, :32].astype(jnp.int32) >> jnp.arange(8)[None, :, None]) & 1
    hbit = hbit.reshape(-1, 16, 16)
    low = _unpack_2bit(b[:, 32:96]).reshape(-1, 16, 16)
    dl = _f16_from(b[:, 108:110])[:, None] * _unpack_q3_scales(b[:, 96:108]).astype(_F32)
    return (dl[..., None] * (low - 4 * (1 - hbit)).astype(_F32)).reshape(-1, ne0)


# -------------------- q4_K / q5_K


def _pack_k4_scales(ls, lm):
    """6-bit scales and mins [B, 8] -> scales [B, 12] (get_scale_min_k4 layout)."""
    ls, lm = ls.astype(jnp.int32), lm.astype(jnp.int32)
    first = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    second = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    third = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return jnp.concatenate([first, second, third], axis=-1)


def _unpack_k4_scales(sb):
    sb = sb.astype(jnp.int32)
    sc = jnp.concatenate([sb[:, :4] & 63, (sb[:, 8:] & 0xF) | ((sb[:, :4] >> 6) << 4)], axis=-1)
    mn = jnp.concatenate([sb[:, 4:8] & 63, (sb[:, 8:] >> 4) | ((sb[:, 4:8] >> 6) << 4)], axis=-1)
    return sc, mn


_K45 = {15: (-1.0, 0.1, 20), 31: (-0.5, 0.1, 15)}  # nmax -> rmin, rdelta, nstep of the ref path


def _qk45_ref(xb, nmax, ik):
    xg = xb.reshape(-1, 8, 32)
    av = jnp.sqrt(_div(_seq(_mul(xg, xg)), _F32(32)))
    wg = av[..., None] + jnp.abs(xg)
    rmin, rdelta, nstep = _K45[nmax]
    s, m, l = make_qkx_quants(xg, wg, nmax, rmin, rdelta, nstep, False, "ik" if ik else "eq")
    max_s = jnp.maximum(jnp.max(s, axis=-1), 0)
    max_m = jnp.maximum(jnp.max(m, axis=-1), 0)
    inv_s = jnp.where(max_s > 0, _div(_F32(63), jnp.where(max_s > 0, max_s, 1)), 0)
    inv_m = jnp.where(max_m > 0, _div(_F32(63), jnp.where(max_m > 0, max_m, 1)), 0)
    ls = jnp.minimum(63, _near(inv_s[:, None] * s) & 0xFF)
    lm = jnp.minimum(63, _near(inv_m[:, None] * m) & 0xFF)
    return xg, l, ls, lm, _cdiv(max_s, 63.0), _cdiv(max_m, 63.0)


def _qk45_imat(xb, wb, nmax, ik):
    xg = xb.reshape(-1, 8, 32)
    wg = _imat_weights(xb, wb, _sigma2(xb, 2.0)).reshape(xg.shape)
    sw = _seq(wg)
    if ik:
        s, m, l = make_qkx3_ik(xg, wg, nmax, -0.9, 0.05, 36)
    else:
        s, m, l = make_qkx_quants(xg, wg, nmax, -0.9, 0.05, 36, False, "le")
    d, ls = make_qp_quants(s, sw, 63, ik)
    dmin, lm = make_qp_quants(m, sw, 63, ik)
    return xg, l, jnp.minimum(63, ls & 0xFF), jnp.minimum(63, lm & 0xFF), d, dmin


def _qk45(x, w, nmax, ik):
    xb, wb = _superblocks(x, w)
    if wb is None:
        xg, l, ls, lm, d, dmin = _qk45_ref(xb, nmax, ik)
    else:
        xg, l, ls, lm, d, dmin = _qk45_imat(xb, wb, nmax, ik)
    dg = fp16_round(d)[:, None] * ls.astype(_F32)
    mg = fp16_round(dmin)[:, None] * lm.astype(_F32)
    l = _requant(xg, l, dg, mg, 0, nmax).reshape(-1, 4, 2, 32)
    lo = (l & 0xF)
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128)
    head = [_f16_bytes(d), _f16_bytes(dmin), _pack_k4_scales(ls, lm)]
    if nmax == 15:
        return _rows(head + [qs], x.shape[0])
    hb = (l >> 4).reshape(-1, 8, 32)
    qh = sum(hb[:, k] << k for k in range(8))
    return _rows(head + [qh, qs], x.shape[0])


_q4k = partial(jax.jit, static_argnames=("ik",))(lambda x, w, ik: _qk45(x, w, 15, ik))
_q5k = partial(jax.jit, static_argnames=("ik",))(lambda x, w, ik: _qk45(x, w, 31, ik))


@register_quantizer("q4_K", "mainline")
def quantize_q4_k(x, w=None):
    return _q4k(x, w, ik=False)


@register_quantizer("q4_K", "ik")
def quantize_q4_k_ik(x, w=None):
    return _q4k(x, w, ik=True)


@register_quantizer("q5_K", "mainline")
def quantize_q5_k(x, w=None):
    return _q5k(x, w, ik=False)


@register_quantizer("q5_K", "ik")
def quantize_q5_k_ik(x, w=None):
    return _q5k(x, w, ik=True)


def _dequant_k45(b, q):
    """b: uint8 [B, 16] head (d, dmin, scales); q: int codes [B, 8, 32] -> f32 [B, 256]."""
    sc, mn = _unpack_k4_scales(b[:, 4:16])
    d = _f16_from(b[:, 0:2])[:, None] * sc.astype(_F32)
    dm = _f16_from(b[:, 2:4])[:, None] * mn.astype(_F32)
    return (_nf(d[..., None] * q.astype(_F32)) - dm[..., None]).reshape(-1, QK)


def _nibbles(qs):
    qs = qs.reshape(-1, 4, 1, 32).astype(jnp.int32) >> jnp.array([0, 4]).reshape(1, 1, 2, 1)
    return (qs & 0xF).reshape(-1, 8, 32)


@register_dequantizer("q4_K")
@partial(jax.jit, static_argnums=1)
def dequantize_q4_k(q, ne0: int):
    b = jnp.asarray(q, _U8).reshape(-1, 144)
    return _dequant_k45(b, _nibbles(b[:, 16:])).reshape(-1, ne0)


@register_dequantizer("q5_K")
@partial(jax.jit, static_argnums=1)
def dequantize_q5_k(q, ne0: int):
    b = jnp.asarray(q, _U8).reshape(-1, 176)
    qh = (b[:, None, 16:48].astype(jnp.int32) >> jnp.arange(8)[None, :, None]) & 1
    return _dequant_k45(b, _nibbles(b[:, 48:]) | (qh << 4)).reshape(-1, ne0)


# -------------------- q6_K


@partial(jax.jit, static_argnames=("ik",))
def _q6k(x, w, ik: bool):
    xb, wb = _superblocks(x, w)
    xg = xb.reshape(-1, 16, 16)
    wg = _mul(xg, xg) if wb is None else wb.reshape(xg.shape)
    s, l = make_qx_quants(xg, wg, 32, ik)
    mx = argmax_abs(s)
    zero = jnp.abs(mx) < np.float32(1e-15)
    iscale = _div(_F32(-128), jnp.where(zero, 1, mx))
    sc = jnp.minimum(127, _near(iscale[:, None] * s))
    d = _div(_F32(1), iscale)
    dg = fp16_round(d)[:, None] * sc.astype(_F32)
    l = _requant(xg, l, dg, jnp.zeros_like(dg), -32, 31, 32).reshape(-1, 2, 4, 32)
    lo, hi = l & 0xF, l >> 4
    ql = [lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)]
    ql = jnp.concatenate(ql, axis=-1)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    parts = [ql.reshape(-1, 128), qh.reshape(-1, 64), sc & 0xFF, _f16_bytes(d)]
    blocks = jnp.concatenate([p.astype(_U8) for p in parts], axis=-1)
    blocks = jnp.where(zero[:, None], jnp.zeros_like(blocks), blocks)
    return blocks.reshape(x.shape[0], -1)


@register_quantizer("q6_K", "mainline")
def quantize_q6_k(x, w=None):
    return _q6k(x, w, False)


@register_quantizer("q6_K", "ik")
def quantize_q6_k_ik(x, w=None):
    return _q6k(x, w, True)


@register_dequantizer("q6_K")
@partial(jax.jit, static_argnums=1)
def dequantize_q6_k(q, ne0: int):
    b = jnp.asarray(q, _U8).reshape(-1, 210)
    ql = b[:, :128].reshape(-1, 2, 1, 64).astype(jnp.int32) >> jnp.array([0, 4])[:, None]
    ql = (ql & 0xF).reshape(-1, 2, 4, 32)
    qh = b[:, 128:192].reshape(-1, 2, 1, 32).astype(jnp.int32) >> (2 * jnp.arange(4))[:, None]
    code = (ql | ((qh & 3) << 4)).reshape(-1, 16, 16) - 32
    sc = jax.lax.bitcast_convert_type(b[:, 192:208], jnp.int8)
    dl = _f16_from(b[:, 208:210])[:, None] * sc.astype(_F32)
    return (dl[..., None] * code.astype(_F32)).reshape(-1, ne0)
