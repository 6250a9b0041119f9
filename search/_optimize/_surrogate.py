"""The prior calibrated by measurement, and a Bayesian additive surrogate fitted to the trials.

    P[u, o]      prior damage of unit u at option o (the table's loss: output error energy)
    role[g]      role index of group g (attn_k, ffn_down, token_embd, ...)
    s[r]         measured scale of role r: (KLD(probe_r) - KLD(base)) / (P(probe_r) - P(base)),
                 base = every unit at its least-damage option, probe_r = role r's units at the
                 uniform level nearest the budget; error energies of different roles differ by orders of
                 magnitude in what they do to the KLD, so the raw prior is not additive.
    f[n, g]      sum over the units of group g of s P[u, o_u] in trial n's recipe   [N, G]
    h[n, t]      the same sum over the units at type t (per role: t = (role, type))   [N, T]
    y[n]         the trial's objective on the calibration chunks                      [N]
    y ~ b + sum_g w_g f[n, g] + sum_t v_t h[n, t]
        w_g ~ N(1, tau^2), v_t ~ N(0, tau^2), b ~ N(b0, sb^2), noise sigma^2, tau = 1
    (a unit's damage scale is w_g + v_t: per group for layers, per role and type for the
    shape of the error-energy-to-KLD curve, e.g. q3_K on ffn_down hurting more than its energy
    and the probe at iq4_xs say)

The posterior is closed form. A proposal is the MILP optimum of a Thompson sample of w within
``k`` units of the incumbent (the best trial so far): a trust region as in BOCS/TuRBO, so the
study improves on the best warm start instead of jumping across the space. Pure numpy/scipy;
no optuna here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._allocate import UnitTable
from ._milp import milp_choice

TRUST = (2, 4, 8, 16)  # units a proposal may change, drawn per proposal (0: any number)


def least_damage(table: UnitTable) -> np.ndarray:
    """The option of least prior damage per unit (the most accurate the space offers)."""
    return np.argmin(table.loss, axis=1).astype(np.int64)


def probe_choices(table: UnitTable, role: np.ndarray, level: np.ndarray
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(base, probe per role): ``role`` [G] int, ``level`` [U] the option to probe at (the
    uniform level nearest the budget). A probe moves its role's units from the base to that
    option, or to the nearest option below it that the prior says is worse than the base."""
    base = least_damage(table)
    probes = []
    for r in range(int(role.max()) + 1):
        c = base.copy()
        for u in np.nonzero(role[table.group] == r)[0]:
            worse = [o for o in range(level[u] + 1) if table.loss[u, o] > table.loss[u, base[u]]]
            c[u] = worse[-1] if worse else base[u]
        probes.append(c)
    return base, probes


def role_scales(table: UnitTable, role: np.ndarray, base: np.ndarray, probes: list[np.ndarray],
                y_base: float, y_probes: list[float]) -> np.ndarray:
    """s[r] [R]: measured KLD per unit of prior damage; a role whose probe moved nothing or
    measured no damage gets a small fraction of the median scale."""
    dp = np.array([_damage(table, c) - _damage(table, base) for c in probes])
    dy = np.asarray(y_probes, np.float64) - y_base
    ok = (dp > 0) & (dy > 0)
    s = np.where(ok, dy / np.where(dp > 0, dp, 1.0), np.nan)
    fallback = 0.02 * np.nanmedian(s) if ok.any() else 1.0
    return np.where(ok, s, fallback)


def _damage(table: UnitTable, choice: np.ndarray) -> float:
    return float(table.loss[np.arange(len(choice)), choice].sum())


def scaled(table: UnitTable, role: np.ndarray, s: np.ndarray) -> UnitTable:
    """The table with each unit's loss in calibrated (KLD) units."""
    return replace(table, loss=table.loss * s[role[table.group]][:, None])


def type_index(table: UnitTable, role: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """Number of correction terms, and the term of every (unit, option) ([U, O], -1 for
    padding): the option's type, or with ``role`` ([G]) the pair (role of the unit, type)."""
    names = sorted({t for opts in table.options for t in opts})
    idx = np.full(table.bytes.shape, -1, np.int64)
    for u, g in enumerate(table.group):
        base = 0 if role is None else int(role[g]) * len(names)
        idx[u, :len(table.options[g])] = [base + names.index(t) for t in table.options[g]]
    n_roles = 1 if role is None else int(role.max()) + 1
    return n_roles * len(names), idx


def features(table: UnitTable, choices: np.ndarray, role: np.ndarray | None = None
             ) -> np.ndarray:
    """[N, G + T] calibrated damage of each choice ([N, U]) summed per group, then per
    correction term (type, or role x type)."""
    n_g = len(table.options)
    n_t, tidx = type_index(table, role)
    picked = np.take_along_axis(table.loss[None], choices[:, :, None], axis=2)[..., 0]
    terms = np.take_along_axis(tidx[None], choices[:, :, None], axis=2)[..., 0]
    return np.stack([np.r_[np.bincount(table.group, row, n_g), np.bincount(ty, row, n_t)]
                     for row, ty in zip(picked, terms)]).reshape(len(choices), n_g + n_t)


@dataclass(frozen=True)
class Posterior:
    mean: np.ndarray  # [G + T + 1]: w_g, v_t, then b
    cov: np.ndarray  # [G + T + 1, G + T + 1]

    def predict(self, f: np.ndarray) -> np.ndarray:
        return np.c_[f, np.ones(len(f))] @ self.mean


def fit(f: np.ndarray, y: np.ndarray, b0: float, n_groups: int | None = None,
        tau: float = 1.0, sb: float | None = None, sigma: float | None = None) -> Posterior:
    """Bayesian linear regression of y [N] on f [N, G + T] plus an intercept: group weights
    w ~ N(1, tau^2), type corrections v ~ N(0, tau^2) (the first ``n_groups`` columns are
    groups; all of them by default)."""
    n_f = f.shape[1]
    n_g = n_f if n_groups is None else n_groups
    x = np.c_[f, np.ones(len(f))]
    sb = abs(b0) if sb is None else sb
    sigma = 0.05 * float(np.median(y)) if sigma is None else sigma
    m0 = np.r_[np.ones(n_g), np.zeros(n_f - n_g), b0]
    p0 = np.diag(1.0 / np.r_[np.full(n_f, tau ** 2), max(sb, 1e-9) ** 2])
    prec = p0 + x.T @ x / sigma ** 2
    cov = np.linalg.inv(prec)
    return Posterior(cov @ (p0 @ m0 + x.T @ y / sigma ** 2), (cov + cov.T) / 2)


def _scales(table: UnitTable, z: np.ndarray, role: np.ndarray | None) -> np.ndarray:
    """[U, O] damage scale w_g + v_t of every (unit, option) for coefficients z [G + T]
    (at least 0.05)."""
    n_g = len(table.options)
    _, tidx = type_index(table, role)
    v = np.r_[z[n_g:], 0.0]  # index -1 (padding) reads the appended 0
    return np.clip(z[:n_g][table.group][:, None] + v[tidx], 0.05, None)


def sample_loss(table: UnitTable, post: Posterior, rng: np.random.Generator,
                role: np.ndarray | None = None) -> np.ndarray:
    """[U, O] the prior damage scaled by one posterior sample of the coefficients."""
    n_f = len(post.mean) - 1
    z = rng.multivariate_normal(post.mean[:n_f], post.cov[:n_f, :n_f], method="cholesky")
    return table.loss * _scales(table, z, role)


def mean_table(table: UnitTable, post: Posterior, role: np.ndarray | None = None) -> UnitTable:
    """The table with the posterior mean's damage scales."""
    return replace(table, loss=table.loss * _scales(table, post.mean[:-1], role))


def propose(table: UnitTable, post: Posterior, incumbent: np.ndarray, room: int, floor: int,
            rng: np.random.Generator, k: int, seen: set[bytes], tries: int = 6,
            role: np.ndarray | None = None) -> np.ndarray | None:
    """A choice within ``k`` units of the incumbent (any, if 0) minimizing a posterior sample of the
    surrogate, not in ``seen`` (choices' bytes); None when every try was seen or infeasible."""
    for _ in range(tries):
        loss = sample_loss(table, post, rng, role)
        near = (incumbent, k) if k else None
        c = milp_choice(table, room, floor, time_limit=20.0, loss=loss, near=near)
        if c is not None and c.tobytes() not in seen:
            return c
    return None
