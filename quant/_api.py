"""Public quantize / dequantize / fake_quant over the kernel registry.

    quantize(x, type, imatrix=None, target)   -> numpy uint8 [R, row_bytes] (ggml layout)
    dequantize(data, type, shape, target)     -> numpy f32 of ``shape`` (last axis = row)
    fake_quant(x, type, imatrix=None, target) -> jax f32, same shape as x: dequantize(quantize(x))

x: float32 [..., ne0], R = prod(shape[:-1]) rows; imatrix: float32 [ne0] (column importance).
The kernels are jitted once per (type, target, with/without imatrix) (quantizer) and per (type,
target, ne0) (dequantizer); jax then compiles once per input shape, so a new array of a known shape
reuses the compiled code.  fake_quant chains the same two compiled stages (the bytes stay on the
device), so quantize, dequantize and fake_quant of one shape share their compilations.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ._catalog import get_type, type_in_target
from ._errors import KernelMissingError, UserError
from ._registry import dequantizer, quantizer


def _gguf_dequantize(data: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    import gguf

    try:
        qt = gguf.GGMLQuantizationType[name.upper()]
        return gguf.quants.dequantize(np.ascontiguousarray(data), qt).reshape(shape)
    except (KeyError, NotImplementedError):
        raise KernelMissingError(f"no dequantizer for {name} here") from None


@functools.lru_cache(maxsize=None)
def _jit_dequant(name: str, target: str, ne0: int):
    fn = dequantizer(name, target)
    return jax.jit(lambda q: fn(q, ne0))


@functools.lru_cache(maxsize=None)
def _jit_quant(name: str, target: str, with_w: bool):
    fn = quantizer(name, target)
    if with_w:
        return jax.jit(lambda x, w: fn(x.reshape(-1, x.shape[-1]), w))
    return jax.jit(lambda x: fn(x.reshape(-1, x.shape[-1]), None))


@functools.lru_cache(maxsize=None)
def _jit_fake(name: str, target: str, with_w: bool):
    """x [..., ne0] (, w) -> dequantize(quantize(x)) of x's shape: the two jitted stages that
    ``quantize`` and ``dequantize`` use, so each shape compiles once for all three entry points."""
    jq = _jit_quant(name, target, with_w)

    def run(x, w=None):
        q = jq(x) if w is None else jq(x, w)
        return _jit_dequant(name, target, x.shape[-1])(q).reshape(x.shape)

    return run


def dequantize(data: np.ndarray, type_: str, shape: tuple[int, ...], target: str = "mainline"):
    """Float32 values of ``data`` (uint8, ggml layout) holding a tensor of numpy ``shape``."""
    t = get_type(type_)
    shape = tuple(int(s) for s in shape)
    rows = np.asarray(data, dtype=np.uint8).reshape(math.prod(shape[:-1]), -1)
    try:
        fn = _jit_dequant(t.name, target, shape[-1])
    except KernelMissingError:
        return _gguf_dequantize(rows, t.name, shape)
    return np.asarray(fn(rows)).reshape(shape)


_all_finite = jax.jit(lambda x: jnp.all(jnp.isfinite(x)))


def _check_finite(x, what: str = "x") -> None:
    """UserError naming the first row with a NaN/inf (device-side test first: no host copy)."""
    if isinstance(x, np.ndarray) and np.isfinite(x).all():
        return
    if not isinstance(x, np.ndarray) and bool(_all_finite(x)):
        return
    bad = ~np.isfinite(np.asarray(x).reshape(-1, np.shape(x)[-1] if np.ndim(x) else 1))
    if bad.any():
        row = int(np.argmax(bad.any(axis=-1)))
        raise UserError(
            f"{what} has a non-finite value (NaN or inf) in row {row} "
            f"(column {int(np.argmax(bad[row]))}): clean the tensor before quantizing"
        )


@functools.lru_cache(maxsize=1)
def _warn_if_fma() -> None:
    from ._primitives import fma_contracted

    if fma_contracted():
        warnings.warn(
            "jax fuses a*b + c into FMAs on this backend (quant was imported after the first jax "
            "computation, or this is a GPU): quantized bytes may differ from ggml's in a few "
            "blocks",
            stacklevel=3,
        )


def _check_imatrix(imatrix, x):
    """imatrix as f32 [ne0], or [E, ne0] for a 3-D tensor of E experts (one slice each)."""
    w = jnp.asarray(imatrix, jnp.float32)
    ne0 = x.shape[-1]
    if x.ndim == 3 and w.size == x.shape[0] * ne0 and x.shape[0] > 1:
        w = w.reshape(x.shape[0], ne0)
    elif w.size == ne0:
        w = w.reshape(ne0)
    else:
        raise UserError(
            f"imatrix has {w.size} values but rows have {ne0}: use this tensor's imatrix entry"
        )
    _check_finite(w, "imatrix")
    return w


def _prepare(x, type_: str, imatrix, target: str):
    """Checked (type name, x f32, imatrix f32 [ne0] / [E, ne0] or None)."""
    t = type_in_target(type_, target)
    _warn_if_fma()
    if isinstance(x, jax.core.Tracer):
        raise UserError("quantize/fake_quant take concrete arrays, not values traced in jax.jit")
    host = x if isinstance(x, np.ndarray) and x.dtype == np.float32 else None
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise UserError(
            f"cannot quantize an array of shape {tuple(x.shape)}: need [..., ne0] with ne0 > 0"
        )
    t.row_nbytes(x.shape[-1])  # FallbackError when ne0 does not hold whole blocks
    _check_finite(x if host is None else host, "tensor")
    return t.name, x, None if imatrix is None else _check_imatrix(imatrix, x)


def _quant_device():
    """Quantizers run on the CPU backend: GPUs contract a*b+c into FMAs, which changes the
    searches' choices (measured on an H200: q5_K 26% identical blocks, 18% more error)."""
    return jax.default_device(jax.devices("cpu")[0])


def quantize(x, type_: str, imatrix=None, target: str = "mainline") -> np.ndarray:
    """ggml bytes of ``x`` [..., ne0] as ``type_``: numpy uint8 [R, row_bytes].  A 3-D tensor of
    E experts may take an imatrix [E, ne0] (expert e is quantized with row e)."""
    with _quant_device():
        return _quantize(x, type_, imatrix, target)


def _quantize(x, type_: str, imatrix, target: str) -> np.ndarray:
    name, x, w = _prepare(x, type_, imatrix, target)
    fn = _jit_quant(name, target, w is not None)
    if w is None:
        return np.asarray(fn(x))
    if w.ndim == 2:
        return np.concatenate([np.asarray(fn(x[e], w[e])) for e in range(w.shape[0])])
    return np.asarray(fn(x, w))


def fake_quant(x, type_: str, imatrix=None, target: str = "mainline") -> jax.Array:
    """dequantize(quantize(x)) as a jax f32 array of x's shape (two jitted stages, on the CPU
    backend like ``quantize``)."""
    with _quant_device():
        return _fake_quant(x, type_, imatrix, target)


def _fake_quant(x, type_: str, imatrix, target: str) -> jax.Array:
    name, x, w = _prepare(x, type_, imatrix, target)
    fn = _jit_fake(name, target, w is not None)
    if w is not None and w.ndim == 2:
        return jnp.stack([fn(x[e], w[e]) for e in range(w.shape[0])])
    return fn(x, w)


def fake_quant_fn(type_: str, target: str = "mainline", with_imatrix: bool = False):
    """The fake-quant function, ``f(x)`` or ``f(x, imatrix)`` (no input checks; traceable)."""
    t = type_in_target(type_, target)
    return _jit_fake(t.name, target, with_imatrix)
