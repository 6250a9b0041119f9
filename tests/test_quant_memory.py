"""Quantizer memory is bounded by a slice of rows, never by the tensor (issue 13 item 4).

Gemma 3 270M's token embedding is 262,144 x 640 float32 (640 MiB).  Each candidate type of both
targets (after llama-quantize's shape fallback: 640-wide rows take the 32-blocks) quantizes it
in a child process whose address space is capped at 2 GiB: the tensor, its bytes, jax and the
slices in flight must all fit.  Before slicing, q4_0 alone held ~25 bytes of intermediates per
weight (4 GiB here) and ik iq4_nl ~270 (45 GiB).  The default run quantizes all 262,144 rows at
the fast types and the first 4 slices + 37 rows (a padded last slice) at two searching types
(one compilation per type costs more than the rows), checking the compiled slice program's
temporaries (<= 256 MiB) and that slicing changes no byte; the heavy run quantizes every row at
every candidate type (15 type/target pairs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import quant
from quant._slices import slice_rows

SHAPE = (262_144, 640)
CAP_MIB = 2048
FULL_FAST = {"q8_0", "mxfp4"}
# default run: every row at the fast types; a prefix at ik iq4_nl (the largest intermediates of
# the candidates, ~130 MiB per slice) and q4_0 (the search shared by the 32-blocks); one
# compilation each (the heavy test covers every candidate)
DEFAULT_PLAN = [("mainline", "q8_0"), ("ik", "mxfp4"), ("mainline", "q4_0"), ("ik", "iq4_nl")]
WORKER = Path(__file__).parent / "_quant_memory_worker.py"


def _candidates() -> list[tuple[str, str]]:
    out = []
    for target in quant.TARGETS:
        for t in quant.searchable_types(target):
            if t in ("f32", "f16", "bf16"):
                continue
            r = quant.resolve(t, SHAPE, target)
            if (target, r) not in out:
                out.append((target, r))
    return out


def _run(plan) -> dict:
    env = {"QUANT_THREADS": "2", "MALLOC_ARENA_MAX": "2"}
    import os

    r = subprocess.run([sys.executable, str(WORKER), str(CAP_MIB), str(SHAPE[0]), str(SHAPE[1]),
                        json.dumps(plan)], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=3600)
    assert r.returncode == 0, f"child failed under a {CAP_MIB} MiB cap:\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check(out: dict) -> None:
    for run in out["runs"]:
        print(json.dumps(run))
        assert run["same_bytes"], f"{run['target']} {run['type']}: slicing changed the bytes"
        assert run["slice_temp_mib"] <= 256, run
        assert run["peak_mib"] < CAP_MIB, run


def test_embedding_shape_quantizes_in_bounded_memory():
    prefix = 4 * slice_rows(SHAPE[0], SHAPE[1]) + 37
    plan = [[tg, t, SHAPE[0] if t in FULL_FAST else prefix] for tg, t in DEFAULT_PLAN]
    assert set(DEFAULT_PLAN) <= set(_candidates())
    out = _run(plan)
    print("start", out["start_mib"])
    _check(out)
    # every row at q8_0 and mxfp4: beyond the tensor, the bytes (170 MiB) and the slices in
    # flight (the whole-tensor kernels took 840 MiB more at q8_0, 4.6 GiB at q4_0)
    full = [r for r in out["runs"] if r["rows"] == SHAPE[0]]
    assert full and max(r["peak_mib"] for r in full) - out["start_mib"] < 500


@pytest.mark.heavy
def test_embedding_shape_every_type_all_rows():
    _check(_run([[tg, t, SHAPE[0]] for tg, t in _candidates()]))
