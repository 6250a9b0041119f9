"""The budget-exact allocator: sampled group levels -> a recipe within the budget.

    U            units: tensors that must share one type (a tensor, or tied tensors of a layer)
    bytes[u, o]  int64 bytes of unit u at option o (padding: _BIG)
    loss[u, o]   estimated damage of unit u at option o, lower is better (padding: inf);
                 any prior works: measured sensitivity, weighted MSE, or bits
    choice[u]    option index per unit

``allocate`` starts from the sampled levels, then moves single units: while over budget, the
move that saves bytes at the least loss per byte; then every move that lowers the loss and fits
(free ones first, then the best gain per byte); then, until the floor (99.5% of the budget) is
reached, the moves that fit at the least loss per byte. Deterministic and pure; never imports
optuna.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._space import Space

_BIG = np.int64(1) << 60


@dataclass(frozen=True)
class UnitTable:
    group: np.ndarray  # int [U]: group index of each unit
    tensors: tuple[tuple[str, ...], ...]  # names per unit
    bytes: np.ndarray  # int64 [U, O]
    loss: np.ndarray  # float64 [U, O]
    options: tuple[tuple[str, ...], ...]  # per group


def unit_table(space: Space, loss: dict[str, np.ndarray] | None = None) -> UnitTable:
    """Flatten the space into units. ``loss[group] -> [n_tensors, n_options]``; by default the
    unit's bits (more bytes, less loss) so the allocator prefers the sampled point."""
    n_opt = max(len(g.options) for g in space.groups)
    gid, names, rows_b, rows_l = [], [], [], []
    for gi, g in enumerate(space.groups):
        ids = np.asarray(g.unit_ids())
        lg = loss[g.name] if loss and g.name in loss else -g.nbytes.astype(np.float64)
        for u in range(ids.max() + 1):
            m = ids == u
            gid.append(gi)
            names.append(tuple(np.asarray(g.tensors)[m]))
            rows_b.append(_pad(g.nbytes[m].sum(0), n_opt, _BIG))
            rows_l.append(_pad(lg[m].sum(0), n_opt, np.inf))
    return UnitTable(np.array(gid), tuple(names), np.array(rows_b, np.int64),
                     np.array(rows_l, np.float64), tuple(g.options for g in space.groups))


def _pad(row: np.ndarray, n: int, fill) -> np.ndarray:
    return np.concatenate([row, np.full(n - len(row), fill, dtype=np.asarray(row).dtype)])


def start_choice(table: UnitTable, levels: list[int]) -> np.ndarray:
    """Each unit at its group's sampled level."""
    return np.asarray(levels, dtype=np.int64)[table.group]


def total(table: UnitTable, choice: np.ndarray) -> int:
    return int(table.bytes[np.arange(len(choice)), choice].sum())


def _moves(table: UnitTable, choice: np.ndarray):
    """Byte and loss change of moving every unit to every option: [U, O] each."""
    idx = np.arange(len(choice))
    db = table.bytes - table.bytes[idx, choice][:, None]
    dl = table.loss - table.loss[idx, choice][:, None]
    return db, dl


def _shrink(table: UnitTable, choice: np.ndarray, room: int) -> np.ndarray:
    while total(table, choice) > room:
        db, dl = _moves(table, choice)
        cost = np.where(db < 0, dl / np.maximum(-db, 1), np.inf)
        u, o = np.unravel_index(np.argmin(cost), cost.shape)
        if not np.isfinite(cost[u, o]):
            raise ValueError("budget below the smallest recipe of the space")
        choice[u] = o
    return choice


def _improve(table: UnitTable, choice: np.ndarray, room: int) -> np.ndarray:
    """Moves that lower the loss: free ones (not bigger) first, then the best gain per byte
    that fits. Each move lowers the loss, so this ends."""
    while True:
        used = total(table, choice)
        db, dl = _moves(table, choice)
        free = np.where((db <= 0) & (dl < 0), dl, np.inf)
        gain = np.where((db > 0) & (db <= room - used) & (dl < 0), -dl / np.maximum(db, 1), -np.inf)
        if np.isfinite(free.min()):
            u, o = np.unravel_index(np.argmin(free), free.shape)
        elif np.isfinite(gain.max()):
            u, o = np.unravel_index(np.argmax(gain), gain.shape)
        else:
            return choice
        choice[u] = o


def _fill(table: UnitTable, choice: np.ndarray, room: int, floor: int) -> np.ndarray:
    """Up to the floor with the moves that cost least loss per byte; each move adds bytes."""
    while (used := total(table, choice)) < floor:
        db, dl = _moves(table, choice)
        cost = np.where((db > 0) & (db <= room - used), dl / np.maximum(db, 1), np.inf)
        if not np.isfinite(cost.min()):
            return choice
        u, o = np.unravel_index(np.argmin(cost), cost.shape)
        choice[u] = o
    return choice


def repair(table: UnitTable, choice: np.ndarray, budget: int, fixed: int = 0,
           floor_frac: float = 0.995, improve: bool = True) -> np.ndarray:
    """Option index per unit with ``fixed + bytes <= budget``, using at least ``floor_frac`` of
    it where the units allow, starting from ``choice``. ``improve=False`` keeps the starting
    point wherever it fits."""
    room = budget - fixed
    choice = _shrink(table, np.array(choice, np.int64), room)
    if improve:
        choice = _improve(table, choice, room)
    return _fill(table, choice, room, int(np.ceil(floor_frac * budget)) - fixed)


def allocate(table: UnitTable, levels: list[int], budget: int, fixed: int = 0,
             floor_frac: float = 0.995, improve: bool = True) -> np.ndarray:
    """``repair`` from every unit at its group's sampled level."""
    return repair(table, start_choice(table, levels), budget, fixed, floor_frac, improve)


def to_plan(table: UnitTable, choice: np.ndarray) -> dict[str, str]:
    plan = {}
    for u, names in enumerate(table.tensors):
        type_ = table.options[table.group[u]][choice[u]]
        plan.update({n: type_ for n in names})
    return plan


def levels_of(table: UnitTable, plan: dict[str, str]) -> list[int]:
    """The group levels nearest a plan (each group's most frequent option): how a warm start
    that does not fit the grouping is shown to the sampler."""
    n_groups = len(table.options)
    votes = [dict() for _ in range(n_groups)]
    for u, names in enumerate(table.tensors):
        g = table.group[u]
        opt = table.options[g].index(plan[names[0]]) if plan[names[0]] in table.options[g] else 0
        votes[g][opt] = votes[g].get(opt, 0) + 1
    return [max(v, key=lambda k: (v[k], -k)) if v else 0 for v in votes]


def choice_of(table: UnitTable, plan: dict[str, str]) -> np.ndarray:
    """The unit choices of a plan; a type outside the unit's options is a ValueError."""
    return np.array([table.options[table.group[u]].index(plan[names[0]])
                     for u, names in enumerate(table.tensors)], np.int64)
