"""The allocator and the MILP warm start on small hand-made tables with known optima."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from search import UnitTable, allocate, choice_of, levels_of, to_plan, total
from search import milp_choice


def table(bytes_, loss, groups=None) -> UnitTable:
    b = np.array(bytes_, np.int64)
    n = len(b)
    groups = np.zeros(n, int) if groups is None else np.array(groups)
    opts = tuple(tuple(f"t{i}" for i in range(b.shape[1])) for _ in range(groups.max() + 1))
    return UnitTable(groups, tuple((f"u{i}",) for i in range(n)), b, np.array(loss, float), opts)


def brute_force(t: UnitTable, room: int, floor: int = 0):
    best = None
    for c in itertools.product(*(range(t.bytes.shape[1]) for _ in range(len(t.bytes)))):
        c = np.array(c)
        used = total(t, c)
        if floor <= used <= room:
            loss = t.loss[np.arange(len(c)), c].sum()
            if best is None or loss < best[0]:
                best = (loss, c)
    return best


# three units, three options each: 10/20/40 bytes; losses not monotone in bytes for unit 2
T3 = table([[10, 20, 40]] * 3, [[9, 4, 1], [5, 3, 2.5], [3, 3.5, 0.1]], groups=[0, 1, 2])


@pytest.mark.parametrize("room", [30, 45, 60, 70, 85, 100, 120])
def test_milp_finds_the_brute_force_optimum(room):
    want = brute_force(T3, room)
    got = milp_choice(T3, room)
    assert T3.loss[np.arange(3), got].sum() == pytest.approx(want[0])
    assert total(T3, got) <= room


def test_milp_honours_a_floor_when_it_can():
    got = milp_choice(T3, room=80, floor=80)
    assert total(T3, got) == 80
    assert T3.loss[np.arange(3), got].sum() == pytest.approx(brute_force(T3, 80, 80)[0])


@pytest.mark.parametrize("levels", list(itertools.product(range(3), repeat=3)))
@pytest.mark.parametrize("budget", [35, 50, 70, 90])
def test_allocator_is_within_budget_and_fills_it(levels, budget):
    c = allocate(T3, list(levels), budget)
    used = total(T3, c)
    assert used <= budget
    # no single-unit move that fits could still grow the recipe past the floor
    if used < 0.995 * budget:
        for u in range(3):
            for o in range(3):
                assert T3.bytes[u, o] - T3.bytes[u, c[u]] > budget - used or T3.bytes[u, o] <= T3.bytes[u, c[u]]


def test_allocator_keeps_a_sampled_point_that_fits():
    # 20 + 20 + 40 = 80 bytes, exactly the budget: nothing moves
    assert list(allocate(T3, [1, 1, 2], 80)) == [1, 1, 2]


def test_allocator_sheds_bytes_where_loss_per_byte_is_least():
    # start at 40+40+40 = 120 > 100: dropping unit 0 to 20 costs 3/20, unit 1 0.5/20, unit 2 3.4/20
    assert list(allocate(T3, [2, 2, 2], 100)) == [2, 1, 2]


def test_allocator_takes_cheaper_better_options():
    # unit 2's option 0 (10 bytes, loss 3) beats option 1 (20 bytes, loss 3.5)
    c = allocate(T3, [0, 0, 1], 40)
    assert c[2] == 0 and total(T3, c) <= 40


def test_fixed_bytes_count_against_the_budget():
    c = allocate(T3, [2, 2, 2], 100, fixed=40)
    assert total(T3, c) <= 60


def test_plan_round_trip():
    t = table([[10, 20], [10, 20], [5, 7]], [[1, 0], [1, 0], [1, 0]], groups=[0, 0, 1])
    plan = to_plan(t, np.array([1, 0, 1]))
    assert plan == {"u0": "t1", "u1": "t0", "u2": "t1"}
    assert list(choice_of(t, plan)) == [1, 0, 1]
    assert levels_of(t, {"u0": "t1", "u1": "t1", "u2": "t0"}) == [1, 0]
