"""Shared by the benchmarks: the best wall time of a few runs."""

from __future__ import annotations

import time


def best_time(fn, reps: int) -> float:
    """Seconds of the fastest of ``reps`` calls of ``fn()``."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
