"""Streaming PPL / KLD evaluation, defined exactly as llama-perplexity defines them.

    make_chunks(tokens, ctx, n_chunks, bos)   -> int32 [N, ctx]   (first token -> BOS if add_bos)
    base_stats(model, chunks, cache_dir, ...) -> BaseStats        (cached on disk)
    evaluate(model, weights=None, recipe=None, imatrix=None, tokens, ctx=512, ...) -> dict

Scoring (tools/perplexity): of each chunk of ``ctx`` tokens only the logits at positions
``ctx/2 .. ctx-2`` are scored, against tokens ``ctx/2+1 .. ctx-1``: S = ctx - 1 - ctx/2 per chunk.

Base statistics per scored token: the base model's final hidden state after ``output_norm``
(f32 [n, D]), the target's log-prob and the argmax. The base logits are recomputed from the
hidden state (one extra head matmul per batch), so KLD(base || Q) is exact over the whole
vocabulary while the cache holds D floats per token instead of n_vocab (SmolLM2, 100 chunks:
59 MB instead of llama.cpp's 2.5 GB). A top-k cache was measured and rejected: with the rest
of the vocabulary as one bin, k = 256 under-reads mean KLD by 5 % (k = 1024: 1.6 %).

The head runs over blocks of ``head_rows(V)`` scored positions (``lax.map``), so its logits
never exceed ``HEAD_BLOCK_BYTES`` per array whatever the vocabulary (Gemma 3: 64 rows x 262,144).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from quant import UserError

from ._models import _common as C
from ._models._stream import TRACES, Progress, Weights, batches, final_hidden, head_inputs

_CACHE_VERSION = 2
HEAD_BLOCK_BYTES = 64 << 20  # float32 logits per head block (see head_rows)


def add_bos(model) -> bool:
    """Whether llama-perplexity writes BOS: the tokenizer's rule (``_tokenizer.add_bos``)."""
    from ._tokenizer import add_bos as rule

    return rule(model.meta)


def bos_id(model) -> int | None:
    """The BOS id if llama-perplexity would write BOS into each chunk, else None."""
    bos = model.meta.get("tokenizer.ggml.bos_token_id")
    return int(bos) if add_bos(model) and bos is not None else None


def corpus_tokens(model, text: str) -> np.ndarray:
    """The whole text tokenized once (llama-perplexity: common_tokenize(text, add_special))."""
    from ._tokenizer import Tokenizer

    ids = list(Tokenizer.from_gguf(model).encode(text))
    bos = bos_id(model)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return np.asarray(ids, np.int32)


def make_chunks(tokens, ctx: int = 512, n_chunks: int | None = None,
                bos: int | None = None) -> np.ndarray:
    """[N, ctx] chunks of the token stream, BOS written over each chunk's first token."""
    tokens = np.asarray(tokens, np.int32)
    if ctx < 4 or ctx % 2:
        raise UserError(f"context size {ctx} is invalid: give an even --ctx of at least 4")
    if len(tokens) < 2 * ctx:
        raise UserError(f"the corpus has {len(tokens)} tokens, but a context of {ctx} needs at "
                        f"least {2 * ctx}: give a longer text or a smaller --ctx")
    n = len(tokens) // ctx if n_chunks is None else min(int(n_chunks), len(tokens) // ctx)
    chunks = tokens[: n * ctx].reshape(n, ctx).copy()
    if bos is not None:
        chunks[:, 0] = bos
    return chunks


def scored(chunks: np.ndarray) -> tuple[int, np.ndarray]:
    """(first scored position, targets [N, S])."""
    first = chunks.shape[1] // 2
    return first, chunks[:, first + 1:]


def _head_logits(cfg, h, w_out, act):
    """Logits from normed hidden states, with the family's final soft-cap.  # [B, S, V]"""
    z = C.linear(h, w_out, act)
    return cfg.softcap * jnp.tanh(z / cfg.softcap) if cfg.softcap else z


def _normed(cfg, head, x, first: int):
    """output_norm of the hidden states at the scored positions.  # [B, T, D] -> [B, S, D]"""
    return C.rms_norm(x[:, first:-1], head[0], cfg.eps)


def kl_stats(lp, lq, targets):
    """(nll of q, KLD(p || q), argmax of q) per token from full log-probs [B, S, V]."""
    nll = -jnp.take_along_axis(lq, targets[..., None], axis=-1)[..., 0]
    kld = jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)
    return nll, kld, jnp.argmax(lq, axis=-1)


def head_rows(n_vocab: int) -> int:
    """Scored positions whose logits are computed at once: a [rows, V] float32 block of at
    most ``HEAD_BLOCK_BYTES`` (the head of a 262,144-token vocabulary would otherwise hold
    4 x 255 x V floats, 1 GiB per array, several at once)."""
    return max(1, HEAD_BLOCK_BYTES // (4 * n_vocab))


def _row_blocks(fn, n_vocab: int, *arrays):
    """``fn`` over blocks of ``head_rows`` rows of [B, S, ...] arrays (flattened to rows and
    zero-padded), its outputs reshaped back to [B, S, ...]."""
    b, s = arrays[0].shape[:2]
    rows = min(head_rows(n_vocab), b * s)
    n_blk = -(-b * s // rows)

    def blocked(a):
        a = a.reshape(b * s, *a.shape[2:])
        a = jnp.pad(a, [(0, n_blk * rows - b * s)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(n_blk, rows, *a.shape[1:])

    outs = jax.lax.map(lambda xs: fn(*xs), tuple(blocked(a) for a in arrays))
    return tuple(o.reshape(n_blk * rows, *o.shape[2:])[: b * s].reshape(b, s, *o.shape[2:])
                 for o in outs)


def _base_step(cfg, first, head, x, targets):
    TRACES["base_head"] += 1
    h = _normed(cfg, head, x, first)

    def block(hb, tb):  # [R, D], [R]
        lp = jax.nn.log_softmax(_head_logits(cfg, hb, head[1], head[2]), axis=-1)
        return jnp.take_along_axis(lp, tb[:, None], axis=-1)[:, 0], jnp.argmax(lp, axis=-1)

    tgt, amax = _row_blocks(block, head[1].shape[0], h, targets)
    return h, tgt, amax


def _q_step(cfg, first, head, w_base, x, targets, h_base):
    TRACES["q_head"] += 1

    def block(hq, hb, tb):  # [R, D], [R, D], [R]
        lq = jax.nn.log_softmax(_head_logits(cfg, hq, head[1], head[2]), axis=-1)
        lp = jax.nn.log_softmax(_head_logits(cfg, hb, w_base, C.ACT_NONE), axis=-1)
        return kl_stats(lp, lq, tb)

    return _row_blocks(block, head[1].shape[0], _normed(cfg, head, x, first), h_base, targets)


_base_jit = jax.jit(_base_step, static_argnums=(0, 1))
_q_jit = jax.jit(_q_step, static_argnums=(0, 1))


@dataclass
class BaseStats:
    """Per scored token (flattened [N*S]) statistics of the base model."""

    hidden: np.ndarray  # f32 [n, D], after output_norm
    tgt_logp: np.ndarray  # f32 [n]
    argmax: np.ndarray  # i32 [n]

    def batch_hidden(self, start: int, stop: int, shape: tuple[int, int]):
        """Hidden states of one batch, [B, S, D] (zero-padded past the end)."""
        piece = self.hidden[start:stop]
        pad = shape[0] * shape[1] - len(piece)
        if pad:
            piece = np.concatenate([piece, np.zeros((pad, piece.shape[1]), piece.dtype)])
        return jnp.asarray(piece.reshape(*shape, -1))


def _cache_path(cache_dir, model, chunks: np.ndarray, f16_kv: bool) -> Path | None:
    if cache_dir is None:
        return None
    h = hashlib.sha256(json.dumps([_CACHE_VERSION, model.identity()["sha256_header_and_heads"],
                                   chunks.shape, f16_kv]).encode())
    h.update(np.ascontiguousarray(chunks).tobytes())
    name = f"base-{model.arch}-c{chunks.shape[1]}-n{len(chunks)}-{h.hexdigest()[:16]}.npz"
    return Path(cache_dir) / name


def base_stats(model, chunks: np.ndarray, cache_dir=None, batch: int = 4, f16_kv: bool = True,
               progress: Progress | None = None, offload: bool = False) -> BaseStats:
    """Base-model statistics (file weights, no activation rounding), cached under cache_dir."""
    path = _cache_path(cache_dir, model, chunks, f16_kv)
    if path is not None and path.is_file():
        with np.load(path) as z:
            return BaseStats(*(z[f] for f in BaseStats.__dataclass_fields__))
    stats = _compute_base(model, chunks, batch, f16_kv, progress, offload)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **stats.__dict__)
        tmp.replace(path)
    return stats


def _compute_base(model, chunks, batch, f16_kv, progress, offload=False) -> BaseStats:
    w = Weights(model)
    hs = final_hidden(model, w, chunks, batch, f16_kv, progress, offload)
    cfg, head = head_inputs(model, w)
    first, targets = scored(chunks)
    parts = [_base_jit(cfg, first, head, h, jnp.asarray(t))
             for h, t in zip(hs, batches(targets, batch))]
    n = targets.size
    cat = [np.concatenate([np.asarray(p[i]).reshape(-1, *p[i].shape[2:]) for p in parts])[:n]
           for i in range(3)]
    return BaseStats(cat[0], cat[1], cat[2].astype(np.int32))


def token_metrics(model, weights: Weights, chunks, base: BaseStats, batch: int, f16_kv: bool,
                  progress: Progress | None = None, offload: bool = False) -> dict:
    """Per scored token: nll, kld, argmax of the evaluated model (flattened [N*S])."""
    hs = final_hidden(model, weights, chunks, batch, f16_kv, progress, offload)
    cfg, head = head_inputs(model, weights)
    w_base = head_inputs(model, Weights(model))[1][1] if _head_changed(cfg, weights) else head[1]
    first, targets = scored(chunks)
    per, out = batch * targets.shape[1], []
    for i, (h, t) in enumerate(zip(hs, batches(targets, batch))):
        hb = base.batch_hidden(i * per, (i + 1) * per, (batch, targets.shape[1]))
        res = _q_jit(cfg, first, head, w_base, h, jnp.asarray(t), hb)
        out.append([np.asarray(a).reshape(-1) for a in res])
    n = targets.size
    nll, kld, amax = (np.concatenate([o[j] for o in out])[:n] for j in range(3))
    return {"nll": nll, "kld": kld, "argmax": amax}


def _head_changed(cfg, weights: Weights) -> bool:
    name = "token_embd.weight" if cfg.tied else "output.weight"
    return name in weights.override or name in weights.recipe


def _lp_step(cfg, first, head, x):
    h = _normed(cfg, head, x, first)
    return jax.nn.log_softmax(_head_logits(cfg, h, head[1], head[2]), axis=-1)


_lp_jit = jax.jit(_lp_step, static_argnums=(0, 1))


def log_probs(model, weights: Weights, chunks: np.ndarray, batch: int = 4,
              f16_kv: bool = True) -> np.ndarray:
    """Log-probs at the scored positions, f32 [N, S, V] (small models and tests only)."""
    hs = final_hidden(model, weights, chunks, batch, f16_kv)
    cfg, head = head_inputs(model, weights)
    first, _ = scored(chunks)
    out = np.concatenate([np.asarray(_lp_jit(cfg, first, head, h)) for h in hs])
    return out[: len(chunks)]


def _mean_unc(s: float, s2: float, n: int) -> tuple[float, float]:
    """llama-perplexity's mean_and_uncertainty."""
    f = s / n
    df = s2 / n - f * f
    return f, math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0


def _percentile(sorted_v: np.ndarray, fraction: float) -> float:
    p = fraction * (len(sorted_v) - 1)
    ip = int(p)
    p -= ip
    return float((1 - p) * sorted_v[ip] + p * sorted_v[min(ip + 1, len(sorted_v) - 1)])


def _median(v: np.ndarray) -> float:
    n = len(v)
    return float(0.5 * (v[n // 2] + v[n // 2 - 1])) if n % 2 == 0 else float(v[n // 2])


def summarize(nll: np.ndarray, nll_base: np.ndarray, kld: np.ndarray,
              same_top: np.ndarray) -> dict:
    """The figures llama-perplexity --kl-divergence prints, from per-token values."""
    n = len(nll)
    x, y = nll.astype(np.float64), nll_base.astype(np.float64)
    lp, lp_unc = _mean_unc(x.sum(), (x * x).sum(), n)
    lb, lb_unc = _mean_unc(y.sum(), (y * y).sum(), n)
    cov = ((x * y).sum() / n - (x.sum() / n) * (y.sum() / n)) / (n - 1) if n >= 10 else 0.0
    p, p_base = np.exp(-nll.astype(np.float32)), np.exp(-nll_base.astype(np.float32))
    dp = (p - p_base).astype(np.float64)
    mse, mse_unc = _mean_unc((dp ** 2).sum(), (dp ** 4).sum(), n)
    k64 = kld.astype(np.float64)
    km, k_unc = _mean_unc(k64.sum(), (k64 * k64).sum(), n)
    ks = np.sort(kld.astype(np.float32))
    top = float(np.mean(same_top))
    return {
        "n_tokens": n, "ppl": math.exp(lp), "ppl_err": math.exp(lp) * lp_unc,
        "ppl_base": math.exp(lb), "ppl_base_err": math.exp(lb) * lb_unc,
        "ln_ppl_ratio": lp - lb,
        "ln_ppl_ratio_err": math.sqrt(max(lp_unc ** 2 + lb_unc ** 2 - 2 * cov, 0.0)),
        "kld_mean": km, "kld_err": k_unc, "kld_median": _median(ks),
        "kld_p90": _percentile(ks, 0.9), "kld_p95": _percentile(ks, 0.95),
        "kld_p99": _percentile(ks, 0.99), "kld_p999": _percentile(ks, 0.999),
        "kld_max": float(ks[-1]), "same_top_p": top,
        "same_top_p_err": math.sqrt(top * (1 - top) / (n - 1)),
        "rms_dp": math.sqrt(mse), "rms_dp_err": 0.5 / math.sqrt(mse) * mse_unc if mse > 0 else 0.0,
        "mean_dp": float(dp.mean()), "max_abs_dp": float(np.abs(dp).max()),
    }


def evaluate(model, weights=None, recipe=None, imatrix=None, tokens=None, ctx: int = 512,
             n_chunks: int | None = None, base_cache=None,
             act_round: bool = True, f16_kv: bool = True, batch: int = 4,
             target: str = "mainline", progress: Progress | None = None,
             offload: bool = False) -> dict:
    """PPL of a weight set and its KLD against the model file's own weights (the base).

    ``weights``: {tensor name: f32 array} replacing file values; ``recipe``: {name: type} to
    fake-quantize (with ``imatrix`` {name: f32 [n_in]}); ``tokens``: the whole corpus as ids
    (``corpus_tokens``); ``base_cache``: a folder for the base statistics; ``progress(stage,
    done, total)`` is called per layer; ``act_round`` emulates llama.cpp's CPU rounding of
    activations for quantized weights; ``offload`` keeps hidden states in host memory."""
    if tokens is None:
        raise UserError("no evaluation tokens: pass tokens=corpus_tokens(model, text)")
    chunks = make_chunks(tokens, ctx, n_chunks, bos_id(model))
    base = base_stats(model, chunks, base_cache, batch, f16_kv, _staged(progress, "base"),
                      offload)
    w = Weights(model, weights, recipe, imatrix, act_round, target)
    tm = token_metrics(model, w, chunks, base, batch, f16_kv, _staged(progress, "eval"), offload)
    out = summarize(tm["nll"], -base.tgt_logp, tm["kld"], tm["argmax"] == base.argmax)
    out.update(n_chunks=len(chunks), ctx=ctx, act_round=act_round, f16_kv=f16_kv)
    return out


def _staged(progress: Progress | None, stage: str) -> Progress | None:
    if progress is None:
        return None
    return lambda _s, done, total: progress(stage, done, total)


def read_llama_kld_base(path, max_chunks: int | None = None):
    """A ``llama-perplexity --kl-divergence-base`` file: (tokens [N, ctx] as written, i.e.
    before BOS replacement, log-probs f32 [N, S, V] decoded from its uint16 form; entries below
    max-16 nats read as that floor)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw[:8].tobytes() != b"_logits_":
        raise UserError(f"{path}: not a llama-perplexity --kl-divergence-base file")
    n_ctx, n_vocab, n_chunk = (int(v) for v in raw[8:20].view(np.int32))
    n = n_chunk if max_chunks is None else min(n_chunk, max_chunks)
    tok_end = 20 + 4 * n_ctx * n_chunk
    tokens = raw[20:tok_end].view(np.int32).reshape(n_chunk, n_ctx)[:n]
    nv, s = 2 * ((n_vocab + 1) // 2) + 4, n_ctx - 1 - n_ctx // 2
    rows = raw[tok_end:tok_end + 2 * n * s * nv].view(np.uint16).reshape(n * s, nv)
    head = rows[:, :4].copy().view(np.float32)  # (scale, min_log_prob)
    lp = head[:, 1:2] + head[:, 0:1] * rows[:, 4:4 + n_vocab].astype(np.float32)
    return tokens, lp.reshape(n, s, n_vocab)
