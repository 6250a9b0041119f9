"""The surrogate's proposals as a study callback (the math lives in ``_optimize._surrogate``).

After each finished trial, unless trials are waiting or the study has its trials, enqueue one
proposal: the allocator's greedy polish of the best trial under the calibrated prior, then under
the surrogate's posterior mean (once per best trial), else the MILP optimum of a Thompson sample
within a trust region around the best. One trial in ``every`` is left to the sampler.

Every plan already in the storage, in any state but failed (complete, pruned, running, waiting),
is excluded, whichever worker ran it. The surrogate is fitted to complete trials and to pruned
ones, whose value on every chunk is estimated from their ratio to the best on the chunks both
saw (``_optimize.full_estimate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from .._optimize import _surrogate as S
from .._optimize import (Space, UnitTable, choice_of, full_estimate, levels_of, repair,
                         to_plan)

_LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def trial_choice(table: UnitTable, t: optuna.trial.FrozenTrial) -> np.ndarray | None:
    """The unit choice a trial evaluated (or, waiting, will evaluate); None if unknown."""
    plan = t.user_attrs.get("recipe") or t.user_attrs.get("plan") or t.user_attrs.get("warm_plan")
    try:
        return None if plan is None else choice_of(table, plan)
    except (KeyError, ValueError):
        return None


def observed_value(t: optuna.trial.FrozenTrial, best: optuna.trial.FrozenTrial | None
                   ) -> float | None:
    """A complete trial's value; a pruned one's estimated from the best on shared chunks."""
    if t.state == TrialState.COMPLETE:
        return t.values[-1]
    if t.state != TrialState.PRUNED or best is None or "pruned_kld_mean" not in t.user_attrs:
        return None
    steps = sorted(set(t.intermediate_values) & set(best.intermediate_values))
    if not steps:
        return None
    best_partial = float(np.mean([best.intermediate_values[s] for s in steps]))
    return full_estimate(float(np.mean([t.intermediate_values[s] for s in steps])),
                         best_partial, best.value)


@dataclass
class Proposer:
    space: Space
    table: UnitTable
    budget: int
    base_kld: float
    n_trials: int | None = None
    seed: int = 0
    every: int = 4
    role: np.ndarray | None = None  # [G] role of each group: type corrections per role

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                          TrialState.PRUNED)))
        if (self.n_trials is not None and n >= self.n_trials) or n % self.every == self.every - 1:
            return
        got = self.propose(study.get_trials(deepcopy=False, states=_LIVE), n)
        if got is not None:
            self.enqueue(study, *got)

    def history(self, trials: list) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Unit choices [N, U], objective values [N] and numbers of the observed trials."""
        best = _best(trials)
        rows, ys, numbers = [], [], []
        for t in trials:
            y = observed_value(t, best) if t.state in (TrialState.COMPLETE,
                                                       TrialState.PRUNED) else None
            c = trial_choice(self.table, t) if y is not None else None
            if c is not None:
                rows.append(c)
                ys.append(y)
                numbers.append(t.number)
        if not rows:
            return np.zeros((0, len(self.table.group)), np.int64), np.zeros(0), []
        return np.array(rows, np.int64), np.array(ys), numbers

    def propose(self, trials: list, n: int) -> tuple[np.ndarray, str] | None:
        """The greedy polish of the best trial under the calibrated prior, then under the
        posterior mean, once per best; else a Thompson proposal in a trust region of k units
        around it. ``trials``: every trial in the storage but the failed ones."""
        choices, y, numbers = self.history(trials)
        if not len(y):
            return None
        post = S.fit(S.features(self.table, choices, self.role), y, self.base_kld,
                     n_groups=len(self.table.options))
        i = int(np.argmin(y))
        best = choices[i]
        seen = {c.tobytes() for c in (trial_choice(self.table, t) for t in trials)
                if c is not None}
        tried = {t.user_attrs.get("proposal") for t in trials}
        fixed = self.space.fixed_bytes
        for name, table in (("prior", self.table),
                            ("surrogate", S.mean_table(self.table, post, self.role))):
            label = f"{name}, greedy from trial {numbers[i]}"
            polish = repair(table, best, self.budget, fixed)
            if label not in tried and polish.tobytes() not in seen:
                return polish, label
        rng = np.random.default_rng([self.seed, n])
        k = int(rng.choice(S.TRUST))
        c = S.propose(self.table, post, best, self.budget - fixed,
                      int(np.ceil(0.995 * self.budget)) - fixed, rng, k, seen, role=self.role)
        return None if c is None else (c, f"surrogate, trust {k}")

    def enqueue(self, study: optuna.Study, choice: np.ndarray, label: str) -> None:
        plan = to_plan(self.table, choice)
        levels = levels_of(self.table, plan)
        params = {g.name: levels[i] for i, g in enumerate(self.space.groups)
                  if len(g.options) > 1}
        study.enqueue_trial(params, user_attrs={"proposal": label, "plan": plan})


def _best(trials: list) -> optuna.trial.FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.intermediate_values]
    return min(done, key=lambda t: t.value) if done else None
