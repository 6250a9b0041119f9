"""The golden byte cases of a session, quantized once and on every core.

Compiling a type's kernel (one per type, target and with/without imatrix) costs 1-26 s of one
core and running it on the 24 golden rows well under one; XLA compiles on the calling thread, so
the session's cases are compiled a core each, all at once, before the first golden test runs.

    @golden_case(lambda stem, target: (stem, target))    marks a test: its params -> its case
    golden_bytes (fixture)                               {(stem, target): uint8 [24, row_bytes]}
    quantized(golden_bytes, stem, target)                the bytes (re-raises the kernel's error)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import quant

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


def golden_case(to_case):
    """Decorator: ``to_case(**params) -> (stem, target)`` names the case the test compares."""

    def deco(fn):
        fn.golden_case = to_case
        return fn

    return deco


def load_golden(stem: str):
    """A golden file (skipped with its name when tests/fixtures/golden lacks it)."""
    path = GOLDEN / f"{stem}.npz"
    if not path.is_file():
        pytest.skip(f"golden file tests/fixtures/golden/{path.name} missing (see fixtures README)")
    return np.load(path)


def _quantize(stem: str, target: str):
    path = GOLDEN / f"{stem}.npz"
    if not path.is_file():
        return None  # the test itself skips with the file's name
    z = np.load(path)
    w = z["w"] if z["w"].size else None
    return quant.quantize(z["x"], str(z["type_name"]), w, target)


def _run(case):
    try:
        return _quantize(*case)
    except Exception as e:  # noqa: BLE001 - handed to the one test of this case
        return e


_DONE: dict = {}  # (stem, target) -> bytes | exception | None, for the whole session


@pytest.fixture(scope="session")
def golden_bytes(request) -> dict:
    """Every golden case the session collected, computed at the first request (modules that
    import this fixture get their own fixture instance; _DONE keeps one computation)."""
    cases = set()
    for item in request.session.items:
        to_case = getattr(getattr(item, "obj", None), "golden_case", None)
        if to_case is not None and hasattr(item, "callspec"):
            cases.add(to_case(**item.callspec.params))
    todo = sorted(cases - set(_DONE))
    if todo:
        n = max(1, min(len(todo), len(os.sched_getaffinity(0))))
        with ThreadPoolExecutor(n) as pool:
            _DONE.update(zip(todo, pool.map(_run, todo)))
    return _DONE


def quantized(golden_bytes: dict, stem: str, target: str) -> np.ndarray:
    """Our bytes for the case (computed here if the session did not collect it)."""
    q = golden_bytes[stem, target] if (stem, target) in golden_bytes else _run((stem, target))
    if isinstance(q, Exception):
        raise q
    if q is None:
        load_golden(stem)  # skips with the name
    return q
