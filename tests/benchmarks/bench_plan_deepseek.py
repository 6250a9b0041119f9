"""Benchmark: ``search plan`` of a DeepSeek-V3/R1 study (671B MoE) at 2.5-3.5 BPW, on this machine.

Run: pytest tests/benchmarks/bench_plan_deepseek.py -m bench -s
     (BENCH_TRIALS=N, default 60; BENCH_BUDGETS, default 2.5bpw,3.0bpw,3.5bpw; needs the
     gemma3-270m packages for a tokenizer)

The file is a sparse GGUF with DeepSeek-V3's real shapes (HF config of deepseek-ai/DeepSeek-V3:
hidden 7168, 61 layers of which 3 dense (intermediate 18432), 256 routed experts of 2048 and
one shared, top-8 in 4 of 8 groups, sigmoid gating with bias, MLA with q_lora 1536, kv_lora
512, rope 64, nope 128, v 128, in the absorbed attn_k_b / attn_v_b form) and bf16 matrices,
1.3 TB of apparent data. Its tokenizer is Gemma 3's (262,144 tokens in place of DeepSeek's
129,280: the head costs about twice DeepSeek's, a few percent of a forward). Layers 0 and 3
(the first dense and the first MoE layer, what the plan's forward reads) and the first rows of
every other tensor of them hold random values; the rest is holes of zeros, so the file costs a
few GB of disk. ``search plan`` (ik target; iq2_ks / iq3_ks / iq4_ks / q8_0, the types of
ubergarm-style recipes) then measures this machine and estimates each budget's study.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bench_plan_27b import print_plan, run_plan, tokenizer_source, write_sparse  # noqa: E402

from bench_moe_memory import FF as FF_EXP, D, H, KV, NOPE, Q_LORA, ROPE, V  # noqa: E402
from bench_moe_memory import add_deepseek_v3_kv  # noqa: E402

L, DENSE, FF, N_EXP = 61, 3, 18432, 256
TYPES = "iq2_ks,iq3_ks,iq4_ks,q8_0"


def _kv(w, n_vocab: int) -> None:
    add_deepseek_v3_kv(w, L, DENSE, N_EXP, 8, 8, 4)
    w.add_uint32("deepseek2.vocab_size", n_vocab)
    w.add_float32("deepseek2.rope.freq_base", 10000.0)


def _tensors(n_vocab: int) -> list[tuple[str, tuple[int, ...], str]]:
    out = [("token_embd.weight", (n_vocab, D), "bf16"), ("output_norm.weight", (D,), "f32"),
           ("output.weight", (n_vocab, D), "bf16")]
    for il in range(L):
        p = f"blk.{il}."
        out += [(p + n + ".weight", (s,), "f32") for n, s in
                {"attn_norm": D, "attn_q_a_norm": Q_LORA, "attn_kv_a_norm": KV,
                 "ffn_norm": D}.items()]
        out += [(p + n + ".weight", s, "bf16") for n, s in
                {"attn_q_a": (Q_LORA, D), "attn_q_b": (H * (NOPE + ROPE), Q_LORA),
                 "attn_kv_a_mqa": (KV + ROPE, D), "attn_k_b": (H, KV, NOPE),
                 "attn_v_b": (H, V, KV), "attn_output": (D, H * V)}.items()]
        if il < DENSE:
            out += [(p + n + ".weight", s, "bf16") for n, s in
                    {"ffn_gate": (FF, D), "ffn_up": (FF, D), "ffn_down": (D, FF)}.items()]
            continue
        out += [(p + "ffn_gate_inp.weight", (N_EXP, D), "f32"),
                (p + "exp_probs_b.bias", (N_EXP,), "f32")]
        out += [(p + n + ".weight", s, "bf16") for n, s in
                {"ffn_gate_exps": (N_EXP, FF_EXP, D), "ffn_up_exps": (N_EXP, FF_EXP, D),
                 "ffn_down_exps": (N_EXP, D, FF_EXP), "ffn_gate_shexp": (FF_EXP, D),
                 "ffn_up_shexp": (FF_EXP, D), "ffn_down_shexp": (D, FF_EXP)}.items()]
    return out


def _random_bytes(name: str, nbytes: int) -> int:
    if name.startswith(("blk.0.", "blk.3.")):
        return nbytes if "_exps" not in name else min(nbytes, 64 << 20)
    return min(nbytes, 16 << 20) if name in ("token_embd.weight", "output.weight") else 0


@pytest.mark.bench
def test_bench_plan_deepseek_v3(tmp_path):
    src = tokenizer_source()
    n_vocab = 262_144
    path = write_sparse(tmp_path / "deepseek-v3-shaped-bf16.gguf", "deepseek2",
                        lambda w: _kv(w, n_vocab), _tensors(n_vocab), _random_bytes, src)
    trials = int(os.environ.get("BENCH_TRIALS", "60"))
    budgets = os.environ.get("BENCH_BUDGETS", "2.5bpw,3.0bpw,3.5bpw")
    res = run_plan(path, "ik", TYPES, trials, tmp_path / "studies", budgets)
    print_plan(path, res, f"ik, --types {TYPES}, budgets {budgets}, {trials} trials each")
