"""The Optuna objective: sampled group levels -> a budget-exact recipe no trial has had ->
staged evaluation.

The objective is built once per study (space, unit table, evaluator and caches stay loaded);
a trial only suggests one ordinal level per group, so the sampler sees tens of parameters even
for a 60-layer MoE. What a trial stores (``recipe`` user attribute and artifact) is exactly what
was evaluated.

No plan is evaluated twice in a study, whichever worker runs it: before evaluating, a trial
claims its plan (``plan_sha``); if another trial holds it (finished, or running with a smaller
number), a sampled or proposed trial moves to the nearest plan nobody holds
(``_optimize.nearest_new``; ``moved_from`` records the original), and a warm start takes the
stored result. A failed trial holds nothing, so its retry evaluates the same plan again.

Chunks are evaluated in a fixed random order, in stages; after each stage the per-chunk KLDs
are reported with the chunk id as step, and the pruner (``PairedPruner``) stops a candidate only
when it is clearly worse than the best on the chunks both saw. Warm starts (the baselines) and
the last stage are never pruned.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from .._optimize import (OBJECTIVES, Space, UnitTable, allocate, choice_of, nearest_new, repair, to_plan,
                         total)
from ._storage import mark_worker

MAX_MOVES = 8
_HOLDS = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class Evaluator(Protocol):
    """What the study needs from ``objectives``: per-chunk statistics of a plan, and their
    summary with llama-perplexity's keys (kld_mean, kld_p99, ppl, ...)."""

    n_chunks: int

    def run(self, plan: dict[str, str], chunks: Sequence[int]) -> list[Any]: ...

    def chunk_kld(self, stat: Any) -> float: ...

    def summarize(self, stats: list[Any]) -> dict[str, float]: ...


def plan_sha(plan: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def holders(study: optuna.Study, sha: str, number: int) -> list[optuna.trial.FrozenTrial]:
    """Other trials that hold plan ``sha`` against trial ``number``: finished (complete or
    pruned) or running, whatever their number. A trial writes its claim before it reads the
    others', so of two racing claims at least one sees the other and moves (both may: no plan
    is then evaluated twice, none lost); yielding only to smaller numbers let a claim written
    after the other's read go through twice (seen with two journal workers)."""
    return [t for t in study.get_trials(deepcopy=False, states=_HOLDS)
            if t.number != number and t.user_attrs.get("plan_sha") == sha]


@dataclass
class RecipeObjective:
    space: Space
    table: UnitTable
    budget: int
    evaluator: Evaluator
    objective: str = "kld"
    stage: int = 4  # chunks per stage: the evaluator's forward batch, so no stage pads one
    seed: int = 0
    pareto: bool = False
    chunks: int | None = None  # the first ``chunks`` of the evaluator's (default: all)
    on_recipe: Callable[[optuna.Trial, dict[str, str], dict], None] | None = None
    on_stage: Callable[[int, int, int], None] | None = None  # (trial, chunks done, chunks)

    def __post_init__(self) -> None:
        n = self.evaluator.n_chunks if self.chunks is None else min(self.chunks,
                                                                     self.evaluator.n_chunks)
        rng = np.random.default_rng(self.seed)
        self.order = [int(c) for c in rng.permutation(n)]

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
                            floor_frac=self._floor(), improve=not self.pareto)
        return repair(self.table, start, self.budget, self.space.fixed_bytes, improve=False)

    def _floor(self) -> float:
        return 0.0 if self.pareto else 0.995

    def claim(self, trial: optuna.Trial, choice: np.ndarray
              ) -> tuple[np.ndarray, optuna.trial.FrozenTrial | None]:
        """(the choice this trial evaluates, a finished trial whose result it takes instead)."""
        study, warm = trial.study, "warm_start" in trial.user_attrs
        for _ in range(MAX_MOVES):
            sha = plan_sha(to_plan(self.table, choice))
            trial.set_user_attr("plan_sha", sha)
            held = holders(study, sha, trial.number)
            if not held:
                return choice, None
            if warm:  # a baseline is never moved: it takes a finished twin's result
                done = [t for t in held if t.state == TrialState.COMPLETE]
                return choice, done[0] if done else None
            shas = {t.user_attrs.get("plan_sha") for t in study.get_trials(
                deepcopy=False, states=_HOLDS) if t.number != trial.number}
            new = nearest_new(self.table, choice, self.budget, self.space.fixed_bytes,
                              lambda c: plan_sha(to_plan(self.table, c)) in shas, self._floor())
            if new is None:
                break
            if "moved_from" not in trial.user_attrs:
                trial.set_user_attr("moved_from", sha)
            choice = new
        trial.set_user_attr("duplicate_of", held[0].number)
        raise optuna.TrialPruned(f"no new plan near trial {held[0].number}'s")

    def __call__(self, trial: optuna.Trial):
        mark_worker(trial)
        choice, same = self.claim(trial, self.choose(trial))
        plan = to_plan(self.table, choice)
        nbytes = self.space.fixed_bytes + total(self.table, choice)
        trial.set_user_attr("bytes", nbytes)
        trial.set_user_attr("bpw", round(8 * nbytes / self.space.n_elements, 6))
        trial.set_user_attr("recipe", plan)
        if same is not None:
            trial.set_user_attr("duplicate_of", same.number)
            metrics = {k: same.user_attrs[k] for k in _metric_keys(same.user_attrs)}
        else:
            metrics = self._evaluate(trial, plan)
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        if self.on_recipe:
            self.on_recipe(trial, plan, metrics)
        value = metrics[OBJECTIVES[self.objective]]
        return (float(nbytes), value) if self.pareto else value

    def _evaluate(self, trial: optuna.Trial, plan: dict[str, str]) -> dict:
        stats: list[Any] = []
        prunable = not self.pareto and "warm_start" not in trial.user_attrs
        for start in range(0, len(self.order), self.stage):
            chunks = self.order[start:start + self.stage]
            stats += self.evaluator.run(plan, chunks)
            if self.on_stage:
                self.on_stage(trial.number, len(stats), len(self.order))
            self._report(trial, chunks, stats,
                         prune=prunable and start + self.stage < len(self.order))
        return {k: float(v) for k, v in self.evaluator.summarize(stats).items()}

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


def _metric_keys(attrs: dict) -> list[str]:
    skip = {"recipe", "plan", "plan_sha", "bytes", "bpw", "warm_start", "warm_plan", "proposal",
            "worker", "moved_from", "duplicate_of", "retry_of", "pruned_kld_mean"}
    return [k for k, v in attrs.items() if k not in skip and isinstance(v, (int, float))]
