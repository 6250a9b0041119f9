"""Gemma 3 forward pass (llama.cpp's LLM_ARCH_GEMMA3 graph, text only).

    x0 = sqrt(D) * embd[tok]                                                            # [B, T, D]
    h  = x + post_attn_norm(Wo · attn(rope(qn(Wq·n)) * s, rope(kn(Wk·n)), Wv·n))
         n = attn_norm(x)
    y  = h + post_ffw_norm(Wdown · (gelu(Wgate·m) * Wup·m)),  m = ffn_norm(h)

qn/kn are per-head RMS norms; RoPE is NEOX. Every layer but each ``pattern``-th (default 6) is
a sliding-window layer (keys at most ``n_swa - 1`` positions back) with its own RoPE base
(``rope.freq_base_swa``, default 10000, unscaled). GGUF norm weights already hold Gemma's
``1 + w``. gelu is ggml's CPU GELU: tanh form looked up through an f16 table. The window is a
traced scalar, so both layer kinds share one compiled step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import _common as C
from . import llama

LINEARS = llama.LINEARS
ARCHS = ("gemma3",)


@dataclass(frozen=True)
class Config(llama.Config):
    n_swa: int = 0
    swa_layers: tuple[bool, ...] = ()
    rope_base_swa: float = 10000.0
    attn_scale: float = 0.0


@jax.tree_util.register_dataclass
@dataclass
class Layer(llama.Layer):
    q_norm: jax.Array | None = None  # [hd]
    k_norm: jax.Array | None = None  # [hd]
    post_attn_norm: jax.Array | None = None  # [D]
    post_ffn_norm: jax.Array | None = None  # [D]


def swa_pattern(model, n_layer: int, default: int = 6) -> tuple[bool, ...]:
    """llama.cpp's set_swa_pattern (or the per-layer array when the GGUF stores one); the
    pattern n: every layer but each n-th slides (``default``: the architecture's n)."""
    v = llama.meta_get(model, "attention.sliding_window_pattern", default)
    if isinstance(v, (list, np.ndarray)):
        return tuple(bool(b) for b in v)
    n = int(v)
    return tuple(n == 0 or il % n < n - 1 for il in range(n_layer))


def config(model) -> Config:
    base = llama.base_config(model)
    n_swa = int(llama.meta_get(model, "attention.sliding_window", 0) or 0)
    scale = float(base["head_dim"]) ** -0.5
    if base["n_layer"] == 62:  # 27B: query_pre_attn_scalar = n_embd / n_head
        scale = float(base["n_embd"] // base["n_head"]) ** -0.5
    return Config(**base, n_swa=n_swa,
                  swa_layers=swa_pattern(model, base["n_layer"]) if n_swa else (),
                  rope_base_swa=float(llama.meta_get(model, "rope.freq_base_swa", 10000.0)),
                  attn_scale=scale, embd_scale=float(np.sqrt(np.float32(base["n_embd"]))),
                  softcap=float(llama.meta_get(model, "final_logit_softcapping", 0.0) or 0.0))


def load_layer(cfg: Config, get: Callable, act: Callable, il: int) -> Layer:
    p = f"blk.{il}."
    names = {**llama.tensor_names(cfg, il), "q_norm": p + "attn_q_norm.weight",
             "k_norm": p + "attn_k_norm.weight",
             "post_attn_norm": p + "post_attention_norm.weight",
             "post_ffn_norm": p + "post_ffw_norm.weight"}
    codes = np.array([act(f"blk.{il}.{r}.weight") for r in LINEARS], np.int32)
    return Layer(**{k: jax.device_put(get(n)) for k, n in names.items()}, act=jnp.asarray(codes))


def layer_consts(cfg: Config, model, il: int, n_ctx: int):
    if cfg.swa_layers and cfg.swa_layers[il]:
        return C.rope_table(n_ctx, cfg.n_rot, cfg.rope_base_swa), cfg.n_swa
    return C.rope_table(n_ctx, cfg.n_rot, cfg.rope_base, cfg.rope_scale), 0


def gelu(x):
    """ggml_vec_gelu_f32 with GGML_GELU_FP16: f16 table of the tanh GELU, linear/zero tails."""
    xr = C.round_f16(x)
    g = 0.5 * xr * (1.0 + jnp.tanh(0.7978845608028654 * xr * (1.0 + 0.044715 * xr * xr)))
    return jnp.where(x <= -10.0, 0.0, jnp.where(x >= 10.0, x, C.round_f16(g)))


def forward_layer(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """One transformer block.  # [B, T, D] -> [B, T, D]"""
    b, t, _ = x.shape
    n = C.rms_norm(x, p.attn_norm, cfg.eps)
    q = C.linear(n, p.wq, p.act[0]).reshape(b, t, cfg.n_head, cfg.head_dim)
    k = C.linear(n, p.wk, p.act[1]).reshape(b, t, cfg.n_head_kv, cfg.head_dim)
    v = C.linear(n, p.wv, p.act[2]).reshape(b, t, cfg.n_head_kv, cfg.head_dim)
    q = C.rope_neox(C.rms_norm(q, p.q_norm, cfg.eps), rope) * cfg.attn_scale
    k = C.rope_neox(C.rms_norm(k, p.k_norm, cfg.eps), rope)
    o = C.attention(q, k, v, window, 1.0, f16_kv)  # [B, T, H*hd]
    h = x + C.rms_norm(C.linear(o, p.wo, p.act[3]), p.post_attn_norm, cfg.eps)
    m = C.rms_norm(h, p.ffn_norm, cfg.eps)
    f = gelu(C.linear(m, p.w_gate, p.act[4])) * C.linear(m, p.w_up, p.act[5])
    return h + C.rms_norm(C.linear(f, p.w_down, p.act[6]), p.post_ffn_norm, cfg.eps)
