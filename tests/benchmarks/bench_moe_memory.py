"""Benchmark: peak memory of one DeepSeek-V3-shaped MoE layer, experts in slices vs whole.

Run: pytest tests/benchmarks/bench_moe_memory.py -m bench -s
     (BENCH_EXPERTS=E, default 8; BENCH_SLICE=S, default 2; BENCH_CTX=T, default 64)

A synthetic deepseek2 GGUF of one MoE layer with DeepSeek-V3's real shapes (n_embd 7168, 128
heads, q_lora 1536, kv_lora 512, rope 64, nope 128, v 128, absorbed attn_k_b / attn_v_b, experts
[E, 2048, 7168] and one shared expert), every matrix q4_0 with random codes, E experts instead
of 256. Each setting runs in a fresh process (one forward over one chunk) and reports its peak
RSS: the layer whole (the reference) and in slices of S experts, for E and for 2E experts. The
whole layer's expert weights grow by 3 x 7168 x 2048 x 4 B = 176 MB per expert (45 GB at 256);
the sliced runs hold S experts at a time whatever E is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

D, H, Q_LORA, KV, ROPE, NOPE, V, FF = 7168, 128, 1536, 512, 64, 128, 128, 2048
SCRIPT = """
import json, resource, sys, threading, time
import numpy as np
import objectives
from objectives._models import _stream as S
anon = [0]
def sample():  # peak of RssAnon (peak RSS also counts the memory-mapped file's pages)
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                anon[0] = max(anon[0], int(line.split()[1]))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
model = objectives.open_gguf(sys.argv[1])
size = int(sys.argv[2]) or None
chunks = np.arange(int(sys.argv[3]), dtype=np.int32)[None] % 256
t = time.perf_counter()
S.final_hidden(model, S.Weights(model, expert_slice=size), chunks, batch=1)[0].block_until_ready()
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mib": anon[0] / 1024, "seconds": time.perf_counter() - t}))
"""


def _q4_0(rng, *shape) -> np.ndarray:
    """Random q4_0 bytes [..., ne0/32*18]: fp16 scale 2^-9, random 4-bit codes."""
    *rows, ne0 = shape
    blocks = np.empty((*rows, ne0 // 32, 18), np.uint8)
    blocks[..., :2] = np.frombuffer(np.float16(2 ** -9).tobytes(), np.uint8)
    blocks[..., 2:] = rng.integers(0, 256, (*rows, ne0 // 32, 16), dtype=np.uint8)
    return blocks.reshape(*rows, -1)


def add_deepseek_v3_kv(w, n_layer: int, n_dense: int, n_exp: int, n_used: int, groups: int,
                       groups_used: int) -> None:
    """deepseek2 metadata of DeepSeek-V3's shapes (MLA in the absorbed form)."""
    u32 = lambda k, v: w.add_uint32(f"deepseek2.{k}", v)  # noqa: E731
    for k, v in dict(block_count=n_layer, context_length=163840, embedding_length=D,
                     feed_forward_length=18432, leading_dense_block_count=n_dense,
                     expert_feed_forward_length=FF, expert_count=n_exp,
                     expert_used_count=n_used, expert_shared_count=1,
                     expert_group_count=groups, expert_group_used_count=groups_used,
                     expert_gating_func=2,
                     **{"attention.head_count": H, "attention.head_count_kv": 1,
                        "attention.q_lora_rank": Q_LORA, "attention.kv_lora_rank": KV,
                        "attention.key_length": KV + ROPE, "attention.value_length": KV,
                        "attention.key_length_mla": NOPE + ROPE,
                        "attention.value_length_mla": V, "rope.dimension_count": ROPE}).items():
        u32(k, v)
    w.add_float32("deepseek2.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("deepseek2.expert_weights_scale", 2.5)
    w.add_bool("deepseek2.expert_weights_norm", True)


def write_layer(path: Path, n_exp: int) -> Path:
    import gguf

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from _tiny_gguf import _write_vocab

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "deepseek2")
    add_deepseek_v3_kv(w, 1, 0, n_exp, min(8, n_exp // 2), 4, 2)
    _write_vocab(w, add_bos=True)
    f32 = lambda *s: (rng.standard_normal(s) / 16).astype(np.float32)  # noqa: E731
    q4 = gguf.GGMLQuantizationType.Q4_0
    w.add_tensor("token_embd.weight", f32(260, D))
    w.add_tensor("output_norm.weight", np.ones(D, np.float32))
    w.add_tensor("output.weight", f32(260, D))
    p = "blk.0."
    for name, x in {"attn_norm": np.ones(D), "attn_q_a_norm": np.ones(Q_LORA),
                    "attn_kv_a_norm": np.ones(KV), "ffn_norm": np.ones(D),
                    "ffn_gate_inp": f32(n_exp, D)}.items():
        w.add_tensor(p + name + ".weight", np.asarray(x, np.float32))
    w.add_tensor(p + "exp_probs_b.bias", f32(n_exp))
    for name, shape in {"attn_q_a": (Q_LORA, D), "attn_q_b": (H * (NOPE + ROPE), Q_LORA),
                        "attn_kv_a_mqa": (KV + ROPE, D), "attn_k_b": (H, KV, NOPE),
                        "attn_v_b": (H, V, KV), "attn_output": (D, H * V),
                        "ffn_gate_exps": (n_exp, FF, D), "ffn_up_exps": (n_exp, FF, D),
                        "ffn_down_exps": (n_exp, D, FF), "ffn_gate_shexp": (FF, D),
                        "ffn_up_shexp": (FF, D), "ffn_down_shexp": (D, FF)}.items():
        w.add_tensor(p + name + ".weight", _q4_0(rng, *shape), raw_dtype=q4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _run(path: Path, size: int, ctx: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(size), str(ctx)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.bench
def test_bench_deepseek_v3_layer_memory(tmp_path):
    n_exp = int(os.environ.get("BENCH_EXPERTS", "8"))
    size = int(os.environ.get("BENCH_SLICE", "2"))
    ctx = int(os.environ.get("BENCH_CTX", "64"))
    small = write_layer(tmp_path / "dsv3-small.gguf", n_exp)
    big = write_layer(tmp_path / "dsv3-big.gguf", 2 * n_exp)
    whole, sliced, sliced2 = _run(small, 0, ctx), _run(small, size, ctx), _run(big, size, ctx)
    per_expert = 3 * D * FF * 4 / 2 ** 20
    def fmt(r):
        return (f"peak RSS {r['peak_mib']:.0f} MiB, anonymous {r['anon_mib']:.0f} MiB, "
                f"{r['seconds']:.1f} s")

    print(f"\nDeepSeek-V3-shaped layer, {ctx} tokens, q4_0 file (file pages read: "
          f"{3 * D * FF * 18 / 32 / 2 ** 20:.1f} MiB per expert)\n"
          f"  whole, {n_exp} experts: {fmt(whole)}\n"
          f"  slices of {size}, {n_exp} experts: {fmt(sliced)}\n"
          f"  slices of {size}, {2 * n_exp} experts: {fmt(sliced2)}\n"
          f"  sliced / whole (anonymous) = {sliced['anon_mib'] / whole['anon_mib']:.3f}; sliced "
          f"growth per expert {(sliced2['anon_mib'] - sliced['anon_mib']) / n_exp:.1f} MiB "
          f"anonymous; the whole layer holds {per_expert:.0f} MiB of f32 per expert, "
          f"~{(whole['anon_mib'] + (256 - n_exp) * per_expert) / 1024:.0f} GiB at 256")
    assert sliced["peak_mib"] < whole["peak_mib"]
