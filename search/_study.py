"""The Optuna objective: sampled group levels -> budget-exact recipe -> staged evaluation.

The objective is built once per study (space, unit table, evaluator and caches stay loaded);
a trial only suggests one ordinal level per group, so the sampler sees tens of parameters even
for a 60-layer MoE. What a trial stores (``recipe`` user attribute and artifact) is exactly what
was evaluated. Chunks are evaluated in a fixed random order, in stages; after each stage the
per-chunk KLDs are reported with the chunk id as step, so ``WilcoxonPruner`` can stop a
candidate that is clearly worse than the best.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import optuna

from . import _surrogate as S
from ._allocate import UnitTable, allocate, choice_of, levels_of, repair, to_plan, total
from ._space import Space
from ._storage import mark_worker

OBJECTIVES = {"kld": "kld_mean", "kld99": "kld_p99", "ppl": "ppl"}


class Evaluator(Protocol):
    """What the study needs from ``objectives``: per-chunk statistics of a plan, and their
    summary with llama-perplexity's keys (kld_mean, kld_p99, ppl, ...)."""

    n_chunks: int

    def run(self, plan: dict[str, str], chunks: Sequence[int]) -> list[Any]: ...

    def chunk_kld(self, stat: Any) -> float: ...

    def summarize(self, stats: list[Any]) -> dict[str, float]: ...


def plan_sha(plan: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RecipeObjective:
    space: Space
    table: UnitTable
    budget: int
    evaluator: Evaluator
    objective: str = "kld"
    stage: int = 4
    seed: int = 0
    pareto: bool = False
    on_recipe: Callable[[optuna.Trial, dict[str, str], dict], None] | None = None
    _seen: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.order = [int(c) for c in rng.permutation(self.evaluator.n_chunks)]

    def free_groups(self) -> list[int]:
        return [i for i, g in enumerate(self.space.groups) if len(g.options) > 1]

    def levels(self, trial: optuna.Trial) -> list[int]:
        levels = [0] * len(self.space.groups)
        for i in self.free_groups():
            g = self.space.groups[i]
            levels[i] = trial.suggest_int(g.name, 0, len(g.options) - 1)
        return levels

    def choose(self, trial: optuna.Trial) -> np.ndarray:
        """Units' options: the plan of a warm start or proposal if the trial carries one, else
        the sampled levels; either repaired into the budget."""
        levels = self.levels(trial)
        warm = trial.user_attrs.get("warm_plan") or trial.user_attrs.get("plan")
        start = choice_of(self.table, warm) if warm is not None else None
        if start is None:
            return allocate(self.table, levels, self.budget, self.space.fixed_bytes,
                            floor_frac=0.0 if self.pareto else 0.995, improve=not self.pareto)
        return repair(self.table, start, self.budget, self.space.fixed_bytes, improve=False)

    def __call__(self, trial: optuna.Trial):
        mark_worker(trial)
        choice = self.choose(trial)
        plan = to_plan(self.table, choice)
        nbytes = self.space.fixed_bytes + total(self.table, choice)
        sha = plan_sha(plan)
        trial.set_user_attr("bytes", nbytes)
        trial.set_user_attr("bpw", round(8 * nbytes / self.space.n_elements, 6))
        trial.set_user_attr("plan_sha", sha)
        trial.set_user_attr("recipe", plan)
        metrics = self._seen.get(sha) or self._evaluate(trial, plan)
        self._seen[sha] = metrics
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        if self.on_recipe:
            self.on_recipe(trial, plan, metrics)
        value = metrics[OBJECTIVES[self.objective]]
        return (float(nbytes), value) if self.pareto else value

    def _evaluate(self, trial: optuna.Trial, plan: dict[str, str]) -> dict:
        """Stage by stage; warm starts (the baselines) and the last stage are never pruned."""
        stats: list[Any] = []
        prunable = not self.pareto and "warm_start" not in trial.user_attrs
        for start in range(0, len(self.order), self.stage):
            chunks = self.order[start:start + self.stage]
            stats += self.evaluator.run(plan, chunks)
            self._report(trial, chunks, stats,
                         prune=prunable and start + self.stage < len(self.order))
        return self.evaluator.summarize(stats)

    def _report(self, trial: optuna.Trial, chunks: list[int], stats: list[Any],
                prune: bool) -> None:
        if self.pareto:  # multi-objective studies take no intermediate values
            return
        for c, s in zip(chunks, stats[-len(chunks):]):
            trial.report(self.evaluator.chunk_kld(s), step=c)
        if prune and trial.should_prune():
            trial.set_user_attr("pruned_kld_mean", float(np.mean(
                [self.evaluator.chunk_kld(s) for s in stats])))
            raise optuna.TrialPruned()


@dataclass
class Proposer:
    """Study callback: after a finished trial, enqueue the surrogate's next proposal (the
    additive model fitted to every completed trial: the allocator's greedy polish of the best
    trial under the prior or the model's mean, or a Thompson sample optimized within a trust
    region around the best). One trial in ``every`` is left to the sampler; nothing is
    enqueued while trials wait (warm starts) or once ``n_trials`` have finished."""

    space: Space
    table: UnitTable
    budget: int
    base_kld: float
    n_trials: int | None = None
    seed: int = 0
    every: int = 4
    role: np.ndarray | None = None  # [G] role of each group: type corrections per role

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        TS = optuna.trial.TrialState
        if study.get_trials(deepcopy=False, states=(TS.WAITING,)):
            return
        n = len(study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.PRUNED)))
        if (self.n_trials is not None and n >= self.n_trials) or n % self.every == self.every - 1:
            return
        got = self.propose(study.get_trials(deepcopy=False, states=(TS.COMPLETE,)), n)
        if got is not None:
            self.enqueue(study, *got)

    def history(self, done: list) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Unit choices [N, U], objective values [N] and numbers of the completed trials."""
        rows, ys, numbers = [], [], []
        for t in done:
            try:
                rows.append(choice_of(self.table, t.user_attrs["recipe"]))
            except (KeyError, ValueError):
                continue
            ys.append(t.values[-1])
            numbers.append(t.number)
        if not rows:
            return np.zeros((0, len(self.table.group)), np.int64), np.zeros(0), []
        return np.array(rows, np.int64), np.array(ys), numbers

    def propose(self, done: list, n: int) -> tuple[np.ndarray, str] | None:
        """The greedy allocator's polish of the best trial under the calibrated prior, then
        under the posterior mean, once per best; else a Thompson proposal in a trust region of k
        units around it."""
        choices, y, numbers = self.history(done)
        if not len(y):
            return None
        post = S.fit(S.features(self.table, choices, self.role), y, self.base_kld,
                     n_groups=len(self.table.options))
        i = int(np.argmin(y))
        best, seen = choices[i], {c.tobytes() for c in choices}
        fixed = self.space.fixed_bytes
        tried = {t.user_attrs.get("proposal") for t in done}
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
