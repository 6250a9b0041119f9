"""llama-quantize's FTYPE tables, once: names per project, ids, base types, imatrix rules.

    FTYPES[target]               FTYPE names that project's llama-quantize accepts (order of its help)
    canonical_ftype(f, target)   upper-cased, aliases resolved (Q4_K -> Q4_K_M); MixError if unknown
    base_type(f, target)         the mix's default ggml type (Q4_K_M -> q4_K, IQ2_S -> iq2_xs)
    ftype_id(f, target)          llama_ftype value written as ``general.file_type``
    ftype_of_type(type, target)  the FTYPE whose base type is ``type`` (None if no plain one)
    needs_imatrix(name, type, target, ftype)   llama-quantize refuses this tensor at this type
                                 without an imatrix (token_embd/output exempt)

From mainline ``include/llama.h`` / ``tools/quantize/quantize.cpp`` and ik's ``llama.h`` /
``examples/quantize/quantize.cpp`` (spec sections 3.2-3.4).
"""

from __future__ import annotations

from quant import UserError, check_target, get_type

_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
_COMMON = ("Q4_0 Q4_1 Q5_0 Q5_1 IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ1_S IQ1_M Q2_K Q2_K_S IQ3_XXS IQ3_S "
           "IQ3_M Q3_K IQ3_XS Q3_K_S Q3_K_M Q3_K_L IQ4_NL IQ4_XS Q4_K Q4_K_S Q4_K_M Q5_K Q5_K_S "
           "Q5_K_M Q6_K Q8_0 F16 BF16 F32").split()
FTYPES: dict[str, list[str]] = {
    "mainline": _COMMON + "Q1_0 Q2_0 MXFP4_MOE TQ1_0 TQ2_0".split(),
    "ik": _COMMON + ("Q6_0 MXFP4 IQ1_BN IQ2_BN IQ3_KT IQ4_KT Q8_KV IQ4_KS IQ4_KSS IQ5_KS IQ2_K "
                     "IQ2_KS IQ1_KT IQ2_KT IQ2_KL IQ3_KS IQ3_K IQ3_KL IQ4_K IQ5_K IQ6_K").split(),
}
_BASE = {"Q2_K_S": "q2_K", "IQ3_XS": "iq3_s", "Q3_K_S": "q3_K", "Q3_K_M": "q3_K",
         "Q3_K_L": "q3_K", "Q4_K_S": "q4_K", "Q4_K_M": "q4_K", "Q5_K_S": "q5_K",
         "Q5_K_M": "q5_K", "IQ2_S": "iq2_xs", "IQ2_M": "iq2_s", "IQ3_M": "iq3_s",
         "MXFP4_MOE": "mxfp4", "IQ3_KL": "iq3_k"}

# llama_ftype (general.file_type); ids 0..32 are shared by both projects
_IDS_COMMON = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
               "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14,
               "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ2_XXS": 19,
               "IQ2_XS": 20, "Q2_K_S": 21, "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24,
               "IQ4_NL": 25, "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29, "IQ4_XS": 30,
               "IQ1_M": 31, "BF16": 32}
_IDS = {
    "mainline": {**_IDS_COMMON, "TQ1_0": 36, "TQ2_0": 37, "MXFP4_MOE": 38, "Q1_0": 40,
                 "Q2_0": 41},
    "ik": {**_IDS_COMMON, "MXFP4": 38, "Q6_0": 135, "IQ1_BN": 136, "IQ2_BN": 137, "IQ2_K": 138,
           "IQ3_K": 139, "IQ4_K": 140, "IQ5_K": 141, "IQ6_K": 142, "IQ4_KS": 145,
           "IQ3_KL": 146, "IQ2_KS": 147, "IQ4_KSS": 148, "Q8_KV": 149, "IQ5_KS": 150,
           "IQ2_KT": 151, "IQ3_KT": 152, "IQ4_KT": 153, "IQ3_KS": 154, "IQ2_KL": 155,
           "IQ1_KT": 156},
}

# type -> the FTYPE whose base type it is (FTYPEs refused without an imatrix are left out)
_TYPE_FTYPE_COMMON = {
    "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q8_0": "Q8_0",
    "q2_K": "Q2_K", "q3_K": "Q3_K_S", "q4_K": "Q4_K_S", "q5_K": "Q5_K_S", "q6_K": "Q6_K",
    "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS", "iq3_s": "IQ3_S", "iq3_xxs": "IQ3_XXS",
}
_TYPE_FTYPE = {
    "mainline": {**_TYPE_FTYPE_COMMON, **{t: t.upper() for t in ("tq1_0", "tq2_0", "q1_0",
                                                                 "q2_0")}},
    "ik": {**_TYPE_FTYPE_COMMON, **{t: t.upper() for t in (
        "q6_0", "q8_KV", "iq4_ks", "iq4_kss", "iq5_ks", "iq2_k", "iq3_k", "iq4_k", "iq5_k",
        "iq6_k", "iq2_ks", "iq3_ks", "iq2_kl", "iq3_kt", "iq4_kt", "iq1_bn", "iq2_bn", "mxfp4")}},
}

# types llama-quantize will not write without an imatrix (tensor_requires_imatrix)
_NEEDS_IMATRIX = {
    "mainline": frozenset("iq3_xxs iq2_xxs iq2_xs iq2_s iq1_m iq1_s".split()),
    "ik": frozenset("iq2_xxs iq2_xs iq2_s iq1_s iq1_m iq1_kt iq2_kt".split()),
}
_IMATRIX_EXEMPT = {"mainline": ("token_embd.weight", "per_layer_token_embd.weight",
                                "output.weight"),
                   "ik": ("token_embd.weight", "output.weight")}
IK_FTYPES_NEED_IMATRIX = frozenset("IQ2_XS IQ2_XXS IQ2_S Q2_K_S IQ1_S IQ1_M".split())


class MixError(UserError):
    """An FTYPE the chosen llama-quantize does not accept, or refuses without an imatrix."""


def canonical_ftype(ftype: str, target: str) -> str:
    f = str(ftype).upper()
    if f not in FTYPES[check_target(target)]:
        raise MixError(f"llama-quantize ({target}) has no mix '{ftype}': use one of "
                       f"{', '.join(FTYPES[target])}")
    return _ALIASES.get(f, f)


def base_type(ftype: str, target: str) -> str:
    f = canonical_ftype(ftype, target)
    return _BASE.get(f) or get_type(f).name


def ftype_id(ftype: str, target: str) -> int:
    return _IDS[target][canonical_ftype(ftype, target)]


def ftype_of_type(type_: str, target: str) -> str | None:
    return _TYPE_FTYPE[check_target(target)].get(type_)


def imatrix_exempt(name: str, target: str) -> bool:
    """Embeddings and the output head are quantized without imatrix rules."""
    return name in _IMATRIX_EXEMPT[target]


def needs_imatrix(name: str, type_: str, target: str, ftype: str | None = None) -> bool:
    """Whether llama-quantize refuses this tensor at this type without an imatrix (q2_K only
    inside a Q2_K_S file)."""
    if imatrix_exempt(name, target):
        return False
    return type_ in _NEEDS_IMATRIX[target] or (type_ == "q2_K" and ftype == "Q2_K_S")
