"""Public quantize / dequantize / fake_quant over the kernel registry.

    quantize(x, type, imatrix=None, target) -> uint8 [R, row_bytes]   (ggml row layout, row meta first)
    dequantize(data, type, shape)           -> f32 shape                (numpy shape, last axis = row)
    fake_quant(x, type, imatrix=None, target) -> jax f32, same shape as x: dequantize(quantize(x))
"""

from __future__ import annotations

import math

import numpy as np

from ._catalog import get_type, type_in_target
from ._errors import KernelMissingError
from ._registry import dequantizer


def _gguf_dequantize(data: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    import gguf

    try:
        qt = gguf.GGMLQuantizationType[name.upper()]
        return gguf.quants.dequantize(np.ascontiguousarray(data), qt).reshape(shape)
    except (KeyError, NotImplementedError):
        raise KernelMissingError(f"no dequantizer for {name} here") from None


def dequantize(data: np.ndarray, type_: str, shape: tuple[int, ...], target: str = "mainline"):
    """Float32 values of ``data`` (uint8, ggml layout) holding a tensor of numpy ``shape``."""
    t = get_type(type_)
    shape = tuple(shape)
    rows = np.asarray(data, dtype=np.uint8).reshape(math.prod(shape[:-1]), -1)
    try:
        fn = dequantizer(t.name, target)
    except KernelMissingError:
        return _gguf_dequantize(rows, t.name, shape)
    return np.asarray(fn(rows, shape[-1])).reshape(shape)


def check_quantizable(type_: str, target: str) -> None:
    type_in_target(type_, target)
