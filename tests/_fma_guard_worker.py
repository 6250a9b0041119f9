"""Child of tests/test_quant_fma_guard.py: quantize golden rows on a backend that fuses FMAs.

    XLA_FLAGS=--xla_cpu_max_isa=AVX2 python tests/_fma_guard_worker.py OUT.npz STEM:TARGET[+plain]

The parent sets XLA_FLAGS so that XLA's CPU backend may emit FMA instructions and contracts
``a*b + c`` the way XLA's GPU backend does (quant keeps a flag that names ``xla_cpu_max_isa``).
For each golden file STEM (tests/fixtures/golden) and target, OUT.npz gets the bytes of the
FMA-guarded program (``g:STEM:TARGET``, the GPU code path), with ``+plain`` also those of the
plain kernels (``p:STEM:TARGET``), the guarded dequantization of the golden bytes
(``d:STEM:TARGET``), plus ``fma`` = whether this backend really contracted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import quant
from quant._primitives import fma_contracted

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


def main(out: str, cases: list[str]) -> None:
    res = {"fma": np.bool_(fma_contracted())}
    for case in cases:
        case, plain = case.removesuffix("+plain"), case.endswith("+plain")
        stem, target = case.split(":")
        z = np.load(GOLDEN / f"{stem}.npz")
        w = z["w"] if z["w"].size else None
        t = str(z["type_name"])
        res[f"g:{case}"] = quant.quantize(z["x"], t, w, target, fma_guard=True)
        if plain:
            res[f"p:{case}"] = quant.quantize(z["x"], t, w, target, fma_guard=False)
        ref = z["q_ggml" if target == "mainline" else "q_iknofma"]
        res[f"d:{case}"] = quant.dequantize(ref, t, z["x"].shape, target, fma_guard=True)
    np.savez(out, **res)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
