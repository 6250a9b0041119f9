"""Streaming forward pass: every calibration chunk goes through layer l before layer l+1 loads.

    Weights(model, override, recipe, imatrix, act_round, expert_slice)
        .get(name) -> f32 [n_out, n_in];  .act(name) -> activation-rounding code
        .get_experts(name, e0, e1) -> f32 [e1-e0, n_out, n_in] (only those experts dequantized)
    final_hidden(model, weights, chunks [N, T], ...)       -> list of [B, T, D] (N padded to B's)
    head_inputs(model, weights)                            -> (output_norm [D], W_out [V, D], act)
    expert_routing(model, weights, chunks [N, T], batch)   -> {layer: expert ids int32 [N, T, k]}

Memory: the hidden states of all chunks ([N, T, D] float32) plus one layer's weights. The
layer step is jitted with the config static and the weights as arguments, so it compiles once
per (model config, batch, T); ``TRACES`` counts the traces (tests assert on it).

Mixture-of-experts layers whose experts exceed ``EXPERT_LAYER_BYTES`` in float32 (or any, with
``Weights(expert_slice=S)``) run in three steps: attention and routing for every batch, then
the experts S at a time (each slice dequantized, applied to every batch's routed pairs and
dropped), then the slot sum and residual. Memory is then one slice of experts plus, per batch,
the routed outputs [B*T*k, D]; the values equal the unsliced layer's (``_moe``).
"""

from __future__ import annotations

import collections
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from quant import UserError

from . import _common as C
from . import _moe, family

TRACES: collections.Counter = collections.Counter()
Progress = Callable[[str, int, int], None]
EXPERT_LAYER_BYTES = 2 << 30  # float32 bytes of one layer's experts above which they are sliced


class Weights:
    """Where each tensor's float32 values come from: override > recipe fake-quant > file."""

    def __init__(self, model, override=None, recipe=None, imatrix=None, act_round=False,
                 target="mainline", expert_slice: int | None = None):
        self.model, self.override = model, dict(override or {})
        self.recipe, self.imatrix = _resolved(model, recipe or {}, target), imatrix or {}
        self.act_round, self.target = act_round, target
        self.expert_slice = expert_slice
        self._memo: dict[str, np.ndarray] = {}

    def get(self, name: str):
        if name in self.override:
            return self.override[name]
        if name in self._memo:
            return self._memo[name]
        x = self._load(name)
        if name in ("token_embd.weight", "output.weight"):  # read twice: embedding and head
            self._memo[name] = x
        return x

    def _load(self, name: str):
        x = self.model.f32(name)
        if name not in self.recipe:
            return x
        import quant

        fake_quant = getattr(quant, "fake_quant", None)
        if fake_quant is None:
            raise UserError("quant.fake_quant is not available yet: evaluate with weights= "
                            "overrides instead of a recipe")
        return fake_quant(x, self.recipe[name], self.imatrix.get(name), target=self.target)

    def get_experts(self, name: str, e0: int, e1: int):
        """Experts e0..e1-1 of a 3-D tensor, from the same source as ``get``."""
        if name in self.override:
            return np.asarray(self.override[name][e0:e1])
        x = self.model.f32_experts(name, e0, e1)
        if name not in self.recipe:
            return x
        import quant

        im = self.imatrix.get(name)
        if im is not None and np.size(im) != x.shape[-1]:  # one row per expert
            im = np.asarray(im).reshape(self.model.tensors[name].shape[0], -1)[e0:e1]
        return quant.fake_quant(x, self.recipe[name], im, target=self.target)

    def type_of(self, name: str) -> str:
        if name in self.recipe:
            return self.recipe[name]
        return self.model.tensors[name].qtype.name

    def act(self, name: str) -> int:
        return C.act_code(self.type_of(name)) if self.act_round else C.ACT_NONE


def _resolved(model, recipe: dict, target: str) -> dict[str, str]:
    """Recipe types after llama-quantize's shape fallback (what the file would really hold),
    without the tensors it keeps as stored."""
    from quant import resolve

    unknown = sorted(set(recipe) - set(model.tensors))
    if unknown:
        raise UserError(f"the recipe names tensors the model does not have: {unknown[:3]}: "
                        "check the tensor names against the model")
    out = {n: resolve(t, model.tensors[n].shape, target) for n, t in recipe.items()}
    # a tensor already at its type is copied by llama-quantize: the file's own values
    return {n: t for n, t in out.items() if t != model.tensors[n].qtype.name}


def _layer_step(fam, cfg, f16_kv, p, x, rope, window):
    TRACES["layer"] += 1
    return fam.forward_layer(cfg, p, x, rope, window, f16_kv)


_layer_jit = jax.jit(_layer_step, static_argnums=(0, 1, 2))


def _pre_step(fam, cfg, f16_kv, p, x, rope, window):
    TRACES["moe_pre"] += 1
    return fam.forward_pre(cfg, p, x, rope, window, f16_kv)


def _slice_step(rt, gate, up, down, e0, act_down, out):
    TRACES["moe_slice"] += 1
    return _moe.slice_outputs(rt, gate, up, down, e0, act_down, out)


def _post_step(fam, cfg, p, h, rt, out):
    TRACES["moe_post"] += 1
    return fam.forward_post(cfg, p, h, rt, out)


_pre_jit = jax.jit(_pre_step, static_argnums=(0, 1, 2))
_slice_jit = jax.jit(_slice_step)
_post_jit = jax.jit(_post_step, static_argnums=(0, 1))


def expert_slice(fam, cfg, model, weights: Weights, il: int) -> int | None:
    """Experts per slice for layer ``il``, None to run the layer whole."""
    if not getattr(fam, "is_moe_layer", lambda *_: False)(cfg, il):
        return None
    n_exp = cfg.n_expert
    if weights.expert_slice is not None:
        return weights.expert_slice if weights.expert_slice < n_exp else None
    per = sum(4 * model.tensors[n].n_elements for n in fam.expert_names(cfg, il)) // n_exp
    return max(1, EXPERT_LAYER_BYTES // per) if per * n_exp > EXPERT_LAYER_BYTES else None


def _expert_slices(weights: Weights, names, n_exp: int, size: int):
    """(e0, gate, up, down) per slice of ``size`` experts, the last one padded with zeros."""
    for e0 in range(0, n_exp, size):
        parts = []
        for n in names:
            x = np.asarray(weights.get_experts(n, e0, min(e0 + size, n_exp)), np.float32)
            if len(x) < size:
                x = np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), np.float32)])
            parts.append(jnp.asarray(x))
        yield e0, parts


def run_layer(fam, cfg, model, weights: Weights, il: int, hs: list, rope, window,
              f16_kv: bool) -> list:
    """Layer ``il`` over every batch of hidden states (whole, or its experts in slices)."""
    size = expert_slice(fam, cfg, model, weights, il)
    if size is None:
        p = fam.load_layer(cfg, weights.get, weights.act, il)
        return [_layer_jit(fam, cfg, f16_kv, p, h, rope, window) for h in hs]
    p = fam.load_layer(cfg, weights.get, weights.act, il, experts=False)
    pre = [_pre_jit(fam, cfg, f16_kv, p, h, rope, window) for h in hs]
    names = fam.expert_names(cfg, il)
    act_down = jnp.int32(weights.act(names[2]))
    outs = [_moe.empty_out(rt) for _, rt in pre]
    for e0, (g, u, d) in _expert_slices(weights, names, cfg.n_expert, size):
        jax.block_until_ready(outs)  # the previous slice is done: two slices in memory at most
        outs = [_slice_jit(rt, g, u, d, jnp.int32(e0), act_down, o)
                for (_, rt), o in zip(pre, outs)]
    return [_post_jit(fam, cfg, p, h, rt, o) for (h, rt), o in zip(pre, outs)]


def batches(chunks: np.ndarray, batch: int) -> list[np.ndarray]:
    """Split [N, T] into [B, T] pieces, the last padded by repeating its first chunk."""
    out = []
    for s in range(0, len(chunks), batch):
        b = chunks[s:s + batch]
        if len(b) < batch:
            b = np.concatenate([b, np.repeat(b[:1], batch - len(b), axis=0)])
        out.append(b)
    return out


def embed(cfg, table, tokens: np.ndarray):
    """Rows of the (dequantized) embedding table, times the family's scale.  # [B, T, D]"""
    rows = jnp.asarray(np.asarray(table)[tokens])
    return rows * np.float32(cfg.embd_scale) if cfg.embd_scale != 1.0 else rows


def final_hidden(model, weights: Weights, chunks: np.ndarray, batch: int = 4,
                 f16_kv: bool = True, progress: Progress | None = None,
                 offload: bool = False) -> list:
    """Hidden states after the last layer, one [B, T, D] array per batch of chunks.
    ``offload`` keeps them in host memory between layers (device holds one batch + one layer)."""
    fam = family(model.arch)
    cfg = fam.config(model)
    n_ctx = chunks.shape[1]
    table = weights.get("token_embd.weight")
    hs = [embed(cfg, table, b) for b in batches(chunks, batch)]
    hs = [np.asarray(h) for h in hs] if offload else hs
    for il in range(cfg.n_layer):
        rope, window = fam.layer_consts(cfg, model, il, n_ctx)
        hs = run_layer(fam, cfg, model, weights, il, hs, jnp.asarray(rope), jnp.int32(window),
                       f16_kv)
        if offload:
            hs = [np.asarray(h) for h in hs]
        if progress:
            jax.block_until_ready(hs[-1])
            progress("layers", il + 1, cfg.n_layer)
    return hs


def head_inputs(model, weights: Weights):
    """(config, (output_norm [D], output matrix [V, D], its activation code))."""
    cfg = family(model.arch).config(model)
    name = "token_embd.weight" if cfg.tied else "output.weight"
    return cfg, (jax.device_put(weights.get("output_norm.weight")),
                 jax.device_put(weights.get(name)), jnp.int32(weights.act(name)))


def expert_routing(model, weights: Weights, chunks: np.ndarray, batch: int = 4,
                   f16_kv: bool = True) -> dict[int, np.ndarray]:
    """The experts every token is routed to in each MoE layer: {layer: int32 [N, T, k]}."""
    fam = family(model.arch)
    cfg = fam.config(model)
    hs = [embed(cfg, weights.get("token_embd.weight"), b) for b in batches(chunks, batch)]
    out = {}
    for il in range(cfg.n_layer):
        rope, window = fam.layer_consts(cfg, model, il, chunks.shape[1])
        rope, window = jnp.asarray(rope), jnp.int32(window)
        if getattr(fam, "is_moe_layer", lambda *_: False)(cfg, il):
            p = fam.load_layer(cfg, weights.get, weights.act, il, experts=False)
            ids = [np.asarray(_pre_jit(fam, cfg, f16_kv, p, h, rope, window)[1].ids) for h in hs]
            out[il] = np.concatenate(ids).reshape(-1, chunks.shape[1], cfg.routing.n_used)
            out[il] = out[il][:len(chunks)]
        hs = run_layer(fam, cfg, model, weights, il, hs, rope, window, f16_kv)
    return out
