"""Exact optimum of the additive model: min sum_u loss[u, o_u] s.t. bytes within the budget.

    x[u, o] in {0, 1}, sum_o x[u, o] = 1, floor <= sum bytes[u, o] x[u, o] <= room
    near (c, k): sum_u x[u, c_u] >= U - k   (at most k units differ from choice c)

Solved with ``scipy.optimize.milp`` (HiGHS). The additive model is only a prior (single-group
sensitivities do not add up); the study evaluates its optimum as one warm start, and the
surrogate's proposals solve it within a trust region around the incumbent.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from ._allocate import UnitTable


def milp_choice(table: UnitTable, room: int, floor: int | None = None,
                time_limit: float = 60.0, loss: np.ndarray | None = None,
                near: tuple[np.ndarray, int] | None = None) -> np.ndarray | None:
    """Option index per unit, or None when no choice fits. ``loss`` [U, O] replaces the
    table's."""
    loss = table.loss if loss is None else loss
    n_u, n_o = table.bytes.shape
    valid = np.isfinite(loss) & (table.bytes < np.iinfo(np.int64).max // 4)
    cost = np.where(valid, loss, 0.0).ravel()
    one_each = sparse.kron(sparse.eye(n_u), np.ones((1, n_o)), format="csr")
    size = np.where(valid, table.bytes, 0).astype(np.float64).ravel()[None, :]
    cons = [LinearConstraint(one_each, 1, 1),
            LinearConstraint(size, -np.inf if floor is None else floor, room)]
    if near is not None:
        keep = np.zeros((n_u, n_o))
        keep[np.arange(n_u), near[0]] = 1.0
        cons.append(LinearConstraint(keep.ravel()[None, :], n_u - near[1], np.inf))
    res = milp(cost, constraints=cons, integrality=np.ones_like(cost),
               bounds=Bounds(0, valid.ravel().astype(float)),
               options={"time_limit": time_limit})
    if res.x is None:
        return None if floor is None else milp_choice(table, room, None, time_limit, loss, near)
    return np.argmax(res.x.reshape(n_u, n_o), axis=1).astype(np.int64)
