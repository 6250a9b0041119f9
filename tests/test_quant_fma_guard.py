"""The GPU quantizer path (FMA-guarded programs, quant/_fma_guard.py) gives ggml's bytes.

No GPU here: the same guarded program runs on XLA's CPU backend, (a) in this process (FMA off,
quant's ISA cap) and (b) in a child whose XLA may use FMA instructions and contracts a*b + c as
the GPU backend does (``--xla_cpu_max_isa=AVX2``).  There the plain kernels lose bytes (ik q5_0
with an imatrix: a third of the golden rows differ; q4_1, iq4_nl, iq4_ks too), the guarded ones
must not: bytes and dequantized values.  The default run
checks a spread of families; the heavy run every golden file against the plain kernels' bytes of
this process, block for block.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quant

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
WORKER = Path(__file__).parent / "_fma_guard_worker.py"
# golden files whose plain CPU bytes equal ggml's in every row (test_quant_*), few compilations;
# every other file is in the heavy test
DEFAULT = ["q4_0:mainline", "q5_0_imat:ik", "mxfp4:mainline", "q8_0:ik"]
PLAIN = "q5_0_imat:ik"  # its plain kernels lose a third of the golden rows under FMA
REF_KEY = {"mainline": "q_ggml", "ik": "q_iknofma"}


def _golden(case):
    stem, target = case.split(":")
    z = np.load(GOLDEN / f"{stem}.npz")
    return z, target


def _fma_child(tmp_path, cases) -> dict:
    out = tmp_path / "guard.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}
    r = subprocess.run([sys.executable, str(WORKER), str(out), *cases], env=env,
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = dict(np.load(out))
    if not got["fma"]:
        pytest.skip("this CPU has no FMA instructions: nothing to guard against")
    return got


def _ref(case):
    z, target = _golden(case)
    return z[REF_KEY[target]].reshape(z["x"].shape[0], -1)


def test_guarded_program_on_cpu_gives_golden_bytes():
    for case in ["q4_1_imat:mainline", "iq4_nl_imat:mainline"]:
        z, target = _golden(case)
        w = z["w"] if z["w"].size else None
        q = quant.quantize(z["x"], str(z["type_name"]), w, target, fma_guard=True)
        np.testing.assert_array_equal(q, _ref(case), err_msg=case)


def test_guarded_program_under_fma_contraction_gives_golden_bytes(tmp_path):
    got = _fma_child(tmp_path, [c + "+plain" if c == PLAIN else c for c in DEFAULT])
    for case in DEFAULT:
        np.testing.assert_array_equal(got[f"g:{case}"], _ref(case), err_msg=case)
        z, target = _golden(case)
        y = quant.dequantize(_ref(case), str(z["type_name"]), z["x"].shape, target)
        np.testing.assert_array_equal(got[f"d:{case}"], y, err_msg=case)
    # the child really fuses: the unguarded kernels lose golden rows there
    assert np.all(got[f"p:{PLAIN}"] == _ref(PLAIN), axis=1).mean() < 1.0


@pytest.mark.heavy
def test_guarded_equals_cpu_bytes_on_every_golden_file(tmp_path):
    cases = []
    for path in sorted(GOLDEN.glob("*.npz")):
        z = np.load(path)
        for target, key in REF_KEY.items():
            if key in z.files and quant.has_quantizer(str(z["type_name"]), target):
                cases.append(f"{path.stem}:{target}")
    got = _fma_child(tmp_path, cases)
    for case in cases:
        z, target = _golden(case)
        w = z["w"] if z["w"].size else None
        plain = quant.quantize(z["x"], str(z["type_name"]), w, target)
        np.testing.assert_array_equal(got[f"g:{case}"], plain, err_msg=case)
        y = quant.dequantize(_ref(case), str(z["type_name"]), z["x"].shape, target)
        np.testing.assert_array_equal(got[f"d:{case}"], y, err_msg=case)
