"""Tokenizer built from GGUF metadata that gives llama.cpp's token ids.

``Tokenizer.from_gguf(model)`` / ``Tokenizer.from_gguf_path(path)`` read ``tokenizer.ggml.*`` and
build a HF ``tokenizers.Tokenizer`` (Rust, so 400 kB of text takes well under a second):

- ``gpt2`` (byte-level BPE): the GGUF merges ranked by position; the pre-tokenizer named by
  ``tokenizer.ggml.pre`` is llama.cpp's chain of regexes, each one splitting every piece the
  previous left (matches and the gaps between them both kept), then GPT-2's byte-to-unicode map.
- ``llama`` (SentencePiece, "SPM"): llama.cpp merges the adjacent pair whose concatenation is
  the vocab token with the highest score, and falls back to ``<0xXX>`` byte tokens. That is a BPE
  whose merges are every split ``(a, b)`` of every token ``a+b``, ranked by the score of ``a+b``.
  Spaces become ``▁``; one ``▁`` goes in front when ``add_space_prefix`` (the SPM default).
- ``gemma4``: BPE from the GGUF merges on raw UTF-8 with spaces as ``▁``, split only at newline
  runs, ``<0xXX>`` byte fallback.

As in llama.cpp, tokens typed user-defined are cut out of the raw text first, always; control
and unknown tokens only when ``parse_special`` is set (llama.cpp also makes EOT/EOG/FIM-looking
texts control tokens, and phi-3 ones strip the whitespace after them; we follow). Known gaps:
SPM score ties are broken by token id, not leftmost position; phi-3's strip takes Unicode
whitespace, llama.cpp's only ASCII. BOS/EOS are added as the GGUF says
(``tokenizer.ggml.add_bos_token``, or llama.cpp's default for the vocab type and pre-tokenizer).
``decode`` follows llama.cpp's ``token_to_piece`` (control tokens render as nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from quant import UserError

# llama.cpp token types (tokenizer.ggml.token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # ▁, SentencePiece's visible space

# Regexes as llama.cpp runs them (src/llama-vocab.cpp). Where llama.cpp has a hand-written
# matcher for a regex (gpt2, llama3, qwen2, qwen35) we give the regex of the original
# tokenizer.json, which that matcher imitates. HF's engine (Oniguruma) reads \p{..} by Unicode.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd"
    "\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d"
    "\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4"
    "\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec"
    "\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b"
    "\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787"
    "\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
           r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
_GPT4O = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
          + _GPT4O_CONTRACTIONS
          + r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
          + _GPT4O_CONTRACTIONS
          + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"

_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    "gpt2": (_GPT2,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "qwen35": (_QWEN35,),
    "starcoder": (r"\p{N}", _GPT2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"),
    "deepseek-llm": ("[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+",
                     "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
                     r"\s+$", _CJK, r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
    "tekken": (_TEKKEN,),
    "gpt-4o": (_GPT4O,),
    "bloom": (_BLOOM,),
    "viking": (_BLOOM, r"\p{N}"),
}

# tokenizer.ggml.pre -> (regex set, ignore_merges, add_bos default), from llama.cpp's vocab load
_PRE: dict[str, tuple[str, bool, bool]] = {
    **{k: ("llama3", True, True) for k in ("llama3", "llama-v3", "llama-bpe", "falcon3",
                                            "falcon-h1", "pixtral", "midm-2.0", "lfm2")},
    **{k: ("llama3", False, False) for k in ("dbrx", "smaug-bpe", "chatglm-bpe")},
    **{k: ("gpt2", False, False) for k in ("gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es",
                                            "jina-de", "gigachat", "exaone4", "trillion",
                                            "a.x-4.0", "mellum", "granite-docling")},
    **{k: ("starcoder", False, False) for k in ("starcoder", "refact", "command-r", "smollm",
                                                 "codeshell", "exaone", "minerva-7b",
                                                 "mellum2")},
    **{k: ("qwen2", False, False) for k in ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez",
                                             "hunyuan", "kormo")},
    "qwen35": ("qwen35", False, False),
    "glm4": ("llama3", True, False),
    "falcon": ("falcon", False, False),
    "deepseek-llm": ("deepseek-llm", False, False),
    "deepseek-coder": ("deepseek-coder", False, False),
    "tekken": ("tekken", True, True),
    **{k: ("gpt-4o", False, False) for k in ("gpt-4o", "llama4")},
    **{k: ("bloom", False, False) for k in ("bloom", "poro-chat", "gpt3-finnish")},
    "viking": ("viking", False, False),
    "default": ("default", False, False),
}
_NEWLINES = r"[^\n]+|[\n]+"  # gemma4: SentencePiece-style BPE over whole lines


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters (byte-level BPE's alphabet)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def _meta_list(meta: dict[str, Any], key: str) -> list:
    value = meta.get(key)
    return [] if value is None else list(value)


@dataclass(frozen=True)
class _Vocab:
    """The tokenizer.ggml.* fields llama.cpp reads."""

    model: str
    pre: str
    name: str  # general.name
    tokens: list[str]
    types: np.ndarray  # int32 [n_vocab]
    scores: np.ndarray  # float32 [n_vocab]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    add_bos: bool | None
    add_eos: bool | None
    add_space_prefix: bool | None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: str) -> _Vocab:
        tokens = _meta_list(meta, "tokenizer.ggml.tokens")
        if not tokens:
            raise UserError(f"{where}: no tokenizer.ggml.tokens in the GGUF metadata: use a "
                            "GGUF converted with its vocab")
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        n = len(tokens)
        get = lambda k: meta.get(f"tokenizer.ggml.{k}")  # noqa: E731
        types = get("token_type")
        scores = get("scores")
        return cls(str(get("model") or "llama"), str(get("pre") or "default"),
                   str(meta.get("general.name", "")), tokens,
                   np.full(n, _NORMAL, np.int32) if types is None else np.asarray(types, np.int32),
                   np.zeros(n, np.float32) if scores is None else np.asarray(scores, np.float32),
                   _meta_list(meta, "tokenizer.ggml.merges"), _opt_id(get("bos_token_id"), n),
                   _opt_id(get("eos_token_id"), n), _opt_id(get("unknown_token_id"), n),
                   _opt_bool(get("add_bos_token")), _opt_bool(get("add_eos_token")),
                   _opt_bool(get("add_space_prefix")))

    @cached_property
    def ids(self) -> dict[str, int]:
        """Text -> id; a repeated text maps to its last id, as in llama.cpp."""
        return {t: i for i, t in enumerate(self.tokens)}


def _opt_id(v: Any, n: int) -> int | None:
    return int(v) if v is not None and 0 <= int(v) < n else None


def _opt_bool(v: Any) -> bool | None:
    return None if v is None else bool(v)


# Texts llama.cpp's vocab load makes control tokens whatever their type (its EOT, EOM, FIM and
# EOG detection by name), and the gpt-oss ones it makes user-defined.
_CONTROL_NAMES = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<end_of_utterance>", "<|eom_id|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "</s>", "<eos>", "<turn|>", "<|tool_response>", "[e~[",
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
    "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>",
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
    "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
    "\u2581<MID>", "<|code_middle|>", "<|middle|>",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
})
_USER_NAMES = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


def _token_flags(vocab: _Vocab) -> tuple[np.ndarray, np.ndarray]:
    """(control, user_defined) bool [n_vocab] after llama.cpp's fixes by name; unknown tokens
    count as control (both are cut out of the text only when parsing special tokens)."""
    control = np.isin(vocab.types, (_CONTROL, _UNKNOWN))
    user = vocab.types == _USER_DEFINED
    ids = vocab.ids
    control[[ids[t] for t in _CONTROL_NAMES if t in ids]] = True
    has = lambda *names: any(t in ids for t in names)  # noqa: E731
    harmony_end = has("<|end|>") and has("<|call|>", "<|calls|>") and has("<|return|>", "<|flush|>")
    made_user = [*_USER_NAMES, "<|end|>"] if harmony_end else _USER_NAMES
    for i in [ids[t] for t in made_user if t in ids]:
        control[i], user[i] = False, True
    if has("</s>") and has("<|tool_response>", "<|plamo:eos|>"):  # gemma4, plamo: a normal </s>
        control[ids["</s>"]] = user[ids["</s>"]] = False
    return control, user


def _added_tokens(vocab: _Vocab, control: np.ndarray, user: np.ndarray) -> list:
    """Tokens cut out of the raw text before the model sees it (llama.cpp's special cache);
    phi-3 models strip the whitespace after them."""
    from tokenizers import AddedToken

    phi3 = any(k in vocab.name.lower() for k in ("phi-3", "phi3"))
    keep_space = {"<unk>", "<s>", "<|endoftext|>"}
    out = []
    for i in np.nonzero(control | user)[0].tolist():
        text = vocab.tokens[i]
        out.append(AddedToken(text, special=bool(control[i]), normalized=False,
                              rstrip=phi3 and text not in keep_space))
    return out


def _bpe_merges(vocab: _Vocab) -> list[tuple[str, str]]:
    """GGUF merges "a b" (split at the first space after the first character), keeping those
    HF can apply: both parts and their concatenation in the vocab."""
    ids, out = vocab.ids, []
    for m in vocab.merges:
        cut = m.find(" ", 1)
        a, b = (m[:cut], m[cut + 1:]) if cut > 0 else ("", "")
        if a in ids and b in ids and a + b in ids:
            out.append((a, b))
    return out


def _spm_merges(vocab: _Vocab) -> list[tuple[str, str]]:
    """Every split (a, b) of every token a+b with both halves in the vocab, best score first
    (ties: lower token id first)."""
    ids, cands = vocab.ids, []
    for text, i in ids.items():
        for k in range(1, len(text)):
            if text[:k] in ids and text[k:] in ids:
                cands.append((-float(vocab.scores[i]), i, k))
    cands.sort()
    return [(vocab.tokens[i][:k], vocab.tokens[i][k:]) for _, i, k in cands]


def _build_bpe(vocab: _Vocab):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    if vocab.pre not in _PRE:
        raise UserError(f"tokenizer.ggml.pre = '{vocab.pre}' is not supported: use one of "
                        f"{', '.join(sorted(_PRE))}")
    regex_key, ignore_merges, _ = _PRE[vocab.pre]
    hf = HFTokenizer(models.BPE(vocab.ids, _bpe_merges(vocab), ignore_merges=ignore_merges))
    hf.pre_tokenizer = _byte_level_pre_tokenizer(regex_key)
    return hf


def _byte_level_pre_tokenizer(regex_key: str):
    """The regexes of ``_REGEXES[regex_key]`` as isolating splits, then bytes -> GPT-2 chars."""
    from tokenizers import Regex, pre_tokenizers

    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _REGEXES[regex_key]]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([*splits, byte_level])


def _build_gemma4(vocab: _Vocab):
    """``gemma4``: BPE on raw UTF-8 with spaces as ``▁`` and ``<0xXX>`` byte fallback, split only
    at newline runs; a run of newlines that is itself a token is taken whole."""
    from tokenizers import AddedToken, Regex
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers, pre_tokenizers

    hf = HFTokenizer(models.BPE(vocab.ids, _bpe_merges(vocab), byte_fallback=True))
    hf.normalizer = normalizers.Replace(" ", _SPACE)
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(_NEWLINES), behavior="isolated")
    runs = [t for t in vocab.ids if not t.strip("\n")]
    hf.add_tokens([AddedToken(t, normalized=False) for t in runs])
    return hf


def _build_spm(vocab: _Vocab, add_space_prefix: bool):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers

    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    hf = HFTokenizer(models.BPE(vocab.ids, _spm_merges(vocab), unk_token=unk, byte_fallback=True))
    escape = normalizers.Replace(" ", _SPACE)
    hf.normalizer = (normalizers.Sequence([normalizers.Prepend(_SPACE), escape])
                     if add_space_prefix else escape)
    return hf


def _build(vocab: _Vocab) -> tuple[Any, str, bool]:
    """(HF tokenizer, kind, add_space_prefix) for the vocab's model."""
    if vocab.model == "gpt2":
        return _build_bpe(vocab), "bpe", False
    if vocab.model == "gemma4":
        return _build_gemma4(vocab), "gemma4", False
    if vocab.model == "llama":
        prefix = True if vocab.add_space_prefix is None else vocab.add_space_prefix
        return _build_spm(vocab, prefix), "spm", prefix
    raise UserError(f"tokenizer.ggml.model = '{vocab.model}' is not supported: only 'gpt2' "
                    "(byte-level BPE), 'llama' (SentencePiece) and 'gemma4' are")


_DEFAULT_BOS = {"llama": True, "gemma4": True, "bert": True}  # tokenizer.ggml.model -> add_bos


def bos_rule(model: str, pre: str, key: bool | None) -> bool:
    """llama-vocab's rule (the one BOS rule): the ``tokenizer.ggml.add_bos_token`` key, else the
    default of the vocab type (gpt2: per pre-tokenizer); gemma4 turns a false key on."""
    if model == "gpt2":
        default = _PRE.get(pre, _PRE["default"])[2]
    else:
        default = _DEFAULT_BOS.get(model, False)
    return default if key is None or model == "gemma4" else key


def add_bos(meta: dict[str, Any]) -> bool:
    """``bos_rule`` of a GGUF's metadata."""
    return bos_rule(str(meta.get("tokenizer.ggml.model") or "llama"),
                    str(meta.get("tokenizer.ggml.pre") or "default"),
                    _opt_bool(meta.get("tokenizer.ggml.add_bos_token")))


class Tokenizer:
    """llama.cpp-compatible encode/decode for one GGUF vocab (``gpt2``, ``llama``, ``gemma4``)."""

    def __init__(self, vocab: _Vocab) -> None:
        self._vocab = vocab
        self._hf, self.kind, self.add_space_prefix = _build(vocab)
        self._control, user = _token_flags(vocab)
        self._hf.add_tokens(_added_tokens(vocab, self._control, user))
        self.bos_id, self.eos_id = vocab.bos_id, vocab.eos_id
        self.add_bos = bos_rule(vocab.model, vocab.pre, vocab.add_bos)
        self.add_eos = False if vocab.add_eos is None else vocab.add_eos

    @classmethod
    def from_gguf(cls, model: Any) -> Tokenizer:
        """From an open ``GGUFModel`` (its ``meta``)."""
        return cls(_Vocab.from_meta(model.meta, str(model.paths[0])))

    @classmethod
    def from_gguf_path(cls, path: str | Path) -> Tokenizer:
        """From a GGUF file, vocab-only ones (no tensors) included."""
        from ._gguf import open_gguf

        return cls.from_gguf(open_gguf(path))

    @property
    def n_vocab(self) -> int:
        return len(self._vocab.tokens)

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None,
               parse_special: bool = False) -> list[int]:
        """Token ids of ``text`` as ``llama_tokenize`` gives them; ``None`` = the GGUF's choice."""
        self._hf.encode_special_tokens = not parse_special
        ids = self._hf.encode(text, add_special_tokens=False).ids if text else []
        bos = self.add_bos if add_bos is None else add_bos
        eos = self.add_eos if add_eos is None else add_eos
        head, tail = self._special(bos, self.bos_id, "BOS"), self._special(eos, self.eos_id, "EOS")
        return [*head, *ids, *tail]

    def _special(self, wanted: bool, token: int | None, name: str) -> list[int]:
        if not wanted:
            return []
        if token is None:
            raise UserError(f"this vocab has no {name} token: encode with "
                            f"add_{name.lower()}=False")
        return [token]

    def decode(self, ids: list[int] | np.ndarray, special: bool = False) -> str:
        """Text of ``ids``; control tokens render only when ``special``."""
        pieces = self._pieces
        out = b"".join(pieces[i] if i >= 0 else b"" for i in np.asarray(ids, np.int64).tolist()
                       if special or not self._control[i])
        text = out.decode("utf-8", errors="replace")
        if self.add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text

    @cached_property
    def _pieces(self) -> list[bytes]:
        v = self._vocab
        if self.kind == "bpe":
            to_byte = {c: b for b, c in _byte_to_unicode().items()}
            return [_bpe_piece(t, ty, to_byte) for t, ty in zip(v.tokens, v.types.tolist())]
        return [_spm_piece(t, ty) for t, ty in zip(v.tokens, v.types.tolist())]


def _bpe_piece(text: str, ttype: int, to_byte: dict[str, int]) -> bytes:
    if ttype != _NORMAL or any(c not in to_byte for c in text):
        return text.encode("utf-8")
    return bytes(to_byte[c] for c in text)


def _spm_piece(text: str, ttype: int) -> bytes:
    if ttype == _BYTE and len(text) == 6 and text.startswith("<0x"):
        return bytes([int(text[3:5], 16)])
    return text.replace(_SPACE, " ").encode("utf-8")
