"""gpt-oss forward pass (llama.cpp's LLM_ARCH_OPENAI_MOE graph: gpt-oss-20b, gpt-oss-120b).

    [q|k|v] = W·n + b,  n = rms_norm(x, attn_norm)                               # [B, T, D]
    h = x + (Wo · attn_sinks(rope(q), rope(k), v) + bo)
    y = h + moe(m),     m = rms_norm(h, post_attention_norm)

Attention: NEOX RoPE with YaRN (freq_scale = 1/factor, ramped angles, magnitude scale), scores
scaled by 1/sqrt(n_rot), and a learned logit per head (``attn_sinks`` [H]) in every softmax
row, attending to nothing. Layers alternate between a sliding window of ``sliding_window``
keys (even layers: llama.cpp's set_swa_pattern(2)) and full causal attention; the window is a
traced scalar, so both kinds share one compiled step.

``moe``: router logits ffn_gate_inp · m + b; the top ``expert_used_count`` logits pick the
experts and the softmax of those k logits weights them (SOFTMAX_WEIGHT gating); each expert is
down(swiglu_oai(gate·m + b_gate, up·m + b_up)) + b_down with ggml's clamped SwiGLU (x clamped
above at 7, the up half to ±7, x·sigmoid(1.702 x)·(up + 1)); see ``_moe``. Shapes: experts
gate/up [E, F, D], down [E, D, F], their biases [E, F] / [E, D]; router [E, D], bias [E].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import jax
import numpy as np

from . import _common as C
from . import _moe, gemma3, llama, qwen, qwen3moe

LINEARS = qwen3moe.LINEARS
ARCHS = ("gpt-oss",)
ROLES = {  # Layer field -> tensor name after blk.<il>. (matmuls first, in LINEARS order)
    "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight",
    "wo": "attn_output.weight", "gate_inp": "ffn_gate_inp.weight",
    "w_gate_exps": "ffn_gate_exps.weight", "w_up_exps": "ffn_up_exps.weight",
    "w_down_exps": "ffn_down_exps.weight", "attn_norm": "attn_norm.weight",
    "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias", "bo": "attn_output.bias",
    "sinks": "attn_sinks.weight", "ffn_norm": "post_attention_norm.weight",
    "gate_inp_b": "ffn_gate_inp.bias", "b_gate_exps": "ffn_gate_exps.bias",
    "b_up_exps": "ffn_up_exps.bias", "b_down_exps": "ffn_down_exps.bias"}
EXPERT_FIELDS = _moe.EXPERT_FIELDS


@dataclass(frozen=True)
class Config(qwen.Config):
    n_swa: int = 0
    swa_layers: tuple[bool, ...] = ()
    rope_base_swa: float = 0.0
    n_expert: int = 0
    routing: _moe.Routing = _moe.Routing()
    yarn: C.Yarn = C.Yarn()


@jax.tree_util.register_dataclass
@dataclass
class Layer(llama.Attention):
    bq: jax.Array  # [H*hd]
    bk: jax.Array  # [Hkv*hd]
    bv: jax.Array  # [Hkv*hd]
    bo: jax.Array  # [D]
    sinks: jax.Array  # [H]
    ffn_norm: jax.Array  # [D] post_attention_norm
    gate_inp: jax.Array  # [E, D]
    gate_inp_b: jax.Array  # [E]
    b_gate_exps: jax.Array  # [E, F]
    b_up_exps: jax.Array  # [E, F]
    b_down_exps: jax.Array  # [E, D]
    act: jax.Array  # int32 [8], LINEARS order
    w_gate_exps: jax.Array | None = None  # [E, F, D] (None when streamed in slices)
    w_up_exps: jax.Array | None = None  # [E, F, D]
    w_down_exps: jax.Array | None = None  # [E, D, F]


def _yarn(model) -> C.Yarn:
    """The rope parameters llama_context derives for gpt-oss (which reads no YaRN log
    multiplier): attn_factor = mscale(factor) / (1 + 0.1 ln factor) · rope.scaling.attn_factor."""
    f, g = np.float32, partial(llama.meta_get, model)
    kind = str(g("rope.scaling.type", "linear"))
    factor = f(g("rope.scaling.factor", 0.0) or 0.0)
    fs = f(1) if kind == "none" or not factor else f(1) / factor
    attn = f(1)
    if kind == "yarn":
        fac = f(1) / fs
        attn = (f(0.1) * np.log(fac) + f(1) if fac > 1 else f(1)) * (
            f(1) / (f(1) + f(0.1) * np.log(fac)))
    attn = f(attn * f(g("rope.scaling.attn_factor", 1.0) or 1.0))
    n_orig = int(g("rope.scaling.original_context_length", 0) or g("context_length", 0) or 0)
    return C.Yarn(float(fs), 1.0 if kind == "yarn" else 0.0, float(attn), n_orig)


def config(model) -> Config:
    g = partial(llama.meta_get, model)
    hp = model.hparams()
    head_dim = int(g("attention.key_length", hp.n_embd // hp.n_head))
    n_exp, k = qwen3moe.moe_meta(model)
    yarn = _yarn(model)
    base = float(g("rope.freq_base", 10000.0))
    return Config(
        arch=model.arch, n_layer=hp.n_layer, n_embd=hp.n_embd, n_head=hp.n_head,
        n_head_kv=hp.n_head_kv, head_dim=head_dim,
        n_rot=int(g("rope.dimension_count", head_dim)), n_vocab=hp.n_vocab,
        eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)), rope_base=base,
        rope_scale=yarn.freq_scale, tied=model.tied_embeddings, qkv_bias=True,
        n_swa=int(g("attention.sliding_window", 0) or 0),
        swa_layers=gemma3.swa_pattern(model, hp.n_layer, 2),
        rope_base_swa=float(g("rope.freq_base_swa", base)), n_expert=n_exp,
        routing=_moe.Routing("softmax_weight", k, glu="swiglu_oai"), yarn=yarn)


def is_moe_layer(cfg: Config, il: int) -> bool:
    return True


def expert_names(cfg: Config, il: int) -> tuple[str, str, str]:
    return tuple(f"blk.{il}.{ROLES[f]}" for f in EXPERT_FIELDS)


def load_layer(cfg: Config, get: Callable, act: Callable, il: int,
               experts: bool = True) -> Layer:
    """get(name) -> f32 array; act(name) -> rounding code; ``experts=False`` leaves the
    expert weights out (streamed in slices; their biases stay)."""
    p = f"blk.{il}."
    fields = [f for f in ROLES if experts or f not in EXPERT_FIELDS]
    return Layer(**{f: jax.device_put(get(p + ROLES[f])) for f in fields},
                 act=qwen3moe.act_codes(act, il))


def layer_consts(cfg: Config, model, il: int, n_ctx: int):
    if cfg.swa_layers[il]:
        return C.rope_table_yarn(n_ctx, cfg.n_rot, cfg.rope_base_swa, cfg.yarn), cfg.n_swa
    return C.rope_table_yarn(n_ctx, cfg.n_rot, cfg.rope_base, cfg.yarn), 0


def forward_pre(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """Attention and routing: (h [B, T, D], routed pairs with the experts' biases)."""
    q, k, v = qwen.qkv(cfg, p, C.rms_norm(x, p.attn_norm, cfg.eps))
    q, k = C.rope_neox(q, rope), C.rope_neox(k, rope)
    o = C.attention(q, k, v, window, cfg.n_rot ** -0.5, f16_kv, p.sinks)
    h = x + (C.linear(o, p.wo, p.act[3]) + p.bo)
    m = C.rms_norm(h, p.ffn_norm, cfg.eps)
    return h, _moe.routed(cfg.routing, m, p.gate_inp, None, p.act[4:7], p.gate_inp_b,
                          (p.b_gate_exps, p.b_up_exps, p.b_down_exps))


forward_post = qwen3moe.forward_post  # the slots summed in order, plus the residual


def forward_layer(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """One transformer block with every expert in ``p``.  # [B, T, D] -> [B, T, D]"""
    h, r = forward_pre(cfg, p, x, rope, window, f16_kv)
    out = _moe.all_experts(r, p.w_gate_exps, p.w_up_exps, p.w_down_exps, p.act[7])
    return forward_post(cfg, p, h, r, out)
