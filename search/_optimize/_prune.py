"""When to stop a candidate early: clearly worse than the best on the same chunks.

    c[i], b[i]   mean KLD of the candidate and of the best trial on chunk i (chunks both saw)  [n]
    d[i]         log(c[i] / b[i])   the candidate's relative excess on that chunk
    lower(d)     mean(d) - t_{1-alpha, n-1} * sd(d) / sqrt(n)   (one-sided paired t-bound)
    clearly worse  <=>  n >= min_chunks  and  lower(d) > log(1 + margin)

Chunks differ far more from each other (up to 3x in KLD on SmolLM2) than two recipes differ on one chunk, and a
worse recipe is worse about in proportion to a chunk's difficulty, so the paired log-ratio
removes most of the noise; the margin keeps near-ties (within the noise of the final pick)
evaluated to the end. Pure numpy/scipy; no optuna.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

MARGIN = 0.02  # relative: a candidate less than 2 % worse than the best is never stopped
ALPHA = 0.05  # one-sided level of the paired bound
MIN_CHUNKS = 4  # chunks seen before any decision
MARGIN_ALPHA_MIN = (MARGIN, ALPHA, MIN_CHUNKS)


def lower_bound(d: np.ndarray, alpha: float = ALPHA) -> float:
    """One-sided (1 - alpha) lower confidence bound of mean(d)."""
    n = len(d)
    sd = float(np.std(d, ddof=1)) if n > 1 else np.inf
    return float(np.mean(d)) - float(stats.t.ppf(1 - alpha, n - 1)) * sd / np.sqrt(n)


def clearly_worse(candidate, best, margin: float = MARGIN, alpha: float = ALPHA,
                  min_chunks: int = MIN_CHUNKS) -> bool:
    """Whether ``candidate`` [n] is worse than ``best`` [n] (per-chunk KLDs of the same chunks)
    by more than a factor ``1 + margin``, with confidence 1 - alpha."""
    c, b = np.asarray(candidate, np.float64), np.asarray(best, np.float64)
    if len(c) != len(b):
        raise ValueError("candidate and best must cover the same chunks")
    if len(c) < max(min_chunks, 2):
        return False
    if np.any(c <= 0) or np.any(b <= 0):
        return False
    return bool(lower_bound(np.log(c / b), alpha) > np.log1p(margin))


def full_estimate(partial: float, best_partial: float, best_full: float) -> float:
    """A stopped candidate's mean over every chunk, estimated from the best's ratio on the
    chunks both saw (for the surrogate, which needs a value comparable with full ones)."""
    return best_full * partial / best_partial if best_partial > 0 else partial
