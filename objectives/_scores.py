"""Importance scores: the library functions ``search score`` and the search use.

    collect_scores(model, tokens, ctx, n_chunks)  -> (Imatrix, {"layer"|"attn"|"ffn": {L: cos}})
    collect(model, chunks, sample_tokens=...)      -> Collected (also sampled matmul inputs)
    similarity_rows(similarity)                    -> [{layer, layer_cos, attn_cos, ffn_cos}]
    tensor_importance(model, samples, types, cache) -> {tensor: {type: {cos, rel_err, type}}}
    measure_sensitivity(model, groups, types, tokens, ...) -> {group: {type: delta KLD}}
    default_groups(model, target)                  -> {role@layer: [tensor names]}
    spearman_table(sensitivity, cheap)             -> {score name: Spearman rho}
"""

from __future__ import annotations

import numpy as np

from ._score_collect import Collected, collect, collect_scores, similarity_rows
from ._score_measure import default_groups, measure_sensitivity, measurement_key
from ._score_tensor import tensor_importance, written_types

__all__ = ["Collected", "cheap_scores", "collect", "collect_scores", "default_groups",
           "measure_sensitivity", "measurement_key", "similarity_rows", "spearman_table",
           "tensor_importance", "written_types"]


def _layer_of(group: str) -> int | None:
    _, _, tail = group.partition("@")
    return int(tail.split("-")[0]) if tail else None


def cheap_scores(groups: dict[str, list[str]], types, importance: dict,
                 similarity: dict) -> dict[str, dict[tuple[str, str], float]]:
    """Per cheap score, per (group, type) a value where larger means more sensitive:
    ``1-cos``, ``rel_err``, ``imatrix_err`` (group means over its tensors), ``1-layer_cos``."""
    out: dict[str, dict] = {"1-cos": {}, "rel_err": {}, "imatrix_err": {}, "1-layer_cos": {}}
    for g, names in groups.items():
        for t in types:
            vals = [importance[n][t] for n in names if t in importance.get(n, {})]
            if vals:
                out["1-cos"][g, t] = float(np.mean([1 - v["cos"] for v in vals]))
                out["rel_err"][g, t] = float(np.mean([v["rel_err"] for v in vals]))
                out["imatrix_err"][g, t] = float(np.mean([v["imatrix_err"] for v in vals]))
            il = _layer_of(g)
            if il is not None and il in similarity.get("layer", {}):
                out["1-layer_cos"][g, t] = 1 - abs(similarity["layer"][il])
    return out


def spearman_table(sensitivity: dict[str, dict[str, float]],
                   cheap: dict[str, dict[tuple[str, str], float]]) -> dict[str, float | None]:
    """Spearman rho between measured delta KLD and each cheap score over common pairs."""
    from scipy.stats import spearmanr

    out = {}
    for name, score in cheap.items():
        pairs = [(v, score[g, t]) for g, row in sensitivity.items() for t, v in row.items()
                 if (g, t) in score and v is not None]
        if len(pairs) < 3 or len({p[1] for p in pairs}) < 2:
            out[name] = None
            continue
        rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
        out[name] = None if np.isnan(rho) else float(rho)
    return out
