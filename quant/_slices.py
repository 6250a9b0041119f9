"""Bounded slices of rows, run on every core: what keeps the quantizers' memory flat.

    slice_rows(n_rows, ne0, platform) -> S      rows per slice (one compiled shape per S)
    workers(platform) -> int                    slices in flight at once
    run_slices(n_rows, S, work, platform)       work(a, b) for [a, b) = [0, S), [S, 2S), ...

A kernel only ever sees S rows (the last slice padded with zero rows, trimmed afterwards), so
its intermediates are bounded by S * ne0 weights whatever the tensor: at most SLICE_WEIGHTS
weights on the CPU (the scale searches of the iq/k types hold up to ~290 bytes per weight, so
~150 MB per slice) and GPU_SLICE_WEIGHTS on a GPU.  A tensor of at least S rows always runs at
the full S (one compilation per (type, target, ne0) however large the tensor); a smaller one is
padded to the next power of two (a handful of shapes for all small tensors).  S is a multiple
of llama-quantize's chunk, ceil(16384 / ne0) rows (spec 3.5), so chunk-wide decisions (ik
q2_K's ternary detector) see the same rows as there.

Slices run on a thread pool (XLA releases the GIL while it computes): one worker per core the
process may use on the CPU (``QUANT_THREADS`` overrides), two on a GPU (transfers overlap the
computation), after the first slice ran alone (a first call compiles; workers would each
compile it).  The first failing slice (in row order) cancels the rest and raises.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

SLICE_WEIGHTS = 1 << 19
GPU_SLICE_WEIGHTS = 1 << 22
CHUNK_WEIGHTS = 16384  # llama-quantize's minimum chunk (spec 3.5)


def chunk_rows(ne0: int) -> int:
    return -(-CHUNK_WEIGHTS // ne0)


def slice_rows(n_rows: int, ne0: int, platform: str = "cpu") -> int:
    budget = SLICE_WEIGHTS if platform == "cpu" else GPU_SLICE_WEIGHTS
    c = chunk_rows(ne0)
    cap = c * max(1, budget // ne0 // c)
    if n_rows >= cap:
        return cap
    return min(cap, 1 << max(0, n_rows - 1).bit_length())


def workers(platform: str = "cpu") -> int:
    if platform != "cpu":
        return 2
    env = os.environ.get("QUANT_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n, thread_name_prefix="quant")


def run_slices(n_rows: int, s: int, work, platform: str = "cpu") -> None:
    """``work(a, b)`` for every slice [a, b) of ``n_rows`` rows, ``workers`` at a time."""
    bounds = [(a, min(n_rows, a + s)) for a in range(0, n_rows, s)]
    n = min(workers(platform), len(bounds))
    if n <= 1:
        for a, b in bounds:
            work(a, b)
        return
    work(*bounds[0])  # alone: compiles once, not once per worker
    futures = [_pool(n).submit(work, a, b) for a, b in bounds[1:]]
    try:
        for f in futures:
            f.result()
    except BaseException:
        for f in futures:
            f.cancel()
        raise
