"""Building blocks shared by the architecture families (JAX, float32).

    rms_norm(x [..., D], w [D], eps)            -> [..., D]
    rope_table(T, n_rot, base, scale, factors)  -> f32 [T, n_rot/2, 2]: cos, sin (ggml recurrence)
    rope_norm(x [B, T, H, hd], table)           -> same; rotates pairs (2i, 2i+1)
    rope_neox(x [B, T, H, hd], table)           -> same; rotates pairs (i, i + n_rot/2)
    rope_table_yarn(T, n_rot, base, Yarn)       -> f32 [T, n_rot/2, 2]: ggml_rope_cache_init with
                                                   YaRN (ramped interpolation, magnitude scale)
    attention(q [B, T, H, hd], k, v [B, T, Hkv, hd], window, ..., sinks [H]) -> [B, T, H*hd]
                                                   causal, GQA; window <= 0: no window; sinks:
                                                   a logit per head joining each softmax
    linear(x [..., n_in], w [n_out, n_in], act) -> [..., n_out]; x rounded first as ggml's CPU
                                                   matmul rounds it (``act``, see ACT_*); while
                                                   ``TAP`` is a list, (w, x) is appended to it
    linear_heads(x [B, T, H, n_in], w [H, n_out, n_in], act) -> [B, T, H, n_out]: a 3-D weight
                                                   (ggml_mul_mat per head); while capturing,
                                                   (w, sums [1, H*n_in], count [1]) go to
                                                   TAP_STATS (llama-imatrix's layout)

Activation rounding codes (``act``, a traced int32 so a recipe change never recompiles):
ACT_NONE (f32 weights), ACT_Q8_0 (32-block 8-bit, scale fp16), ACT_Q8_K (256-block 8-bit,
signed-max scale f32), ACT_F16, ACT_BF16. ``act_code(type)`` maps a weight type to its code
(ggml-cpu's ``vec_dot_type``; q8_1 rounds values like q8_0).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def attention(q, k, v, window, scale: float, f16_kv: bool, sinks=None):
    """Causal softmax attention; keys older than ``window`` positions masked when window > 0.
    ``sinks`` [H]: per-head logits in each row's softmax that attend to nothing (gpt-oss)."""
    b, t, h, hd = q.shape
    if f16_kv:  # llama.cpp keeps K/V in an f16 cache and rounds Q to f16 for the K·Q product
        q, k, v = round_f16(q), round_f16(k), round_f16(v)
    group = h // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=HIGHEST) * scale  # [B, H, T, T]
    qi, ki = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    keep = (ki <= qi) & ((window <= 0) | (qi - ki < window))
    s = jnp.where(keep, s, -jnp.inf)
    if sinks is None:
        p = jax.nn.softmax(s, axis=-1)
    else:
        sink = jnp.broadcast_to(sinks[None, :, None, None], (b, h, t, 1))
        p = jax.nn.softmax(jnp.concatenate([s, sink], axis=-1), axis=-1)[..., :t]
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
TAP_STATS: list | None = None  # with TAP: (w, sums [n_mat, n_in], counts [n_mat]) of 3-D weights
TAP_VALID = None  # with TAP: f32 [B], 1 for a real chunk (the rows TAP_STATS counts)


def linear(x, w, act):
    """x @ w.T with ggml's activation rounding.  # [..., n_in] x [n_out, n_in] -> [..., n_out]"""
    if TAP is not None:  # the f32 input llama-imatrix's callback sees (before the rounding)
        TAP.append((w, x))
    x = round_activations(x, act)
    return jnp.einsum("...i,oi->...o", x, w, precision=HIGHEST)


def linear_heads(x, w, act):
    """Per-head matmul of a 3-D weight.  # [B, T, H, n_in], [H, n_out, n_in] -> [B, T, H, n_out]"""
    if TAP_STATS is not None:  # llama-imatrix: the heads' sums in one row, one count (tokens)
        TAP_STATS.append((w, jnp.einsum("bthi,b->hi", x * x, TAP_VALID).reshape(1, -1),
                          (jnp.sum(TAP_VALID) * x.shape[1]).reshape(1)))
    x = round_activations(x, act)
    return jnp.einsum("bthi,hoi->btho", x, w, precision=HIGHEST)


@dataclass(frozen=True)
class Yarn:
    """llama.cpp's rope parameters: freq_scale = 1/factor, ext_factor 1 for YaRN (else 0),
    attn_factor as llama_context computes it, n_ctx_orig and the correction betas."""
    freq_scale: float = 1.0
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    n_ctx_orig: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0


def _corr_dims(n_rot: int, base: float, y: Yarn) -> tuple[np.float32, np.float32]:
    """ggml_rope_yarn_corr_dims (float32)."""
    f = np.float32

    def dim(beta):
        turns = f(y.n_ctx_orig) / (f(beta) * f(2) * f(np.pi))
        return f(n_rot) * np.log(turns) / (f(2) * np.log(f(base)))

    return f(max(0.0, np.floor(dim(y.beta_fast)))), f(min(n_rot - 1.0, np.ceil(dim(y.beta_slow))))


def rope_table_yarn(n_pos: int, n_rot: int, base: float, y: Yarn) -> np.ndarray:
    """ggml_rope_cache_init: theta = p * base^(-2i/n_rot) by ggml's running product, mixed
    between interpolated and extrapolated by the YaRN ramp, cos/sin times the magnitude scale.
    # [T, n_rot/2, 2]"""
    f = np.float32
    ts = f(base) ** f(-2.0 / n_rot)
    low, high = _corr_dims(n_rot, base, y) if y.ext_factor else (f(0), f(0))
    theta = np.arange(n_pos, dtype=np.float32)
    mscale = f(y.attn_factor)
    if y.ext_factor:
        mscale = f(mscale * (f(1) + f(0.1) * np.log(f(1) / f(y.freq_scale))))
    cols = []
    for i in range(n_rot // 2):
        th = (f(y.freq_scale) * theta).astype(np.float32)
        if y.ext_factor:
            ramp = f(1) - min(f(1), max(f(0), (f(i) - low) / max(f(0.001), high - low)))
            mix = f(ramp * f(y.ext_factor))
            th = (th * (f(1) - mix) + theta * mix).astype(np.float32)
        cols.append(np.stack([np.cos(th) * mscale, np.sin(th) * mscale], axis=-1))
        theta = (theta * ts).astype(np.float32)
    return np.stack(cols, axis=1).astype(np.float32)
