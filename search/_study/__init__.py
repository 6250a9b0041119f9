"""Optuna glue, the only place optuna is imported: the objective, the pruner, the proposer
callback and the storages."""

from ._objective import OBJECTIVES, Evaluator, RecipeObjective, holders, plan_sha
from ._proposer import Proposer, observed_value, trial_choice
from ._pruner import PairedPruner, best_complete
from ._storage import (StorageError, check_url, default_url, mark_worker, open_storage,
                       reap_dead_workers)

__all__ = ["Evaluator", "OBJECTIVES", "PairedPruner", "Proposer", "RecipeObjective",
           "StorageError", "best_complete", "check_url", "default_url", "holders", "mark_worker",
           "observed_value", "open_storage", "plan_sha", "reap_dead_workers", "trial_choice"]
