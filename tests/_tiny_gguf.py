"""Tiny random GGUF models (one per architecture family) for forward-pass tests.

``write_tiny(path, arch)`` writes the same bytes every time (numpy seed per arch), so reference
outputs made once with llama.cpp (tests/fixtures/forward/README.md) stay valid. Vocabulary: a
byte-level GPT-2 BPE with the 256 byte symbols, <s>, </s> and two merges (260 tokens).
``ARCHS`` names the variants: llama (tied output, BOS added, f32), llama-quant (llama's values
stored as q8_0 / q4_0 / q4_1 / q5_0 / tq2_0: every activation-rounding kind), qwen2 (q/k/v
biases, untied output), qwen3 (q/k norms), gemma3 (window of 8 on layers 0-1, layer 2 global),
mistral3 (llama.cpp's Mistral 3 architecture, llama-shaped).

Mixture-of-experts variants (``MOE``, the metadata keys llama.cpp reads for each architecture):
qwen3moe (16 experts, top-4, softmax routing with normalized weights, q/k norms, untied output),
qwen3moe-quant (qwen3moe's values, experts stored as q8_0 / q4_0 / q5_0), deepseek2 (DeepSeek-V3
shaped: MLA with q_lora and the absorbed attn_k_b / attn_v_b, one leading dense layer, a shared
expert, sigmoid routing with exp_probs_b, 4 groups of 4 experts with 2 used, top-4, weights
normalized and scaled by 2.5, YaRN factor 40) and deepseek2-kvb (the older attn_kv_b form with a
plain attn_q, softmax routing, 8 experts top-2, two shared experts, no scaling, no YaRN),
glm4moe (GLM-4.5-Air shaped: q/k/v biases, RoPE on half of each head, post_attention_norm as the
FFN norm, one leading dense layer, sigmoid routing with exp_probs_b, a shared expert, and a
NextN/MTP block after the two trunk layers, which llama.cpp loads but does not run), gpt-oss
(gpt-oss-20b's keys: 3 layers, a window of 8 on layers 0 and 2, layer 1 global, attention sinks,
q/k/v/o biases, YaRN factor 32 from 4096, 16 experts top-4 with SOFTMAX_WEIGHT routing, router
and expert biases, swiglu_oai experts reaching its clamps, untied output) and gpt-oss-mxfp4
(gpt-oss's values, experts stored as mxfp4 as the real model ships them).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

ARCHS = ("llama", "llama-quant", "qwen2", "qwen3", "gemma3", "mistral3", "qwen3moe",
         "qwen3moe-quant", "deepseek2", "deepseek2-kvb", "glm4moe", "gpt-oss", "gpt-oss-mxfp4")
MOE = ("qwen3moe", "qwen3moe-quant", "deepseek2", "deepseek2-kvb", "glm4moe", "gpt-oss",
       "gpt-oss-mxfp4")
TEXT_SEED = 7
_GGUF_ARCH = {"llama-quant": "llama", "qwen3moe-quant": "qwen3moe", "deepseek2-kvb": "deepseek2",
              "gpt-oss-mxfp4": "gpt-oss"}
_SAME_VALUES = {"llama-quant": "llama", "qwen3moe-quant": "qwen3moe",  # seed of the values
                "gpt-oss-mxfp4": "gpt-oss"}
_QUANT_MOE = {  # variant -> stored type of its experts
    "qwen3moe-quant": {"ffn_gate_exps": "Q8_0", "ffn_up_exps": "Q4_0", "ffn_down_exps": "Q5_0"},
    "gpt-oss-mxfp4": dict.fromkeys(("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"), "MXFP4")}
_QUANT = {"attn_q": "Q8_0", "attn_k": "Q4_0", "attn_v": "Q4_1", "attn_output": "Q5_0",
          "ffn_gate": "Q4_0", "ffn_up": "Q8_0", "ffn_down": "TQ2_0"}
D, H, HKV, HD, FF, N_LAYER = 64, 4, 2, 16, 256, 2


def byte_symbols() -> list[str]:
    """GPT-2's byte -> printable unicode map, in byte order."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(extra)}
    return [table[b] for b in range(256)]


def vocab() -> tuple[list[str], list[int], list[str]]:
    syms = byte_symbols()
    merges = ["\u0120 t", "h e"]
    tokens = syms + ["<s>", "</s>", "\u0120t", "he"]
    types = [1] * 256 + [3, 3, 1, 1]
    return tokens, types, merges


def corpus_text(n_words: int = 400) -> str:
    """Deterministic lower-case pseudo text (byte tokens, a few merges)."""
    rng = np.random.default_rng(TEXT_SEED)
    letters = np.array(list("etaoinshrdlucmfwyp"))
    words = ["".join(rng.choice(letters, rng.integers(1, 7))) for _ in range(n_words)]
    return " ".join(words) + "\n"


def _write_vocab(w: gguf.GGUFWriter, add_bos: bool) -> None:
    tokens, types, merges = vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(256)
    w.add_eos_token_id(257)
    w.add_add_bos_token(add_bos)


def _hparams(w: gguf.GGUFWriter, arch: str) -> None:
    a = _GGUF_ARCH.get(arch, arch)
    w.add_uint32(f"{a}.block_count", 3 if arch == "gemma3" else N_LAYER)
    w.add_uint32(f"{a}.context_length", 256)
    w.add_uint32(f"{a}.embedding_length", D)
    w.add_uint32(f"{a}.feed_forward_length", FF)
    w.add_uint32(f"{a}.attention.head_count", H)
    w.add_uint32(f"{a}.attention.head_count_kv", HKV)
    w.add_uint32(f"{a}.attention.key_length", HD)
    w.add_uint32(f"{a}.attention.value_length", HD)
    w.add_uint32(f"{a}.rope.dimension_count", HD)
    w.add_float32(f"{a}.rope.freq_base", 10000.0 if arch != "gemma3" else 100000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6 if arch == "gemma3" else 1e-5)
    if arch == "gemma3":
        w.add_uint32(f"{a}.attention.sliding_window", 8)
        w.add_uint32(f"{a}.attention.sliding_window_pattern", 3)


def _layer_tensors(arch: str, rng) -> dict[str, np.ndarray]:
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    norm = lambda k: (1.0 + 0.1 * n(k)).astype(np.float32)  # noqa: E731
    t = {"attn_norm": norm(D), "ffn_norm": norm(D),
         "attn_q": n(H * HD, D) / 8, "attn_k": n(HKV * HD, D) / 8, "attn_v": n(HKV * HD, D) / 8,
         "attn_output": n(D, H * HD) / 8, "ffn_gate": n(FF, D) / 8, "ffn_up": n(FF, D) / 8,
         "ffn_down": n(D, FF) / 16}
    if arch == "qwen2":
        t |= {"attn_q.bias": n(H * HD) / 4, "attn_k.bias": n(HKV * HD) / 4,
              "attn_v.bias": n(HKV * HD) / 4}
    if arch in ("qwen3", "gemma3"):
        t |= {"attn_q_norm": norm(HD), "attn_k_norm": norm(HD)}
    if arch == "gemma3":
        t |= {"post_attention_norm": norm(D), "post_ffw_norm": norm(D)}
    return t


def _add(w: gguf.GGUFWriter, name: str, x: np.ndarray, qtype: str | None) -> None:
    if qtype is None:
        w.add_tensor(name, x)
        return
    q = gguf.GGMLQuantizationType[qtype]
    w.add_tensor(name, gguf.quants.quantize(x, q), raw_dtype=q)


def write_tiny(path: str | Path, arch: str) -> Path:
    """Write the tiny model of variant ``arch`` (see ARCHS) to ``path``."""
    if arch in MOE:
        return _write_moe(Path(path), arch)
    rng = np.random.default_rng(ARCHS.index(_GGUF_ARCH.get(arch, arch)) + 1)  # quant: same values
    w = gguf.GGUFWriter(str(path), _GGUF_ARCH.get(arch, arch))
    _hparams(w, arch)
    _write_vocab(w, add_bos=arch.startswith("llama"))
    n_vocab = len(vocab()[0])
    _add(w, "token_embd.weight", rng.standard_normal((n_vocab, D)).astype(np.float32) / 4, None)
    _add(w, "output_norm.weight", (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32), None)
    if arch == "qwen2":
        _add(w, "output.weight", rng.standard_normal((n_vocab, D)).astype(np.float32) / 4, None)
    for il in range(3 if arch == "gemma3" else N_LAYER):
        for role, x in _layer_tensors(arch, rng).items():
            name = f"blk.{il}.{role}" + ("" if role.endswith(".bias") else ".weight")
            _add(w, name, x, _QUANT.get(role) if arch == "llama-quant" else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


# --- mixture-of-experts variants -------------------------------------------------------------

E_QWEN, K_QWEN, FF_EXP = 16, 4, 32
DS = dict(q_lora=32, kv_lora=32, nope=32, rope=16, v=32, ff_dense=128)
_DS_HP = {  # variant -> (layers, experts, used, shared, groups, groups used)
    "deepseek2": (3, 16, 4, 1, 4, 2), "deepseek2-kvb": (2, 8, 2, 2, 0, 0)}


def moe_shape(arch: str) -> dict:
    """n_layer, n_expert, n_expert_used, n_shared, n_groups, n_group_used of a MoE variant
    (glm4moe: n_layer counts the NextN block)."""
    if arch == "glm4moe":
        return dict(n_layer=3, n_expert=16, n_used=4, n_shared=1, groups=0, groups_used=0)
    if arch.startswith("gpt-oss"):
        return dict(n_layer=3, n_expert=16, n_used=4, n_shared=0, groups=0, groups_used=0)
    if arch.startswith("qwen3moe"):
        return dict(n_layer=N_LAYER, n_expert=E_QWEN, n_used=K_QWEN, n_shared=0, groups=0,
                    groups_used=0)
    n, e, k, sh, g, gu = _DS_HP[arch]
    return dict(n_layer=n, n_expert=e, n_used=k, n_shared=sh, groups=g, groups_used=gu)


def _moe_hparams(w: gguf.GGUFWriter, arch: str) -> None:
    a, s = _GGUF_ARCH.get(arch, arch), moe_shape(arch)
    u32 = lambda k, v: w.add_uint32(f"{a}.{k}", v)  # noqa: E731
    f32 = lambda k, v: w.add_float32(f"{a}.{k}", v)  # noqa: E731
    u32("block_count", s["n_layer"])
    u32("embedding_length", D)
    u32("attention.head_count", H)
    u32("expert_count", s["n_expert"])
    u32("expert_used_count", s["n_used"])
    u32("expert_feed_forward_length", FF_EXP)
    f32("attention.layer_norm_rms_epsilon", 1e-6)
    if a == "glm4moe":
        _glm4moe_hparams(w, s)
        return
    if a == "gpt-oss":
        _gpt_oss_hparams(w)
        return
    if a == "qwen3moe":
        u32("context_length", 256)
        u32("feed_forward_length", FF)
        u32("attention.head_count_kv", HKV)
        u32("attention.key_length", HD)
        u32("attention.value_length", HD)
        u32("rope.dimension_count", HD)
        f32("rope.freq_base", 1000000.0)
        return
    mla = arch == "deepseek2"
    u32("context_length", 4096 * 40 if mla else 256)
    u32("feed_forward_length", DS["ff_dense"])
    u32("leading_dense_block_count", 1)
    u32("expert_shared_count", s["n_shared"])
    u32("attention.q_lora_rank", DS["q_lora"] if mla else 0)
    u32("attention.kv_lora_rank", DS["kv_lora"])
    u32("rope.dimension_count", DS["rope"])
    f32("rope.freq_base", 10000.0)
    if mla:  # the converter's absorbed form: one 576-wide K head, 512-wide V (here 48 and 32)
        u32("attention.head_count_kv", 1)
        u32("attention.key_length", DS["kv_lora"] + DS["rope"])
        u32("attention.value_length", DS["kv_lora"])
        u32("attention.key_length_mla", DS["nope"] + DS["rope"])
        u32("attention.value_length_mla", DS["v"])
        u32("expert_group_count", s["groups"])
        u32("expert_group_used_count", s["groups_used"])
        f32("expert_weights_scale", 2.5)
        w.add_bool(f"{a}.expert_weights_norm", True)
        u32("expert_gating_func", 2)  # sigmoid
        w.add_string(f"{a}.rope.scaling.type", "yarn")
        f32("rope.scaling.factor", 40.0)
        u32("rope.scaling.original_context_length", 4096)
        f32("rope.scaling.yarn_log_multiplier", 0.1)
    else:
        u32("attention.head_count_kv", H)
        u32("attention.key_length", DS["nope"] + DS["rope"])
        u32("attention.value_length", DS["v"])
        f32("expert_weights_scale", 1.0)


def _glm4moe_hparams(w: gguf.GGUFWriter, s: dict) -> None:
    for k, v in dict(context_length=256, feed_forward_length=FF, leading_dense_block_count=1,
                     expert_shared_count=s["n_shared"], nextn_predict_layers=1,
                     expert_gating_func=2, **{"attention.head_count_kv": HKV,
                                              "attention.key_length": HD,
                                              "attention.value_length": HD,
                                              "rope.dimension_count": HD // 2}).items():
        w.add_uint32(f"glm4moe.{k}", v)
    w.add_float32("glm4moe.rope.freq_base", 1000000.0)
    w.add_float32("glm4moe.expert_weights_scale", 1.0)
    w.add_bool("glm4moe.expert_weights_norm", True)


def _glm4moe_layer(rng, il: int) -> dict[str, np.ndarray]:
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    t = _layer_tensors("qwen2", rng)
    t["post_attention_norm"] = t.pop("ffn_norm")
    if il == 0:
        return t
    for k in ("ffn_gate", "ffn_up", "ffn_down"):
        del t[k]
    t |= _experts(rng, 16, FF_EXP) | {"exp_probs_b.bias": 0.3 * n(16)}
    t |= {"ffn_gate_shexp": n(FF_EXP, D) / 8, "ffn_up_shexp": n(FF_EXP, D) / 8,
          "ffn_down_shexp": n(D, FF_EXP) / 8}
    if il == 2:  # the NextN block: the trunk's tensors plus its own
        t |= {"nextn.eh_proj": n(D, 2 * D) / 8, "nextn.enorm": 1 + 0.1 * n(D),
              "nextn.hnorm": 1 + 0.1 * n(D), "nextn.shared_head_norm": 1 + 0.1 * n(D)}
    return t


def _gpt_oss_hparams(w: gguf.GGUFWriter) -> None:
    """gpt-oss-20b's keys (YaRN factor 32 from 4096, sliding window) at the tiny sizes."""
    for k, v in dict(context_length=4096 * 32, feed_forward_length=FF_EXP,
                     **{"attention.head_count_kv": HKV, "attention.key_length": HD,
                        "attention.value_length": HD, "attention.sliding_window": 8,
                        "rope.scaling.original_context_length": 4096}).items():
        w.add_uint32(f"gpt-oss.{k}", v)
    w.add_float32("gpt-oss.rope.freq_base", 150000.0)
    w.add_string("gpt-oss.rope.scaling.type", "yarn")
    w.add_float32("gpt-oss.rope.scaling.factor", 32.0)


def _gpt_oss_layer(rng) -> dict[str, np.ndarray]:
    """qwen2's attention (q, k halved: YaRN scales both by 1.35, and sharper scores would lift
    llama.cpp's own f16 K/V noise, -fa on against off, above the test's tolerance) plus an
    output bias and sinks; experts with biases, gate / up wide enough to reach swiglu_oai's
    clamps at +-7 (down narrow to keep the FFN's gain); router scales under which llama.cpp
    picks our experts in our order for every token (fixtures README)."""
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    t = _layer_tensors("qwen2", rng)
    t["post_attention_norm"] = t.pop("ffn_norm")
    t["attn_q"], t["attn_k"] = t["attn_q"] / 2, t["attn_k"] / 2
    for k in ("ffn_gate", "ffn_up", "ffn_down"):
        del t[k]
    e = 16
    return t | {"attn_output.bias": n(D) / 8, "attn_sinks": n(H),
                "ffn_gate_inp": n(e, D) * 3 / 16, "ffn_gate_exps": n(e, FF_EXP, D) * 3 / 8,
                "ffn_up_exps": n(e, FF_EXP, D) * 3 / 8, "ffn_down_exps": n(e, D, FF_EXP) / 64,
                "ffn_gate_inp.bias": n(e) * 5 / 4, "ffn_gate_exps.bias": n(e, FF_EXP) / 4,
                "ffn_up_exps.bias": n(e, FF_EXP) / 4, "ffn_down_exps.bias": n(e, D) / 8}


def _experts(rng, e: int, ff: int) -> dict[str, np.ndarray]:
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {"ffn_gate_inp": n(e, D) / 8, "ffn_gate_exps": n(e, ff, D) / 8,
            "ffn_up_exps": n(e, ff, D) / 8, "ffn_down_exps": n(e, D, ff) / 8}


def _qwen3moe_layer(rng) -> dict[str, np.ndarray]:
    t = _layer_tensors("qwen3", rng)
    for k in ("ffn_gate", "ffn_up", "ffn_down"):
        del t[k]
    return t | _experts(rng, E_QWEN, FF_EXP)


def _deepseek2_layer(rng, arch: str, il: int) -> dict[str, np.ndarray]:
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    norm = lambda k: (1.0 + 0.1 * n(k)).astype(np.float32)  # noqa: E731
    q, kv, nope, rope, v = (DS[k] for k in ("q_lora", "kv_lora", "nope", "rope", "v"))
    t = {"attn_norm": norm(D), "attn_kv_a_norm": norm(kv), "ffn_norm": norm(D),
         "attn_kv_a_mqa": n(kv + rope, D) / 8, "attn_output": n(D, H * v) / 8}
    if arch == "deepseek2":
        t |= {"attn_q_a_norm": norm(q), "attn_q_a": n(q, D) / 8,
              "attn_q_b": n(H * (nope + rope), q) / 8,
              "attn_k_b": n(H, kv, nope) / 8, "attn_v_b": n(H, v, kv) / 8}
    else:
        t |= {"attn_q": n(H * (nope + rope), D) / 8, "attn_kv_b": n(H * (nope + v), kv) / 8}
    if il == 0:  # leading dense block
        ff = DS["ff_dense"]
        return t | {"ffn_gate": n(ff, D) / 8, "ffn_up": n(ff, D) / 8, "ffn_down": n(D, ff) / 16}
    s = moe_shape(arch)
    t |= _experts(rng, s["n_expert"], FF_EXP)
    sh = FF_EXP * s["n_shared"]
    t |= {"ffn_gate_shexp": n(sh, D) / 8, "ffn_up_shexp": n(sh, D) / 8,
          "ffn_down_shexp": n(D, sh) / 8}
    if arch == "deepseek2":
        t["exp_probs_b.bias"] = 0.3 * n(s["n_expert"])
    return t


def _write_moe(path: Path, arch: str) -> Path:
    rng = np.random.default_rng(ARCHS.index(_SAME_VALUES.get(arch, arch)) + 1)
    a = _GGUF_ARCH.get(arch, arch)
    w = gguf.GGUFWriter(str(path), a)
    _moe_hparams(w, arch)
    _write_vocab(w, add_bos=a == "deepseek2")
    n_vocab = len(vocab()[0])
    _add(w, "token_embd.weight", rng.standard_normal((n_vocab, D)).astype(np.float32) / 4, None)
    _add(w, "output_norm.weight", (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32), None)
    _add(w, "output.weight", rng.standard_normal((n_vocab, D)).astype(np.float32) / 4, None)
    for il in range(moe_shape(arch)["n_layer"]):
        layer = _qwen3moe_layer(rng) if a == "qwen3moe" else _glm4moe_layer(rng, il) \
            if a == "glm4moe" else _gpt_oss_layer(rng) if a == "gpt-oss" \
            else _deepseek2_layer(rng, arch, il)
        for role, x in layer.items():
            name = f"blk.{il}.{role}" + ("" if role.endswith(".bias") else ".weight")
            _add(w, name, np.asarray(x, np.float32), _QUANT_MOE.get(arch, {}).get(role))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
