"""A study worker with a synthetic evaluator, run as a subprocess by tests/test_study.py.

usage: python _study_worker.py STORAGE_URL STUDY N_TRIALS SLEEP_S
"""

from __future__ import annotations

import sys
import time

import numpy as np
import optuna

from objectives import default_model_path, open_gguf
from search._allocate import unit_table
from search._space import build_space
from search._storage import open_storage, reap_dead_workers
from search._study import RecipeObjective

TYPES = ["q4_0", "q4_1", "q5_0", "q8_0", "q4_K", "q6_K"]
DAMAGE = {"q4_0": 1.0, "q4_1": 0.2, "q5_0": 0.5, "q8_0": 0.1, "q4_K": 0.4, "q6_K": 0.3}
BUDGET = 80_000_000


class SyntheticEvaluator:
    """KLD = mean damage of the plan's types, a little different per chunk."""

    n_chunks = 8

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep = sleep

    def run(self, plan, chunks):
        time.sleep(self.sleep)
        base = float(np.mean([DAMAGE[t] for t in plan.values()]))
        return [{"kld": base * (1 + 0.01 * c)} for c in chunks]

    def chunk_kld(self, s):
        return s["kld"]

    def summarize(self, stats):
        k = [s["kld"] for s in stats]
        return {"kld_mean": float(np.mean(k)), "kld_p99": float(np.max(k)),
                "ppl": 10 + float(np.mean(k))}


def make_objective(sleep: float = 0.0, seed: int = 0) -> RecipeObjective:
    model = open_gguf(default_model_path())
    space = build_space(model, "mainline", TYPES)
    return RecipeObjective(space, unit_table(space), BUDGET, SyntheticEvaluator(sleep), seed=seed)


def main(url: str, name: str, n_trials: int, sleep: float) -> None:
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=None),
                                pruner=optuna.pruners.NopPruner())
    reap_dead_workers(study)
    study.optimize(make_objective(sleep), n_trials=n_trials)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
