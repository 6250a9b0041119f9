"""Benchmark: weights/s of quant.fake_quant per type against ggml's C quantizer on the same rows.

Run: pytest tests/benchmarks/bench_fake_quant.py -m bench -s
     GGML_LIB=/path/to/libggml-base.so  -> reference: ggml_quantize_chunk through ctypes (same
                                           rows and imatrix; also checks that the bytes agree)
     otherwise                          -> reference: gguf-py's numpy quantizers (legacy types)
     BENCH_ROWS (default 256) x BENCH_NE0 (default 4096) weights; BENCH_REPS (default 3).
Prints one line per (type, imatrix): JAX weights/s (compiled, warm), reference weights/s, ratio.
"""

from __future__ import annotations

import ctypes
import os

import jax
import numpy as np
import pytest

import quant
from _timing import best_time

TYPES = ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs", "mxfp4",
         "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]
IMATRIX_TYPES = {"q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs", "q2_K", "q3_K", "q4_K",
                 "q5_K", "q6_K"}
GGUF_PY_TYPES = {"f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4"}
# ik's own quantizers (no C library of ik in the run: absolute rates, and the ratio to our
# mainline q4_0 of the same run as the machine-independent figure)
IK_TYPES = ["q6_0", "q4_1", "iq4_xs", "q4_K", "q6_K", "iq2_k", "iq3_k", "iq4_k", "iq5_k", "iq6_k",
            "iq2_ks", "iq3_ks", "iq4_ks", "iq5_ks", "iq4_kss", "iq2_kl"]
IK_ONLY = [(t, w) for t in IK_TYPES for w in (False, True)]


class GgmlLib:
    """ctypes view of ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row, imatrix)."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                 ctypes.c_void_p]
        self.lib.ggml_quantize_init.argtypes = [ctypes.c_int]

    def quantizer(self, name: str, x: np.ndarray, w: np.ndarray | None):
        t = quant.get_type(name)
        tid = t.ggml_id("mainline")
        self.lib.ggml_quantize_init(tid)
        out = np.zeros((x.shape[0], t.row_nbytes(x.shape[1])), np.uint8)
        wp = None if w is None else w.ctypes.data

        def run():
            self.lib.ggml_quantize_chunk(tid, x.ctypes.data, out.ctypes.data, 0, x.shape[0],
                                         x.shape[1], wp)
            return out

        return run


def _gguf_quantizer(name: str, x: np.ndarray, w):
    import gguf

    if w is not None or name not in GGUF_PY_TYPES:
        return None
    qt = gguf.GGMLQuantizationType[name.upper()]
    return lambda: gguf.quants.quantize(x, qt)


def _jax_rate(name, x, w, target, reps):
    fq = quant.fake_quant
    fq(x, name, w, target).block_until_ready()  # compile
    t = best_time(lambda: fq(x, name, w, target).block_until_ready(), reps)
    return x.size / t


@pytest.mark.bench
def test_bench_fake_quant():
    rows, ne0 = int(os.environ.get("BENCH_ROWS", "256")), int(os.environ.get("BENCH_NE0", "4096"))
    reps = int(os.environ.get("BENCH_REPS", "3"))
    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, (rows, ne0)) * 0.02).astype(np.float32)
    w = (rng.random(ne0) ** 2 + 1e-3).astype(np.float32)
    lib_path = os.environ.get("GGML_LIB")
    lib = GgmlLib(lib_path) if lib_path else None
    ref_name = "ggml C (ctypes)" if lib else "gguf-py numpy"
    print(f"\n{rows} x {ne0} weights, best of {reps}; reference: {ref_name}; "
          f"jax device {jax.devices()[0]}")
    print(f"{'type':8s} {'imatrix':7s} {'jax Mw/s':>9s} {'ref Mw/s':>9s} {'jax/ref':>8s}  bytes")
    differ = []
    for name in TYPES:
        for use_w in ([False, True] if name in IMATRIX_TYPES else [False]):
            wi = w if use_w else None
            jr = _jax_rate(name, x, wi, "mainline", reps)
            ref = lib.quantizer(name, x, wi) if lib else _gguf_quantizer(name, x, wi)
            if ref is None:
                print(f"{name:8s} {str(use_w):7s} {jr / 1e6:9.2f} {'-':>9s} {'-':>8s}")
                continue
            rr = x.size / best_time(ref, reps)
            ours = quant.quantize(x, name, wi)
            theirs = np.ascontiguousarray(ref()).view(np.uint8).reshape(ours.shape)
            same = np.array_equal(ours, theirs)
            print(f"{name:8s} {str(use_w):7s} {jr / 1e6:9.2f} {rr / 1e6:9.2f} {jr / rr:8.2f}  "
                  f"{'identical' if same else 'DIFFER'}")
            if not same:
                differ.append(f"{name}{' (imatrix)' if use_w else ''}")
    q40 = _jax_rate("q4_0", x, None, "mainline", reps)
    print(f"\nik quantizers (ratio: to our mainline q4_0 without imatrix, {q40 / 1e6:.2f} Mw/s)")
    for name, use_w in IK_ONLY:
        jr = _jax_rate(name, x, w if use_w else None, "ik", reps)
        print(f"{name + ' ik':12s} {str(use_w):7s} {jr / 1e6:9.2f} {jr / q40:8.3f}")
    assert not differ, f"bytes differ from the reference ({ref_name}) for: {', '.join(differ)}"
