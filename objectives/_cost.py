"""What one forward costs on this machine, measured in seconds on the model's real shapes (the
file's own weights of one layer of each kind), for ``search plan``.

    forward_costs(model, ctx, batch) -> ForwardCost
        layer_s[kind]   seconds of one layer (dense / moe) over one batch of ``batch`` chunks
        head_s          seconds of the output head (log-softmax of the candidate and the base)
                        over one batch
        compile_s       first-call overhead (tracing and compiling) of a layer and of the head

Each is timed on its second call (the first compiles); batches of the real session shape.

Memory, from the rules of the code that holds it (bytes):
    layer_resident_bytes(model) -> max over layers of the float32 weights the streaming forward
        holds at once: the whole layer, or, where its experts are sliced, the rest plus two
        slices of experts (``_stream``)
    head_resident_bytes(model) -> the output head's float32 weights [V, D] (``head_inputs``:
        output.weight, or the tied token_embd)
    cache_quantize_bytes(model, name, packed) -> what quantizing one tensor holds in the
        quantization cache: nothing of its source when the file stores floats (read in place),
        one slice of rows (``ROW_SLICE_BYTES``) or of experts (``SLICE_BYTES``) as float32
        otherwise (a small tensor whole), plus the packed result twice
    trial_weights_bytes(model) -> the float32 weights a trial holds (the whole model below
        ``MEMO_LIMIT``, else one layer and the head) plus the largest tensor once more
    head_work_bytes() -> the head's float32 blocks held at once (``HEAD_BLOCK_BYTES`` each)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ._eval import HEAD_BLOCK_BYTES, _q_jit
from ._models import family
from . import _qcache
from ._models import _stream
from ._models._stream import Weights, head_inputs, run_layer
from ._session import MEMO_LIMIT


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


def _expert_bytes(fam, cfg, model, il: int) -> int:
    if not getattr(fam, "is_moe_layer", lambda *_: False)(cfg, il):
        return 0
    return sum(4 * model.tensors[n].n_elements for n in fam.expert_names(cfg, il)
               if n in model.tensors)


def layer_resident_bytes(model) -> int:
    fam = family(model.arch)
    cfg = fam.config(model)
    per_layer: dict[int, int] = {}
    for t in model.tensors.values():
        if t.layer is not None:
            per_layer[t.layer] = per_layer.get(t.layer, 0) + 4 * t.n_elements
    out = 0
    for il, total in per_layer.items():
        experts = _expert_bytes(fam, cfg, model, il) if il < cfg.n_layer else 0
        if experts > _stream.EXPERT_LAYER_BYTES:
            one = experts // cfg.n_expert
            total = total - experts + 2 * max(1, _stream.EXPERT_LAYER_BYTES // one) * one
        out = max(out, total)
    return out


def cache_quantize_bytes(model, name: str, packed: int) -> int:
    t = model.tensors[name]
    f32 = 4 * t.n_elements
    if len(t.shape) == 3 and f32 > _qcache.SLICE_BYTES:
        source = max(f32 // t.shape[0], _qcache.SLICE_BYTES)
    elif t.qtype.name in _qcache._FLOAT_VIEWS:
        source = 0
    else:
        source = min(f32, _qcache.ROW_SLICE_BYTES)
    return source + 2 * packed


def trial_weights_bytes(model) -> int:
    """Float32 weights a trial holds at once: the whole dequantized model where CachedWeights
    keeps it (below ``MEMO_LIMIT``), else the largest layer and the head; plus the largest
    tensor once more (a dequantization's output before it is kept)."""
    largest = max((4 * t.n_elements for t in model.tensors.values()
                   if not _is_sliced_experts(t)), default=0)
    if 4 * model.n_elements < MEMO_LIMIT:
        return 4 * model.n_elements + largest
    return layer_resident_bytes(model) + head_resident_bytes(model) + largest


def head_work_bytes() -> int:
    """The head's float32 work at once: a block of logits, the candidate's and the base's
    log-probabilities and a temporary (``HEAD_BLOCK_BYTES`` each)."""
    return 4 * HEAD_BLOCK_BYTES


def _is_sliced_experts(t) -> bool:
    return len(t.shape) == 3 and 4 * t.n_elements > _stream.EXPERT_LAYER_BYTES


def head_resident_bytes(model) -> int:
    tied = family(model.arch).config(model).tied
    return 4 * model.tensors["token_embd.weight" if tied else "output.weight"].n_elements
