"""Qwen3-MoE forward pass (llama.cpp's LLM_ARCH_QWEN3MOE graph: Qwen3-30B-A3B, 235B-A22B).

    h = x + Wo · attn(rope(qn(Wq·n)), rope(kn(Wk·n)), Wv·n),  n = rms_norm(x, attn_norm)
    y = h + moe(m),                                           m = rms_norm(h, ffn_norm)

The attention is Qwen3's (per-head q/k RMS norms, NEOX RoPE); ``moe`` routes each token by a
softmax over ``ffn_gate_inp · m`` to its top ``expert_used_count`` experts, weights normalized
to sum 1 (``norm_topk_prob``; llama.cpp always normalizes for this architecture), scaled by
``expert_weights_scale`` when set; each expert is a SwiGLU of ``ffn_{gate,up,down}_exps[e]``
(see ``_moe``). Shapes: experts gate/up [E, F, D], down [E, D, F]; router [E, D].

Streaming in expert slices (``_stream``): ``forward_pre`` (attention, norm, routing),
``_moe.expert_outputs`` per slice, ``forward_post`` (slot sum, residual).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from quant import UserError

from . import _common as C
from . import _moe, llama, qwen

LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_inp", "ffn_gate_exps",
           "ffn_up_exps", "ffn_down_exps")
EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
ARCHS = ("qwen3moe",)


@dataclass(frozen=True)
class Config(qwen.Config):
    n_expert: int = 0
    routing: _moe.Routing = _moe.Routing()


@jax.tree_util.register_dataclass
@dataclass
class Layer(llama.Attention):
    q_norm: jax.Array  # [hd]
    k_norm: jax.Array  # [hd]
    ffn_norm: jax.Array  # [D]
    gate_inp: jax.Array  # [E, D]
    act: jax.Array  # int32 [8], LINEARS order
    w_gate_exps: jax.Array | None = None  # [E, F, D] (None when streamed in slices)
    w_up_exps: jax.Array | None = None  # [E, F, D]
    w_down_exps: jax.Array | None = None  # [E, D, F]


def moe_meta(model) -> tuple[int, int]:
    """(expert_count, expert_used_count), checked."""
    n_exp = int(llama.meta_get(model, "expert_count", 0) or 0)
    k = int(llama.meta_get(model, "expert_used_count", 0) or 0)
    if not 0 < k <= n_exp:
        raise UserError(f"{model.arch}: expert_count {n_exp} / expert_used_count {k} are "
                        "invalid: the GGUF metadata of a mixture-of-experts model is incomplete")
    if any(n.endswith(".ffn_gate_up_exps.weight") for n in model.tensors):
        raise UserError(f"{model.arch}: fused ffn_gate_up_exps tensors are not supported by the "
                        "JAX forward: convert the model without --fuse-gate-up-exps")
    return n_exp, k


def config(model) -> Config:
    n_exp, k = moe_meta(model)
    scale = float(llama.meta_get(model, "expert_weights_scale", 0.0) or 0.0)
    return Config(**llama.base_config(model), qk_norm=True, n_expert=n_exp,
                  routing=_moe.Routing("softmax", k, norm=True, scale=scale))


def is_moe_layer(cfg: Config, il: int) -> bool:
    return True


def expert_names(cfg: Config, il: int) -> tuple[str, str, str]:
    return tuple(f"blk.{il}.{r}.weight" for r in EXPERTS)


def act_codes(act: Callable, il: int, roles=LINEARS) -> jax.Array:
    return jnp.asarray(np.array([act(f"blk.{il}.{r}.weight") for r in roles], np.int32))


def load_layer(cfg: Config, get: Callable, act: Callable, il: int,
               experts: bool = True) -> Layer:
    """get(name) -> f32 array; act(name) -> rounding code; ``experts=False`` leaves the
    expert tensors out (they are streamed in slices)."""
    p = f"blk.{il}."
    names = {"attn_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v",
             "wo": "attn_output", "q_norm": "attn_q_norm", "k_norm": "attn_k_norm",
             "ffn_norm": "ffn_norm", "gate_inp": "ffn_gate_inp"}
    if experts:
        names |= {"w_gate_exps": "ffn_gate_exps", "w_up_exps": "ffn_up_exps",
                  "w_down_exps": "ffn_down_exps"}
    return Layer(**{k: jax.device_put(get(p + n + ".weight")) for k, n in names.items()},
                 act=act_codes(act, il))


def layer_consts(cfg: Config, model, il: int, n_ctx: int):
    return C.rope_table(n_ctx, cfg.n_rot, cfg.rope_base, cfg.rope_scale), 0


def forward_pre(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """Attention and routing: (h [B, T, D], routed pairs (xg, xu [N, D], ids, wts [N, k]))."""
    q, k, v = qwen.qkv(cfg, p, C.rms_norm(x, p.attn_norm, cfg.eps))
    q, k = C.rope_neox(q, rope), C.rope_neox(k, rope)
    o = C.attention(q, k, v, window, cfg.head_dim ** -0.5, f16_kv)
    h = x + C.linear(o, p.wo, p.act[3])
    m = C.rms_norm(h, p.ffn_norm, cfg.eps)
    return h, _moe.routed(cfg.routing, m, p.gate_inp, None, p.act[4:7])


def forward_post(cfg: Config, p: Layer, h, routed, out):
    """Slots summed in order, plus the residual.  # -> [B, T, D]"""
    return _moe.combine(out, cfg.routing.n_used).reshape(h.shape) + h


def forward_layer(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """One transformer block with every expert in ``p``.  # [B, T, D] -> [B, T, D]"""
    h, r = forward_pre(cfg, p, x, rope, window, f16_kv)
    out = _moe.all_experts(r, p.w_gate_exps, p.w_up_exps, p.w_down_exps, p.act[7])
    return forward_post(cfg, p, h, r, out)
