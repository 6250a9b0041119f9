"""What one forward costs on this machine, measured in seconds on the model's real shapes (the
file's own weights of one layer of each kind), for ``search plan``.

    forward_costs(model, ctx, batch) -> ForwardCost
        layer_s[kind]   seconds of one layer (dense / moe) over one batch of ``batch`` chunks
        head_s          seconds of the output head (log-softmax of the candidate and the base)
                        over one batch
        compile_s       first-call overhead (tracing and compiling) of a layer and of the head

Each is timed on its second call (the first compiles); batches of the real session shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ._eval import _q_jit
from ._models import family
from ._models._stream import Weights, head_inputs, run_layer


@dataclass(frozen=True)
class ForwardCost:
    batch: int
    ctx: int
    layer_s: dict[str, float]
    kinds: tuple[str, ...]  # kind of every layer, in order
    head_s: float
    compile_s: float


def _kind(fam, cfg, il: int) -> str:
    return "moe" if getattr(fam, "is_moe_layer", lambda *_: False)(cfg, il) else "dense"


def _timed(fn) -> tuple[float, float]:
    """(first call, second call) seconds."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    t1 = time.perf_counter()
    jax.block_until_ready(fn())
    return t1 - t0, time.perf_counter() - t1


def forward_costs(model, ctx: int = 512, batch: int = 4) -> ForwardCost:
    fam = family(model.arch)
    cfg = fam.config(model)
    w = Weights(model)
    rng = np.random.default_rng(0)
    hs = [jnp.asarray(rng.standard_normal((batch, ctx, cfg.n_embd), np.float32))]
    kinds = tuple(_kind(fam, cfg, il) for il in range(cfg.n_layer))
    layer_s, compile_s = {}, 0.0
    for kind in dict.fromkeys(kinds):
        il = kinds.index(kind)
        rope, window = fam.layer_consts(cfg, model, il, ctx)
        first, second = _timed(lambda: run_layer(fam, cfg, model, w, il, hs, jnp.asarray(rope),
                                                 jnp.int32(window), True))
        layer_s[kind], compile_s = second, compile_s + first - second
    cfg_h, head = head_inputs(model, w)
    s = ctx - 1 - ctx // 2
    h = jnp.asarray(rng.standard_normal((batch, s, cfg.n_embd), np.float32))
    targets = jnp.zeros((batch, s), jnp.int32)
    first, second = _timed(lambda: _q_jit(cfg_h, ctx // 2, head, head[1], hs[0], targets, h))
    return ForwardCost(batch, ctx, layer_s, kinds, second, compile_s + first - second)
