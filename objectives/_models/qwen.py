"""Qwen2 / Qwen3 forward pass (llama.cpp's LLM_ARCH_QWEN2 and LLM_ARCH_QWEN3 graphs).

The llama block with three differences:

    qwen2: q, k, v = W·n + b                 (attn_{q,k,v}.bias)
    qwen3: q, k = rms_norm(q_h, attn_q_norm), rms_norm(k_h, attn_k_norm) per head   # [B, T, H, hd]
    both:  RoPE rotates (x[i], x[i + hd/2]) (NEOX), not adjacent pairs

Shapes and activation codes as in ``llama``; absent optional tensors are ``None`` in ``Layer``.
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
ARCHS = ("qwen2", "qwen3")


@dataclass(frozen=True)
class Config(llama.Config):
    qkv_bias: bool = False
    qk_norm: bool = False


@jax.tree_util.register_dataclass
@dataclass
class Layer(llama.Layer):
    bq: jax.Array | None = None  # [H*hd]
    bk: jax.Array | None = None  # [Hkv*hd]
    bv: jax.Array | None = None  # [Hkv*hd]
    q_norm: jax.Array | None = None  # [hd]
    k_norm: jax.Array | None = None  # [hd]


def config(model) -> Config:
    return Config(**llama.base_config(model), qkv_bias="blk.0.attn_q.bias" in model.tensors,
                  qk_norm="blk.0.attn_q_norm.weight" in model.tensors)


def extra_names(cfg: Config, il: int) -> dict[str, str]:
    p = f"blk.{il}."
    out = {}
    if cfg.qkv_bias:
        out.update(bq=p + "attn_q.bias", bk=p + "attn_k.bias", bv=p + "attn_v.bias")
    if cfg.qk_norm:
        out.update(q_norm=p + "attn_q_norm.weight", k_norm=p + "attn_k_norm.weight")
    return out


def load_layer(cfg: Config, get: Callable, act: Callable, il: int) -> Layer:
    names = {**llama.tensor_names(cfg, il), **extra_names(cfg, il)}
    codes = np.array([act(f"blk.{il}.{r}.weight") for r in LINEARS], np.int32)
    return Layer(**{k: jax.device_put(get(n)) for k, n in names.items()}, act=jnp.asarray(codes))


def layer_consts(cfg: Config, model, il: int, n_ctx: int):
    return C.rope_table(n_ctx, cfg.n_rot, cfg.rope_base, cfg.rope_scale), 0


def qkv(cfg: Config, p: Layer, n):
    """Projections with optional biases and per-head norms.  # -> [B, T, H(kv), hd] x 3"""
    b, t, _ = n.shape
    q, k, v = (C.linear(n, w, p.act[i]) for i, w in enumerate((p.wq, p.wk, p.wv)))
    if cfg.qkv_bias:
        q, k, v = q + p.bq, k + p.bk, v + p.bv
    q = q.reshape(b, t, cfg.n_head, cfg.head_dim)
    k = k.reshape(b, t, cfg.n_head_kv, cfg.head_dim)
    if cfg.qk_norm:
        q, k = C.rms_norm(q, p.q_norm, cfg.eps), C.rms_norm(k, p.k_norm, cfg.eps)
    return q, k, v.reshape(b, t, cfg.n_head_kv, cfg.head_dim)


def forward_layer(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """One transformer block.  # [B, T, D] -> [B, T, D]"""
    q, k, v = qkv(cfg, p, C.rms_norm(x, p.attn_norm, cfg.eps))
    q, k = C.rope_neox(q, rope), C.rope_neox(k, rope)
    o = C.attention(q, k, v, window, cfg.head_dim ** -0.5, f16_kv)
    h = x + C.linear(o, p.wo, p.act[3])
    return h + llama.swiglu(p, C.rms_norm(h, p.ffn_norm, cfg.eps))
