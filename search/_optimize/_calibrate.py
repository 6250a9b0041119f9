"""The prior in KLD units: per-tensor error energies scaled per role by measured probes.

    E[t, o]      output error energy of tensor t at written type o (the measurement's index)
    role[g]      role index of each group (``group_roles``); pinned tensors share one role
    probes       base (every unit at its least-damage option) and, per role, the base with that
                 role's units at the uniform level nearest the probe size (``probe_levels``,
                 ``_surrogate.probe_choices``)
    s[r]         measured KLD per unit of energy of role r (``_surrogate.role_scales``)
    loss[t, o]   s[role(t)] * E[t, o]: what the allocator, the MILP and the surrogate add up

The probe size is a property of the measurement, not of a study's budget, so one measurement
serves every budget. Pure numpy; no optuna.
"""

from __future__ import annotations

import numpy as np

from ._allocate import UnitTable
from ._space import Space
from ._warm import levels_below, uniform_level


def group_roles(space: Space) -> tuple[list[str], np.ndarray]:
    """Role names and the role index of every group ([G]); pinned tensors share one role."""
    names = ["pinned" if g.name.startswith("pin:") else g.name.split("@")[0]
             for g in space.groups]
    roles = sorted(set(names))
    return roles, np.array([roles.index(n) for n in names])


def probe_level(table: UnitTable, probe_bytes: int, fixed: int) -> np.ndarray:
    """[U] the uniform level nearest ``probe_bytes`` from below (the smallest if none fits)."""
    below = levels_below(table, probe_bytes, fixed)
    return uniform_level(table, below[-1] if below else 0)


def error_loss(space: Space, errors: dict[str, dict[str, float]],
               scales: dict[str, float] | None = None,
               role_of: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Per group [n_tensors, n_options]: each tensor's error energy at each option, times its
    role's scale when ``scales`` (role -> KLD per unit) and ``role_of`` (tensor -> role) are
    given; a role without a scale keeps 1."""
    out = {}
    for g in space.groups:
        rows = []
        for name in g.tensors:
            s = scales.get(role_of[name], 1.0) if scales and role_of else 1.0
            rows.append([s * errors[name][o] for o in g.options])
        out[g.name] = np.array(rows, np.float64)
    return out
