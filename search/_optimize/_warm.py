"""Warm starts enqueued before sampling: cheap guesses the study must beat.

    uniform     the largest uniform type that fits, filled up; the smallest that does not, cut down
    mix         llama.cpp's default mix (FTYPE) nearest the budget, repaired into it
    cossim      layer-similarity heuristic: whole layers upgraded in importance order (as the
                "COSSIM" recipes of ik_llama.cpp users), from the uniform type below the budget
    milp        exact optimum of the additive model over a loss table (measured sensitivities)
    experts_low MoE recipes as ubergarm and others write them by hand: attention, shared experts
                and dense layers as high as the budget allows, routed experts at the highest
                uniform level that fits what is left

Each is a unit choice within the budget; pure numpy over the unit table.
"""

from __future__ import annotations

import numpy as np

from objectives import layer_of

from ._allocate import UnitTable, repair, total
from ._milp import milp_choice


def project(table: UnitTable, plan: dict[str, str], unit_bytes: np.ndarray) -> np.ndarray:
    """Each unit at the plan's type when it is an option, else at the largest option not
    bigger than the plan's bytes for it (``unit_bytes`` [U]; the plan may use types outside
    --types), else at its smallest option."""
    out = []
    for u, names in enumerate(table.tensors):
        opts = table.options[table.group[u]]
        if plan[names[0]] in opts:
            out.append(opts.index(plan[names[0]]))
            continue
        fits = np.nonzero(table.bytes[u, :len(opts)] <= unit_bytes[u])[0]
        out.append(int(fits[-1]) if len(fits) else 0)
    return np.array(out, np.int64)


def uniform_level(table: UnitTable, k: int) -> np.ndarray:
    """Every unit at its k-th option (clipped to its group's count)."""
    n = np.array([len(table.options[g]) for g in table.group])
    return np.minimum(k, n - 1)


def levels_below(table: UnitTable, budget: int, fixed: int) -> list[int]:
    n_max = max(len(o) for o in table.options)
    return [k for k in range(n_max) if fixed + total(table, uniform_level(table, k)) <= budget]


def uniform(table: UnitTable, budget: int, fixed: int) -> list[tuple[str, np.ndarray]]:
    """Every unit at one level: the largest that fits, filled up to the budget's floor, and
    the smallest that does not, cut down to the budget (least prior damage per byte)."""
    n_max = max(len(o) for o in table.options)
    below = levels_below(table, budget, fixed)
    out = []
    if below:
        out.append(("uniform-below", repair(table, uniform_level(table, below[-1]), budget, fixed,
                                            improve=False)))
    if len(below) < n_max:
        k = len(below)
        out.append(("uniform-above", repair(table, uniform_level(table, k), budget, fixed,
                                            improve=False)))
    return out


def cossim(table: UnitTable, budget: int, fixed: int,
           layer_cos: dict[int, float]) -> np.ndarray | None:
    """Upgrade whole layers, lowest cosine (most important) first, by one option each."""
    below = levels_below(table, budget, fixed)
    if not below or not layer_cos:
        return None
    choice = uniform_level(table, below[-1])
    layer = np.array([_unit_layer(n) for n in table.tensors])
    for L in sorted(layer_cos, key=lambda k: layer_cos[k]):
        up = choice.copy()
        m = layer == L
        n_opt = np.array([len(table.options[g]) for g in table.group])
        up[m] = np.minimum(up[m] + 1, n_opt[m] - 1)
        if fixed + total(table, up) <= budget:
            choice = up
    return repair(table, choice, budget, fixed, improve=False)


def _unit_layer(names: tuple[str, ...]) -> int:
    layer = layer_of(names[0])
    return -1 if layer is None else layer


def experts_low(table: UnitTable, budget: int, fixed: int, routed: np.ndarray
                ) -> np.ndarray | None:
    """``routed`` [U] bool: routed-expert units. The others at the highest uniform level for
    which the routed experts still fit at some level, the routed experts at the highest that
    fits; then filled up to the budget."""
    if not routed.any() or routed.all():
        return None
    n_opt = np.array([len(table.options[g]) for g in table.group])
    for k_other in range(int(n_opt.max()) - 1, -1, -1):
        for k_exp in range(int(n_opt.max()) - 1, -1, -1):
            c = np.where(routed, np.minimum(k_exp, n_opt - 1), np.minimum(k_other, n_opt - 1))
            if fixed + total(table, c) <= budget:
                return repair(table, c, budget, fixed, improve=False)
    return None


def milp(table: UnitTable, budget: int, fixed: int) -> np.ndarray | None:
    room = budget - fixed
    choice = milp_choice(table, room, floor=int(0.995 * budget) - fixed)
    return None if choice is None else repair(table, choice, budget, fixed, improve=False)
