"""Public quantize / dequantize / fake_quant over the kernel registry.

    quantize(x, type, imatrix=None, target, device=None)   -> numpy uint8 [R, row_bytes] (ggml)
    dequantize(data, type, shape, target, device=None)     -> numpy f32 of ``shape`` (last = row)
    fake_quant(x, type, imatrix=None, target, device=None) -> jax f32, x's shape:
                                                              dequantize(quantize(x))

x: float [..., ne0] (numpy, memory-mapped or jax), R = prod(shape[:-1]) rows; imatrix: float32
[ne0] (column importance), or [E, ne0] for a 3-D tensor of E experts.

Rows go through the kernels in slices of S rows (``_slices``: S * ne0 <= 2^19 weights on the
CPU, so intermediates stay ~150 MB whatever the tensor), on every core.  The kernels are jitted
once per (type, target, with/without imatrix, FMA guard) (quantizer) and per (type, target, ne0)
(dequantizer), and jax compiles once per slice shape: one per (type, ne0) for all tensors of at
least S rows, a power of two of rows below that.  fake_quant chains the same two compiled
stages per slice (the bytes stay on the device), so all three entry points share compilations.

device: None or "cpu" (the CPU backend, the default), "gpu", or a ``jax.Device``.  Off the CPU
the kernels run FMA-guarded (``_fma_guard``: every product rounded on its own, as ggml's C does);
``fma_guard=True`` runs that same guarded program on the CPU (the tests compare its bytes);
every entry point takes ``device`` and ``fma_guard`` (dequantizers multiply and add too).
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import numpy as np

from ._catalog import get_type, type_in_target
from ._errors import KernelMissingError, UserError
from ._fma_guard import guarded
from ._registry import dequantizer, quantizer
from ._slices import run_slices, slice_rows

_ZERO = np.int32(0)  # the FMA guard's run-time zero


def _gguf_dequantize(data: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    import gguf

    try:
        qt = gguf.GGMLQuantizationType[name.upper()]
        return gguf.quants.dequantize(np.ascontiguousarray(data), qt).reshape(shape)
    except (KeyError, NotImplementedError):
        raise KernelMissingError(f"no dequantizer for {name} here") from None


def _jit_dequant(name: str, target: str, ne0: int, guard: bool = False):
    """q uint8 [S, row_bytes] (, k: the guard's zero) -> f32 [S, ne0]."""
    return _jit_dequant_of(name, target, int(ne0), bool(guard))


@functools.lru_cache(maxsize=None)
def _jit_dequant_of(name: str, target: str, ne0: int, guard: bool):
    fn = dequantizer(name, target)
    if guard:
        g = guarded(lambda q: fn(q, ne0))
        return jax.jit(lambda q, k: g(q, k))
    return jax.jit(lambda q: fn(q, ne0))


def _dequant_stage(name, target, ne0, guard):
    jd = _jit_dequant(name, target, ne0, guard)
    return (lambda q: jd(q, _ZERO)) if guard else jd


def _jit_quant(name: str, target: str, with_w: bool, guard: bool = False):
    """x [S, ne0] (, w [ne0]) (, k: the guard's zero) -> uint8 [S, row_bytes]."""
    return _jit_quant_of(name, target, bool(with_w), bool(guard))


@functools.lru_cache(maxsize=None)
def _jit_quant_of(name: str, target: str, with_w: bool, guard: bool):
    fn = quantizer(name, target)
    if guard:
        g = guarded(lambda x, w: fn(x, w))
        if with_w:
            return jax.jit(lambda x, w, k: g(x.reshape(-1, x.shape[-1]), w, k))
        return jax.jit(lambda x, k: g(x.reshape(-1, x.shape[-1]), None, k))
    if with_w:
        return jax.jit(lambda x, w: fn(x.reshape(-1, x.shape[-1]), w))
    return jax.jit(lambda x: fn(x.reshape(-1, x.shape[-1]), None))


@functools.lru_cache(maxsize=None)
def _jit_fake(name: str, target: str, with_w: bool):
    """x [..., ne0] (, w) -> dequantize(quantize(x)) of x's shape, whole (traceable)."""
    jq = _jit_quant(name, target, with_w)

    def run(x, w=None):
        q = jq(x) if w is None else jq(x, w)
        return _jit_dequant(name, target, x.shape[-1])(q).reshape(x.shape)

    return run


# ---- checks -------------------------------------------------------------------------------------

def _check_finite(x, what: str = "x", row0: int = 0) -> None:
    """UserError naming the first row (counted from ``row0``) with a NaN/inf; x numpy."""
    if np.isfinite(x).all():
        return
    bad = ~np.isfinite(x.reshape(-1, x.shape[-1] if x.ndim else 1))
    row = int(np.argmax(bad.any(axis=-1)))
    raise UserError(
        f"{what} has a non-finite value (NaN or inf) in row {row0 + row} "
        f"(column {int(np.argmax(bad[row]))}): clean the tensor before quantizing"
    )


@functools.lru_cache(maxsize=1)
def _warn_if_fma() -> None:
    from ._primitives import fma_contracted

    with jax.default_device(jax.devices("cpu")[0]):  # the plain kernels' backend
        fused = fma_contracted()
    if fused:
        warnings.warn(
            "jax fuses a*b + c into FMAs on this backend (quant was imported after the first jax "
            "computation): quantized bytes may differ from ggml's in a few blocks; pass "
            "fma_guard=True",
            stacklevel=3,
        )


def _check_imatrix(imatrix, shape) -> np.ndarray:
    """imatrix as f32 [ne0], or [E, ne0] for a 3-D tensor of E experts (one slice each)."""
    w = np.asarray(imatrix, np.float32)
    ne0 = shape[-1]
    if len(shape) == 3 and w.size == shape[0] * ne0 and shape[0] > 1:
        w = w.reshape(shape[0], ne0)
    elif w.size == ne0:
        w = w.reshape(ne0)
    else:
        raise UserError(
            f"imatrix has {w.size} values but rows have {ne0}: use this tensor's imatrix entry"
        )
    _check_finite(w, "imatrix")
    return w


def _host_rows(x) -> np.ndarray:
    """x as a host array of rows [R, ne0] (a view where possible; no float32 copy yet)."""
    if isinstance(x, jax.core.Tracer):
        raise UserError("quantize/fake_quant take concrete arrays, not values traced in jax.jit")
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.ndim < 1 or a.shape[-1] == 0:
        raise UserError(
            f"cannot quantize an array of shape {tuple(a.shape)}: need [..., ne0] with ne0 > 0"
        )
    return a


def _device(device) -> jax.Device:
    if device is None or device == "cpu":
        return jax.devices("cpu")[0]
    if isinstance(device, str):
        try:
            return jax.devices(device)[0]
        except RuntimeError:
            raise UserError(f"no {device} device visible to jax: install jax with that backend "
                            "(pip install -e '.[cuda]') or pass device='cpu'") from None
    return device


def _setup(x, type_: str, imatrix, target: str, device, fma_guard):
    """Checked (type name, host x, imatrix or None, device, guard)."""
    t = type_in_target(type_, target)
    a = _host_rows(x)
    t.row_nbytes(a.shape[-1])  # FallbackError when ne0 does not hold whole blocks
    w = None if imatrix is None else _check_imatrix(imatrix, a.shape)
    dev = _device(device)
    guard = dev.platform != "cpu" if fma_guard is None else bool(fma_guard)
    if not guard:
        _warn_if_fma()
    return t.name, a, w, dev, guard


# ---- sliced runs --------------------------------------------------------------------------------

def _slice_in(rows: np.ndarray, a: int, b: int, s: int, row0: int) -> np.ndarray:
    """float32 copy of rows [a, b), zero-padded to s rows; checked for NaN/inf."""
    part = np.asarray(rows[a:b], np.float32)
    _check_finite(part, "tensor", row0 + a)
    if b - a == s:
        return part
    out = np.zeros((s, rows.shape[1]), np.float32)
    out[: b - a] = part
    return out


def _quant_stage(name, target, w, dev, guard):
    """slice f32 [S, ne0] (numpy) -> packed uint8 [S, row_bytes] on ``dev`` (a jax array)."""
    jq = _jit_quant(name, target, w is not None, guard)
    args = () if w is None else (jax.device_put(w, dev),)
    if guard:
        args = args + (_ZERO,)
    return lambda xs: jq(jax.device_put(xs, dev), *args)


def _run_rows(rows, w, out, stage, dev, row0=0):
    """out[a:b] = stage(slice [a, b)) for every slice of ``rows`` [R, ne0]."""
    r, ne0 = rows.shape
    s = slice_rows(r, ne0, dev.platform)

    def work(a, b):
        out[a:b] = np.asarray(stage(_slice_in(rows, a, b, s, row0)))[: b - a]

    run_slices(r, s, work, dev.platform)


def _per_expert(a: np.ndarray, w):
    """[(rows [R_e, ne0], imatrix of those rows, first row)]: one entry per expert when the
    imatrix is [E, ne0], else the whole tensor."""
    ne0 = a.shape[-1]
    if w is not None and w.ndim == 2:
        per = math.prod(a.shape[1:-1])
        return [(a[e].reshape(-1, ne0), w[e], e * per) for e in range(w.shape[0])]
    return [(a.reshape(-1, ne0), w, 0)]


def quantize(x, type_: str, imatrix=None, target: str = "mainline", device=None,
             fma_guard: bool | None = None) -> np.ndarray:
    """ggml bytes of ``x`` [..., ne0] as ``type_``: numpy uint8 [R, row_bytes].  A 3-D tensor of
    E experts may take an imatrix [E, ne0] (expert e is quantized with row e)."""
    name, a, w, dev, guard = _setup(x, type_, imatrix, target, device, fma_guard)
    ne0 = a.shape[-1]
    out = np.empty((math.prod(a.shape[:-1]), get_type(name).row_nbytes(ne0)), np.uint8)
    for rows, we, row0 in _per_expert(a, w):
        _run_rows(rows, we, out[row0:row0 + rows.shape[0]],
                  _quant_stage(name, target, we, dev, guard), dev, row0)
    return out


def fake_quant(x, type_: str, imatrix=None, target: str = "mainline", device=None,
               fma_guard: bool | None = None) -> jax.Array:
    """dequantize(quantize(x)) as a jax f32 array of x's shape (two jitted stages per slice)."""
    name, a, w, dev, guard = _setup(x, type_, imatrix, target, device, fma_guard)
    ne0 = a.shape[-1]
    out = np.empty((math.prod(a.shape[:-1]), ne0), np.float32)
    jd = _dequant_stage(name, target, ne0, guard)
    for rows, we, row0 in _per_expert(a, w):
        q = _quant_stage(name, target, we, dev, guard)
        _run_rows(rows, we, out[row0:row0 + rows.shape[0]], lambda xs, q=q: jd(q(xs)), dev, row0)
    return jax.device_put(out.reshape(a.shape), dev)


def _empty_aligned(shape: tuple[int, int], align: int = 64) -> np.ndarray:
    """An uninitialized float32 array whose data starts on an ``align``-byte boundary, so that
    ``jax.device_put`` on the CPU shares it instead of copying (one copy of every weight)."""
    n = math.prod(shape) * 4
    buf = np.empty(n + align, np.uint8)
    start = -buf.ctypes.data % align
    return buf[start:start + n].view(np.float32).reshape(shape)


def dequantize(data: np.ndarray, type_: str, shape: tuple[int, ...], target: str = "mainline",
               device=None, fma_guard: bool | None = None):
    """Float32 values of ``data`` (uint8, ggml layout) holding a tensor of numpy ``shape``."""
    t = get_type(type_)
    shape = tuple(int(s) for s in shape)
    rows = np.asarray(data, dtype=np.uint8).reshape(math.prod(shape[:-1]), -1)
    dev = _device(device)
    guard = dev.platform != "cpu" if fma_guard is None else bool(fma_guard)
    try:
        jd = _dequant_stage(t.name, target, shape[-1], guard)
    except KernelMissingError:
        return _gguf_dequantize(rows, t.name, shape)
    out = _empty_aligned((rows.shape[0], shape[-1]))
    s = slice_rows(rows.shape[0], shape[-1], dev.platform)

    def work(a, b):
        part = rows[a:b]
        if b - a < s:
            part = np.concatenate([part, np.zeros((s - (b - a), rows.shape[1]), np.uint8)])
        out[a:b] = np.asarray(jd(jax.device_put(part, dev)))[: b - a]

    run_slices(rows.shape[0], s, work, dev.platform)
    return out.reshape(shape)


def fake_quant_fn(type_: str, target: str = "mainline", with_imatrix: bool = False):
    """The fake-quant function, ``f(x)`` or ``f(x, imatrix)`` (no input checks; traceable;
    whole tensors, not sliced)."""
    t = type_in_target(type_, target)
    return _jit_fake(t.name, target, with_imatrix)
