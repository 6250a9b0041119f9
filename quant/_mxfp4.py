"""mxfp4 (32 weights, 17 bytes: ``e:u8 (E8M0), qs[16]``): mainline quantize_row_mxfp4_ref (= ik).

    e = floor(log2(max|x|)) - 2 + 127 (0 for an all-zero block); d = 2^(e - 128) (E8M0 "half")
    code_j = argmin_i |K[i]*d - x_j| (first wins), K = kvalues_mxfp4 (doubled e2m1); y = K[code]*d

Shapes: x f32 [R, ne0] -> blocks [R, nb, 32] -> uint8 [R, nb * 17].  No imatrix path anywhere.
floor(log2f(a)) comes from ``floor_log2f``, not XLA's log2 (wrong at some powers of two): for
a = m * 2^E, m in [1, 2), glibc's log2f rounds E + log2(m) up to E + 1 when m is just below 2,
i.e. when -log2(m/2) is at most half the float32 spacing next to E + 1 (tested against libm).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from ._legacy import join_fields, nibbles32, split_blocks, to_blocks, unnibbles32
from ._registry import register_dequantizer, register_quantizer

KVALUES_MXFP4 = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)
_K = np.asarray(KVALUES_MXFP4, np.float32)


def _half_spacing_table() -> np.ndarray:
    """For E = -127..128: half the float32 spacing next to n = E + 1, on the side facing E."""
    n = np.arange(-127, 129, dtype=np.float32) + np.float32(1)
    gap = np.abs(n - np.nextafter(n, np.float32(-np.inf)))
    # n = 0: a log2 just below 0 never rounds up to 0
    return np.where(n == 0, -1.0, gap / 2).astype(np.float32)


_HALF_GAP = _half_spacing_table()


def floor_log2f(a):
    """floor(log2f(a)) for normal float32 a > 0, int32, as glibc's log2f rounds it."""
    bits = lax.bitcast_convert_type(jnp.asarray(a, jnp.float32), jnp.int32)
    e = ((bits >> 23) & 0xFF) - 127
    m = lax.bitcast_convert_type((bits & 0x7FFFFF) | 0x3F800000, jnp.float32)  # [1, 2)
    u = (2.0 - m) * 0.5  # exact; log2(m) = 1 - delta with delta = -log2(1 - u)
    delta = u * np.float32(1 / np.log(2)) * (1.0 + u * 0.5)
    return jnp.where(delta <= jnp.asarray(_HALF_GAP)[jnp.clip(e + 127, 0, 255)], e + 1, e)


def e8m0_half(e):
    """ggml_e8m0_to_fp32_half: 2^(e - 128) as float32 bits (denormal for e < 2)."""
    e = e.astype(jnp.uint32)
    bits = jnp.where(e < 2, jnp.uint32(0x00200000) << e, (e - 1) << 23)
    return lax.bitcast_convert_type(bits.astype(jnp.uint32), jnp.float32)


@register_quantizer("mxfp4")
def quantize_mxfp4(x, w=None):
    xb = to_blocks(x)
    amax = jnp.max(jnp.abs(xb), axis=-1)
    safe = jnp.where(amax > 0, amax, 1.0)
    e = jnp.where(amax > 0, floor_log2f(safe) - 2 + 127, 0) & 0xFF
    d = e8m0_half(e)
    err = jnp.abs(jnp.asarray(_K) * d[..., None, None] - xb[..., None])
    codes = jnp.argmin(err, axis=-1).astype(jnp.int32)
    return join_fields(e[..., None], nibbles32(codes))


@register_dequantizer("mxfp4")
def dequantize_mxfp4(q, ne0: int):
    b = split_blocks(q, 17)
    d = e8m0_half(b[..., 0])
    vals = jnp.asarray(_K)[unnibbles32(b[..., 1:])]
    return (vals * d[..., None]).reshape(q.shape[0], ne0)
