"""Scale benchmark: the quantizers on Gemma-3-27B's real shapes, extrapolated to the whole model.

Run: GGML_LIB=/path/to/libggml-base.so pytest tests/benchmarks/bench_scale.py -m bench -s
     BENCH_SLICES (default 2 per worker): row slices measured per (type, row length); rows are
                  independent, so throughput on a few slices of a tensor's real row length is
                  its throughput (BENCH_SLICES=0: every row of the layer, hours on 2 cores)
     BENCH_REPS (default 1), QUANT_THREADS (default: every core), IK_GGML_LIB (optional: ik's
     libggml.so, the reference for the ik-only types; otherwise they have no C ratio)

Gemma-3-27B (HF config of google/gemma-3-27b-it): hidden 5376, intermediate 21504, 32 query heads
and 16 kv heads of 128, vocabulary 262,144, 62 layers.  One layer's matrices, numpy [rows, ne0]:
q [4096, 5376], k and v [2048, 5376], o [5376, 4096], gate and up [21504, 5376], down
[5376, 21504] (413 M weights); token_embd [262144, 5376] (1.41 G).  Weights are random
Student-t values rounded to bf16 (what a bf16 checkpoint holds), imatrix random.

Per candidate type (ik: iq4_ks iq3_k q6_0 q8_0; mainline: q4_K q3_K q6_K q8_0) and row length:
JAX quantize and dequantize weights/s on every core, ggml's C quantizer (ggml_quantize_chunk,
same rows and imatrix, on as many threads) and to_float on the same bytes, the ratios JAX / C,
whether the bytes agree, and the compiled slice program's temporary memory.  Then per layer and
for the whole model (62 layers + token_embd): quantization time of each type, and the study's
quantization-cache stage (every tensor at every candidate type once) for both targets, JAX and
C.  Peak host memory: a child quantizes one whole ffn_gate [21504, 5376] at q8_0 and reports its
peak RSS.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import quant
from _timing import best_time
from quant._slices import slice_rows, workers

N_LAYERS = 62
LAYER = {"attn_q": (4096, 5376), "attn_k": (2048, 5376), "attn_v": (2048, 5376),
         "attn_output": (5376, 4096), "ffn_gate": (21504, 5376), "ffn_up": (21504, 5376),
         "ffn_down": (5376, 21504)}
EMBD = (262_144, 5376)
CANDIDATES = {"ik": ["iq4_ks", "iq3_k", "q6_0", "q8_0"],
              "mainline": ["q4_K", "q3_K", "q6_K", "q8_0"]}
WORKER = Path(__file__).parents[1] / "_quant_memory_worker.py"


class _Traits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


class _IkTraits(ctypes.Structure):
    """ik_llama.cpp's ggml_type_traits_t (returned by value by ggml_internal_get_type_traits)."""
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p),
                ("from_float_to_mat", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64),
                ("ncols", ctypes.c_int64), ("gemv", ctypes.c_void_p), ("gemm", ctypes.c_void_p),
                ("row_meta_size", ctypes.c_int64)]


class CGgml:
    """ggml_quantize_chunk and to_float of one libggml (mainline's libggml-base, or ik's libggml
    whose quantize_chunk takes a user_data pointer more), split over ``n`` threads by rows
    (ctypes releases the GIL, as llama-quantize's threads split a tensor into chunks)."""

    def __init__(self, path: str, target: str, n: int):
        self.lib, self.target, self.n = ctypes.CDLL(path), target, n
        self.ik = hasattr(self.lib, "ggml_internal_get_type_traits")
        f = self.lib.ggml_quantize_chunk
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p] + \
            [ctypes.c_void_p] * self.ik
        self.lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        if self.ik:
            self.lib.ggml_internal_get_type_traits.restype = _IkTraits
            self.lib.ggml_internal_get_type_traits.argtypes = [ctypes.c_int]
        else:
            self.lib.ggml_get_type_traits.restype = ctypes.POINTER(_Traits)
            self.lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self.pool = ThreadPoolExecutor(n)

    def _to_float(self, tid: int) -> int:
        if self.ik:
            return self.lib.ggml_internal_get_type_traits(tid).to_float
        return self.lib.ggml_get_type_traits(tid).contents.to_float

    def _parts(self, rows: int):
        step = -(-rows // self.n)
        return [(a, min(rows, a + step)) for a in range(0, rows, step)]

    def quantize(self, name: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        t = quant.get_type(name)
        tid = t.ggml_id(self.target)
        self.lib.ggml_quantize_init(tid)
        out = np.zeros((x.shape[0], t.row_nbytes(x.shape[1])), np.uint8)
        ne0 = x.shape[1]

        def part(ab):
            a, b = ab
            self.lib.ggml_quantize_chunk(tid, x.ctypes.data, out.ctypes.data, a * ne0, b - a,
                                         ne0, w.ctypes.data, *[None] * self.ik)

        list(self.pool.map(part, self._parts(x.shape[0])))
        return out

    def dequantize(self, name: str, q: np.ndarray, ne0: int) -> np.ndarray:
        t = quant.get_type(name)
        fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
            self._to_float(t.ggml_id(self.target)))
        y = np.empty((q.shape[0], ne0), np.float32)

        def part(ab):  # a row scale (ik's row meta) is read once per call: then row by row
            a, b = ab
            for r0, r1 in ([(a, b)] if not t.row_meta else [(r, r + 1) for r in range(a, b)]):
                fn(q[r0:r1].ctypes.data, y[r0:r1].ctypes.data, (r1 - r0) * ne0)

        list(self.pool.map(part, self._parts(q.shape[0])))
        return y


def _bf16_like(rng, shape) -> np.ndarray:
    x = (rng.standard_t(5, shape) * 0.02).astype(np.float32)
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).view(np.float32)


def _slice_temp_mib(name, target, s, ne0) -> float:
    import jax

    from quant._api import _jit_quant

    spec = (jax.ShapeDtypeStruct((s, ne0), np.float32), jax.ShapeDtypeStruct((ne0,), np.float32))
    return _jit_quant(name, target, True).lower(*spec).compile().memory_analysis() \
        .temp_size_in_bytes / 2**20


def _sample_rows(ne0: int) -> int:
    n = int(os.environ.get("BENCH_SLICES", str(2 * workers())))
    big = max(r for r, c in [*LAYER.values(), EMBD] if c == ne0)
    return big if n == 0 else min(big, n * slice_rows(big, ne0))


def _measure(name, target, ne0, rng, lib, reps):
    x = _bf16_like(rng, (_sample_rows(ne0), ne0))
    w = (rng.random(ne0) ** 2 + 1e-3).astype(np.float32)
    q = quant.quantize(x[: slice_rows(x.shape[0], ne0)], name, w, target)  # compile
    quant.dequantize(q, name, (q.shape[0], ne0), target)
    t_q = best_time(lambda: quant.quantize(x, name, w, target), reps)
    q = quant.quantize(x, name, w, target)
    t_d = best_time(lambda: quant.dequantize(q, name, x.shape, target), reps)
    row = {"target": target, "type": name, "ne0": ne0, "rows": x.shape[0],
           "jax_q": x.size / t_q, "jax_dq": x.size / t_d,
           "slice_temp_mib": _slice_temp_mib(name, target, slice_rows(10**9, ne0), ne0)}
    if lib is not None:
        t_cq = best_time(lambda: lib.quantize(name, x, w), reps)
        ref = lib.quantize(name, x, w)
        t_cd = best_time(lambda: lib.dequantize(name, ref, ne0), reps)
        row.update(c_q=x.size / t_cq, c_dq=x.size / t_cd,
                   same=float(np.mean(np.all(ref == q, axis=1))))
    return row


def _lib_for(target: str):
    path = os.environ.get("GGML_LIB" if target == "mainline" else "IK_GGML_LIB")
    return CGgml(path, target, workers()) if path else None


def _layer_seconds(rates: dict, key: str) -> float:
    return sum(r * c / rates[c][key] for r, c in LAYER.values())


def _peak_child() -> dict:
    rows, ne0 = LAYER["ffn_gate"]
    r = subprocess.run([sys.executable, str(WORKER), "16384", str(rows), str(ne0),
                        json.dumps([["mainline", "q8_0", rows]])], capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr[-500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _report(rows: list[dict]) -> None:
    print(f"\n{'target':8s} {'type':7s} {'ne0':>6s} {'rows':>6s} {'jax Mw/s':>9s} "
          f"{'C Mw/s':>8s} {'jax/C':>6s} {'dq jax':>8s} {'dq C':>8s} {'dq j/C':>7s} {'same':>6s} "
          f"{'slice MiB':>9s}")
    for r in rows:
        c = "c_q" in r
        print(f"{r['target']:8s} {r['type']:7s} {r['ne0']:6d} {r['rows']:6d} "
              f"{r['jax_q'] / 1e6:9.2f} "
              f"{r['c_q'] / 1e6 if c else float('nan'):8.2f} "
              f"{r['jax_q'] / r['c_q'] if c else float('nan'):6.3f} {r['jax_dq'] / 1e6:8.1f} "
              f"{r['c_dq'] / 1e6 if c else float('nan'):8.1f} "
              f"{r['jax_dq'] / r['c_dq'] if c else float('nan'):7.3f} "
              f"{r['same'] if c else float('nan'):6.3f} {r['slice_temp_mib']:9.1f}")


def _extrapolate(rows: list[dict]) -> None:
    print(f"\nextrapolated on {workers()} threads: per layer and for the model "
          f"({N_LAYERS} layers + token_embd), seconds")
    for target, types in CANDIDATES.items():
        total = {"jax_q": 0.0, "c_q": 0.0}
        every_c = all("c_q" in r for r in rows if r["target"] == target)
        for name in types:
            rates = {r["ne0"]: r for r in rows if r["target"] == target and r["type"] == name}
            line = f"{target:8s} {name:7s}"
            for key in ("jax_q", "c_q", "jax_dq"):
                if all(key in v for v in rates.values()):
                    layer = _layer_seconds(rates, key)
                    model = N_LAYERS * layer + EMBD[0] * EMBD[1] / rates[EMBD[1]][key]
                    line += f"  {key}: layer {layer:9.1f} model {model:10.0f}"
                    if key in total:
                        total[key] += model
            print(line)
        print(f"{target:8s} quantization cache of the study (every tensor at each of "
              f"{', '.join(types)}): JAX {total['jax_q'] / 3600:.2f} h"
              + (f", ggml C {total['c_q'] / 3600:.2f} h, ratio C/JAX time "
                 f"{total['c_q'] / total['jax_q']:.3f}" if every_c else
                 ", no ggml C total: a type has no C reference (IK_GGML_LIB)"))


@pytest.mark.bench
def test_bench_scale():
    reps = int(os.environ.get("BENCH_REPS", "1"))
    rng = np.random.default_rng(0)
    rows = []
    print(f"\nGemma-3-27B shapes; {workers()} threads; reference: "
          f"{os.environ.get('GGML_LIB', 'none (set GGML_LIB)')}")
    for target, types in CANDIDATES.items():
        lib = _lib_for(target)
        if target == "ik" and lib is None and os.environ.get("GGML_LIB"):
            lib = CGgml(os.environ["GGML_LIB"], "mainline", workers())  # mainline q8_0 == ik's
        for name in types:
            use = lib if lib is not None and (lib.target == target or name == "q8_0") else None
            for ne0 in sorted({c for _, c in LAYER.values()}):
                rows.append(_measure(name, target, ne0, rng, use, reps))
                print(json.dumps(rows[-1]), flush=True)
    _report(rows)
    _extrapolate(rows)
    peak = _peak_child()
    print(f"\npeak RSS quantizing one whole ffn_gate {LAYER['ffn_gate']} at q8_0 in a child: "
          f"{json.dumps(peak)}")
