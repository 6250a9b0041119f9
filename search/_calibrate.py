"""Calibrate the prior by measurement before the study: one probe per role.

    role[g]   role index of each group (``group_roles``)
    probes    base (every unit at its least-damage option) and, per role, the base with that
              role's units at the uniform level nearest the budget (``_surrogate.probe_choices``)
    scales    measured KLD per unit of prior damage, per role; the table's losses are scaled
              by them, so the allocator, the MILP warm start and the surrogate add up KLDs

Probe results are cached as JSON under the cache directory (key: the study's spec and chunks).
"""

from __future__ import annotations

import json

import numpy as np

from . import _surrogate as S
from . import _warm
from ._allocate import to_plan
from ._space import Space
from ._study import plan_sha


def group_roles(space: Space) -> tuple[list[str], np.ndarray]:
    """Role names and the role index of every group ([G]); pinned tensors share one role."""
    names = ["pinned" if g.name.startswith("pin:") else g.name.split("@")[0]
             for g in space.groups]
    roles = sorted(set(names))
    return roles, np.array([roles.index(n) for n in names])


def calibrate(p, calib, progress=None) -> None:
    """Scale the prior per role by measurement: one probe per role on the calibration
    chunks (results cached), so that losses of different roles add up in KLD units."""
    roles, role = group_roles(p.space)
    below = _warm.levels_below(p.table, p.budget, p.space.fixed_bytes)
    level = _warm.uniform_level(p.table, below[-1] if below else 0)
    base, probes = S.probe_choices(p.table, role, level)
    y = _measured(p, calib, [base, *probes], progress)
    s = S.role_scales(p.table, role, base, probes, y[0], y[1:])
    p.scales = {r: float(v) for r, v in zip(roles, s)}
    p.base_kld = y[0]
    p.table = S.scaled(p.table, role, s)


def _measured(p, calib, choices: list[np.ndarray], progress=None) -> list[float]:
    """kld_mean of each choice on every calibration chunk, through a small JSON cache."""
    key = plan_sha({"spec": json.dumps(p.spec, sort_keys=True, default=str),
                    "chunks": str(calib.n_chunks)})
    path = p.opts.cache_dir() / "probes" / f"{key}.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    out, n_known = [], len(known)
    for i, c in enumerate(choices):
        plan = to_plan(p.table, c)
        sha = plan_sha(plan)
        if sha not in known:
            known[sha] = calib.evaluate(plan)["kld_mean"]
        out.append(float(known[sha]))
        if progress:
            progress("calibrate", i + 1, len(choices))
    if len(known) > n_known:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=0))
    return out
