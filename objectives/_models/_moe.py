"""Mixture-of-experts FFN shared by the MoE families (llama.cpp's build_moe_ffn, CPU backend).

    Routing(gating, n_used, n_groups, n_group_used, norm, scale, glu)   frozen, part of a Config
    route(r, logits [N, E], bias [E] | None)       -> ids int32 [N, k], weights f32 [N, k]
    expert_outputs(xg, xu [N, D], ids, wts, gate/up [S, F, D], down [S, D, F], e0, act_down,
                   out [N*k, D], block, biases, glu) -> out with the rows of experts e0..e0+S-1 set
    combine(out [N*k, D], k)                       -> [N, D]: slots summed in top-k order
    routed(r, m [B, T, D], gate_inp [E, D], bias, act [3], logits_b [E], biases)
                                                   -> Routed(m, xg, xu, ids, wts, biases, glu)
    all_experts(rt, gate, up, down, act_down)      -> out [N*k, D] of every expert at once
    slice_outputs(rt, gate, up, down, e0, act_down, out) -> out with one slice's rows set

Routing as ggml computes it: logits = gate_inp · m (+ the router bias; f32 router: no
activation rounding), probs = softmax or sigmoid of the logits (softmax_weight: the logits
themselves), selection scores = probs + exp_probs_b; with expert groups, each group scores the
sum of its two best experts and all but the ``n_group_used`` best groups are masked to -inf;
the top k scores pick the experts (ggml_argsort_top_k: std::sort descending, an insertion sort
for <= 16 experts, so ties go to the lower expert id, which is lax.top_k's rule); weights =
probs of the picked experts (softmax_weight: the softmax of their k logits), divided by their
sum (clamped to 2^-14) when ``norm``, times ``scale`` when it is neither 0 nor 1.

An expert is down(glu(gate x + b_gate, up x + b_up)) + b_down: ``glu`` silu (SwiGLU) or
swiglu_oai (gpt-oss' clamped SwiGLU), the biases [E, F] / [E, D] optional (ggml_add_id).

Experts run only on the (token, slot) pairs routed to them: the N*k pairs are sorted by expert
and cut into blocks of ``block`` rows of one expert each (an expert's last block padded), and a
loop with a traced trip count runs the blocks that exist, so shapes are static (one compile per
model) while the work is that of the routed pairs. Each pair's output row is written once; the
final sum over slots in slot order reproduces ggml's chain of adds, so slicing the experts
(``e0``, S experts at a time) gives the same values as one slice of all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from quant import UserError

from . import _common as C

GATING = {1: "softmax", 2: "sigmoid", 3: "softmax_weight"}  # llama_expert_gating_func_type
BLOCK = 16  # rows of one expert per block


@dataclass(frozen=True)
class Routing:
    gating: str = "softmax"
    n_used: int = 1
    n_groups: int = 0
    n_group_used: int = 0
    norm: bool = False
    scale: float = 0.0
    glu: str = "silu"  # the experts' gated activation, a GLU key


def gating_name(code: int) -> str:
    if code not in GATING:
        raise UserError(f"expert_gating_func {code} is not supported by the JAX forward "
                        f"(supported: {', '.join(f'{k} ({v})' for k, v in GATING.items())})")
    return GATING[code]


def swiglu_oai(g, u, alpha: float = 1.702, limit: float = 7.0):
    """ggml_swiglu_oai: x·sigmoid(alpha x)·(y + 1), x = min(g, limit), y = clamp(u, ±limit)."""
    x = jnp.minimum(g, limit)
    return x / (1.0 + jnp.exp(-alpha * x)) * (jnp.clip(u, -limit, limit) + 1.0)


GLU = {"silu": lambda g, u: jax.nn.silu(g) * u, "swiglu_oai": swiglu_oai}


def _probs(gating: str, logits):
    if gating == "sigmoid":
        return jax.nn.sigmoid(logits)
    if gating == "softmax_weight":  # the softmax comes after the selection
        return logits
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))  # ggml scales by 1/sum


def _group_mask(r: Routing, sel):
    """Scores of experts outside the n_group_used best groups set to -inf.  # [N, E]"""
    n, e = sel.shape
    g = sel.reshape(n, r.n_groups, e // r.n_groups)
    top2 = lax.top_k(g, 2)[0]
    best = lax.top_k(top2[..., 0] + top2[..., 1], r.n_group_used)[1]  # [N, n_group_used]
    keep = jnp.zeros((n, r.n_groups), bool).at[jnp.arange(n)[:, None], best].set(True)
    return jnp.where(keep[..., None], g, -jnp.inf).reshape(n, e)


def route(r: Routing, logits, bias=None):
    """(expert ids int32 [N, k], weights f32 [N, k]) from router logits [N, E]."""
    probs = _probs(r.gating, logits)
    sel = probs + bias if bias is not None else probs
    if r.n_groups > 1:
        sel = _group_mask(r, sel)
    ids = lax.top_k(sel, r.n_used)[1].astype(jnp.int32)
    w = jnp.take_along_axis(probs, ids, axis=-1)
    if r.gating == "softmax_weight":
        w = _probs("softmax", w)
    if r.norm:
        w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 6.103515625e-5)
    if r.scale not in (0.0, 1.0):
        w = w * jnp.float32(r.scale)
    return ids, w


def _plan(ids, e0, n_exp: int, block: int):
    """Pairs sorted by expert and the block layout of experts e0 .. e0+n_exp-1."""
    local = ids.reshape(-1) - e0
    key = jnp.where((local >= 0) & (local < n_exp), local, n_exp)
    order = jnp.argsort(key, stable=True).astype(jnp.int32)  # [P] pairs grouped by expert
    counts = jnp.zeros(n_exp + 1, jnp.int32).at[key].add(1)[:n_exp]
    first = jnp.cumsum(counts) - counts  # first sorted position of each expert
    n_blk = (counts + block - 1) // block
    blk_end = jnp.cumsum(n_blk)
    return order, counts, first, blk_end - n_blk, blk_end


def expert_outputs(xg, xu, ids, wts, gate, up, down, e0, act_down, out, block: int = BLOCK,
                   stats=None, biases=None, glu: str = "silu"):
    """Rows w_pair * down(glu(gate x, up x)) for every pair routed to experts e0..e0+S-1.

    xg, xu: the FFN input rounded for the gate / up matmuls [N, D]; out [N*k, D] (rows of
    other experts are kept). ``biases``: (gate [E, F], up [E, F], down [E, D]) of all E experts,
    added after each matmul. ``stats`` (valid f32 [N]) also returns the per-expert sums of the
    down matmul's squared inputs [S, F] (llama-imatrix's view)."""
    k, n_exp, n_ff = ids.shape[1], gate.shape[0], gate.shape[1]
    n_pairs = ids.size
    order, counts, first, blk_start, blk_end = _plan(ids, e0, n_exp, block)
    flat_w = wts.reshape(-1)

    def body(b, carry):
        out, acc = carry
        s = jnp.searchsorted(blk_end, b, side="right")
        r = (b - blk_start[s]) * block + jnp.arange(block)
        ok = r < counts[s]
        pair = order[jnp.where(ok, first[s] + r, 0)]
        tok = pair // k
        g = jnp.einsum("bi,oi->bo", xg[tok], gate[s], precision=C.HIGHEST)
        u = jnp.einsum("bi,oi->bo", xu[tok], up[s], precision=C.HIGHEST)
        if biases is not None:
            g, u = g + biases[0][e0 + s], u + biases[1][e0 + s]
        hid = GLU[glu](g, u)  # [block, F]
        y = jnp.einsum("bi,oi->bo", C.round_activations(hid, act_down), down[s],
                       precision=C.HIGHEST)
        if biases is not None:
            y = y + biases[2][e0 + s]
        out = out.at[jnp.where(ok, pair, n_pairs)].set(y * flat_w[pair][:, None], mode="drop")
        if acc is not None:
            acc = acc.at[s].add(jnp.einsum("bf,b->f", hid * hid, ok * stats[tok]))
        return out, acc

    acc0 = jnp.zeros((n_exp, n_ff), jnp.float32) if stats is not None else None
    out, acc = lax.fori_loop(0, blk_end[-1], body, (out, acc0))
    return (out, acc) if stats is not None else out


def combine(out, k: int):
    """Sum of the k slot outputs in slot order (ggml adds views 0, 1, ... in turn).  # [N, D]"""
    o = out.reshape(-1, k, out.shape[-1])
    y = o[:, 0]
    for j in range(1, k):
        y = y + o[:, j]
    return y


def expert_stats(ids, m, valid, n_exp: int):
    """Per-expert sums of squared gate/up inputs [E, D] and row counts [E] (valid rows only)."""
    hits = jnp.zeros((ids.shape[0], n_exp), jnp.float32).at[
        jnp.arange(ids.shape[0])[:, None], ids].add(1.0) * valid[:, None]  # [N, E]
    return jnp.einsum("ne,nd->ed", hits, m * m, precision=C.HIGHEST), jnp.sum(hits, axis=0)


@dataclass(kw_only=True)
class FfnWeights:
    """The FFN weights of a layer that is dense or MoE (with shared experts): the fields a
    family's Layer inherits (keyword-only, after its own)."""
    w_gate: jax.Array | None = None  # [F, D]            (dense layers)
    w_up: jax.Array | None = None
    w_down: jax.Array | None = None  # [D, F]
    gate_inp: jax.Array | None = None  # [E, D]          (MoE layers)
    probs_b: jax.Array | None = None  # [E]
    w_gate_exps: jax.Array | None = None  # [E, F, D]
    w_up_exps: jax.Array | None = None
    w_down_exps: jax.Array | None = None  # [E, D, F]
    w_gate_sh: jax.Array | None = None  # [F*n_shared, D]
    w_up_sh: jax.Array | None = None
    w_down_sh: jax.Array | None = None  # [D, F*n_shared]


EXPERT_FIELDS = ("w_gate_exps", "w_up_exps", "w_down_exps")


def ffn_fields(moe_layer: bool, experts: bool) -> list[str]:
    """The FfnWeights fields a layer loads: a dense FFN, or the router and shared experts
    (and, unless ``experts`` is False, the routed experts, else streamed a slice at a time)."""
    if not moe_layer:
        return ["w_gate", "w_up", "w_down"]
    return ["gate_inp", "w_gate_sh", "w_up_sh", "w_down_sh",
            *(EXPERT_FIELDS if experts else ())]


def layer_arrays(prefix: str, roles: dict, order, fields: Callable[[bool], list[str]],
                 experts: bool, get, act):
    """A layer's loaded weights {field: array} and its activation codes [len(order)] int32
    (ACT_NONE for a field the layer lacks); ``fields(experts)``: the layer's fields, the
    routed experts' included or not (streamed later)."""
    vals = {f: jax.device_put(get(prefix + roles[f] + ".weight")) for f in fields(experts)}
    present = set(fields(True))
    codes = [act(prefix + roles[f] + ".weight") if f in present else C.ACT_NONE for f in order]
    return vals, jnp.asarray(np.array(codes, np.int32))


@jax.tree_util.register_dataclass
@dataclass
class Routed:
    """The FFN input of every token and where it goes."""
    m: jax.Array  # [B, T, D] normed FFN input (N = B*T tokens)
    xg: jax.Array  # [N, D] m rounded for the gate matmul
    xu: jax.Array  # [N, D] m rounded for the up matmul
    ids: jax.Array  # int32 [N, k]
    wts: jax.Array  # f32 [N, k]
    biases: tuple | None = None  # the experts' (gate [E, F], up [E, F], down [E, D]) biases
    glu: str = field(default="silu", metadata=dict(static=True))


def routed(r: Routing, m, gate_inp, bias, act, logits_b=None, biases=None) -> Routed:
    """Routing of normed inputs m [B, T, D]; act: codes of (gate_inp, gate_exps, up_exps);
    logits_b [E]: the router's bias (added to the logits, before the gating)."""
    logits = C.linear(m, gate_inp, act[0])
    if logits_b is not None:
        logits = logits + logits_b
    ids, wts = route(r, logits.reshape(-1, logits.shape[-1]), bias)
    flat = m.reshape(-1, m.shape[-1])
    return Routed(m, C.round_activations(flat, act[1]), C.round_activations(flat, act[2]),
                  ids, wts, biases, r.glu)


def empty_out(rt: Routed):
    return jnp.zeros((rt.ids.size, rt.m.shape[-1]), jnp.float32)


def slice_outputs(rt: Routed, gate, up, down, e0, act_down, out):
    """``out`` with the rows of experts e0 .. e0+S-1 (a slice of the layer's experts) set."""
    return expert_outputs(rt.xg, rt.xu, rt.ids, rt.wts, gate, up, down, e0, act_down, out,
                          biases=rt.biases, glu=rt.glu)


def all_experts(rt: Routed, gate, up, down, act_down):
    """Every pair's output row [N*k, D]; while ``_common.TAP`` captures, llama-imatrix's
    per-expert statistics of the three expert tensors go to ``_common.TAP_STATS``."""
    if C.TAP_STATS is None:
        return slice_outputs(rt, gate, up, down, 0, act_down, empty_out(rt))
    valid = jnp.repeat(C.TAP_VALID, rt.m.shape[1])
    out, acc = expert_outputs(rt.xg, rt.xu, rt.ids, rt.wts, gate, up, down, 0, act_down,
                              empty_out(rt), stats=valid, biases=rt.biases, glu=rt.glu)
    sums, counts = expert_stats(rt.ids, rt.m.reshape(-1, rt.m.shape[-1]), valid, gate.shape[0])
    C.TAP_STATS.extend([(gate, sums, counts), (up, sums, counts), (down, acc, counts)])
    return out
