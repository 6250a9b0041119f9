"""GLM-4.5 / 4.6 MoE forward pass (llama.cpp's LLM_ARCH_GLM4_MOE graph, text only).

    h = x + Wo · attn(rope(q), rope(k), v),  [q|k|v] = W·n + b (optional per-head q/k norms),
                                             n = rms_norm(x, attn_norm)           # [B, T, D]
    m = rms_norm(h, post_attention_norm)
    y = h + swiglu(m)                         (the first leading_dense_block_count layers)
    y = h + (moe(m) + shared(m))              (the others: sigmoid routing with exp_probs_b,
                                               weights normalized / scaled, see ``_moe``)

RoPE is NEOX over the first ``rope.dimension_count`` dims of each head (GLM rotates half). The
last ``nextn_predict_layers`` blocks are the NextN/MTP head: llama.cpp loads them (and
llama-quantize quantizes them) but the forward stops before them. Shapes as in ``qwen3moe``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import jax

from quant import UserError

from . import _common as C
from . import _moe, llama, qwen, qwen3moe

ARCHS = ("glm4moe",)
ROLES = {  # Layer field -> tensor role; the first 14 are matmuls, in Layer.act order
    "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output", "w_gate": "ffn_gate",
    "w_up": "ffn_up", "w_down": "ffn_down", "gate_inp": "ffn_gate_inp",
    "w_gate_exps": "ffn_gate_exps", "w_up_exps": "ffn_up_exps", "w_down_exps": "ffn_down_exps",
    "w_gate_sh": "ffn_gate_shexp", "w_up_sh": "ffn_up_shexp", "w_down_sh": "ffn_down_shexp",
    "attn_norm": "attn_norm", "ffn_norm": "post_attention_norm", "q_norm": "attn_q_norm",
    "k_norm": "attn_k_norm"}
A = {f: i for i, f in enumerate(ROLES) if i < 14}
LINEARS = tuple(ROLES.values())[:14]
EXPERT_FIELDS = _moe.EXPERT_FIELDS


@dataclass(frozen=True)
class Config(qwen.Config):
    n_dense: int = 0
    n_expert: int = 0
    routing: _moe.Routing = _moe.Routing()


@jax.tree_util.register_dataclass
@dataclass
class Layer(_moe.FfnWeights):
    attn_norm: jax.Array  # [D]
    wq: jax.Array  # [H*hd, D]
    wk: jax.Array  # [Hkv*hd, D]
    wv: jax.Array  # [Hkv*hd, D]
    wo: jax.Array  # [D, H*hd]
    ffn_norm: jax.Array  # [D] post_attention_norm
    act: jax.Array  # int32 [14]
    bq: jax.Array | None = None  # [H*hd]
    bk: jax.Array | None = None  # [Hkv*hd]
    bv: jax.Array | None = None
    q_norm: jax.Array | None = None  # [hd]
    k_norm: jax.Array | None = None


def config(model) -> Config:
    g = lambda k, d=None: llama.meta_get(model, k, d)  # noqa: E731
    if g("rope.dimension_sections") is not None:
        raise UserError(f"{model.arch} with multimodal RoPE sections (GLM-4.xV) is not "
                        "supported by the JAX forward")
    n_exp, k = qwen3moe.moe_meta(model)
    base = llama.base_config(model)
    base["n_layer"] -= int(g("nextn_predict_layers", 0) or 0)
    gating = _moe.gating_name(int(g("expert_gating_func", 0) or 0) or 2)  # default sigmoid
    routing = _moe.Routing(gating, k, int(g("expert_group_count", 0) or 0),
                           int(g("expert_group_used_count", 0) or 0),
                           bool(g("expert_weights_norm", False)),
                           float(g("expert_weights_scale", 0.0) or 0.0))
    return Config(**base, qkv_bias="blk.0.attn_q.bias" in model.tensors,
                  qk_norm="blk.0.attn_q_norm.weight" in model.tensors,
                  n_dense=int(g("leading_dense_block_count", 0) or 0), n_expert=n_exp,
                  routing=routing)


def is_moe_layer(cfg: Config, il: int) -> bool:
    return il >= cfg.n_dense


def expert_names(cfg: Config, il: int) -> tuple[str, str, str]:
    return tuple(f"blk.{il}.{ROLES[f]}.weight" for f in EXPERT_FIELDS)


def _present(cfg: Config, il: int, experts: bool) -> list[str]:
    out = ["attn_norm", "wq", "wk", "wv", "wo", "ffn_norm"]
    out += ["q_norm", "k_norm"] if cfg.qk_norm else []
    return out + _moe.ffn_fields(is_moe_layer(cfg, il), experts)


def load_layer(cfg: Config, get: Callable, act: Callable, il: int,
               experts: bool = True) -> Layer:
    p = f"blk.{il}."
    vals, codes = _moe.layer_arrays(p, ROLES, A, partial(_present, cfg, il), experts, get, act)
    if cfg.qkv_bias:
        vals |= {f"b{x}": jax.device_put(get(f"{p}attn_{x}.bias")) for x in "qkv"}
    if is_moe_layer(cfg, il):
        vals["probs_b"] = jax.device_put(get(p + "exp_probs_b.bias"))
    return Layer(**vals, act=codes)


def layer_consts(cfg: Config, model, il: int, n_ctx: int):
    return C.rope_table(n_ctx, cfg.n_rot, cfg.rope_base, cfg.rope_scale), 0


def _swiglu(p: Layer, m, g: str, u: str, d: str):
    a = jax.nn.silu(C.linear(m, getattr(p, g), p.act[A[g]]))
    return C.linear(a * C.linear(m, getattr(p, u), p.act[A[u]]), getattr(p, d), p.act[A[d]])


def _attention(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """x + attention; the FFN input.  # [B, T, D] -> (h, m)"""
    q, k, v = qwen.qkv(cfg, p, C.rms_norm(x, p.attn_norm, cfg.eps))
    q, k = C.rope_neox(q, rope), C.rope_neox(k, rope)
    o = C.attention(q, k, v, window, cfg.head_dim ** -0.5, f16_kv)
    h = x + C.linear(o, p.wo, p.act[A["wo"]])
    return h, C.rms_norm(h, p.ffn_norm, cfg.eps)


def forward_pre(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    h, m = _attention(cfg, p, x, rope, window, f16_kv)
    return h, _moe.routed(cfg.routing, m, p.gate_inp, p.probs_b,
                          p.act[A["gate_inp"]:A["gate_inp"] + 3])


def forward_post(cfg: Config, p: Layer, h, rt: _moe.Routed, out):
    shared = _swiglu(p, rt.m, "w_gate_sh", "w_up_sh", "w_down_sh")
    return (_moe.combine(out, cfg.routing.n_used).reshape(h.shape) + shared) + h


def forward_layer(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """One transformer block (dense or MoE by the layer's tensors).  # [B, T, D] -> [B, T, D]"""
    if p.gate_inp is None:
        h, m = _attention(cfg, p, x, rope, window, f16_kv)
        return h + _swiglu(p, m, "w_gate", "w_up", "w_down")
    h, rt = forward_pre(cfg, p, x, rope, window, f16_kv)
    out = _moe.all_experts(rt, p.w_gate_exps, p.w_up_exps, p.w_down_exps,
                           p.act[A["w_down_exps"]])
    return forward_post(cfg, p, h, rt, out)
