"""jax.numpy helpers that reproduce ggml's float32 quantizer semantics (spec sections 0, 2.23).

Rounding (elementwise, any shape):

    nearest(v)      -> int32  ggml nearest_int: ties to even (1.5*2^23 trick; |v| < 2^22)
    roundf_away(v)  -> f32    C roundf: halfway cases away from zero
    trunc_int(v)    -> int32  C (int) cast: toward zero
    fp16_round(x)   -> f32    float -> IEEE half (nearest even) -> float
    div(a, b)       -> f32    IEEE a / b that XLA cannot turn into a * (1/b) (see below)

Reductions:

    seq_sum(a, axis=-1) -> f32  left-to-right float32 sum ((a0 + a1) + a2) + ..., never a tree
    argmax_abs(x)       -> f32  signed element of largest |x| on the last axis, first one on ties

Nearest entry of a sorted int8 table T (N values, spec 2.1.7); x f32 -> int32 index:

    best_index_int8(T, x)           mainline binary search (ties to the upper index)
    best_index_value_int8(T, x)     the same, (index, T[index]) without a gather
    nl_index_table(T, size)         ik's helper table (< N: the answer; >= N: compare k, k+1)
    best_index_table(T, table, x)   ik best_index_iq*nl through that table

Byte packing, little-endian; ``b`` is uint8 with a field's bytes on a trailing axis:

    pack_u16 / unpack_u16, pack_u32 / unpack_u32      uint <-> uint8[..., 2 | 4]
    pack_f16 / unpack_f16, pack_bf16 / unpack_bf16    f32 <-> uint8[..., 2] (RNE; ggml's bf16)
    pack_f32 / unpack_f32                             f32 <-> uint8[..., 4]
    pack_nibbles(lo, hi) -> uint8, unpack_nibbles(b) -> (lo, hi)
    pack_bits(bits[..., 8k]) -> uint8[..., k] (bit i of byte k = bits[8k + i]), unpack_bits

Float evaluation on XLA CPU (checked on jax 0.10.2, x86-64 with AVX-512/FMA):

* XLA contracts ``a*b + c`` into FMAs when the CPU has them (about 1 result in 4 then differs
  from C float32), and neither ``lax.reduce_precision``, ``lax.optimization_barrier`` nor a
  bitcast round trip stops it.  Capping the instruction set at AVX (no FMA) does: importing
  this module appends ``--xla_cpu_max_isa=AVX`` to ``XLA_FLAGS`` unless that already names
  ``xla_cpu_max_isa``.  XLA reads the flag when its CPU backend starts, so ``quant`` must be
  imported before the process's first jax computation; ``fma_contracted()`` says whether it
  worked (the tests check it, ``quant.quantize`` warns once).
* XLA's algebraic simplifier rewrites a division by a broadcast (``x / 127``, ``a / b[:, None]``)
  into a multiplication by the reciprocal, off by an ulp in 5-30% of cases.  ``div`` hides
  both operands behind ``lax.optimization_barrier`` so the division stays a division.
  Same-shape divisions and square roots are exact.
* Float additions are not reassociated, but reductions (``jnp.sum``) are vectorised tree sums:
  every sum whose low bits matter goes through ``seq_sum`` (unrolled chain of adds for short
  axes, ``lax.scan`` for long ones).
* GPUs contract FMAs regardless: there the kernels are near-exact, not byte-exact.
"""

from __future__ import annotations

import os

if "xla_cpu_max_isa" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

_MAGIC = 12582912.0  # 1.5 * 2**23
_UNROLL_MAX = 64  # axes up to this length are unrolled; longer ones use lax.scan


def fma_contracted() -> bool:
    """True when jitted ``a*b + c`` differs from float32 C on the default backend (an FMA)."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(4096).astype(np.float32) for _ in range(3))
    got = np.asarray(jax.jit(lambda a, b, c: a * b + c)(a, b, c))
    return bool(np.any(got != a * b + c))


def nearest(v):
    """ggml ``nearest_int``: float32 ``v + 1.5*2^23`` read back as an int32 (ties to even)."""
    bits = lax.bitcast_convert_type(jnp.asarray(v, jnp.float32) + jnp.float32(_MAGIC), jnp.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def roundf_away(v):
    """C ``roundf``: nearest integer, halfway cases away from zero (float32 result)."""
    v = jnp.asarray(v, jnp.float32)
    t = jnp.trunc(v)
    return jnp.where(jnp.abs(v - t) >= 0.5, t + jnp.sign(v), t)


def trunc_int(v):
    """C ``(int)`` cast of a float: truncation toward zero, int32."""
    return jnp.trunc(jnp.asarray(v, jnp.float32)).astype(jnp.int32)


def fp16_round(x):
    """float32 -> IEEE half (round to nearest even, overflow to inf) -> float32."""
    return jnp.asarray(x, jnp.float32).astype(jnp.float16).astype(jnp.float32)


def div(a, b):
    """IEEE float32 ``a / b`` with broadcasting, kept a true division (module docstring)."""
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    a, b = lax.optimization_barrier((a, b))
    return a / b


def seq_sum(a, axis: int = -1):
    """Sequential float32 sum along ``axis``: ((a0 + a1) + a2) + ..., like a C ``for`` loop."""
    a = jnp.moveaxis(jnp.asarray(a, jnp.float32), axis, 0)
    n = a.shape[0]
    if n == 0:
        return jnp.zeros(a.shape[1:], jnp.float32)
    if n <= _UNROLL_MAX:
        acc = a[0]
        for i in range(1, n):
            acc = acc + a[i]
        return acc
    acc, _ = lax.scan(lambda c, ai: (c + ai, None), a[0], a[1:])
    return acc


def argmax_abs(x):
    """The signed element of largest |x| on the last axis; the first one wins ties (ggml)."""
    x = jnp.asarray(x, jnp.float32)
    idx = jnp.argmax(jnp.abs(x), axis=-1)
    return jnp.take_along_axis(x, idx[..., None], axis=-1)[..., 0]


def best_index_int8(values, x):
    """mainline ``best_index_int8``: index of the sorted ``values`` entry nearest to x (upper on
    ties)."""
    return best_index_value_int8(values, x)[0]


def best_index_value_int8(values, x):
    """(index int32, table value f32) of ``best_index_int8``; unrolled over the table so that
    nothing of size len(values) * x.size is materialised."""
    t = [float(v) for v in values]
    n = len(t)
    x = jnp.asarray(x, jnp.float32)
    ml = jnp.zeros(x.shape, jnp.int32)  # largest k with t[k] <= x, for t[0] < x < t[n-1]
    lo = jnp.full(x.shape, t[0], jnp.float32)
    hi = jnp.full(x.shape, t[n - 1], jnp.float32)
    for k in range(1, n - 1):
        ge = x >= t[k]
        ml = ml + ge.astype(jnp.int32)
        lo = jnp.where(ge, t[k], lo)
    for k in range(n - 2, 0, -1):
        hi = jnp.where(x < t[k], t[k], hi)
    upper = ~(x - lo < hi - x)
    idx = jnp.where(x <= t[0], 0, jnp.where(x >= t[n - 1], n - 1, ml + upper.astype(jnp.int32)))
    val = jnp.where(x <= t[0], t[0], jnp.where(x >= t[n - 1], t[n - 1], jnp.where(upper, hi, lo)))
    return idx, val.astype(jnp.float32)


def nl_index_table(values, size: int) -> np.ndarray:
    """ik's lookup table for ``best_index_iq*nl``: entry ix (integer t = ix + T[0]) is N + k
    when the midpoint (T[k] + T[k+1]) / 2 lies strictly inside (t - 1, t + 1), else the index
    nearest to t."""
    t_vals = np.asarray(values, np.float64)
    n = len(t_vals)
    mids = (t_vals[:-1] + t_vals[1:]) / 2
    out = np.empty(size, np.int32)
    for ix in range(size):
        t = ix + t_vals[0]
        inside = np.nonzero((mids > t - 1) & (mids < t + 1))[0]
        out[ix] = n + inside[0] if len(inside) else int(np.argmin(np.abs(t_vals - t)))
    return out


def best_index_table(values, table, x, shift_first: bool = False):
    """ik ``best_index_iq*nl``: ix = trunc(x) - T[0] (``shift_first``: trunc(x - T[0]), as
    iq6nl), then the table entry, comparing distances when it says "between k and k + 1"."""
    t = jnp.asarray(np.asarray(values, np.float32))
    tab = jnp.asarray(np.asarray(table, np.int32))
    n, size = t.shape[0], tab.shape[0]
    x = jnp.asarray(x, jnp.float32)
    ix = trunc_int(x - t[0]) if shift_first else trunc_int(x) - jnp.int32(int(values[0]))
    e = tab[jnp.clip(ix, 0, size - 1)]
    k = jnp.clip(e - n, 0, n - 2)
    between = jnp.where(x - t[k] < t[k + 1] - x, k, k + 1)
    e = jnp.where(e < n, e, between)
    return jnp.where(ix < 0, 0, jnp.where(ix >= size, n - 1, e)).astype(jnp.int32)


def _split_bytes(u, n: int):
    u = jnp.asarray(u).astype(jnp.uint32)
    return jnp.stack([((u >> (8 * i)) & 0xFF).astype(jnp.uint8) for i in range(n)], axis=-1)


def _join_bytes(b, n: int):
    b = jnp.asarray(b).astype(jnp.uint32)
    out = b[..., 0]
    for i in range(1, n):
        out = out | (b[..., i] << (8 * i))
    return out


def pack_u16(u):
    """Little-endian bytes of 16-bit unsigned values: uint8[..., 2]."""
    return _split_bytes(u, 2)


def unpack_u16(b):
    """uint8[..., 2] little-endian -> uint32 values in [0, 65535]."""
    return _join_bytes(b, 2)


def pack_u32(u):
    """Little-endian bytes of 32-bit unsigned values: uint8[..., 4]."""
    return _split_bytes(u, 4)


def unpack_u32(b):
    """uint8[..., 4] little-endian -> uint32."""
    return _join_bytes(b, 4)


def f16_bits(x):
    """IEEE half bit pattern (uint32) of float32 ``x`` rounded to nearest even."""
    h = jnp.asarray(x, jnp.float32).astype(jnp.float16)
    return lax.bitcast_convert_type(h, jnp.uint16).astype(jnp.uint32)


def pack_f16(x):
    """float32 -> half (RNE) -> little-endian uint8[..., 2]."""
    return pack_u16(f16_bits(x))


def unpack_f16(b):
    """uint8[..., 2] little-endian half -> float32 (exact)."""
    u = unpack_u16(b).astype(jnp.uint16)
    return lax.bitcast_convert_type(u, jnp.float16).astype(jnp.float32)


def bf16_bits(x):
    """ggml ``ggml_compute_fp32_to_bf16``: nearest even on the top 16 bits; NaN made quiet."""
    u = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
    rounded = (u + (jnp.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    return jnp.where(is_nan, (u >> 16) | 64, rounded)


def pack_bf16(x):
    """float32 -> bf16 (ggml rounding) -> little-endian uint8[..., 2]."""
    return pack_u16(bf16_bits(x))


def unpack_bf16(b):
    """uint8[..., 2] little-endian bf16 -> float32 (exact)."""
    return lax.bitcast_convert_type(unpack_u16(b) << 16, jnp.float32)


def pack_f32(x):
    """float32 -> little-endian uint8[..., 4]."""
    return pack_u32(lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32))


def unpack_f32(b):
    """uint8[..., 4] little-endian -> float32."""
    return lax.bitcast_convert_type(unpack_u32(b), jnp.float32)


def pack_nibbles(lo, hi):
    """One byte per pair: ``lo | hi << 4`` (both 0..15)."""
    lo, hi = jnp.asarray(lo).astype(jnp.uint8), jnp.asarray(hi).astype(jnp.uint8)
    return ((lo & 0xF) | (hi << 4)).astype(jnp.uint8)


def unpack_nibbles(b):
    """uint8 -> (low nibble, high nibble), both uint8."""
    b = jnp.asarray(b).astype(jnp.uint8)
    return b & 0xF, b >> 4


def pack_bits(bits):
    """bits[..., 8k] (0/1) -> uint8[..., k]: bit i of byte k holds bits[..., 8k + i]."""
    bits = jnp.asarray(bits).astype(jnp.uint8)
    bits = bits.reshape(bits.shape[:-1] + (-1, 8))
    shifts = jnp.arange(8, dtype=jnp.uint8)
    return jnp.sum((bits & 1) << shifts, axis=-1, dtype=jnp.uint32).astype(jnp.uint8)


def unpack_bits(b):
    """uint8[..., k] -> bits uint8[..., 8k], the inverse of ``pack_bits``."""
    b = jnp.asarray(b).astype(jnp.uint8)
    shifts = jnp.arange(8, dtype=jnp.uint8)
    bits = (b[..., None] >> shifts) & 1
    return bits.reshape(b.shape[:-1] + (-1,))


__all__ = [
    "fma_contracted", "div", "nearest", "roundf_away", "trunc_int", "fp16_round", "seq_sum",
    "argmax_abs",
    "best_index_int8", "best_index_value_int8", "nl_index_table", "best_index_table",
    "pack_u16", "unpack_u16", "pack_u32", "unpack_u32", "f16_bits", "pack_f16", "unpack_f16",
    "bf16_bits", "pack_bf16", "unpack_bf16", "pack_f32", "unpack_f32",
    "pack_nibbles", "unpack_nibbles", "pack_bits", "unpack_bits",
]
