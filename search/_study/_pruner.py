"""Optuna's side of the pruning rule (``_optimize.clearly_worse``): the candidate's per-chunk
KLDs (intermediate values, step = chunk id) against the best complete trial's on the same
chunks."""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner
from optuna.trial import TrialState

from .._optimize import MARGIN_ALPHA_MIN, clearly_worse


def best_complete(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.intermediate_values]
    return min(done, key=lambda t: t.value) if done else None


class PairedPruner(BasePruner):
    def __init__(self, margin: float | None = None, alpha: float | None = None,
                 min_chunks: int | None = None) -> None:
        d_margin, d_alpha, d_min = MARGIN_ALPHA_MIN
        self.margin = d_margin if margin is None else margin
        self.alpha = d_alpha if alpha is None else alpha
        self.min_chunks = d_min if min_chunks is None else min_chunks

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        best = best_complete(study)
        if best is None or best.number == trial.number:
            return False
        steps = sorted(set(trial.intermediate_values) & set(best.intermediate_values))
        return clearly_worse([trial.intermediate_values[s] for s in steps],
                             [best.intermediate_values[s] for s in steps],
                             self.margin, self.alpha, self.min_chunks)
