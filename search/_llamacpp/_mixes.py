"""llama-quantize's default mixes: the type each tensor gets for an FTYPE (spec sections 3.2, 3.3).

    FTYPES[target]                      the FTYPE (mix) names that target's llama-quantize accepts
    base_type(ftype, target)            the mix's default ggml type (Q4_K_M -> q4_K, IQ2_S -> iq2_xs)
    mix_types(model, ftype, target, imatrix=, pure=) -> {quantizable tensor name: ggml type written}
                                        (MixError where llama-quantize refuses to run without an imatrix)

A port of mainline ``llama_tensor_get_type_impl`` and ik ``llama_tensor_get_type``. Each tool's
rules are tables of ``_R(ftypes, when, then)`` rows per tensor category, first match wins; a
matching row whose ``then`` gives None keeps the base type (the source's inner ``if`` that ends
the chain). Tensors are visited in the tool's order (mainline: by layer, then name; ik: file
order) since the attn_v / ffn_* counters feed ``use_more_bits``. The fallback of section 3.3
(``quant.resolve``) is applied last, as both tools do.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from objectives import GGUFModel, TensorInfo, layer_of
from quant import get_type, resolve

from ._ftypes import IK_FTYPES_NEED_IMATRIX, MixError, base_type, canonical_ftype
from ._ftypes import needs_imatrix

# ---------------------------------------------------------------- per-file state

@dataclass
class _Mix:
    """The quantize state of one file, plus the tensor being typed (``name``, ``i``, ``n``)."""

    ftype: str
    base: str
    imatrix: bool
    arch: str
    gqa: int
    n_expert: int
    n_layer: int
    size: str  # "70B", "8B" or "": llama.cpp's model type, where a rule asks for it
    big_vocab: bool
    tied: bool
    n_attn_v: int
    seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    name: str = ""
    i: int = 0
    n: int = 0

    @property
    def llama3_big(self) -> bool:  # ik: Llama-3 8B/70B
        return self.big_vocab and self.size in ("8B", "70B")


@dataclass(frozen=True)
class _R:
    ftypes: frozenset[str] | None  # None: any FTYPE
    when: Callable[[_Mix], bool] | None
    then: str | None | Callable[[_Mix], str | None]


def _r(ftypes: str, when=None, then=None) -> _R:
    return _R(None if ftypes == "*" else frozenset(ftypes.split()), when, then)


def _first(rules: list[_R], c: _Mix) -> str:
    for r in rules:
        if (r.ftypes is None or c.ftype in r.ftypes) and (r.when is None or r.when(c)):
            t = r.then(c) if callable(r.then) else r.then
            return c.base if t is None else t
    return c.base


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _umb(c: _Mix) -> bool:
    return use_more_bits(c.i, c.n)


def _gqa(k: int) -> Callable[[_Mix], bool]:
    return lambda c: c.gqa >= k


def _moe(k: int, exact: bool = False) -> Callable[[_Mix], bool]:
    return (lambda c: c.n_expert == k) if exact else (lambda c: c.n_expert >= k)


def _first8(c: _Mix) -> bool:
    return c.i < c.n // 8


def _falcon(c: _Mix) -> bool:
    return c.arch == "falcon"


def _iq2sm(c: _Mix, yes: str, no: str) -> str:
    return yes if c.ftype in ("IQ2_S", "IQ2_M") else no


# ------------------------------------------------ ffn_down rules both projects share

_DOWN_LOW = [
    _r("Q2_K", then="q3_K"),
    _r("Q2_K_S", then=lambda c: "q4_K" if _first8(c) else None),
    _r("IQ3_XXS", lambda c: not c.imatrix, lambda c: "q4_K" if _first8(c) else "q3_K"),
]
_DOWN_Q3_K_M = _r("Q3_K_M", then=lambda c: "q5_K" if c.i < c.n // 16
                  else "q4_K" if not _falcon(c) or _umb(c) else "q3_K")
_DOWN_Q3_K_L = _r("Q3_K_L", then=lambda c: "q4_K" if _falcon(c) else "q5_K")
_DOWN_Q4_K_M = [
    _r("Q4_K_M", _falcon, lambda c: "q6_K" if c.i < c.n // 16 else "q5_K" if _umb(c) else "q4_K"),
    _r("Q4_K_M", then=lambda c: "q6_K" if _umb(c) else None),
]
_DOWN_HIGH = [
    _r("Q5_K_M", _umb, "q6_K"),
    _r("Q4_K_S", lambda c: not _falcon(c) and _first8(c), "q5_K"),
    _r("Q4_0", lambda c: c.imatrix and _first8(c), "q4_1"),
    _r("Q5_0", lambda c: c.imatrix and _first8(c), "q5_1"),
]

# ---------------------------------------------------------------- mainline rules

_ML_LOW = frozenset("IQ2_XXS IQ2_XS IQ1_S IQ2_S IQ2_M IQ1_M".split())
_ML_TOKEN_EMBD = {**dict.fromkeys(("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"), "q2_K"),
                  **dict.fromkeys(("IQ2_S", "IQ2_M", "IQ3_XXS"), "iq3_s"),
                  **dict.fromkeys(("TQ1_0", "TQ2_0", "Q2_0"), "q4_K")}
_ML_MOE8_OUT = "Q2_K IQ3_XS IQ3_XXS Q3_K_S Q3_K_M IQ4_NL Q4_K_S Q4_K_M IQ3_S IQ3_M IQ4_XS"

_ML_RULES: dict[str, list[_R]] = {
    "attn_v": [
        _r("Q2_K", then=lambda c: "q4_K" if c.gqa >= 4 else "q3_K"),
        _r("Q2_K_S", _gqa(4), "q4_K"),
        _r("IQ3_XXS", then=lambda c: "q4_K" if c.gqa >= 4 else "iq3_xxs" if c.imatrix else "iq3_s"),
        _r("IQ3_XS IQ3_S", _gqa(4), "q4_K"),
        _r("IQ3_M", then="q4_K"),
        _r("Q3_K_M", then=lambda c: "q5_K" if c.i < 2 else "q4_K"),
        _r("Q3_K_L", then="q5_K"),
        _r("IQ4_NL IQ4_XS", _gqa(4), "q5_K"),
        _r("Q4_K_M Q5_K_M", _umb, "q6_K"),
        _r("Q4_K_S", lambda c: c.i < 4, "q5_K"),
    ],
    "attn_k": [_r("*", _moe(8, True), "q8_0"), _r("IQ3_XS", then="iq3_xxs"),
               _r("IQ3_XXS", then="iq2_s")],
    "attn_q": [_r("IQ3_XS", then="iq3_xxs"), _r("IQ3_XXS", then="iq2_s")],
    "ffn_down": [
        *_DOWN_LOW,
        _DOWN_Q3_K_M,
        _r("IQ3_M", lambda c: _first8(c) or (c.n_expert == 8 and _umb(c)), "q4_K"),
        _DOWN_Q3_K_L,
        *_DOWN_Q4_K_M,
        _r("IQ4_NL IQ4_XS", lambda c: _first8(c) and not c.imatrix, "q5_K"),
        *_DOWN_HIGH,
    ],
    "attn_output": [
        _r("Q3_K_L", _falcon, "q4_K"), _r("*", _falcon),
        _r(_ML_MOE8_OUT, _moe(8, True), "q5_K"), _r("*", _moe(8, True)),
        _r("Q2_K", then="q3_K"), _r("IQ3_XXS", then="iq3_s"), _r("Q3_K_M", then="q4_K"),
        _r("Q3_K_L", then="q5_K"), _r("IQ3_M", then="q4_K"),
    ],
    "ffn_gate": [_r("IQ3_XS", lambda c: c.n // 8 <= c.i < 7 * c.n // 8, "iq3_xxs")],
}
_ML_RULES["ffn_up"] = _ML_RULES["ffn_gate"]
_ML_LOW_RULES: dict[str, list[_R]] = {
    "attn_v": [_r("*", lambda c: c.gqa >= 4 or c.n_expert >= 4, "q4_K"),
               _r("*", then=lambda c: _iq2sm(c, "iq3_s", "q2_K"))],
    "attn_k": [_r("*", _moe(8, True), "q4_K")],
    "ffn_down": [_r("*", _first8, lambda c: _iq2sm(c, "iq3_s", "q2_K"))],
    "attn_output": [_r("*", _moe(8, True), "q5_K"), _r("IQ1_S IQ1_M", then="iq2_xxs"),
                    _r("IQ2_S IQ2_M", then="iq3_s")],
}

# mainline tensor_get_category: (substring, category), first match
_ML_CATEGORIES = [("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),
                  ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                  ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                  ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")]


def _ml_category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    return next((cat for s, cat in _ML_CATEGORIES if s in name), "other")


def _ml_output(c: _Mix, ne0: int) -> str:
    if c.ftype == "MXFP4_MOE" or _falcon(c) or ne0 % get_type(c.base).block:
        return "q8_0"
    if c.ftype in _ML_LOW or c.ftype == "IQ3_XXS":
        return "q5_K"
    return c.base if c.base == "q8_0" else "q6_K"


def _ml_mxfp4(c: _Mix, t: TensorInfo, cat: str) -> str:
    experts = len(t.ne) > 2 and t.ne[2] > 1
    ffn = cat in ("ffn_up", "ffn_gate", "ffn_down")
    return "mxfp4" if experts and (c.arch != "bailingmoe3" or ffn) else "q8_0"


def _ml_post_attn_v(c: _Mix, t: str) -> str:
    if c.size == "70B" and t in ("q3_K", "q4_K"):
        t = "q5_K"
    return "q8_0" if c.n_expert == 8 else t


def _ml_type(c: _Mix, t: TensorInfo) -> str:
    cat = _ml_category(t.name)
    if cat == "output" or (c.tied and cat == "token_embd"):
        return _ml_output(c, t.ne[0])
    if c.ftype == "MXFP4_MOE":
        return _ml_mxfp4(c, t, cat)
    if cat == "token_embd":
        return _ML_TOKEN_EMBD.get(c.ftype, c.base)
    low = c.ftype in _ML_LOW
    _index(c, t.name, cat, raw=low)
    new = _first((_ML_LOW_RULES if low else _ML_RULES).get(cat, []), c)
    return _ml_post_attn_v(c, new) if cat == "attn_v" and not low else new


# ---------------------------------------------------------------- ik rules

_IK_LOW = frozenset("IQ2_XXS IQ2_XS IQ1_S IQ2_S IQ2_M IQ1_M IQ2_KS".split())
_IK_LOW_OUT = _IK_LOW | {"IQ3_XXS", "IQ2_K", "IQ3_K", "IQ3_KS", "IQ2_KL", "IQ2_KT", "IQ3_KT",
                         "IQ1_KT"}
_IK_TIED_IQ5K = frozenset("IQ3_S IQ3_M IQ3_KL IQ4_XS IQ4_KS IQ4_KSS".split())
_IK_KEEP_OUT = frozenset(("q8_0", "iq6_k", "q8_KV"))
_IK_TOKEN_EMBD = {**dict.fromkeys(("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"), "q2_K"),
                  **dict.fromkeys(("IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_KT"), "iq3_s"),
                  **dict.fromkeys(("IQ1_BN", "IQ2_BN"), "iq4_nl")}
# ik's attn_v bump for gqa >= 4 when no FTYPE rule matched
_IK_BUMP = {"q2_K": "iq3_s", "iq3_xxs": "iq3_s", "q3_K": "q4_K", "iq3_s": "q4_K",
            "iq3_k": "iq4_k", "iq3_ks": "iq4_ks", "iq2_kl": "iq4_ks", "q4_K": "q5_K",
            "iq4_xs": "q5_K", "iq4_nl": "q5_K", "iq4_k": "iq5_k", "iq4_ks": "iq5_k",
            "q5_K": "q6_K", "iq5_k": "iq6_k", "iq5_ks": "iq6_k"}
_IK_MOE_OUT = ("Q2_K IQ3_XS IQ3_XXS Q3_K_S Q3_K_M IQ4_NL Q4_K_S Q4_K_M IQ3_S IQ3_M IQ4_XS IQ4_K "
               "IQ4_KSS IQ4_KS IQ5_KS IQ2_K IQ3_K IQ3_KL IQ3_KT IQ3_KS")


def _ik_70b(c: _Mix) -> str | None:
    return {"q3_K": "q5_K", "q4_K": "q5_K", "iq3_k": "iq5_k"}.get(c.base)


def _ik_bump_ok(c: _Mix) -> bool:
    dflash = c.arch == "dflash-draft" and c.ftype in ("Q4_K_M", "Q5_K_M")
    return c.gqa >= 4 and not dflash


_IK_RULES: dict[str, list[_R]] = {
    "attn_v": [
        _r("*", _moe(4), "q8_0"),
        _r("*", lambda c: c.size == "70B", _ik_70b),
        _r("Q2_K", then=lambda c: "q4_K" if c.gqa >= 4 else "q3_K"),
        _r("IQ2_K", then=lambda c: "iq4_k" if c.gqa >= 2 else "iq3_k"),
        _r("Q2_K_S", _gqa(4), "q4_K"),
        _r("IQ3_XXS", then=lambda c: "q4_K" if c.gqa >= 4 else "iq3_k" if c.gqa >= 2
           else "iq3_xxs" if c.imatrix else "iq3_s"),
        _r("IQ3_KT", then=lambda c: "iq4_k" if c.gqa >= 4 else "iq3_k"),
        _r("IQ4_KT", then=lambda c: "iq5_k" if c.gqa >= 4 else "iq4_k"),
        _r("IQ3_XS IQ3_S IQ3_K", _gqa(2), "iq4_k"),
        _r("IQ3_KS IQ2_KL", _gqa(2), "iq4_ks"),
        _r("IQ3_KL IQ3_M", then=lambda c: "iq5_k" if c.gqa >= 2 else "iq4_k"),
        _r("Q3_K_M", then=lambda c: "q5_K" if c.i < 2 else "q4_K"),
        _r("Q3_K_L", then="q5_K"),
        _r("IQ4_NL IQ4_XS IQ4_KS IQ4_KSS IQ4_K", _gqa(2), "iq5_k"),
        _r("Q4_K_M Q5_K_M", _umb, "q6_K"),
        _r("Q4_K_S", lambda c: c.i < 4, "q5_K"),
        _r("Q5_K_S", then=lambda c: "q6_K" if c.llama3_big else None),
        _r("IQ5_K IQ5_KS", then=lambda c: "iq6_k" if c.llama3_big else None),
        _r("*", _ik_bump_ok, lambda c: _IK_BUMP.get(c.base)),
    ],
    "attn_k": [_r("*", _moe(4), "q8_0"), _r("IQ3_XS", then="iq3_xxs"),
               _r("IQ3_XXS", then="iq2_s")],
    "attn_q": [
        _r("IQ3_XS", then="iq3_xxs"), _r("IQ3_XXS", then="iq2_s"),
        _r("Q5_K_S", then=lambda c: "q4_K" if c.llama3_big else None),
        _r("IQ5_K", then=lambda c: "iq4_k" if c.llama3_big else None),
        _r("IQ5_KS", then=lambda c: "iq4_ks" if c.llama3_big else None),
    ],
    "ffn_down": [
        *_DOWN_LOW,
        _r("IQ3_KT", lambda c: not c.imatrix, lambda c: "iq4_k" if _first8(c) else "iq3_k"),
        _DOWN_Q3_K_M,
        _r("IQ3_M", lambda c: _first8(c) or (c.n_expert >= 4 and _umb(c)), "iq4_k"),
        _DOWN_Q3_K_L,
        _r("IQ3_KL", then=lambda c: "iq4_ks" if _umb(c) else "iq3_k"),
        *_DOWN_Q4_K_M,
        _r("IQ4_NL IQ4_XS IQ4_KS IQ4_KSS", lambda c: _first8(c) and not c.imatrix, "q5_K"),
        *_DOWN_HIGH,
    ],
    "attn_output": [
        _r("Q3_K_L", _falcon, "q4_K"), _r("*", _falcon),
        _r(_IK_MOE_OUT, _moe(4), "q5_K"), _r("IQ2_KL", _moe(4), "iq4_ks"), _r("*", _moe(4)),
        _r("Q2_K", then="q3_K"), _r("IQ3_XXS", then="iq3_s"), _r("IQ3_KT", _gqa(4), "iq3_k"),
        _r("Q3_K_M", then="q4_K"), _r("Q3_K_L", then="q5_K"), _r("IQ3_M", then="iq4_k"),
        _r("IQ2_K", then="iq3_k"), _r("IQ3_KL", then="iq4_ks"),
    ],
    "ffn_gate": [_r("IQ3_XS", lambda c: c.n // 8 <= c.i < 7 * c.n // 8, "iq3_xxs"),
                 _r("IQ3_KL", _umb, "iq4_ks")],
}
_IK_RULES["ffn_up"] = _IK_RULES["ffn_gate"]
# ik tests "attn_q" before "attn_qkv.weight", so fused QKV takes the attn_q rules
_IK_RULES["attn_qkv"] = _IK_RULES["attn_q"]
_IK_LOW_RULES: dict[str, list[_R]] = {
    "attn_v": [_r("*", lambda c: c.gqa >= 4 or c.n_expert >= 4, "iq4_k"),
               _r("*", lambda c: c.gqa >= 2 or c.n_expert >= 2, "iq3_k"),
               _r("*", then=lambda c: _iq2sm(c, "iq3_s", "q2_K"))],
    "attn_k": [_r("*", _moe(8), "q4_K")],
    "attn_q": [_r("*", _moe(8), "q4_K")],
    "attn_qkv": [_r("*", _moe(8), "q4_K"), _r("*", then=lambda c: _iq2sm(c, "iq3_xxs", "iq2_k"))],
    "ffn_down": [_r("*", _first8, lambda c: _iq2sm(c, "iq3_s", "q2_K"))],
    "attn_output": [_r("*", _moe(4), "q5_K"), _r("IQ1_S IQ1_M", then="iq2_k"),
                    _r("IQ2_S IQ2_M", then="iq3_s")],
}
_FFN = ("ffn_down", "ffn_gate", "ffn_up")
_IK_KT2_RULES: dict[str, list[_R]] = {
    "attn_v": [_r("*", lambda c: c.gqa >= 4 or c.n_expert >= 4, "iq4_k"),
               _r("*", _gqa(2), "iq3_k"), _r("*", then="q2_K")],
    "attn_k": [_r("*", _moe(8), "q4_K")],
    "attn_q": [_r("*", _moe(8), "q4_K")],
    "attn_qkv": [_r("*", _moe(8), "q4_K"), _r("*", then="iq3_k")],
    "shexp": [_r("*", then="iq4_k")],
    "ffn_down": [_r("*", _first8, "iq3_k")],
    "attn_output": [_r("*", _moe(4), "q5_K"), _r("*", then="iq3_k")],
}
_IK_CATEGORIES = [("attn_v.weight", "attn_v"), ("attn_qkv.weight", "attn_qkv"),
                  ("attn_k", "attn_k"), ("attn_q", "attn_q"), ("ffn_down", "ffn_down"),
                  ("attn_output.weight", "attn_output"), ("ffn_gate", "ffn_gate"),
                  ("ffn_up", "ffn_up")]


def _ik_category(name: str) -> str:
    return next((cat for s, cat in _IK_CATEGORIES if s in name), "other")


def _ik_output(c: _Mix, ne0: int) -> str:
    if _falcon(c) or ne0 % 256:
        return "q8_0"
    if c.ftype in _IK_LOW_OUT:
        return "iq4_k" if c.tied else "q5_K"
    if c.ftype in _IK_TIED_IQ5K and c.tied:
        return "iq5_k"
    return c.base if c.base in _IK_KEEP_OUT else "q6_K"


def _ik_kt2_category(c: _Mix, name: str, cat: str) -> str:
    """IQ2_KT tests MoE blk.0 ffn tensors and shared experts before ffn_down."""
    if cat in _FFN and c.n_expert >= 8 and name.startswith("blk.0."):
        return "blk0_ffn"
    if cat not in ("attn_v", "attn_k", "attn_qkv") and "_shexp.weight" in name:
        return "shexp"
    return cat


def _ik_type(c: _Mix, t: TensorInfo) -> str:
    if t.name == "output.weight" or (c.tied and t.name == "token_embd.weight"):
        return _ik_output(c, t.ne[0])
    if t.name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return _IK_TOKEN_EMBD.get(c.ftype, c.base)
    cat, low = _ik_category(t.name), c.ftype in _IK_LOW
    if c.ftype == "IQ2_KT":
        cat = _ik_kt2_category(c, t.name, cat)
        if cat == "blk0_ffn":
            return "iq3_k"
    _index(c, t.name, cat, raw=low)
    rules = _IK_LOW_RULES if low else _IK_KT2_RULES if c.ftype == "IQ2_KT" else _IK_RULES
    return _first(rules.get(cat, []), c)


# ---------------------------------------------------------------- driver

def _check_imatrix(c: _Mix, written: dict[str, str], target: str) -> None:
    """Raise where a real run without ``--imatrix`` stops (mainline ``--dry-run`` only warns)."""
    if c.imatrix:
        return
    bad = next(((n, t) for n, t in written.items() if needs_imatrix(n, t, target, c.ftype)),
               None)
    if bad or (target == "ik" and c.ftype in IK_FTYPES_NEED_IMATRIX):
        what = f": {bad[0]} would be {bad[1]}" if bad else ""
        raise MixError(f"llama-quantize ({target}) refuses {c.ftype} without an imatrix{what}: "
                       "give an imatrix file")


def _index(c: _Mix, name: str, cat: str, raw: bool) -> None:
    """Set ``c.i``/``c.n`` for the rules: the attn_v counter, or the ffn layer (``layer_info``)."""
    c.name, c.i, c.n = name, 0, 0
    if cat == "attn_v":
        c.i, c.n = c.seen[cat], c.n_attn_v
    elif cat in _FFN:
        c.i, c.n = c.seen[cat], c.n_layer
        if c.n_expert > 1 and not raw:
            c.i = _layer_of(name)
    else:
        return
    c.seen[cat] += 1


def _layer_of(name: str) -> int:
    layer = layer_of(name)
    if layer is None:
        raise MixError(f"cannot find the layer of MoE tensor '{name}' (expected 'blk.N.'): "
                       "llama-quantize would refuse this model too")
    return layer


# llama.cpp's model type, only where a mix rule reads it (LLM_TYPE_70B, LLM_TYPE_8B)
_SIZE_80_LAYERS = {"deci": "70B", "qwen2": "70B", "olmo": "70B"}


def _model_size(arch: str, n_layer: int, n_head: int, n_head_kv: int, n_vocab: int) -> str:
    if arch == "llama":
        if n_layer == 80:
            return "70B" if n_head != n_head_kv else ""
        if n_layer == 36 or (n_layer == 32 and n_vocab >= 40000 and n_vocab != 49152):
            return "8B"
        return ""
    return _SIZE_80_LAYERS.get(arch, "") if n_layer == 80 else ""


def _n_attn_v(model: GGUFModel, target: str) -> int:
    keys = (("attn_v.weight", "attn_qkv.weight") if target == "ik"
            else ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight"))
    return sum(any(k in n for k in keys) for n in model.tensors)


def _state(model: GGUFModel, ftype: str, target: str, imatrix: bool) -> _Mix:
    hp = model.hparams()
    return _Mix(ftype=ftype, base=base_type(ftype, target), imatrix=imatrix, arch=hp.arch,
                gqa=hp.n_head // hp.n_head_kv if hp.n_head_kv else 0,
                n_expert=hp.n_expert, n_layer=hp.n_layer,
                size=_model_size(hp.arch, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_vocab),
                big_vocab=hp.n_vocab >= 127999, tied="output.weight" not in model.tensors,
                n_attn_v=_n_attn_v(model, target))


def _visit_order(tensors: list[TensorInfo], target: str) -> list[TensorInfo]:
    """Mainline walks its weights map (sorted by layer, -1 for non-layer tensors, then name)."""
    if target == "ik":
        return tensors

    def key(t: TensorInfo) -> tuple[int, str]:
        layer = layer_of(t.name)
        return (-1 if layer is None else layer, t.name)

    return sorted(tensors, key=key)


def mix_types(model: GGUFModel, ftype: str, target: str, *, imatrix: bool,
              pure: bool = False) -> dict[str, str]:
    """The ggml type ``llama-quantize [--pure] [--imatrix] in out FTYPE`` of ``target`` writes
    for every quantizable tensor of ``model`` (file order), fallbacks included."""
    c = _state(model, canonical_ftype(ftype, target), target, imatrix)
    quantized = not get_type(c.base).float_type
    rule = _ml_type if target == "mainline" else _ik_type
    out: dict[str, str] = {}
    for t in _visit_order(model.quantizable(target), target):
        typ = rule(c, t) if quantized and not pure else c.base
        out[t.name] = resolve(typ, t.shape, target) if quantized else typ
    _check_imatrix(c, out, target)
    return {t.name: out[t.name] for t in model.quantizable(target)}
