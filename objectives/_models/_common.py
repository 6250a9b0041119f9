"""Building blocks shared by the architecture families (JAX, float32).

    rms_norm(x [..., D], w [D], eps)            -> [..., D]
    rope_table(T, n_rot, base, scale, factors)  -> f32 [T, n_rot/2, 2]: cos, sin (ggml recurrence)
    rope_norm(x [B, T, H, hd], table)           -> same; rotates pairs (2i, 2i+1)
    rope_neox(x [B, T, H, hd], table)           -> same; rotates pairs (i, i + n_rot/2)
    attention(q [B, T, H, hd], k, v [B, T, Hkv, hd], window, ...) -> [B, T, H*hd]
                                                   causal, GQA; window <= 0: no window
    linear(x [..., n_in], w [n_out, n_in], act) -> [..., n_out]; x rounded first as ggml's CPU
                                                   matmul rounds it (``act``, see ACT_*); while
                                                   ``TAP`` is a list, (w, x) is appended to it

Activation rounding codes (``act``, a traced int32 so a recipe change never recompiles):
ACT_NONE (f32 weights), ACT_Q8_0 (32-block 8-bit, scale fp16), ACT_Q8_K (256-block 8-bit,
signed-max scale f32), ACT_F16, ACT_BF16. ``act_code(type)`` maps a weight type to its code
(ggml-cpu's ``vec_dot_type``; q8_1 rounds values like q8_0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ACT_NONE, ACT_Q8_0, ACT_Q8_K, ACT_F16, ACT_BF16 = range(5)
_K256 = {"q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs",
         "iq3_s", "iq1_s", "iq1_m", "iq4_xs", "tq1_0", "tq2_0"}
HIGHEST = lax.Precision.HIGHEST


def act_code(type_name: str) -> int:
    """The activation rounding llama.cpp's CPU matmul applies for a weight of this type."""
    t = type_name.lower()
    if t == "f32":
        return ACT_NONE
    if t == "f16":
        return ACT_F16
    if t == "bf16":
        return ACT_BF16
    if type_name in _K256 or type_name.endswith("_K") or t.startswith("iq") and "_k" in t:
        return ACT_Q8_K
    return ACT_Q8_0


def rms_norm(x, w, eps: float):
    """ggml_rms_norm followed by the weight multiply.  # [..., D]"""
    ms = jnp.mean(x * x, axis=-1, keepdims=True)
    return x * lax.rsqrt(ms + eps) * w


def rope_table(n_pos: int, n_rot: int, base: float, scale: float = 1.0,
               factors: np.ndarray | None = None) -> np.ndarray:
    """cos/sin per position and pair, theta by ggml's float32 recurrence.  # [T, n_rot/2, 2]"""
    theta_scale = np.float32(base) ** np.float32(-2.0 / n_rot)
    powers = np.cumprod(np.concatenate([[1.0], np.full(n_rot // 2 - 1, theta_scale)]).astype(
        np.float32), dtype=np.float32)
    pos = np.arange(n_pos, dtype=np.float32)[:, None]
    theta = pos * powers[None, :]  # ggml: theta_base * theta_scale**i, float32
    if factors is not None:
        theta = theta / np.asarray(factors, np.float32)[None, :]
    theta = (np.float32(scale) * theta).astype(np.float32)
    return np.stack([np.cos(theta), np.sin(theta)], axis=-1).astype(np.float32)


def rope_norm(x, table):
    """Rotate adjacent pairs (x[2i], x[2i+1]); only the first n_rot dims.  # [B, T, H, hd]"""
    n_rot = 2 * table.shape[1]
    xr = x[..., :n_rot].reshape(*x.shape[:-1], n_rot // 2, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    a, b = xr[..., 0], xr[..., 1]
    out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(*x.shape[:-1], n_rot)
    return jnp.concatenate([out, x[..., n_rot:]], axis=-1)


def rope_neox(x, table):
    """Rotate (x[i], x[i + n_rot/2]); only the first n_rot dims.  # [B, T, H, hd]"""
    half = table.shape[1]
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    a, b = x[..., :half], x[..., half:2 * half]
    return jnp.concatenate([a * cos - b * sin, a * sin + b * cos, x[..., 2 * half:]], axis=-1)


def round_f16(x):
    return x.astype(jnp.float16).astype(jnp.float32)


def attention(q, k, v, window, scale: float, f16_kv: bool):
    """Causal softmax attention; keys older than ``window`` positions masked when window > 0."""
    b, t, h, hd = q.shape
    if f16_kv:  # llama.cpp keeps K/V in an f16 cache and rounds Q to f16 for the K·Q product
        q, k, v = round_f16(q), round_f16(k), round_f16(v)
    group = h // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=HIGHEST) * scale  # [B, H, T, T]
    qi, ki = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    keep = (ki <= qi) & ((window <= 0) | (qi - ki < window))
    p = jax.nn.softmax(jnp.where(keep, s, -jnp.inf), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", p, v, precision=HIGHEST)
    return o.reshape(b, t, h * v.shape[-1])  # [B, T, H*hd]


def _round_q8_0(x):
    """quantize_row_q8_0 (x86): d = amax/127 stored fp16, q = round_half_even(x * 127/amax)."""
    xb = x.reshape(*x.shape[:-1], -1, 32)
    amax = jnp.max(jnp.abs(xb), axis=-1, keepdims=True)
    inv = jnp.where(amax > 0, 127.0 / jnp.where(amax > 0, amax, 1.0), 0.0)
    d = (amax / 127.0).astype(jnp.float16).astype(jnp.float32)
    return (jnp.round(xb * inv) * d).reshape(x.shape)


def _round_q8_k(x):
    """quantize_row_q8_K_ref: iscale = -127/max (max: signed value of largest |x|), q <= 127."""
    xb = x.reshape(*x.shape[:-1], -1, 256)
    idx = jnp.argmax(jnp.abs(xb), axis=-1, keepdims=True)
    mx = jnp.take_along_axis(xb, idx, axis=-1)
    iscale = jnp.where(mx != 0, -127.0 / jnp.where(mx != 0, mx, 1.0), 0.0)
    q = jnp.minimum(jnp.round(xb * iscale), 127.0)
    d = jnp.where(mx != 0, 1.0 / jnp.where(iscale != 0, iscale, 1.0), 0.0)
    return (q * d).reshape(x.shape)


def round_activations(x, act):
    """Round x [..., n_in] as the CPU matmul does for code ``act`` (traced int32)."""
    n = x.shape[-1]
    q8k = _round_q8_k if n % 256 == 0 else _round_q8_0
    q80 = _round_q8_0 if n % 32 == 0 else (lambda y: y)
    branches = [lambda y: y, q80, q8k, round_f16,
                lambda y: y.astype(jnp.bfloat16).astype(jnp.float32)]
    return lax.switch(act, branches, x)


TAP: list | None = None  # while tracing a capturing step: (w, x) of every matmul, in order


def linear(x, w, act):
    """x @ w.T with ggml's activation rounding.  # [..., n_in] x [n_out, n_in] -> [..., n_out]"""
    if TAP is not None:  # the f32 input llama-imatrix's callback sees (before the rounding)
        TAP.append((w, x))
    x = round_activations(x, act)
    return jnp.einsum("...i,oi->...o", x, w, precision=HIGHEST)
