"""Legacy 32-weight types q8_0, q4_0, q4_1, q5_0, q5_1 (both targets), q6_0 (ik); spec 2.2-2.5.

Shapes: x f32 [R, ne0] -> blocks xb [R, nb, 32] (nb = ne0 / 32) -> bytes uint8 [R, nb * type_size].

    q8_0  d:f16 qs:int8[32]                 y = d*q
    q4_0  d:f16 qs[16]                      y = d*(q - 8)     q in 0..15, q[j] | q[j+16] << 4
    q5_0  d:f16 qh:u32 qs[16]               y = d*(q - 16)    bit 4 of q[j] is bit j of qh
    q4_1  d:f16 m:f16 qs[16]                y = d*q + m
    q5_1  d:f16 m:f16 qh:u32 qs[16]         y = d*q + m
    q6_0  d:f16 qh[8] qs[16]  (ik)          y = d*(q - 32)    bits 4-5 of q[j], q[j+16]: qh[j % 8]

Without imatrix every type uses ggml's round-to-nearest reference; with imatrix q4_0/q5_0 (and q6_0
always) run the symmetric scale search MQX, q4_1/q5_1 the asymmetric MQKX (spec 2.1), mainline or
ik flavour per target, weighted by w = qw*sqrt(sigma2 + x^2) with sigma2 = sum_row(x^2)/ne0.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ._primitives import (
    argmax_abs,
    div,
    pack_bits,
    pack_f16,
    pack_nibbles,
    roundf_away,
    seq_sum,
    trunc_int,
    unpack_bits,
    unpack_f16,
    unpack_nibbles,
)
from ._registry import register_dequantizer, register_quantizer

QK = 32


# ---- layout helpers -------------------------------------------------------------------------

def to_blocks(x, n: int = QK):
    """[R, ne0] -> [R, ne0 / n, n]."""
    return x.reshape(x.shape[0], -1, n)


def join_fields(*fields):
    """Per-block byte fields [R, nb, k_i] -> row bytes uint8 [R, nb * sum(k_i)]."""
    b = jnp.concatenate([f.astype(jnp.uint8) for f in fields], axis=-1)
    return b.reshape(b.shape[0], -1)


def split_blocks(q, type_size: int):
    """Row bytes [R, nb * type_size] -> [R, nb, type_size]."""
    return q.reshape(q.shape[0], -1, type_size)


def nibbles32(q):
    """Codes [..., 32] (0..15 used) -> 16 bytes: q[j] | q[j + 16] << 4."""
    return pack_nibbles(q[..., :16] & 0xF, q[..., 16:] & 0xF)


def unnibbles32(b):
    """16 bytes -> codes [..., 32] (int32)."""
    lo, hi = unpack_nibbles(b)
    return jnp.concatenate([lo, hi], axis=-1).astype(jnp.int32)


def qh32(q):
    """Bit 4 of each of 32 codes -> u32 little-endian bytes [..., 4] (bit j = code j)."""
    return pack_bits((q >> 4) & 1)


def row_sigma2(x):
    """sum over the whole row of x^2 (sequential) / ne0, as [R, 1, 1] for block broadcasting."""
    return div(seq_sum(x * x), x.shape[-1])[:, None, None]


def imatrix_weights(x, w):
    """[R, nb, 32] weights qw * sqrt(sigma2 + x^2) (spec 2.3)."""
    xb = to_blocks(x)
    return to_blocks(w[None, :]) * jnp.sqrt(row_sigma2(x) + xb * xb)


def _inv(d):
    return jnp.where(d != 0, div(1.0, jnp.where(d != 0, d, 1.0)), 0.0).astype(jnp.float32)


# ---- q8_0 -----------------------------------------------------------------------------------

@register_quantizer("q8_0")
def quantize_q8_0(x, w=None):
    xb = to_blocks(x)
    d = div(jnp.max(jnp.abs(xb), axis=-1), 127.0)
    q = roundf_away(xb * _inv(d)[..., None]).astype(jnp.int32)
    return join_fields(pack_f16(d), q & 0xFF)


@register_dequantizer("q8_0")
def dequantize_q8_0(q, ne0: int):
    b = split_blocks(q, 34)
    d = unpack_f16(b[..., 0:2])
    qs = lax.bitcast_convert_type(b[..., 2:], jnp.int8).astype(jnp.float32)
    return (d[..., None] * qs).reshape(q.shape[0], ne0)


# ---- q4_0 / q5_0 ----------------------------------------------------------------------------

def _ref_symmetric(x, nmax: int):
    """Reference q4_0 (nmax 8) / q5_0 (nmax 16): d = max / -nmax, codes [R, nb, 32] int32."""
    xb = to_blocks(x)
    d = div(argmax_abs(xb), -nmax)
    codes = trunc_int(xb * _inv(d)[..., None] + jnp.float32(nmax + 0.5))
    return d, jnp.minimum(2 * nmax - 1, codes)


def _mqx_symmetric(x, w, nmax: int, target: str):
    from . import _scale_search as ss

    return ss.make_qx_quants(to_blocks(x), imatrix_weights(x, w), nmax, ik=target == "ik")


def _symmetric(x, w, nmax: int, target: str):
    return _ref_symmetric(x, nmax) if w is None else _mqx_symmetric(x, w, nmax, target)


def _register_q40(target: str):
    @register_quantizer("q4_0", target)
    def quantize_q4_0(x, w=None):
        d, codes = _symmetric(x, w, 8, target)
        return join_fields(pack_f16(d), nibbles32(codes))

    @register_quantizer("q5_0", target)
    def quantize_q5_0(x, w=None):
        d, codes = _symmetric(x, w, 16, target)
        return join_fields(pack_f16(d), qh32(codes), nibbles32(codes))


for _t in ("mainline", "ik"):
    _register_q40(_t)


@register_dequantizer("q4_0")
def dequantize_q4_0(q, ne0: int):
    b = split_blocks(q, 18)
    d = unpack_f16(b[..., 0:2])
    codes = unnibbles32(b[..., 2:])
    return (d[..., None] * (codes - 8).astype(jnp.float32)).reshape(q.shape[0], ne0)


def _codes5(qh, qs):
    return unnibbles32(qs) | (unpack_bits(qh).astype(jnp.int32) << 4)


@register_dequantizer("q5_0")
def dequantize_q5_0(q, ne0: int):
    b = split_blocks(q, 22)
    d = unpack_f16(b[..., 0:2])
    codes = _codes5(b[..., 2:6], b[..., 6:])
    return (d[..., None] * (codes - 16).astype(jnp.float32)).reshape(q.shape[0], ne0)


# ---- q4_1 / q5_1 ----------------------------------------------------------------------------

def _ref_affine(x, nmax: int):
    """Reference q4_1 (nmax 15) / q5_1 (nmax 31): (d, min, codes int32 [R, nb, 32])."""
    xb = to_blocks(x)
    mn, mx = jnp.min(xb, axis=-1), jnp.max(xb, axis=-1)
    d = div(mx - mn, nmax)
    codes = trunc_int((xb - mn[..., None]) * _inv(d)[..., None] + jnp.float32(0.5))
    codes = jnp.minimum(15, codes) if nmax == 15 else codes & 0xFF
    return d, mn, codes


def _mqkx_affine(x, w, nmax: int, target: str):
    from . import _scale_search as ss

    xb, wb = to_blocks(x), imatrix_weights(x, w)
    if target == "mainline":
        d, the_min, codes = ss.make_qkx_quants(xb, wb, nmax, -0.9, 0.05, 36, False, guard="le")
    else:
        d, the_min, codes = ss.make_qkx3_ik(xb, wb, nmax, -0.9, 0.05, 36)
    return d, -the_min, codes


def _affine(x, w, nmax: int, target: str):
    return _ref_affine(x, nmax) if w is None else _mqkx_affine(x, w, nmax, target)


def _register_q41(target: str):
    @register_quantizer("q4_1", target)
    def quantize_q4_1(x, w=None):
        d, m, codes = _affine(x, w, 15, target)
        return join_fields(pack_f16(d), pack_f16(m), nibbles32(codes))

    @register_quantizer("q5_1", target)
    def quantize_q5_1(x, w=None):
        d, m, codes = _affine(x, w, 31, target)
        return join_fields(pack_f16(d), pack_f16(m), qh32(codes), nibbles32(codes))


for _t in ("mainline", "ik"):
    _register_q41(_t)


@register_dequantizer("q4_1")
def dequantize_q4_1(q, ne0: int):
    b = split_blocks(q, 20)
    d, m = unpack_f16(b[..., 0:2]), unpack_f16(b[..., 2:4])
    codes = unnibbles32(b[..., 4:]).astype(jnp.float32)
    return (codes * d[..., None] + m[..., None]).reshape(q.shape[0], ne0)


@register_dequantizer("q5_1")
def dequantize_q5_1(q, ne0: int):
    b = split_blocks(q, 24)
    d, m = unpack_f16(b[..., 0:2]), unpack_f16(b[..., 2:4])
    codes = _codes5(b[..., 4:8], b[..., 8:]).astype(jnp.float32)
    return (codes * d[..., None] + m[..., None]).reshape(q.shape[0], ne0)


# ---- q6_0 (ik) ------------------------------------------------------------------------------

def q6_0_weights(x, w):
    """ik q6_0: imatrix weights as 2.3, else x^2 (spec 2.5)."""
    if w is not None:
        return imatrix_weights(x, w)
    xb = to_blocks(x)
    return xb * xb


def _q6_0_high(codes):
    """qh[8]: h_j = (q_j >> 4) | (q_{j+16} >> 4) << 2 (j < 16) into qh[j % 8] at bit 4*(j // 8)."""
    h = ((codes[..., :16] >> 4) & 3) | (((codes[..., 16:] >> 4) & 3) << 2)
    return h[..., :8] | (h[..., 8:] << 4)


@register_quantizer("q6_0", "ik")
def quantize_q6_0(x, w=None):
    from . import _scale_search as ss

    d, codes = ss.make_qx_quants(to_blocks(x), q6_0_weights(x, w), 32, ik=True)
    return join_fields(pack_f16(d), _q6_0_high(codes), nibbles32(codes))


@register_dequantizer("q6_0", "ik")
def dequantize_q6_0(q, ne0: int):
    b = split_blocks(q, 26)
    d = unpack_f16(b[..., 0:2])
    qh = b[..., 2:10].astype(jnp.int32)
    h = jnp.concatenate([qh & 0xF, qh >> 4], axis=-1)  # h_j, j = 0..15
    high = jnp.concatenate([h & 3, h >> 2], axis=-1) << 4
    codes = unnibbles32(b[..., 10:]) | high
    return (d[..., None] * (codes - 32).astype(jnp.float32)).reshape(q.shape[0], ne0)


__all__ = ["to_blocks", "join_fields", "split_blocks", "nibbles32", "unnibbles32", "qh32",
           "row_sigma2", "imatrix_weights"]
