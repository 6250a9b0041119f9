"""Per-tensor cosine importance: how far each candidate type moves a matmul's output.

    tensor_importance(model, samples, types, cache) -> {name: {type: {"cos", "rel_err", "type"}}}

For a tensor W [n_out, n_in], its sampled calibration inputs X [S, n_in] (``collect``'s samples)
and Q = Q_t(W) from the QuantCache (quantized with the imatrix, after llama-quantize's shape
fallback ``resolve``):

    cos          mean over rows s of cos(W x_s, Q x_s)        (1 = no change)
    rel_err      ||X (W - Q)^T||_F / ||X W^T||_F             (0 = no change)
    imatrix_err  sqrt(sum_j qw_j |W_j - Q_j|^2 / sum_j qw_j |W_j|^2) over columns j: the same
                 error estimated from the imatrix alone (qw = mean squared input; 1 without)

W is the model file's own values (the base the search measures KLD against). W and Q are read
``ROW_SLICE_BYTES`` of float32 rows at a time (the sums over rows add up), so a 262,144-row
embedding never exists whole in float32 or float64. Types a tensor
cannot take are left out; types that resolve to the same written type share one computation.
"""

from __future__ import annotations

import math
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from quant import UserError, resolve

from ._models._common import HIGHEST
from ._qcache import row_slices


def _slice_sums(x, w, q):
    """One slice of W's rows: per sample s, sum_o y*yq, y*y, yq*yq, and sum (y - yq)^2, with
    y = W x_s, yq = Q x_s (sums over rows add up across slices).  # [S, n_in], [rows, n_in] x 2"""
    y = jnp.einsum("si,oi->so", x, w, precision=HIGHEST)
    yq = jnp.einsum("si,oi->so", x, q, precision=HIGHEST)
    return jnp.sum(y * yq, -1), jnp.sum(y * y, -1), jnp.sum(yq * yq, -1), jnp.sum((y - yq) ** 2)


_slice_sums_jit = jax.jit(_slice_sums)


def _padded(a: np.ndarray, rows: int) -> np.ndarray:
    return a if len(a) == rows else np.concatenate([a, np.zeros((rows - len(a), a.shape[1]),
                                                                a.dtype)])


def _compare(model, name: str, type_: str, x, cache, w_rows) -> tuple[float, float]:
    """(mean row cosine, relative Frobenius error), W and Q read a bounded slice of rows at a
    time (one shape per tensor: the last slice is padded with zero rows, which add nothing)."""
    shape = model.tensors[name].shape
    slices = row_slices(math.prod(shape[:-1]), shape[-1])
    rows = slices[0][1] - slices[0][0]
    num = nw = nq = 0.0
    sq = 0.0
    for a, b in slices:
        w = _padded(w_rows(a, b), rows)
        q = _padded(np.asarray(cache.value_rows(name, type_, a, b)), rows)
        p = [np.asarray(v, np.float64) for v in _slice_sums_jit(x, w, q)]
        num, nw, nq, sq = num + p[0], nw + p[1], nq + p[2], sq + float(p[3])
    ok = (nw > 0) & (nq > 0)
    cos = np.where(ok, num / np.sqrt(np.where(ok, nw * nq, 1.0)), 0.0)
    return float(np.mean(cos)), float(np.sqrt(sq / max(float(np.sum(nw)), 1e-30)))


def written_types(model, name: str, types, target: str) -> dict[str, str]:
    """Candidate type -> the type llama-quantize would write for this tensor (allowed only)."""
    out = {}
    for t in types:
        try:
            out[t] = resolve(t, model.tensors[name].shape, target)
        except UserError:
            continue
    return out


def _weighted_energy(model, name: str, cache, w_rows) -> float:
    """sum_j qw_j sum_rows W_rj^2 in float64, a slice of rows at a time."""
    shape = model.tensors[name].shape
    col = np.zeros(shape[-1])
    for a, b in row_slices(math.prod(shape[:-1]), shape[-1]):
        w = w_rows(a, b).astype(np.float64)
        col += (w * w).sum(axis=0)
    qw = cache.imatrix.get(name)
    return float(col @ (np.asarray(qw, np.float64).reshape(-1) if qw is not None
                        else np.ones_like(col)))


def _imatrix_err(name: str, type_: str, cache, energy: float) -> float:
    return float(np.sqrt(cache.error(name, type_) / energy)) if energy > 0 else 0.0


def tensor_importance(model, samples: dict[str, np.ndarray], types, cache,
                      progress=None) -> dict[str, dict[str, dict]]:
    """Cosine and relative error of every sampled tensor under every candidate type."""
    out: dict[str, dict[str, dict]] = {}
    names = [n for n in samples if n in model.tensors]
    for i, name in enumerate(names):
        x = jnp.asarray(samples[name])
        # the last slice of W kept: a tensor of one slice is read once for all its types
        w_rows = lru_cache(maxsize=1)(lambda a, b, name=name: model.f32_rows(name, a, b))
        energy = _weighted_energy(model, name, cache, w_rows)
        done: dict[str, dict] = {}
        for t, wt in written_types(model, name, types, cache.target).items():
            if wt not in done:
                c, e = _compare(model, name, wt, x, cache, w_rows)
                done[wt] = {"cos": c, "rel_err": e, "type": wt,
                            "imatrix_err": _imatrix_err(name, wt, cache, energy)}
            out.setdefault(name, {})[t] = done[wt]
        if progress:
            progress("tensors", i + 1, len(names))
    return out
