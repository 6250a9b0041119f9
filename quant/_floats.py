"""Float "quant" types f32, f16, bf16 (spec section 1): rows of ne0 values, 4 / 2 / 2 bytes each.

    quantize:   x f32 [R, ne0] -> uint8 [R, ne0 * size]  (f16: nearest even; bf16: ggml's rounding)
    dequantize: q uint8 [R, ne0 * size] -> f32 [R, ne0]   (exact)
"""

from __future__ import annotations

from ._primitives import pack_bf16, pack_f16, pack_f32, unpack_bf16, unpack_f16, unpack_f32
from ._registry import register_dequantizer, register_quantizer


def _rows(b):
    return b.reshape(b.shape[0], -1)


def _fields(q, size: int):
    return q.reshape(q.shape[0], -1, size)


@register_quantizer("f32")
def quantize_f32(x, w=None):
    return _rows(pack_f32(x))


@register_dequantizer("f32")
def dequantize_f32(q, ne0: int):
    return unpack_f32(_fields(q, 4))


@register_quantizer("f16")
def quantize_f16(x, w=None):
    return _rows(pack_f16(x))


@register_dequantizer("f16")
def dequantize_f16(q, ne0: int):
    return unpack_f16(_fields(q, 2))


@register_quantizer("bf16")
def quantize_bf16(x, w=None):
    return _rows(pack_bf16(x))


@register_dequantizer("bf16")
def dequantize_bf16(q, ne0: int):
    return unpack_bf16(_fields(q, 2))
