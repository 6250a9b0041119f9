"""Child process of tests/test_quant_memory.py: quantize one real-shaped tensor under a memory cap.

    python tests/_quant_memory_worker.py CAP_MIB ROWS NE0 PLAN_JSON  -> one JSON line on stdout

PLAN_JSON: [[target, type, rows_to_quantize], ...].  The address space is capped at CAP_MIB
(RLIMIT_AS) before numpy or jax are imported, so going over it fails the run (MemoryError or a
failed allocation) instead of only being measured.  A random float32 tensor [ROWS, NE0] (gaussian)
and imatrix [NE0] are made in place; for each entry the first
rows_to_quantize rows are quantized with the imatrix and reported: seconds, peak RSS so far
(MiB), the compiled slice program's temporary bytes (MiB), and whether one slice's worth of rows
across the first slice boundary, and the last rows (a padded slice in the big run), quantized
alone give the same bytes.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def _peak_mib() -> float:
    """Peak RSS of this process image (VmHWM: ru_maxrss would carry the parent's peak, which
    Linux keeps across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tensor(rows: int, ne0: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.empty((rows, ne0), np.float32)
    step = 8192
    for a in range(0, rows, step):
        part = x[a:a + step]
        rng.standard_normal(part.shape, dtype=np.float32, out=part)
        part *= np.float32(0.02)
    return x, (rng.random(ne0) ** 2 + 1e-3).astype(np.float32)


def _slice_temp_mib(target: str, name: str, s: int, ne0: int) -> float:
    import jax
    import numpy as np

    from quant._api import _jit_quant

    spec = (jax.ShapeDtypeStruct((s, ne0), np.float32), jax.ShapeDtypeStruct((ne0,), np.float32))
    compiled = _jit_quant(name, target, True).lower(*spec).compile()  # cached: no recompile
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def main(cap_mib: int, rows: int, ne0: int, plan: list) -> dict:
    resource.setrlimit(resource.RLIMIT_AS, (cap_mib << 20, cap_mib << 20))
    import numpy as np

    import quant
    from quant._slices import slice_rows

    x, w = _tensor(rows, ne0)
    out = {"start_mib": _peak_mib(), "runs": []}
    for target, name, n in plan:
        s = slice_rows(n, ne0)
        t0 = time.perf_counter()
        q = quant.quantize(x[:n], name, w, target)
        dt = time.perf_counter() - t0
        same = all(np.array_equal(q[a:a + s], quant.quantize(x[a:a + s], name, w, target))
                   for a in (s // 2, n - s))  # across a slice boundary; the padded last slice
        out["runs"].append({
            "target": target, "type": name, "rows": n, "slice_rows": s, "seconds": dt,
            "peak_mib": _peak_mib(), "slice_temp_mib": _slice_temp_mib(target, name, s, ne0),
            "same_bytes": bool(same), "bytes": int(q.nbytes)})
        del q
    return out


if __name__ == "__main__":
    cap, r, n0 = (int(v) for v in sys.argv[1:4])
    print(json.dumps(main(cap, r, n0, json.loads(sys.argv[4]))))
