"""A study worker with a synthetic evaluator, run as a subprocess by tests/test_study.py.

usage: python _study_worker.py STORAGE_URL STUDY N_TRIALS SLEEP_S [EVAL_LOG] [N_SAME]

Every stage of an evaluation appends "SHA PID FIRST_CHUNK" to EVAL_LOG (across processes); N_SAME
enqueues that many trials asking for the same fixed levels (two workers then race for one plan).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import optuna

from objectives import default_model_path, open_gguf
from search import RecipeObjective, build_space, open_storage, plan_sha, reap_dead_workers
from search import unit_table

TYPES = ["q4_0", "q4_1", "q5_0", "q8_0", "q4_K", "q6_K"]
DAMAGE = {"q4_0": 1.0, "q4_1": 0.2, "q5_0": 0.5, "q8_0": 0.1, "q4_K": 0.4, "q6_K": 0.3}
BUDGET = 80_000_000


def synthetic_kld(plan: dict[str, str], chunk: int) -> float:
    """The truth the tests check against: mean damage of the plan's types, per chunk."""
    return float(np.mean([DAMAGE[t] for t in plan.values()])) * (1 + 0.01 * chunk)


class SyntheticEvaluator:
    n_chunks = 8

    def __init__(self, sleep: float = 0.0, log: str | None = None) -> None:
        self.sleep, self.log, self.calls = sleep, log, []

    def run(self, plan, chunks):
        time.sleep(self.sleep)
        self.calls.append((plan_sha(plan), int(chunks[0])))
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{plan_sha(plan)} {os.getpid()} {int(chunks[0])}\n")
        return [{"kld": synthetic_kld(plan, c)} for c in chunks]

    def evaluations(self, first_chunk: int) -> list[str]:
        """Plans evaluated (one entry per evaluation: its first stage)."""
        return [sha for sha, c in self.calls if c == first_chunk]

    def chunk_kld(self, s):
        return s["kld"]

    def summarize(self, stats):
        k = [s["kld"] for s in stats]
        return {"kld_mean": float(np.mean(k)), "kld_p99": float(np.max(k)),
                "ppl": 10 + float(np.mean(k))}


def make_objective(sleep: float = 0.0, seed: int = 0, log: str | None = None,
                   evaluator=None) -> RecipeObjective:
    model = open_gguf(default_model_path())
    space = build_space(model, "mainline", TYPES)
    return RecipeObjective(space, unit_table(space), BUDGET,
                           evaluator or SyntheticEvaluator(sleep, log), seed=seed)


def main(url: str, name: str, n_trials: int, sleep: float, log: str | None = None,
         n_same: int = 0) -> None:
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=None),
                                pruner=optuna.pruners.NopPruner())
    reap_dead_workers(study)
    obj = make_objective(sleep, log=log)
    same = {obj.space.groups[i].name: 0 for i in obj.free_groups()}
    for _ in range(n_same):
        study.enqueue_trial(same, skip_if_exists=False)
    study.optimize(obj, n_trials=n_trials)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], int(args[2]), float(args[3]), args[4] if len(args) > 4 else None,
         int(args[5]) if len(args) > 5 else 0)
