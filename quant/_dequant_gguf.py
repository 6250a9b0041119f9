"""JAX dequantizers for the types only ``gguf`` 0.19 could dequantize here (codebook i-quants,
ternary and fp4 types), value for value equal to ``gguf.quants.dequantize`` (= ggml's to_float).

    iq2_xxs iq2_xs iq2_s iq3_xxs iq3_s iq1_s iq1_m   (256 weights; grid codebooks + sign bits)
    tq1_0 tq2_0                                      (256 weights; ternary)
    nvfp4                                            (64 weights; 4 UE4M3 scales + e2m1 codes)

Shapes: q uint8 [R, nb * type_size] -> blocks [R, nb, type_size] -> f32 [R, nb * block].
The grids (``iq2xxs_grid`` ...) and ``ksigns`` come from ``gguf.quants`` at import time, unpacked
once to float32 [N, 8] / [N, 4] tables; arithmetic in ggml's order, e.g. db = d*(0.5 + s)*0.25.
"""

from __future__ import annotations

import gguf.quants as gq
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._legacy import split_blocks
from ._mxfp4 import KVALUES_MXFP4
from ._primitives import unpack_f16, unpack_u16, unpack_u32
from ._registry import register_dequantizer

QK_K = 256


def _grid(cls) -> np.ndarray:
    cls.init_grid()
    return np.asarray(cls.grid, np.float32).reshape(cls.grid_shape)


_GRID_NAMES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S")
_GRIDS = {n: _grid(getattr(gq, n)) for n in _GRID_NAMES}
_KSIGNS = np.frombuffer(gq.IQ2_XXS.ksigns, np.uint8).astype(np.int32)
_IQ1_DELTA = np.float32(0.125)


def _bits(v, shifts, mask):
    """v [...] -> (v[..., None] >> shifts) & mask, [..., len(shifts)]."""
    return (v[..., None] >> jnp.asarray(shifts, v.dtype)) & mask


def _u16s(b):
    return unpack_u16(b.reshape(b.shape[:-1] + (-1, 2)))


def _u32s(b):
    return unpack_u32(b.reshape(b.shape[:-1] + (-1, 4)))


def _sign_bits(byte):
    """bytes [...] -> +-1.0 [..., 8] from the 8 bits (bit set: -1)."""
    bits = _bits(byte.astype(jnp.int32), range(8), 1)
    return jnp.where(bits == 0, 1.0, -1.0).astype(jnp.float32)


def _ksign(idx7):
    """7-bit sign index -> +-1.0 [..., 8] through ksigns (8th bit = parity)."""
    return _sign_bits(jnp.asarray(_KSIGNS)[idx7.astype(jnp.int32)])


def _lookup(name: str, idx):
    return jnp.asarray(_GRIDS[name])[idx.astype(jnp.int32)]


def _out(y, q):
    return y.reshape(q.shape[0], -1)


def _nibble_scales(b):
    """scale bytes [..., k] -> [..., 2k] low nibble then high nibble of each byte."""
    return _bits(b.astype(jnp.int32), (0, 4), 0xF).reshape(b.shape[:-1] + (-1,))


@register_dequantizer("iq2_xxs")
def dequantize_iq2_xxs(q, ne0: int):
    b = split_blocks(q, 66)
    d = unpack_f16(b[..., 0:2])
    qs = _u32s(b[..., 2:]).reshape(b.shape[:-1] + (-1, 2))  # [R, nb, 8, 2]
    db = d[..., None] * (0.5 + (qs[..., 1] >> 28).astype(jnp.float32)) * 0.25
    signs = _ksign(_bits(qs[..., 1], (0, 7, 14, 21), 0x7F))  # [R, nb, 8, 4, 8]
    grid_idx = _bits(qs[..., 0], (0, 8, 16, 24), 0xFF)
    grid = _lookup("IQ2_XXS", grid_idx)
    return _out(db[..., None, None] * grid * signs, q)


@register_dequantizer("iq2_xs")
def dequantize_iq2_xs(q, ne0: int):
    b = split_blocks(q, 74)
    d = unpack_f16(b[..., 0:2])
    qs = _u16s(b[..., 2:66])  # [R, nb, 32]
    sc = _nibble_scales(b[..., 66:74]).astype(jnp.float32)  # [R, nb, 16]
    db = d[..., None] * (0.5 + sc) * 0.25
    signs = _ksign(qs >> 9).reshape(qs.shape[:-1] + (16, 2, 8))
    grid = _lookup("IQ2_XS", qs & 511).reshape(qs.shape[:-1] + (16, 2, 8))
    return _out(db[..., None, None] * grid * signs, q)


@register_dequantizer("iq2_s")
def dequantize_iq2_s(q, ne0: int):
    b = split_blocks(q, 82)
    d = unpack_f16(b[..., 0:2])
    qs, sgn, qh, scb = b[..., 2:34], b[..., 34:66], b[..., 66:74], b[..., 74:82]
    db = d[..., None] * (0.5 + _nibble_scales(scb).astype(jnp.float32)) * 0.25  # [R, nb, 16]
    signs = _sign_bits(sgn).reshape(sgn.shape[:-1] + (16, 2, 8))
    high = _bits(qh.astype(jnp.int32), (0, 2, 4, 6), 3).reshape(qh.shape[:-1] + (-1,))
    idx = qs.astype(jnp.int32) | (high << 8)
    grid = _lookup("IQ2_S", idx).reshape(idx.shape[:-1] + (16, 2, 8))
    return _out(db[..., None, None] * grid * signs, q)


@register_dequantizer("iq3_xxs")
def dequantize_iq3_xxs(q, ne0: int):
    b = split_blocks(q, 98)
    d = unpack_f16(b[..., 0:2])
    qs = b[..., 2:66]
    sc = _u32s(b[..., 66:98])  # [R, nb, 8]
    db = d[..., None] * (0.5 + (sc >> 28).astype(jnp.float32)) * 0.5
    signs = _ksign(_bits(sc, (0, 7, 14, 21), 0x7F))  # [R, nb, 8, 4, 8]
    grid = _lookup("IQ3_XXS", qs).reshape(qs.shape[:-1] + (8, 4, 8))
    return _out(db[..., None, None] * grid * signs, q)


@register_dequantizer("iq3_s")
def dequantize_iq3_s(q, ne0: int):
    b = split_blocks(q, 110)
    d = unpack_f16(b[..., 0:2])
    qs, qh, sgn, scb = b[..., 2:66], b[..., 66:74], b[..., 74:106], b[..., 106:110]
    db = d[..., None] * (1 + 2 * _nibble_scales(scb)).astype(jnp.float32)  # [R, nb, 8]
    signs = _sign_bits(sgn).reshape(sgn.shape[:-1] + (8, 4, 8))
    high = _bits(qh.astype(jnp.int32), range(8), 1).reshape(qh.shape[:-1] + (-1,))
    idx = qs.astype(jnp.int32) | (high << 8)
    grid = _lookup("IQ3_S", idx).reshape(idx.shape[:-1] + (8, 4, 8))
    return _out(db[..., None, None] * grid * signs, q)


@register_dequantizer("iq1_s")
def dequantize_iq1_s(q, ne0: int):
    b = split_blocks(q, 50)
    d = unpack_f16(b[..., 0:2])
    qs, qh = b[..., 2:34], _u16s(b[..., 34:50]).astype(jnp.int32)  # qh [R, nb, 8]
    dl = d[..., None] * (2 * ((qh >> 12) & 7) + 1).astype(jnp.float32)
    delta = jnp.where((qh & 0x8000) == 0, _IQ1_DELTA, -_IQ1_DELTA)
    idx = qs.astype(jnp.int32) | (_bits(qh, (0, 3, 6, 9), 7) << 8).reshape(qs.shape)
    grid = _lookup("IQ1_S", idx).reshape(idx.shape[:-1] + (8, 4, 8))
    return _out(dl[..., None, None] * (grid + delta[..., None, None]), q)


@register_dequantizer("iq1_m")
def dequantize_iq1_m(q, ne0: int):
    b = split_blocks(q, 56)
    qs, qh, scb = b[..., 0:32], b[..., 32:48].astype(jnp.int32), b[..., 48:56]
    sc = _u16s(scb).astype(jnp.int32)  # [R, nb, 4]
    dbits = ((sc & 0xF000) >> jnp.asarray([12, 8, 4, 0])).sum(axis=-1)
    d = lax.bitcast_convert_type(dbits.astype(jnp.uint16), jnp.float16).astype(jnp.float32)
    s3 = _bits(sc, (0, 3, 6, 9), 7).reshape(sc.shape[:-1] + (-1,))  # [R, nb, 16]
    dl = d[..., None] * (2 * s3 + 1).astype(jnp.float32)
    nib = _bits(qh, (0, 4), 0xF).reshape(qh.shape[:-1] + (-1,))  # [R, nb, 32]
    idx = qs.astype(jnp.int32) | ((nib & 7) << 8)
    delta = jnp.where((nib & 8) == 0, _IQ1_DELTA, -_IQ1_DELTA).reshape(nib.shape[:-1] + (16, 2, 1))
    grid = _lookup("IQ1_S", idx).reshape(idx.shape[:-1] + (16, 2, 8))
    return _out(dl[..., None, None] * (grid + delta), q)


def _ternary(v):
    """base-3 digit extraction of tq1_0: ((v * 3) >> 8) - 1 on 16-bit products."""
    return ((v.astype(jnp.int32) * 3) >> 8) - 1


@register_dequantizer("tq1_0")
def dequantize_tq1_0(q, ne0: int):
    b = split_blocks(q, 54)
    qs, qh, d = b[..., 0:48], b[..., 48:52], unpack_f16(b[..., 52:54])
    pw5 = jnp.asarray([1, 3, 9, 27, 81], jnp.uint8)[:, None]
    qs0 = (qs[..., None, 0:32] * pw5).reshape(b.shape[:-1] + (-1,))
    qs1 = (qs[..., None, 32:48] * pw5).reshape(b.shape[:-1] + (-1,))
    qh4 = (qh[..., None, :] * pw5[:4]).reshape(b.shape[:-1] + (-1,))
    t = _ternary(jnp.concatenate([qs0, qs1, qh4], axis=-1)).astype(jnp.float32)
    return _out(d[..., None] * t, q)


@register_dequantizer("tq2_0")
def dequantize_tq2_0(q, ne0: int):
    b = split_blocks(q, 66)
    qs, d = b[..., 0:64].astype(jnp.int32), unpack_f16(b[..., 64:66])
    t = (qs.reshape(b.shape[:-1] + (2, 1, 32)) >> jnp.asarray([0, 2, 4, 6])[:, None]) & 3
    return _out(d[..., None] * (t.reshape(b.shape[:-1] + (-1,)) - 1).astype(jnp.float32), q)


def ue4m3_half(x):
    """Unsigned E4M3 (bias 7) byte -> 0.5 * value (kvalues convention); 0 and 0x7F give 0."""
    x = x.astype(jnp.int32)
    e, m = (x >> 3) & 0xF, (x & 7).astype(jnp.float32)
    pow2 = lax.bitcast_convert_type(((e + 120) << 23).astype(jnp.int32), jnp.float32)  # 2^(e-7)
    raw = jnp.where(e == 0, m * 2.0**-9, (1.0 + m * 0.125) * pow2)
    return jnp.where((x == 0) | (x == 0x7F), 0.0, raw * 0.5).astype(jnp.float32)


@register_dequantizer("nvfp4")
def dequantize_nvfp4(q, ne0: int):
    b = split_blocks(q, 36)
    d = ue4m3_half(b[..., 0:4])  # [R, nb, 4]
    qs = b[..., 4:36].reshape(b.shape[:-1] + (4, 8)).astype(jnp.int32)
    codes = jnp.concatenate([qs & 0xF, qs >> 4], axis=-1)  # [R, nb, 4, 16]
    vals = jnp.asarray(np.asarray(KVALUES_MXFP4, np.float32))[codes]
    return _out(d[..., None] * vals, q)
