"""Llama-family forward pass (``general.architecture`` llama: SmolLM2, Llama 2/3, Mistral).

One layer (pre-norm, SwiGLU, GQA, RoPE on adjacent pairs, llama.cpp's LLM_ARCH_LLAMA graph):

    h = x + Wo · attn(rope(Wq·n), rope(Wk·n), Wv·n),  n = rms_norm(x, attn_norm)   # [B, T, D]
    y = h + Wdown · (silu(Wgate·m) * Wup·m),          m = rms_norm(h, ffn_norm)

Weights keep numpy shape [n_out, n_in]; ``Layer.act`` holds one activation-rounding code per
matmul (see ``_common.act_code``), in ``LINEARS`` order. Llama 3's ``rope_freqs.weight``
divides the rotation angles (ggml's freq_factors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from quant import UserError

from . import _common as C

LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
ARCHS = ("llama", "mistral3")  # mistral3 without YaRN/temperature is a llama


@dataclass(frozen=True)
class Config:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    n_vocab: int
    eps: float
    rope_base: float
    rope_scale: float
    tied: bool
    embd_scale: float = 1.0
    softcap: float = 0.0


@dataclass
class Attention:
    """Attention weights of every llama-like layer (the fields a family's Layer starts with)."""
    attn_norm: jax.Array  # [D]
    wq: jax.Array  # [H*hd, D]
    wk: jax.Array  # [Hkv*hd, D]
    wv: jax.Array  # [Hkv*hd, D]
    wo: jax.Array  # [D, H*hd]


@jax.tree_util.register_dataclass
@dataclass
class Layer(Attention):
    ffn_norm: jax.Array  # [D]
    w_gate: jax.Array  # [F, D]
    w_up: jax.Array  # [F, D]
    w_down: jax.Array  # [D, F]
    act: jax.Array  # int32 [7]


def meta_get(model, key: str, default=None):
    v = model.meta.get(f"{model.arch}.{key}", default)
    return v.item() if isinstance(v, np.generic) else v


def rope_scale(model) -> float:
    factor = meta_get(model, "rope.scaling.factor", 0.0) or 0.0
    kind = str(meta_get(model, "rope.scaling.type", "linear"))
    if (factor and kind not in ("linear", "none")) or meta_get(model, "attention.temperature_scale"):
        raise UserError(f"{model.arch} with {kind} rope scaling or attention temperature is not "
                        "supported by the JAX forward yet")
    return 1.0 / float(factor) if factor else 1.0


def base_config(model, **extra) -> dict:
    """Hyper-parameters common to every family, from the GGUF metadata."""
    hp = model.hparams()
    head_dim = int(meta_get(model, "attention.key_length", hp.n_embd // hp.n_head))
    return dict(arch=model.arch, n_layer=hp.n_layer, n_embd=hp.n_embd, n_head=hp.n_head,
                n_head_kv=hp.n_head_kv, head_dim=head_dim,
                n_rot=int(meta_get(model, "rope.dimension_count", head_dim)), n_vocab=hp.n_vocab,
                eps=float(meta_get(model, "attention.layer_norm_rms_epsilon", 1e-5)),
                rope_base=float(meta_get(model, "rope.freq_base", 10000.0)),
                rope_scale=rope_scale(model), tied=model.tied_embeddings, **extra)


def config(model) -> Config:
    return Config(**base_config(model))


def tensor_names(cfg: Config, il: int) -> dict[str, str]:
    """Layer field -> GGUF tensor name (matmuls in LINEARS order)."""
    p = f"blk.{il}."
    return {"attn_norm": p + "attn_norm.weight", "wq": p + "attn_q.weight",
            "wk": p + "attn_k.weight", "wv": p + "attn_v.weight", "wo": p + "attn_output.weight",
            "ffn_norm": p + "ffn_norm.weight", "w_gate": p + "ffn_gate.weight",
            "w_up": p + "ffn_up.weight", "w_down": p + "ffn_down.weight"}


def load_layer(cfg: Config, get: Callable, act: Callable, il: int) -> Layer:
    """get(name) -> f32 array; act(name) -> rounding code."""
    names = tensor_names(cfg, il)
    codes = np.array([act(f"blk.{il}.{r}.weight") for r in LINEARS], np.int32)
    return Layer(**{k: jax.device_put(get(n)) for k, n in names.items()}, act=jnp.asarray(codes))


def layer_consts(cfg: Config, model, il: int, n_ctx: int) -> tuple[np.ndarray, int]:
    """(rope table [T, n_rot/2, 2], sliding window or 0) for layer ``il``."""
    factors = model.f32("rope_freqs.weight") if "rope_freqs.weight" in model.tensors else None
    return C.rope_table(n_ctx, cfg.n_rot, cfg.rope_base, cfg.rope_scale, factors), 0


def attention_block(cfg: Config, p: Layer, n, rope, window, f16_kv: bool, rotate=C.rope_norm):
    b, t, _ = n.shape
    q = C.linear(n, p.wq, p.act[0]).reshape(b, t, cfg.n_head, cfg.head_dim)
    k = C.linear(n, p.wk, p.act[1]).reshape(b, t, cfg.n_head_kv, cfg.head_dim)
    v = C.linear(n, p.wv, p.act[2]).reshape(b, t, cfg.n_head_kv, cfg.head_dim)
    q, k = rotate(q, rope), rotate(k, rope)
    o = C.attention(q, k, v, window, cfg.head_dim ** -0.5, f16_kv)  # [B, T, H*hd]
    return C.linear(o, p.wo, p.act[3])


def swiglu(p, m):
    g = jax.nn.silu(C.linear(m, p.w_gate, p.act[4]))
    return C.linear(g * C.linear(m, p.w_up, p.act[5]), p.w_down, p.act[6])


def forward_layer(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """One transformer block.  # [B, T, D] -> [B, T, D]"""
    h = x + attention_block(cfg, p, C.rms_norm(x, p.attn_norm, cfg.eps), rope, window, f16_kv)
    return h + swiglu(p, C.rms_norm(h, p.ffn_norm, cfg.eps))
