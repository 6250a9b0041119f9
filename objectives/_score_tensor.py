"""Per-tensor cosine importance: how far each candidate type moves a matmul's output.

    tensor_importance(model, samples, types, cache) -> {name: {type: {"cos", "rel_err", "type"}}}

For a tensor W [n_out, n_in], its sampled calibration inputs X [S, n_in] (``collect``'s samples)
and Q = Q_t(W) from the QuantCache (quantized with the imatrix, after llama-quantize's shape
fallback ``resolve``):

    cos          mean over rows s of cos(W x_s, Q x_s)        (1 = no change)
    rel_err      ||X (W - Q)^T||_F / ||X W^T||_F             (0 = no change)
    imatrix_err  sqrt(sum_j qw_j |W_j - Q_j|^2 / sum_j qw_j |W_j|^2) over columns j: the same
                 error estimated from the imatrix alone (qw = mean squared input; 1 without)

W is the model file's own values (the base the search measures KLD against). Types a tensor
cannot take are left out; types that resolve to the same written type share one computation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from quant import UserError, resolve

from ._models._common import HIGHEST


def _compare(x, w, q):
    """(mean row cosine, relative Frobenius error).  # [S, n_in], [n_out, n_in] x 2"""
    y = jnp.einsum("si,oi->so", x, w, precision=HIGHEST)
    yq = jnp.einsum("si,oi->so", x, q, precision=HIGHEST)
    num, nw, nq = jnp.sum(y * yq, -1), jnp.sum(y * y, -1), jnp.sum(yq * yq, -1)
    ok = (nw > 0) & (nq > 0)
    cos = jnp.where(ok, num / jnp.sqrt(jnp.where(ok, nw * nq, 1.0)), 0.0)
    err = jnp.sqrt(jnp.sum((y - yq) ** 2) / jnp.maximum(jnp.sum(nw), 1e-30))
    return jnp.mean(cos), err


_compare_jit = jax.jit(_compare)


def written_types(model, name: str, types, target: str) -> dict[str, str]:
    """Candidate type -> the type llama-quantize would write for this tensor (allowed only)."""
    out = {}
    for t in types:
        try:
            out[t] = resolve(t, model.tensors[name].shape, target)
        except UserError:
            continue
    return out


def _imatrix_err(model, name: str, type_: str, cache) -> float:
    w = model.f32(name).astype(np.float64)
    col = (w * w).reshape(-1, w.shape[-1]).sum(axis=0)
    qw = cache.imatrix.get(name)
    energy = float(col @ (np.asarray(qw, np.float64).reshape(-1) if qw is not None
                          else np.ones_like(col)))
    return float(np.sqrt(cache.error(name, type_) / energy)) if energy > 0 else 0.0


def tensor_importance(model, samples: dict[str, np.ndarray], types, cache,
                      progress=None) -> dict[str, dict[str, dict]]:
    """Cosine and relative error of every sampled tensor under every candidate type."""
    out: dict[str, dict[str, dict]] = {}
    names = [n for n in samples if n in model.tensors]
    for i, name in enumerate(names):
        w = jnp.asarray(model.f32(name))
        x = jnp.asarray(samples[name])
        done: dict[str, dict] = {}
        for t, wt in written_types(model, name, types, cache.target).items():
            if wt not in done:
                c, e = _compare_jit(x, w, jnp.asarray(cache.values(name, wt)))
                done[wt] = {"cos": float(c), "rel_err": float(e), "type": wt,
                            "imatrix_err": _imatrix_err(model, name, wt, cache)}
            out.setdefault(name, {})[t] = done[wt]
        if progress:
            progress("tensors", i + 1, len(names))
    return out
