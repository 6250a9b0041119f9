"""DeepSeek-V2/V3 forward pass (llama.cpp's LLM_ARCH_DEEPSEEK2 graph: DeepSeek-V2/V2.5/V3/R1,
Kimi-K2, GigaChat3, ...).

Attention (multi-head latent attention; n = rms_norm(x, attn_norm), per head h):

    q = Wq_b · qn(Wq_a · n)  (q_lora)  or  Wq · n;   q = [q_nope | q_pe]      # [B, T, H, nope+r]
    [c | k_pe] = Wkv_a_mqa · n;   c = kvn(c)                                  # [B, T, kv + r]
    absorbed (attn_k_b [H, kv, nope], attn_v_b [H, v, kv]): one K/V head of width kv + r
        Q_h = [Wk_b[h] · q_nope_h | rope(q_pe_h)],  K = [c | rope(k_pe)],  V = c
        o_h = Wv_b[h] · attn(Q, K, V)_h
    older attn_kv_b [H*(nope+v), kv]: [k_nope_h | v_h] = Wkv_b · c, H heads as usual
    h = x + Wo · [o_1 .. o_H]

RoPE on adjacent pairs over the r rotary dims with YaRN (ggml: interpolated/extrapolated
angles, magnitude scale), kq_scale = mscale^2 / sqrt(nope + r) as llama.cpp pre-scales it.
FFN: the first ``leading_dense_block_count`` layers are a SwiGLU; the others a routed MoE
(softmax or sigmoid gate, ``exp_probs_b`` selection bias, group-limited top-k, weights
normalized when ``expert_weights_norm``, times ``expert_weights_scale``, see ``_moe``) plus the
shared experts (``ffn_*_shexp``, one SwiGLU): y = (moe + shared) + h.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from quant import UserError

from . import _common as C
from . import _moe, llama, qwen3moe

ARCHS = ("deepseek2",)
ROLES = {  # Layer field -> tensor role, in matmul (LINEARS) order first
    "wq": "attn_q", "wq_a": "attn_q_a", "wq_b": "attn_q_b", "wkv_a": "attn_kv_a_mqa",
    "wk_b": "attn_k_b", "wv_b": "attn_v_b", "wkv_b": "attn_kv_b", "wo": "attn_output",
    "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down", "gate_inp": "ffn_gate_inp",
    "w_gate_exps": "ffn_gate_exps", "w_up_exps": "ffn_up_exps", "w_down_exps": "ffn_down_exps",
    "w_gate_sh": "ffn_gate_shexp", "w_up_sh": "ffn_up_shexp", "w_down_sh": "ffn_down_shexp",
    "attn_norm": "attn_norm", "q_a_norm": "attn_q_a_norm", "kv_a_norm": "attn_kv_a_norm",
    "ffn_norm": "ffn_norm"}
LINEARS = tuple(ROLES.values())[:18]
A = {f: i for i, f in enumerate(ROLES) if i < 18}  # field -> index in Layer.act
EXPERT_FIELDS = _moe.EXPERT_FIELDS


@dataclass(frozen=True)
class Config(llama.Config):
    nope: int = 0  # per-head q/k dims without RoPE (n_rot more have it)
    kv_lora: int = 0
    q_lora: int = 0
    v_head: int = 0
    absorbed: bool = True
    has_probs_b: bool = False
    n_dense: int = 0  # leading dense layers
    n_expert: int = 0
    routing: _moe.Routing = _moe.Routing()
    yarn: C.Yarn = C.Yarn()
    kq_scale: float = 1.0


@jax.tree_util.register_dataclass
@dataclass
class Layer(_moe.FfnWeights):
    attn_norm: jax.Array  # [D]
    kv_a_norm: jax.Array  # [kv]
    wkv_a: jax.Array  # [kv + r, D]
    wo: jax.Array  # [D, H*v]
    ffn_norm: jax.Array  # [D]
    act: jax.Array  # int32 [18], LINEARS order
    wq: jax.Array | None = None  # [H*(nope+r), D]   (no q_lora)
    wq_a: jax.Array | None = None  # [q_lora, D]
    q_a_norm: jax.Array | None = None  # [q_lora]
    wq_b: jax.Array | None = None  # [H*(nope+r), q_lora]
    wk_b: jax.Array | None = None  # [H, kv, nope]     (absorbed)
    wv_b: jax.Array | None = None  # [H, v, kv]
    wkv_b: jax.Array | None = None  # [H*(nope+v), kv] (older form)


def _yarn(model, n_ctx_train: int) -> tuple[C.Yarn, float]:
    """(rope parameters, rope_yarn_log_mul) as llama_context sets them for this model."""
    f, g = np.float32, lambda k, d=None: llama.meta_get(model, k, d)  # noqa: E731
    kind = str(g("rope.scaling.type", "linear"))
    factor = float(g("rope.scaling.factor", 0.0) or 0.0)
    fs = f(1.0) if kind == "none" or not factor else f(1.0) / f(factor)
    ext = 1.0 if kind == "yarn" else 0.0
    log_mul = f(g("rope.scaling.yarn_log_multiplier", 0.0) or 0.0) / f(0.1)
    attn = f(1.0)
    if ext:  # with a log multiplier, DeepSeek2's mscale equals mscale_all_dim: the ratio is 1
        fac = f(1) / fs
        attn = f(1) if log_mul or fac <= 1 else f(0.1) * np.log(fac) + f(1)
        attn = attn * (f(1) / (f(1) + f(0.1) * np.log(fac)))
    attn = f(attn * f(g("rope.scaling.attn_factor", 1.0) or 1.0))
    n_orig = int(g("rope.scaling.original_context_length", 0) or n_ctx_train)
    return C.Yarn(float(fs), ext, float(attn), n_orig), float(log_mul)


def _gating(model, hp) -> str:
    """expert_gating_func; absent: softmax (DeepSeek-V2/V2.5 files), sigmoid for GLM-4.7-Lite."""
    code = int(llama.meta_get(model, "expert_gating_func", 0) or 0)
    if not code:
        code = 2 if hp.n_layer in (47, 48) and hp.n_vocab == 154880 else 1
    return _moe.gating_name(code)


def config(model) -> Config:
    g = lambda k, d=None: llama.meta_get(model, k, d)  # noqa: E731
    if g("attention.temperature_scale"):
        raise UserError(f"{model.arch} with attention temperature scaling (Mistral Large) is "
                        "not supported by the JAX forward yet")
    hp = model.hparams()
    n_rot = int(g("rope.dimension_count"))
    absorbed = "blk.0.attn_k_b.weight" in model.tensors
    k_mla = int(g("attention.key_length_mla", 0) or 0) or int(g("attention.key_length"))
    v_mla = int(g("attention.value_length_mla", 0) or 0) or int(g("attention.value_length"))
    yarn, log_mul = _yarn(model, int(g("context_length", 0) or 0))
    f = np.float32
    fs = f(yarn.freq_scale)
    org = f(yarn.attn_factor) * (f(1) + f(0.1) * np.log(f(1) / fs))
    mscale = org * (f(1) + f(0.1) * f(log_mul) * np.log(f(1) / fs))
    n_exp, k = qwen3moe.moe_meta(model)
    routing = _moe.Routing(_gating(model, hp), k, int(g("expert_group_count", 0) or 0),
                           int(g("expert_group_used_count", 0) or 0),
                           bool(g("expert_weights_norm", False)),
                           float(g("expert_weights_scale", 0.0) or 0.0))
    return Config(
        arch=model.arch, n_layer=hp.n_layer, n_embd=hp.n_embd, n_head=hp.n_head,
        n_head_kv=hp.n_head_kv, head_dim=k_mla, n_rot=n_rot, n_vocab=hp.n_vocab,
        eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_base=float(g("rope.freq_base", 10000.0)), rope_scale=float(fs),
        tied=model.tied_embeddings, nope=k_mla - n_rot, kv_lora=int(g("attention.kv_lora_rank")),
        q_lora=int(g("attention.q_lora_rank", 0) or 0), v_head=v_mla, absorbed=absorbed,
        has_probs_b=any(n.endswith(".exp_probs_b.bias") for n in model.tensors),
        n_dense=int(g("leading_dense_block_count", 0) or 0),
        n_expert=n_exp, routing=routing, yarn=yarn,
        kq_scale=float(mscale * mscale / np.sqrt(f(k_mla))))


def is_moe_layer(cfg: Config, il: int) -> bool:
    return il >= cfg.n_dense


def expert_names(cfg: Config, il: int) -> tuple[str, str, str]:
    return tuple(f"blk.{il}.{ROLES[f]}.weight" for f in EXPERT_FIELDS)


def _present(cfg: Config, il: int, experts: bool) -> list[str]:
    out = ["attn_norm", "kv_a_norm", "wkv_a", "wo", "ffn_norm"]
    out += ["wk_b", "wv_b"] if cfg.absorbed else ["wkv_b"]
    out += ["wq_a", "q_a_norm", "wq_b"] if cfg.q_lora else ["wq"]
    return out + _moe.ffn_fields(is_moe_layer(cfg, il), experts)


def load_layer(cfg: Config, get: Callable, act: Callable, il: int,
               experts: bool = True) -> Layer:
    p = f"blk.{il}."
    vals, codes = _moe.layer_arrays(p, ROLES, A, partial(_present, cfg, il), experts, get, act)
    if is_moe_layer(cfg, il) and cfg.has_probs_b:
        vals["probs_b"] = jax.device_put(get(p + "exp_probs_b.bias"))
    return Layer(**vals, act=codes)


def layer_consts(cfg: Config, model, il: int, n_ctx: int):
    return C.rope_table_yarn(n_ctx, cfg.n_rot, cfg.rope_base, cfg.yarn), 0


def _q(cfg: Config, p: Layer, n):
    if p.wq is not None:
        return C.linear(n, p.wq, p.act[A["wq"]])
    q = C.rms_norm(C.linear(n, p.wq_a, p.act[A["wq_a"]]), p.q_a_norm, cfg.eps)
    return C.linear(q, p.wq_b, p.act[A["wq_b"]])


def attention(cfg: Config, p: Layer, n, rope, window, f16_kv: bool):
    """Multi-head latent attention, before Wo.  # [B, T, D] -> [B, T, H*v]"""
    b, t, _ = n.shape
    h, nope, kv = cfg.n_head, cfg.nope, cfg.kv_lora
    q = _q(cfg, p, n).reshape(b, t, h, nope + cfg.n_rot)
    q_nope, q_pe = q[..., :nope], C.rope_norm(q[..., nope:], rope)
    ckv = C.linear(n, p.wkv_a, p.act[A["wkv_a"]])
    c = C.rms_norm(ckv[..., :kv], p.kv_a_norm, cfg.eps)[:, :, None, :]  # [B, T, 1, kv]
    k_pe = C.rope_norm(ckv[..., None, kv:], rope)  # [B, T, 1, r]
    if cfg.absorbed:
        qa = C.linear_heads(q_nope, p.wk_b, p.act[A["wk_b"]])  # [B, T, H, kv]
        o = C.attention(jnp.concatenate([qa, q_pe], -1), jnp.concatenate([c, k_pe], -1), c,
                        window, cfg.kq_scale, f16_kv)
        return C.linear_heads(o.reshape(b, t, h, kv), p.wv_b,
                              p.act[A["wv_b"]]).reshape(b, t, h * cfg.v_head)
    kvb = C.linear(c[:, :, 0], p.wkv_b, p.act[A["wkv_b"]]).reshape(b, t, h, nope + cfg.v_head)
    k = jnp.concatenate([kvb[..., :nope], jnp.broadcast_to(k_pe, (b, t, h, cfg.n_rot))], -1)
    return C.attention(jnp.concatenate([q_nope, q_pe], -1), k, kvb[..., nope:], window,
                       cfg.kq_scale, f16_kv)


def swiglu(p: Layer, m, g: str, u: str, d: str):
    """LLM_FFN_SILU / LLM_FFN_PAR of the fields g, u, d.  # [..., D] -> [..., D]"""
    a = jax.nn.silu(C.linear(m, getattr(p, g), p.act[A[g]]))
    return C.linear(a * C.linear(m, getattr(p, u), p.act[A[u]]), getattr(p, d), p.act[A[d]])


def forward_pre(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """Attention and routing of a MoE layer: (h [B, T, D], Routed)."""
    n = C.rms_norm(x, p.attn_norm, cfg.eps)
    h = x + C.linear(attention(cfg, p, n, rope, window, f16_kv), p.wo, p.act[A["wo"]])
    m = C.rms_norm(h, p.ffn_norm, cfg.eps)
    codes = p.act[A["gate_inp"]:A["gate_inp"] + 3]
    return h, _moe.routed(cfg.routing, m, p.gate_inp, p.probs_b, codes)


def forward_post(cfg: Config, p: Layer, h, rt: _moe.Routed, out):
    """(routed experts + shared experts) + residual.  # -> [B, T, D]"""
    shared = swiglu(p, rt.m, "w_gate_sh", "w_up_sh", "w_down_sh")
    return (_moe.combine(out, cfg.routing.n_used).reshape(h.shape) + shared) + h


def forward_layer(cfg: Config, p: Layer, x, rope, window, f16_kv: bool):
    """One transformer block (dense or MoE by the layer's tensors).  # [B, T, D] -> [B, T, D]"""
    if p.gate_inp is None:
        n = C.rms_norm(x, p.attn_norm, cfg.eps)
        h = x + C.linear(attention(cfg, p, n, rope, window, f16_kv), p.wo, p.act[A["wo"]])
        return h + swiglu(p, C.rms_norm(h, p.ffn_norm, cfg.eps), "w_gate", "w_up", "w_down")
    h, rt = forward_pre(cfg, p, x, rope, window, f16_kv)
    out = _moe.all_experts(rt, p.w_gate_exps, p.w_up_exps, p.w_down_exps,
                           p.act[A["w_down_exps"]])
    return forward_post(cfg, p, h, rt, out)

