"""The calibrated prior and the additive surrogate, on hand-made unit tables with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import search as S
from search import UnitTable, total
from search import milp_choice


def table(n_units=6, n_groups=3, seed=0) -> UnitTable:
    """Units of three options (bytes 10 / 15 / 20); the prior damage falls with the bytes."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_units) % n_groups
    b = np.tile(np.array([[10, 15, 20]], np.int64), (n_units, 1))
    loss = np.sort(rng.uniform(0.1, 4.0, (n_units, 3)), axis=1)[:, ::-1].copy()
    loss[:, 2] = 0.0
    names = tuple((f"blk.{u}.w",) for u in range(n_units))
    return UnitTable(group, names, b, loss, tuple(("a", "b", "c") for _ in range(n_groups)))


def true_kld(t: UnitTable, w: np.ndarray, c: np.ndarray, b: float = 0.01) -> float:
    return b + float((t.loss[np.arange(len(c)), c] * w[t.group]).sum())


def test_probes_and_role_scales_recover_known_scales():
    t = table()
    role = np.array([0, 1, 1])  # group -> role
    scale = np.array([3.0, 0.25])
    level = np.full(len(t.group), 1)
    base, probes = S.probe_choices(t, role, level)
    assert (base == 2).all()  # least damage: the biggest option here
    for r, c in enumerate(probes):
        moved = role[t.group] == r
        assert (c[moved] == 1).all() and (c[~moved] == 2).all()
    y = [true_kld(t, scale[role], c) for c in probes]
    s = S.role_scales(t, role, base, probes, true_kld(t, scale[role], base), y)
    np.testing.assert_allclose(s, scale, rtol=1e-12)


def test_a_role_that_measured_no_damage_gets_a_small_scale():
    t = table()
    role = np.array([0, 1, 2])
    base, probes = S.probe_choices(t, role, np.full(len(t.group), 0))
    s = S.role_scales(t, role, base, probes, 0.1, [0.5, 0.09, 0.7])
    assert s[1] < 0.1 * min(s[0], s[2]) and s[1] > 0


def test_features_are_the_group_sums_then_the_type_sums_of_the_picked_losses():
    t = table()
    c = np.array([[0, 1, 2, 0, 1, 2]])
    f = S.features(t, c)
    by_group = [t.loss[0, 0] + t.loss[3, 0], t.loss[1, 1] + t.loss[4, 1], 0.0]
    by_type = by_group  # here group g holds exactly the units at option g
    np.testing.assert_allclose(f[0], by_group + by_type)


def true_kld_typed(t: UnitTable, w, v, c, b=0.01) -> float:
    scale = w[t.group] + v[c]
    return b + float((t.loss[np.arange(len(c)), c] * scale).sum())


def test_fit_predicts_an_additive_truth_with_group_and_type_scales():
    t = table(n_units=9, n_groups=3, seed=1)
    w, v = np.array([2.0, 0.5, 1.5]), np.array([1.5, 0.0, 0.0])  # option "a" hurts more
    rng = np.random.default_rng(0)
    choices = rng.integers(0, 3, (40, 9))
    y = np.array([true_kld_typed(t, w, v, c) for c in choices])
    post = S.fit(S.features(t, choices), y, b0=0.01, n_groups=3, tau=2.0, sigma=1e-3)
    new = rng.integers(0, 3, (20, 9))
    want = [true_kld_typed(t, w, v, c) for c in new]
    np.testing.assert_allclose(post.predict(S.features(t, new)), want, rtol=2e-3)


def test_with_no_trials_the_posterior_is_the_prior():
    post = S.fit(np.zeros((0, 3)), np.zeros(0), b0=0.2, n_groups=2, tau=0.5, sigma=0.1)
    np.testing.assert_allclose(post.mean, [1, 1, 0, 0.2])
    np.testing.assert_allclose(np.diag(post.cov), [0.25, 0.25, 0.25, 0.04])


def brute(t: UnitTable, loss: np.ndarray, room: int, floor: int, near=None):
    best = None
    for c in itertools.product(range(3), repeat=len(t.group)):
        c = np.array(c)
        if not floor <= total(t, c) <= room:
            continue
        if near is not None and (c != near[0]).sum() > near[1]:
            continue
        v = loss[np.arange(len(c)), c].sum()
        best = (v, c) if best is None or v < best[0] - 1e-12 else best
    return best


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_milp_in_a_trust_region_matches_brute_force(k):
    t = table(seed=k)
    inc = np.array([0, 0, 1, 2, 0, 1])
    v, _ = brute(t, t.loss, 95, 85, (inc, k))
    c = milp_choice(t, 95, 85, near=(inc, k))
    assert (c != inc).sum() <= k and 85 <= total(t, c) <= 95
    assert t.loss[np.arange(6), c].sum() == pytest.approx(v)


def test_a_confident_posterior_proposes_the_true_optimum_near_the_incumbent():
    t = table(seed=4)
    w = np.array([5.0, 0.2, 1.0])
    inc = np.array([1, 1, 1, 1, 1, 1])
    post = S.Posterior(np.r_[w, 0.0, 0.0, 0.0, 0.0], np.eye(7) * 1e-12)
    c = S.propose(t, post, inc, 95, 85, np.random.default_rng(0), 3, seen=set())
    v, _ = brute(t, t.loss * w[t.group][:, None], 95, 85, (inc, 3))
    assert true_kld(t, w, c, 0.0) == pytest.approx(v)
    assert S.propose(t, post, inc, 95, 85, np.random.default_rng(0), 3, {c.tobytes()}) is None


def test_surrogate_loop_improves_on_its_start_for_a_miscalibrated_prior():
    """The loop as the study runs it: the true damage weights differ from the prior's by up to
    10x per group; fitted proposals must beat the start and reach the additive optimum."""
    t = table(n_units=9, n_groups=3, seed=2)
    w = np.array([10.0, 0.1, 1.0])
    room, floor = 135, 130
    start = milp_choice(t, room, floor)  # the prior's optimum
    hist = [start]
    rng = np.random.default_rng(0)
    for _ in range(25):
        y = np.array([true_kld(t, w, c) for c in hist])
        post = S.fit(S.features(t, np.array(hist)), y, b0=0.01, n_groups=3)
        inc = hist[int(np.argmin(y))]
        c = S.propose(t, post, inc, room, floor, rng, int(rng.choice(S.TRUST)),
                      {h.tobytes() for h in hist})
        if c is not None:
            hist.append(c)
    best = min(true_kld(t, w, c) for c in hist)
    opt = milp_choice(t, room, floor, loss=t.loss * w[t.group][:, None])
    assert best < true_kld(t, w, start)
    assert best == pytest.approx(true_kld(t, w, opt))
