"""Streaming forward pass: every calibration chunk goes through layer l before layer l+1 loads.

    Weights(model, override, recipe, imatrix, act_round)   .get(name) -> f32 [n_out, n_in]
                                                           .act(name) -> activation-rounding code
    final_hidden(model, weights, chunks [N, T], ...)       -> list of [B, T, D] (N padded to B's)
    head_inputs(model, weights)                            -> (output_norm [D], W_out [V, D], act)

Memory: the hidden states of all chunks ([N, T, D] float32) plus one layer's weights. The
layer step is jitted with the config static and the weights as arguments, so it compiles once
per (model config, batch, T); ``TRACES`` counts the traces (tests assert on it).
"""

from __future__ import annotations

import collections
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from quant import UserError

from . import _common as C
from . import family

TRACES: collections.Counter = collections.Counter()
Progress = Callable[[str, int, int], None]


class Weights:
    """Where each tensor's float32 values come from: override > recipe fake-quant > file."""

    def __init__(self, model, override=None, recipe=None, imatrix=None, act_round=False,
                 target="mainline"):
        self.model, self.override = model, dict(override or {})
        self.recipe, self.imatrix = _resolved(model, recipe or {}, target), imatrix or {}
        self.act_round, self.target = act_round, target
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

    def type_of(self, name: str) -> str:
        if name in self.recipe:
            return self.recipe[name]
        return self.model.tensors[name].qtype.name

    def act(self, name: str) -> int:
        return C.act_code(self.type_of(name)) if self.act_round else C.ACT_NONE


def _resolved(model, recipe: dict, target: str) -> dict[str, str]:
    """Recipe types after llama-quantize's shape fallback (what the file would really hold)."""
    from quant import resolve

    unknown = sorted(set(recipe) - set(model.tensors))
    if unknown:
        raise UserError(f"the recipe names tensors the model does not have: {unknown[:3]}: "
                        "check the tensor names against the model")
    return {n: resolve(t, model.tensors[n].shape, target) for n, t in recipe.items()}


def _layer_step(fam, cfg, f16_kv, p, x, rope, window):
    TRACES["layer"] += 1
    return fam.forward_layer(cfg, p, x, rope, window, f16_kv)


_layer_jit = jax.jit(_layer_step, static_argnums=(0, 1, 2))


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
        p = fam.load_layer(cfg, weights.get, weights.act, il)
        rope, window = fam.layer_consts(cfg, model, il, n_ctx)
        rope = jnp.asarray(rope)
        hs = [_layer_jit(fam, cfg, f16_kv, p, h, rope, jnp.int32(window)) for h in hs]
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
    return cfg, (jnp.asarray(weights.get("output_norm.weight")), jnp.asarray(weights.get(name)),
                 jnp.int32(weights.act(name)))
