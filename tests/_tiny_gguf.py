"""Tiny random GGUF models (one per architecture family) for forward-pass tests.

``write_tiny(path, arch)`` writes the same bytes every time (numpy seed per arch), so reference
outputs made once with llama.cpp (tests/fixtures/forward/README.md) stay valid. Vocabulary: a
byte-level GPT-2 BPE with the 256 byte symbols, <s>, </s> and two merges (260 tokens).
``ARCHS`` names the variants: llama (tied output, BOS added, f32), llama-quant (llama's values
stored as q8_0 / q4_0 / q4_1 / q5_0 / tq2_0: every activation-rounding kind), qwen2 (q/k/v
biases, untied output), qwen3 (q/k norms), gemma3 (window of 8 on layers 0-1, layer 2 global),
mistral3 (llama.cpp's Mistral 3 architecture, llama-shaped).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

ARCHS = ("llama", "llama-quant", "qwen2", "qwen3", "gemma3", "mistral3")
TEXT_SEED = 7
_GGUF_ARCH = {"llama-quant": "llama"}
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
