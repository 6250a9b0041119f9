"""One streamed pass over the calibration chunks that collects what llama-imatrix sees.

    collect_scores(model, tokens, ctx, n_chunks) -> (Imatrix, similarity)
    collect(model, chunks [N, T], sample_tokens) -> Collected(imatrix, similarity, samples)

Imatrix (spec 4.1, mainline llama-imatrix on the F32 base): for every ``blk.*`` matmul, per input
column j, sum_t x_tj^2 over every token row t of every chunk, and the row count. x is the f32
input of the matmul, before the CPU matmul's activation rounding (``_common.TAP``). Chunks of
fewer than 16 tokens are ignored, as llama-imatrix ignores batches under 16 tokens. 3-D weights
(``_common.TAP_STATS``) keep one sum row per matrix: experts (ggml_mul_mat_id) sum the rows
routed to each expert, with one count per expert ([E, n_in], [E]); per-head weights
(attn_k_b, attn_v_b) sum each head's rows, stored as llama-imatrix stores them: one row of the
heads' sums one after the other and one count ([1, H*n_in], [1]).

Similarity (spec 5.1, ik ``--layer-similarity``), per layer a mean over all tokens of a cosine
between matmul inputs (a_L: input of layer L's first matmul, f_L: of its first ``ffn_`` matmul):
    layer[L] = cos(a_L, a_{L+1}),  attn[L] = cos(a_L, f_L),  ffn[L] = cos(f_L, a_{L+1})
with a_{n_layer} the input of ``output.weight`` (untied models only: ik matches that name).

Samples: for tensor importance, ``sample_tokens`` rows of each distinct matmul input, taken at
a fixed stride from the first batch of chunks; ``samples[name]`` f32 [S, n_in].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from quant import UserError

from ._eval import bos_id, make_chunks
from ._imatrix import Imatrix
from ._models import _common as C
from ._models import family
from ._models._stream import TRACES, Weights, batches, embed

MIN_BATCH_TOKENS = 16
_LAYOUT: dict = {}  # (family, cfg, layer treedef) -> (tap fields, each tap's input, sampled taps,
#                     fields of the 3-D weight statistics)


@dataclass
class Collected:
    imatrix: Imatrix
    similarity: dict[str, dict[int, float]]
    samples: dict[str, np.ndarray] = field(default_factory=dict)


def _capture_step(fam, cfg, f16_kv, ffn_fields, stride, p, x, rope, window, valid):
    """forward_layer plus, per matmul, sum of x^2 over valid rows, and the inputs a, f."""
    TRACES["capture"] += 1
    tap, stats = [], []
    C.TAP, C.TAP_STATS, C.TAP_VALID = tap, stats, valid
    try:
        y = fam.forward_layer(cfg, p, x, rope, window, f16_kv)
    finally:
        C.TAP = C.TAP_STATS = C.TAP_VALID = None
    fields = {id(v): k for k, v in vars(p).items()}
    order = tuple(fields[id(w)] for w, _ in tap)
    first_x: dict[int, int] = {}
    src = tuple(first_x.setdefault(id(xin), i) for i, (_, xin) in enumerate(tap))
    sampled = tuple(sorted(set(src)))
    _LAYOUT[_layout_key(fam, cfg, p)] = (order, src, sampled,
                                         tuple(fields[id(w)] for w, _, _ in stats))
    sums = tuple(jnp.einsum("b...i,b->i", xin * xin, valid) for _, xin in tap)
    sums = (sums, tuple((s, c) for _, s, c in stats))
    f_idx = next(i for i, k in enumerate(order) if k in ffn_fields)
    samples = tuple(tap[i][1][:, stride // 2::stride] for i in sampled) if stride else ()
    return y, sums, tap[0][1], tap[f_idx][1], samples


_capture_jit = jax.jit(_capture_step, static_argnums=(0, 1, 2, 3, 4))


def _layout_key(fam, cfg, p):
    return fam.__name__, cfg, jax.tree_util.tree_structure(p)


def _cos_rows(a, b):
    """Per-row cosine with ik's zero rule.  # [B, T, D] x 2 -> [B, T]"""
    ab, aa, bb = (jnp.sum(u * v, axis=-1) for u, v in ((a, b), (a, a), (b, b)))
    ok = (aa > 0) & (bb > 0)
    return jnp.where(ok, ab / jnp.sqrt(jnp.where(ok, aa * bb, 1.0)), 0.0)


_cos_jit = jax.jit(_cos_rows)
_norm_jit = jax.jit(lambda x, w, eps: C.rms_norm(x, w, eps))


def field_names(fam, cfg, il: int) -> dict[str, str]:
    """Layer field -> GGUF tensor name, from the family's own loader (markers as values)."""
    asked: list[str] = []

    def get(name):
        asked.append(name)
        return np.full(1, len(asked) - 1, np.float32)

    layer = fam.load_layer(cfg, get, lambda _n: C.ACT_NONE, il)
    return {k: asked[int(np.asarray(v).reshape(-1)[0])] for k, v in vars(layer).items()
            if k != "act" and v is not None}


class _Accumulator:
    """Host-side f64 sums: imatrix entries and the three (sum of cosines, count) lists."""

    def __init__(self, n_layer: int):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.cos = {k: np.zeros(n_layer + 1) for k in ("layer", "attn", "ffn")}
        self.n = {k: np.zeros(n_layer + 1, np.int64) for k in ("layer", "attn", "ffn")}

    def add_sum(self, name: str, s, rows) -> None:
        """s: [n_in] (one matrix) or [n_mat, n_in]; rows: a count or one per matrix."""
        s = np.asarray(s, np.float64).reshape(-1, np.shape(s)[-1])
        self.sums[name] = self.sums.get(name, 0.0) + s
        self.counts[name] = self.counts.get(name, 0) + np.rint(
            np.asarray(rows, np.float64)).astype(np.int64).reshape(-1)

    def add_cos(self, kind: str, il: int, cos, mask: np.ndarray) -> None:
        c = np.asarray(cos, np.float64)[mask]
        self.cos[kind][il] += c.sum()
        self.n[kind][il] += c.size

    def similarity(self) -> dict[str, dict[int, float]]:
        return {k: {il: float(self.cos[k][il] / self.n[k][il])
                    for il in range(len(self.n[k])) if self.n[k][il]} for k in self.cos}


def collect(model, chunks: np.ndarray, batch: int = 4, f16_kv: bool = True,
            sample_tokens: int = 0, progress=None) -> Collected:
    """The imatrix, the similarities and (optionally) input samples of the base model."""
    if chunks.shape[1] < MIN_BATCH_TOKENS:
        raise UserError(f"context {chunks.shape[1]} is under {MIN_BATCH_TOKENS} tokens: "
                        "llama-imatrix ignores such batches; give a larger --ctx")
    fam, w = family(model.arch), Weights(model)
    cfg = fam.config(model)
    bs = batches(chunks, batch)
    valid = [np.arange(batch) + i * batch < len(chunks) for i in range(len(bs))]
    first_rows = min(batch, len(chunks)) * chunks.shape[1]  # samples come from the first batch
    stride = max(1, first_rows // sample_tokens) if sample_tokens else 1
    hs = [embed(cfg, w.get("token_embd.weight"), b) for b in bs]
    acc, samples, prev = _Accumulator(cfg.n_layer), {}, None
    for il in range(cfg.n_layer):
        hs, cur = _layer_pass(model, fam, cfg, w, il, hs, valid, acc, f16_kv, stride,
                              samples if sample_tokens else None)
        _add_similarity(acc, il, prev, cur, valid)
        prev = cur
        if progress:
            progress("layers", il + 1, cfg.n_layer)
    _last_layer(cfg, w, acc, hs, prev, valid, samples if sample_tokens else None, stride)
    return Collected(_imatrix(acc, chunks), acc.similarity(), samples)


def _layer_pass(model, fam, cfg, w, il, hs, valid, acc, f16_kv, stride, samples):
    """Layer ``il`` over every batch: new hidden states and its (a, f) inputs per batch."""
    names = field_names(fam, cfg, il)
    ffn_fields = frozenset(k for k, n in names.items() if ".ffn_" in n)
    p = fam.load_layer(cfg, w.get, w.act, il)
    rope, window = fam.layer_consts(cfg, model, il, hs[0].shape[1])
    out_h, a, f = [], [], []
    for bi, h in enumerate(hs):
        y, sums, a_in, f_in, xs = _capture_jit(fam, cfg, f16_kv, ffn_fields,
                                               stride if samples is not None else 0, p, h,
                                               jnp.asarray(rope), jnp.int32(window),
                                               jnp.asarray(valid[bi], jnp.float32))
        order, src, sampled, stat_fields = _LAYOUT[_layout_key(fam, cfg, p)]
        for k, s in zip(order, sums[0]):
            acc.add_sum(names[k], s, int(valid[bi].sum()) * h.shape[1])
        for k, (s, c) in zip(stat_fields, sums[1]):
            acc.add_sum(names[k], s, c)
        if samples is not None and bi == 0:
            samples.update(_samples(names, order, src, sampled, xs, int(valid[0].sum())))
        out_h.append(y)
        a.append(a_in)
        f.append(f_in)
    return out_h, (a, f)


def _samples(names, order, src, sampled, xs, n_valid: int) -> dict[str, np.ndarray]:
    """Sampled inputs per tensor name; tensors sharing an input share the array."""
    by_tap = {i: np.asarray(x[:n_valid]).reshape(-1, x.shape[-1]) for i, x in zip(sampled, xs)}
    return {names[k]: by_tap[src[i]] for i, k in enumerate(order)}


def _add_similarity(acc, il, prev, cur, valid) -> None:
    """attn[il] from this layer's inputs; layer/ffn[il-1] against the previous layer's."""
    for bi, m in enumerate(valid):
        mask = np.repeat(m[:, None], cur[0][bi].shape[1], axis=1)
        if cur[1] is not None:
            acc.add_cos("attn", il, _cos_jit(cur[0][bi], cur[1][bi]), mask)
        if prev is not None:
            acc.add_cos("layer", il - 1, _cos_jit(prev[0][bi], cur[0][bi]), mask)
            acc.add_cos("ffn", il - 1, _cos_jit(prev[1][bi], cur[0][bi]), mask)


def _last_layer(cfg, w, acc, hs, prev, valid, samples, stride) -> None:
    """Input of the output matmul: similarity of the last layer (untied), head samples."""
    norm = jnp.asarray(w.get("output_norm.weight"))
    outs = [_norm_jit(h, norm, cfg.eps) for h in hs]
    if not cfg.tied:  # ik compares with the input of a tensor named output.weight only
        _add_similarity(acc, cfg.n_layer, prev, (outs, None), valid)
    if samples is not None:
        x = np.asarray(outs[0][:int(valid[0].sum())])[:, stride // 2::stride]
        samples["token_embd.weight" if cfg.tied else "output.weight"] = x.reshape(-1, x.shape[-1])


def _imatrix(acc: _Accumulator, chunks: np.ndarray) -> Imatrix:
    im = Imatrix(chunk_count=len(chunks), chunk_size=chunks.shape[1])
    for name in sorted(acc.sums):
        im.sums[name] = acc.sums[name]
        im.counts[name] = acc.counts[name]
    return im


def collect_scores(model, tokens, ctx: int = 512, n_chunks: int | None = None,
                   batch: int = 4, progress=None) -> tuple[Imatrix, dict[str, dict[int, float]]]:
    """(imatrix, similarity {"layer"|"attn"|"ffn": {layer: mean cosine}}) of the model file."""
    chunks = make_chunks(tokens, ctx, n_chunks, bos_id(model))
    c = collect(model, chunks, batch, progress=progress)
    return c.imatrix, c.similarity


def similarity_rows(sim: dict[str, dict[int, float]]) -> list[dict]:
    """One row per layer, most important (lowest |layer cosine|) first."""
    layers = sorted(set().union(*(set(v) for v in sim.values())))
    rows = [{"layer": il, "layer_cos": sim["layer"].get(il), "attn_cos": sim["attn"].get(il),
             "ffn_cos": sim["ffn"].get(il)} for il in layers]
    return sorted(rows, key=lambda r: (r["layer_cos"] is None,
                                       abs(r["layer_cos"]) if r["layer_cos"] is not None else 0))
