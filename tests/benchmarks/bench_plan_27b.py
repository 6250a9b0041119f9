"""Benchmark: ``search plan`` of the seed's study on a Gemma-3-27B-shaped file, on this machine.

Run: pytest tests/benchmarks/bench_plan_27b.py -m bench -s
     (BENCH_TRIALS=N, default 60; BENCH_TARGETS=ik,mainline; needs the gemma3-270m packages,
     whose tokenizer Gemma-3-27B shares)

The file is a GGUF with Gemma-3-27B's real metadata and shapes (HF config of
google/gemma-3-27b-it: hidden 5376, intermediate 21504, 32 query and 16 kv heads of 128, 62
layers, sliding window 1024; the 262,144-token tokenizer of Gemma 3 270M, which is the same) and
bf16 matrices, as a converted bf16 checkpoint holds them (54.0 GB of data). It is sparse: layer 0
and the first rows of token_embd hold random bf16 values (what the plan's rate samples and its
one-layer forward read), every other weight is a hole of zeros, so it costs about 1 GB of disk.
``search plan`` then measures this machine's quantize, dequantize and forward rates on those
real shapes and prints the study's estimate: the seed's case (ik, iq4_ks / iq3_k / q6_0 / q8_0,
4.1 BPW, 60 trials) and the mainline equivalent (q4_K / q3_K / q6_K / q8_0). The estimate's
arithmetic is the one every run's header prints (``search/_pipeline/_plan.py``), held to measured
runs on SmolLM2 and Gemma 3 270M in the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

D, FF, H, HKV, HD, L, VOCAB = 5376, 21504, 32, 16, 128, 62, 262_144
MATRICES = {"attn_q": (H * HD, D), "attn_k": (HKV * HD, D), "attn_v": (HKV * HD, D),
            "attn_output": (D, H * HD), "ffn_gate": (FF, D), "ffn_up": (FF, D),
            "ffn_down": (D, FF)}
NORMS = {"attn_q_norm": HD, "attn_k_norm": HD, "attn_norm": D, "post_attention_norm": D,
         "ffn_norm": D, "post_ffw_norm": D}
CASES = {"ik": "iq4_ks,iq3_k,q6_0,q8_0", "mainline": "q4_K,q3_K,q6_K,q8_0"}
EMBD_RANDOM_ROWS = 1024


def _bf16(rng, shape) -> np.ndarray:
    """Random weights rounded to bf16 (round to nearest even), as uint16 [*shape]."""
    u = (rng.standard_t(5, shape) * 0.02).astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _copy_tokenizer(w, src: Path) -> None:
    import gguf

    r = gguf.GGUFReader(str(src))
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            w.add_array(key, f.contents())
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(key, f.contents())
        elif t == gguf.GGUFValueType.BOOL:
            w.add_bool(key, f.contents())
        else:
            w.add_uint32(key, int(f.contents()))


def _tensors() -> list[tuple[str, tuple[int, ...], str]]:
    out = [("token_embd.weight", (VOCAB, D), "bf16"), ("output_norm.weight", (D,), "f32")]
    for il in range(L):
        out += [(f"blk.{il}.{n}.weight", s, "bf16") for n, s in MATRICES.items()]
        out += [(f"blk.{il}.{n}.weight", (s,), "f32") for n, s in NORMS.items()]
    return out


def _gemma3_kv(w) -> None:
    w.add_name("Gemma-3-27B-shaped (sparse, benchmark)")
    u32 = lambda k, v: w.add_uint32(f"gemma3.{k}", v)  # noqa: E731
    for k, v in {"context_length": 131072, "embedding_length": D, "block_count": L,
                 "feed_forward_length": FF, "attention.head_count": H,
                 "attention.head_count_kv": HKV, "attention.key_length": HD,
                 "attention.value_length": HD, "attention.sliding_window": 1024}.items():
        u32(k, v)
    w.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("gemma3.rope.freq_base", 1e6)
    w.add_string("gemma3.rope.scaling.type", "linear")
    w.add_float32("gemma3.rope.scaling.factor", 8.0)


def _gemma3_random(name: str, nbytes: int) -> int:
    if name.startswith("blk.0."):
        return nbytes
    return min(nbytes, EMBD_RANDOM_ROWS * D * 2) if name == "token_embd.weight" else 0


def write_sparse(path: Path, arch: str, add_kv, tensors, random_bytes, tokenizer_src: Path
                 ) -> Path:
    """A GGUF of ``tensors`` [(name, numpy shape, "bf16" | "f32")]: f32 tensors hold ones,
    bf16 ones random values in their first ``random_bytes(name, nbytes)`` bytes and a hole of
    zeros after (a sparse file: only written bytes take disk)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    add_kv(w)
    _copy_tokenizer(w, tokenizer_src)
    w.add_uint32("general.file_type", 32)  # MOSTLY_BF16
    types = {"bf16": gguf.GGMLQuantizationType.BF16, "f32": gguf.GGMLQuantizationType.F32}
    layout, offset = [], 0
    for name, shape, ty in tensors:
        nbytes = int(np.prod(shape)) * (2 if ty == "bf16" else 4)
        w.add_tensor_info(name, shape, np.float32 if ty == "f32" else np.float16, nbytes,
                          raw_dtype=types[ty])
        layout.append((name, shape, ty, nbytes, offset))
        offset += -(-nbytes // w.data_alignment) * w.data_alignment
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    start = -(-path.stat().st_size // w.data_alignment) * w.data_alignment
    rng = np.random.default_rng(0)
    with open(path, "r+b") as f:
        for name, shape, ty, nbytes, off in layout:
            f.seek(start + off)
            if ty == "f32":
                f.write(np.ones(shape, np.float32).tobytes())
                continue
            left, step = random_bytes(name, nbytes) // 2, 1 << 26
            while left > 0:  # in pieces: a layer of experts does not fit in memory
                f.write(_bf16(rng, (min(left, step),)).tobytes())
                left -= step
        f.truncate(start + offset)
    return path


def write_gemma3_27b(path: Path, tokenizer_src: Path) -> Path:
    return write_sparse(path, "gemma3", _gemma3_kv, _tensors(), _gemma3_random, tokenizer_src)


def run_plan(path: Path, target: str, types: str, trials: int, home: Path,
             budget: str = "4.1bpw") -> dict:
    cmd = [sys.executable, "-m", "search", "plan", str(path), "--budget", budget,
           "--target", target, "--types", types, "--trials", str(trials),
           "--studies-dir", str(home), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["total_s"] > 0 and res["disk_bytes"] > 0
    return res


def tokenizer_source() -> Path:
    """Gemma 3 270M's file (its tokenizer is Gemma-3-27B's), or a skip naming it."""
    from objectives._model_file import resolve_model

    try:
        return resolve_model("gemma3-270m")
    except Exception as e:  # noqa: BLE001 - the skip names what is missing
        pytest.skip(f"Gemma 3 270M's tokenizer is needed: {e}")


def print_plan(path: Path, res: dict, heading: str) -> None:
    st = path.stat()
    print(f"\n{path.name}: {st.st_size / 1e9:.1f} GB apparent, {st.st_blocks * 512 / 1e9:.2f} "
          f"GB on disk; {os.cpu_count()} cores\n{heading}:")
    print("\n".join(res["lines"]))
    if res["fits"] is not True:
        print(f"does not fit here: {res['fits']}")
    top = max(res["stages"], key=res["stages"].get)
    print(f"dominant stage: {top} "
          f"({res['stages'][top] / res['total_s']:.0%} of {res['total_s'] / 3600:.1f} h)")


@pytest.mark.bench
def test_bench_plan_gemma3_27b(tmp_path):
    path = write_gemma3_27b(tmp_path / "gemma-3-27b-shaped-bf16.gguf", tokenizer_source())
    trials = int(os.environ.get("BENCH_TRIALS", "60"))
    for target in os.environ.get("BENCH_TARGETS", "ik,mainline").split(","):
        res = run_plan(path, target, CASES[target], trials, tmp_path / "studies")
        print_plan(path, res, f"{target}, --types {CASES[target]}, 4.1 BPW, {trials} trials")
