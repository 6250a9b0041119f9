"""Exact optimum of the additive model: min sum_u loss[u, o_u] s.t. bytes within the budget.

    x[u, o] in {0, 1}, sum_o x[u, o] = 1, floor <= sum bytes[u, o] x[u, o] <= room

Solved with ``scipy.optimize.milp`` (HiGHS). The additive model is only a prior (single-group
sensitivities do not add up); the study evaluates its optimum as one warm start.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from ._allocate import UnitTable


def milp_choice(table: UnitTable, room: int, floor: int | None = None,
                time_limit: float = 60.0) -> np.ndarray | None:
    """Option index per unit, or None when no choice fits."""
    n_u, n_o = table.bytes.shape
    valid = np.isfinite(table.loss) & (table.bytes < np.iinfo(np.int64).max // 4)
    cost = np.where(valid, table.loss, 0.0).ravel()
    one_each = sparse.kron(sparse.eye(n_u), np.ones((1, n_o)), format="csr")
    size = np.where(valid, table.bytes, 0).astype(np.float64).ravel()[None, :]
    cons = [LinearConstraint(one_each, 1, 1),
            LinearConstraint(size, -np.inf if floor is None else floor, room)]
    res = milp(cost, constraints=cons, integrality=np.ones_like(cost),
               bounds=Bounds(0, valid.ravel().astype(float)),
               options={"time_limit": time_limit})
    if res.x is None:
        return None if floor is None else milp_choice(table, room, None, time_limit)
    return np.argmax(res.x.reshape(n_u, n_o), axis=1).astype(np.int64)
