"""Warm starts on hand-made unit tables."""

from __future__ import annotations

import numpy as np

from search import UnitTable, total
from search import cossim, milp, project, uniform


def layered_table(n_layers=4, roles=("attn_q", "ffn_down")) -> UnitTable:
    names, groups = [], []
    for L in range(n_layers):
        for gi, r in enumerate(roles):
            names.append((f"blk.{L}.{r}.weight",))
            groups.append(gi)
    n = len(names)
    b = np.tile(np.array([[10, 15, 20]], np.int64), (n, 1))
    loss = np.tile(np.array([[3.0, 2.0, 1.0]]), (n, 1))
    opts = tuple(("a", "b", "c") for _ in roles)
    return UnitTable(np.array(groups), tuple(names), b, loss, opts)


def test_uniform_below_and_above_fit_the_budget():
    t = layered_table()  # 8 units: uniform sizes 80 / 120 / 160
    out = dict(uniform(t, 130, fixed=0))
    assert set(out) == {"uniform-below", "uniform-above"}
    for c in out.values():
        assert 0.995 * 130 <= total(t, c) <= 130


def test_cossim_upgrades_the_most_important_layers_first():
    t = layered_table()
    # budget 100: from all-"a" (80), 20 bytes buy one whole layer one level up (2 units x 5)... x2
    c = cossim(t, 100, 0, {0: 0.9, 1: 0.2, 2: 0.95, 3: 0.5})
    layer_of = [int(n[0].split(".")[1]) for n in t.tensors]
    up = sorted({layer_of[u] for u in range(len(c)) if c[u] > 0})
    assert up == [1, 3] and total(t, c) <= 100


def test_milp_warm_start_is_the_additive_optimum():
    t = layered_table()
    c = milp(t, 120, 0)
    assert total(t, c) <= 120
    assert t.loss[np.arange(len(c)), c].sum() == 8 * 2.0  # every unit at "b" is optimal (convex)


def test_project_maps_foreign_types_by_bytes():
    t = layered_table(1)
    plan = {"blk.0.attn_q.weight": "b", "blk.0.ffn_down.weight": "zz"}
    assert list(project(t, plan, np.array([15, 17]))) == [1, 1]
    assert list(project(t, plan, np.array([15, 5]))) == [1, 0]


def test_experts_low_puts_the_rest_high_and_the_routed_experts_at_what_fits():
    """4 layers x (attn_q, ffn_down_exps), sizes 10/15/20 per unit. Budget 125: attention at
    "c" (4 x 20 = 80) leaves 45 for the experts: "a" (40) fits, "b" (60) does not; then the fill
    (floor 99.5 % = 125) moves one expert unit up a level: 80 + 40 + 5 = 125."""
    from search import experts_low

    t = layered_table(roles=("attn_q", "ffn_down_exps"))
    routed = np.array(["_exps" in n[0] for n in t.tensors])
    c = experts_low(t, 125, 0, routed)
    assert list(c[~routed]) == [2, 2, 2, 2]
    assert sorted(c[routed]) == [0, 0, 0, 1] and total(t, c) == 125
    assert experts_low(t, 125, 0, np.zeros(len(routed), bool)) is None  # a dense model
    # too small for attention at "c": attention drops a level before the experts go below "a"
    c = experts_low(t, 100, 0, routed)
    assert list(c[~routed]) == [1, 1, 1, 1] and list(c[routed]) == [0, 0, 0, 0]


def test_mix_candidates_take_the_nearest_and_the_close_ones_below():
    """Hand-made sizes (MiB, budget 144.14): nearest pure Q4_0 (144.00), then every mix within
    3 % below, largest first (pure IQ4_XS 142.95, Q3_K_L 140.0); 139.0 and the over-budget
    mixes are left out, and three at most."""
    from search._pipeline._run import mix_candidates

    mib = 1 << 20
    sizes = [("Q4_0 --pure", 144.00), ("IQ4_XS --pure", 142.95), ("Q4_K_S", 152.0),
             ("Q3_K_L", 140.0), ("Q3_K_M", 139.0), ("Q5_0", 170.0)]
    sizes = [(n, int(b * mib)) for n, b in sizes]
    budget = int(144.14 * mib)
    assert mix_candidates(sizes, budget) == ["Q4_0 --pure", "IQ4_XS --pure", "Q3_K_L"]
    assert mix_candidates(sizes, budget, most=2) == ["Q4_0 --pure", "IQ4_XS --pure"]
    # over the budget but nearest: still first (the study repairs it down to the budget)
    assert mix_candidates(sizes, int(151.0 * mib)) == ["Q4_K_S"]
    assert mix_candidates([], budget) == []
