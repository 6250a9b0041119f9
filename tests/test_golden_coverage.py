"""Every quantizer the registry offers is byte-checked against a real build in the default run.

The golden byte tests live in test_quant_legacy.py, test_quant_kquants.py, test_quant_iqk.py and
test_quant_iq4_mxfp4.py; this test fails when a type gains a quantizer (for either target)
without a golden case there, or a case silently drops out. Exceptions, each with its reference:

- f32 / f16 / bf16: conversions, byte-equal to gguf-py's (test_quant_api.py).
- ik q4_0: no ik golden (ik's build crashed in ggml_quantize_chunk for q4_0, see the golden
  README); the kernels are mainline's reference (checked) and ik-MQX (q5_0_imat, same code).
- ik iq2_ks: ik's slow quantizer output in fixtures/iq2_ks_slow_ik.npz (test_quant_iqk.py).
"""

from __future__ import annotations

import test_quant_iq4_mxfp4 as IQ4
import test_quant_iqk as IQK
import test_quant_kquants as KQ
import test_quant_legacy as LEG

from quant import _registry as R
from quant._catalog import TYPES

EXCEPT = {"mainline": {"f32", "f16", "bf16"}, "ik": {"f32", "f16", "bf16", "q4_0", "iq2_ks"}}


def _covered() -> dict[str, set[str]]:
    """Types with both a plain and an imatrix golden case, per target."""
    cases = {"mainline": set(), "ik": set()}
    cases["mainline"] |= {s for s in LEG.MAINLINE_STEMS} | set(IQ4.STEMS)
    cases["ik"] |= set(LEG.IK_STEMS) | set(IQ4.STEMS) | set(IQK.FILES)
    for t, suffix, target in KQ.CASES:
        cases[target].add(t + suffix)
    return {g: {s for s in stems if s + "_imat" in stems} for g, stems in cases.items()}


def test_every_quantizer_has_a_default_run_golden_case():
    covered = _covered()
    for target in ("mainline", "ik"):
        offered = {t for t in TYPES if R.has_quantizer(t, target)}
        missing = offered - covered[target] - EXCEPT[target]
        assert not missing, f"{target}: quantizers without a golden byte test: {sorted(missing)}"
        stale = covered[target] - offered
        assert not stale, f"{target}: golden cases for types without a quantizer: {sorted(stale)}"
