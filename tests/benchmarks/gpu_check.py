"""GPU check of the quantizers, prepared for a machine with a GPU (jax with CUDA, 'pip install -e
.[cuda]'); not collected by pytest.

    python tests/benchmarks/gpu_check.py [--device gpu] [--files q4_0,q5_K_imat,...] [--all]
                                         [--budget SECONDS] [--types q8_0,...] [--no-throughput]
                                         [--out gpu_check.json]

1. Bytes: golden files (tests/fixtures/golden) are quantized on the device by the FMA-guarded
   program (quant/_fma_guard.py, what ``device="gpu"`` runs) and must equal, row for row, the
   plain kernels' bytes on the CPU backend (which tests/test_quant_* hold to ggml's); the same
   files through the unguarded program on the device (``fma_guard=False``) are reported next to
   it: the fraction of rows the guard saves.  Default: a spread of families (QUICK); --all: every
   file.  Files are checked until --budget seconds have passed (default 420), cheapest first.
2. Throughput: the candidate types of both targets on Gemma-3-27B rows (ne0 5376, 4 device
   slices), quantize and dequantize weights/s on the device and on the CPU backend (all cores),
   and the ratio.
Prints one JSON line per result and writes them all to --out.  Exit status 1 when a guarded
file differs from the CPU bytes.  ``--device cpu`` runs the same guarded program on the CPU
(a dry run of this script).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import quant  # before any jax computation (quant caps XLA's CPU instruction set)
from quant._slices import slice_rows

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
REF_KEY = {"mainline": "q_ggml", "ik": "q_iknofma"}
QUICK = ["q4_0", "q5_0_imat", "q4_1_imat", "iq4_nl_imat", "q6_K_imat", "q5_K_imat", "q3_K",
         "mxfp4", "q8_0", "iq4_ks_imat", "iq3_k", "q6_0"]
CANDIDATES = {"ik": ["iq4_ks", "iq3_k", "q6_0", "q8_0"],
              "mainline": ["q4_K", "q3_K", "q6_K", "q8_0"]}


def _cases(stems):
    for stem in stems:
        z = np.load(GOLDEN / f"{stem}.npz")
        t = str(z["type_name"])
        for target, key in REF_KEY.items():
            if key in z.files and quant.has_quantizer(t, target):
                yield stem, target, z


def _frac(a, b) -> float:
    return float(np.mean(np.all(a == b, axis=1)))


def check_bytes(stems, device, budget: float):
    t_end = time.monotonic() + budget
    for stem, target, z in _cases(stems):
        if time.monotonic() > t_end:
            yield {"check": "bytes", "file": stem, "target": target, "skipped": "budget"}
            continue
        t, x = str(z["type_name"]), z["x"]
        w = z["w"] if z["w"].size else None
        t0 = time.perf_counter()
        cpu = quant.quantize(x, t, w, target)
        t1 = time.perf_counter()
        g = quant.quantize(x, t, w, target, device=device, fma_guard=True)
        t2 = time.perf_counter()
        plain = quant.quantize(x, t, w, target, device=device, fma_guard=False)
        ref = z[REF_KEY[target]].reshape(cpu.shape)
        yield {"check": "bytes", "file": stem, "target": target, "guarded_equal": bool(
            np.array_equal(g, cpu)), "guarded_rows_as_cpu": _frac(g, cpu),
            "unguarded_rows_as_cpu": _frac(plain, cpu), "cpu_rows_as_golden": _frac(cpu, ref),
            "compile_s": {"cpu": t1 - t0, "device_guarded": t2 - t1}}


def _rate(fn, n, reps=3) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def throughput(device, only=(), ne0: int = 5376):
    import jax

    platform = jax.devices(device)[0].platform if isinstance(device, str) else device.platform
    rows = 4 * slice_rows(10**9, ne0, platform)
    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, (rows, ne0)) * 0.02).astype(np.float32)
    w = (rng.random(ne0) ** 2 + 1e-3).astype(np.float32)
    for target, types in CANDIDATES.items():
        for t in [t for t in types if not only or t in only]:
            r = {"check": "throughput", "target": target, "type": t, "rows": rows, "ne0": ne0}
            for where in ("cpu", device):
                q = quant.quantize(x, t, w, target, device=where)
                r[f"q_{where}"] = _rate(lambda: quant.quantize(x, t, w, target, device=where),
                                        x.size)
                r[f"dq_{where}"] = _rate(lambda: quant.dequantize(q, t, x.shape, target,
                                                                  device=where), x.size)
            r["q_ratio"] = r[f"q_{device}"] / r["q_cpu"]
            r["dq_ratio"] = r[f"dq_{device}"] / r["dq_cpu"]
            yield r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--files", default="")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--budget", type=float, default=420.0)
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--types", default="", help="throughput of these types only")
    ap.add_argument("--out", default="gpu_check.json")
    a = ap.parse_args(argv)
    import jax

    print(json.dumps({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}))
    stems = a.files.split(",") if a.files else QUICK
    if a.all:
        stems = stems + sorted(p.stem for p in GOLDEN.glob("*.npz") if p.stem not in stems)
    results, bad = [], 0
    for r in check_bytes(stems, a.device, a.budget):
        print(json.dumps(r), flush=True)
        results.append(r)
        bad += r.get("guarded_equal") is False
    if not a.no_throughput:
        for r in throughput(a.device, tuple(filter(None, a.types.split(",")))):
            print(json.dumps(r), flush=True)
            results.append(r)
    Path(a.out).write_text(json.dumps(results, indent=1))
    done = sum("guarded_equal" in r for r in results)
    print(f"guarded bytes equal to the CPU's on {done - bad} of {done} files checked")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
