"""A plan the study has not seen yet, as near as possible to the one asked for.

    nearest_new(table, choice, budget, fixed, taken) -> choice' | None

Single-unit moves of ``choice`` in order of least prior-loss increase (gains first), each
repaired into the budget window (``repair`` keeps the other units wherever they fit); the first
whose plan is not ``taken`` wins. Pure numpy; no optuna.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._allocate import UnitTable, repair

MAX_TRIES = 200


def nearest_new(table: UnitTable, choice: np.ndarray, budget: int, fixed: int,
                taken: Callable[[np.ndarray], bool], floor_frac: float = 0.995,
                max_tries: int = MAX_TRIES) -> np.ndarray | None:
    idx = np.arange(len(choice))
    delta = table.loss - table.loss[idx, choice][:, None]  # [U, O]
    delta[idx, choice] = np.inf
    order = np.argsort(delta, axis=None, kind="stable")
    tried = 0
    for flat in order:
        u, o = np.unravel_index(flat, delta.shape)
        if not np.isfinite(delta[u, o]):
            break
        c = choice.copy()
        c[u] = o
        try:
            c = repair(table, c, budget, fixed, floor_frac=floor_frac, improve=False)
        except ValueError:
            continue
        if not taken(c):
            return c
        tried += 1
        if tried >= max_tries:
            break
    return None
