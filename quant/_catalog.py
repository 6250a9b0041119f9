"""The quant-type catalog: the single source of every size and fallback in the project.

Symbols (numpy shape convention: ``shape[-1]`` is the row length ``ne0``, the quantized axis):

    block      weights per block
    type_size  bytes per block
    row_meta   bytes stored once per row, in front of the row's blocks (ik row-scaled types)
    row bytes  row_meta + (ne0 / block) * type_size
    nbytes     n_rows * row bytes, n_rows = prod(shape[:-1])        (ggml_nbytes)

Fallbacks follow llama-quantize (spec section 3.3): mainline checks ``ne0 % block`` of the
requested type and maps 256-block types to a 32-block one, ending at f16 when even that does
not fit; ik checks ``ne0 % 256`` for its 256-block types only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from ._errors import FallbackError, TargetError, UnknownTypeError

TARGETS = ("mainline", "ik")


@dataclass(frozen=True)
class QuantType:
    """One ggml type: its layout and where it exists."""

    name: str  # ggml_type_name spelling, as both llama-quantize CLIs take it
    block: int
    type_size: int
    row_meta: int
    mainline_id: int | None
    ik_id: int | None
    fallback_mainline: str | None = None
    fallback_ik: str | None = None
    float_type: bool = False  # f32/f16/bf16: not "quantized" in ggml's sense

    def ggml_id(self, target: str) -> int | None:
        return self.mainline_id if target == "mainline" else self.ik_id

    def in_target(self, target: str) -> bool:
        return self.ggml_id(check_target(target)) is not None

    def row_nbytes(self, ne0: int) -> int:
        if ne0 % self.block:
            raise FallbackError(f"rows of {ne0} cannot hold whole {self.name} blocks of {self.block}")
        return self.row_meta + (ne0 // self.block) * self.type_size

    def bpw(self, ne0: int) -> float:
        return 8.0 * self.row_nbytes(ne0) / ne0


def _t(name, block, size, meta, mid, iid, fb_m=None, fb_i=None, flt=False) -> QuantType:
    return QuantType(name, block, size, meta, mid, iid, fb_m, fb_i, flt)


# name, block, bytes/block, row meta, mainline id, ik id, mainline fallback, ik fallback
_TABLE = [
    _t("f32", 1, 4, 0, 0, 0, flt=True),
    _t("f16", 1, 2, 0, 1, 1, flt=True),
    _t("bf16", 1, 2, 0, 30, 30, flt=True),
    _t("q8_0", 32, 34, 0, 8, 8),
    _t("q4_0", 32, 18, 0, 2, 2),
    _t("q4_1", 32, 20, 0, 3, 3),
    _t("q5_0", 32, 22, 0, 6, 6),
    _t("q5_1", 32, 24, 0, 7, 7),
    _t("q6_0", 32, 26, 0, None, 133),
    _t("q8_KV", 32, 32, 8, None, 151),
    _t("q2_K", 256, 84, 0, 10, 10, "q4_0", "iq4_nl"),
    _t("q3_K", 256, 110, 0, 11, 11, "q4_0", "iq4_nl"),
    _t("q4_K", 256, 144, 0, 12, 12, "q5_0", "q5_0"),
    _t("q5_K", 256, 176, 0, 13, 13, "q5_1", "q6_0"),
    _t("q6_K", 256, 210, 0, 14, 14, "q8_0", "q8_0"),
    _t("iq4_nl", 32, 18, 0, 20, 20),
    _t("iq4_xs", 256, 136, 0, 23, 23, "iq4_nl", "iq4_nl"),
    _t("iq2_xxs", 256, 66, 0, 16, 16, "iq4_nl", "iq4_nl"),
    _t("iq2_xs", 256, 74, 0, 17, 17, "iq4_nl", "iq4_nl"),
    _t("iq2_s", 256, 82, 0, 22, 22, "iq4_nl", "iq4_nl"),
    _t("iq3_xxs", 256, 98, 0, 18, 18, "iq4_nl", "iq4_nl"),
    _t("iq3_s", 256, 110, 0, 21, 21, "iq4_nl", "iq4_nl"),
    _t("iq1_s", 256, 50, 0, 19, 19, "iq4_nl", "iq4_nl"),
    _t("iq1_m", 256, 56, 0, 29, 29, "iq4_nl", "iq4_nl"),
    _t("iq2_k", 256, 76, 0, None, 137, None, "iq4_nl"),
    _t("iq3_k", 256, 110, 0, None, 138, None, "iq4_nl"),
    _t("iq4_k", 256, 144, 0, None, 139, None, "q5_0"),
    _t("iq5_k", 256, 176, 0, None, 140, None, "q6_0"),
    _t("iq6_k", 256, 212, 0, None, 141, None, "q8_0"),
    _t("iq4_ks", 256, 136, 4, None, 144, None, "iq4_nl"),
    _t("iq4_kss", 256, 128, 4, None, 146, None, "iq4_nl"),
    _t("iq5_ks", 256, 168, 4, None, 152, None, "q5_0"),
    _t("iq2_ks", 256, 70, 2, None, 145, None, "iq4_nl"),
    _t("iq3_ks", 256, 102, 2, None, 156, None, "iq4_nl"),
    _t("iq2_kl", 256, 86, 2, None, 157, None, "iq4_nl"),
    _t("iq1_kt", 256, 56, 4, None, 158, None, "iq4_nl"),
    _t("iq2_kt", 256, 68, 4, None, 153, None, "iq4_nl"),
    _t("iq3_kt", 256, 100, 4, None, 154, None, "iq4_nl"),
    _t("iq4_kt", 256, 128, 4, None, 155, None, "iq4_nl"),
    _t("mxfp4", 32, 17, 0, 39, 39),
    _t("tq1_0", 256, 54, 0, 34, None, "q4_0"),
    _t("tq2_0", 256, 66, 0, 35, None, "q4_0"),
    _t("nvfp4", 64, 36, 0, 40, None),
    _t("q1_0", 128, 18, 0, 41, 41),
    _t("q2_0", 64, 18, 0, 42, None, "q4_0"),
    _t("iq1_bn", 64, 13, 2, None, 134),
    _t("iq2_bn", 64, 16, 4, None, 135),
]

TYPES: dict[str, QuantType] = {t.name: t for t in _TABLE}
_BY_LOWER = {name.lower(): t for name, t in TYPES.items()}
_BY_ID = {tgt: {t.ggml_id(tgt): t for t in _TABLE if t.ggml_id(tgt) is not None} for tgt in TARGETS}


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise TargetError(f"unknown target '{target}': use one of {', '.join(TARGETS)}")
    return target


def get_type(name: str | QuantType) -> QuantType:
    """Look a type up by its ggml name; case-insensitive (``Q4_K`` and ``q4_k`` are ``q4_K``)."""
    if isinstance(name, QuantType):
        return name
    t = TYPES.get(name) or _BY_LOWER.get(str(name).lower())
    if t is None:
        raise UnknownTypeError(str(name), sorted(TYPES))
    return t


def type_in_target(name: str | QuantType, target: str) -> QuantType:
    """The type, or a TargetError naming the project that lacks it."""
    t = get_type(name)
    if not t.in_target(target):
        other = [x for x in TARGETS if t.in_target(x)]
        raise TargetError(
            f"type {t.name} does not exist in {target} llama.cpp"
            + (f" (only in {', '.join(other)}): choose another type or --target {other[0]}" if other else "")
        )
    return t


def type_by_id(ggml_id: int, target: str) -> QuantType:
    t = _BY_ID[check_target(target)].get(ggml_id)
    if t is None:
        raise UnknownTypeError(f"ggml type id {ggml_id} ({target})")
    return t


def n_rows(shape: Iterable[int]) -> int:
    return math.prod(tuple(shape)[:-1])


def tensor_nbytes(type_: str | QuantType, shape: Iterable[int]) -> int:
    """Bytes of a tensor of numpy ``shape`` (last axis = row) stored as ``type_`` (ggml_nbytes)."""
    shape = tuple(shape)
    return n_rows(shape) * get_type(type_).row_nbytes(shape[-1])


def _mainline_fallback(t: QuantType, ne0: int) -> QuantType:
    if ne0 % t.block == 0:
        return t
    if t.fallback_mainline is None and t.block > 32:
        raise FallbackError(
            f"llama-quantize (mainline) has no fallback for {t.name} on rows of {ne0}: choose a type "
            f"whose block divides {ne0}"
        )
    fb = TYPES[t.fallback_mainline] if t.fallback_mainline else t
    return fb if ne0 % fb.block == 0 else TYPES["f16"]


def _ik_fallback(t: QuantType, ne0: int) -> QuantType:
    if t.block == 256 and ne0 % 256 and t.fallback_ik is None:
        raise FallbackError(f"ik llama-quantize has no fallback for {t.name} on rows of {ne0}")
    fb = TYPES[t.fallback_ik] if (t.fallback_ik and ne0 % 256) else t
    if ne0 % fb.block:
        raise FallbackError(
            f"ik llama-quantize cannot write {fb.name} on rows of {ne0} (block {fb.block}): "
            "choose another type for this tensor"
        )
    return fb


def resolve(type_: str | QuantType, shape: Iterable[int], target: str) -> str:
    """The type llama-quantize of ``target`` really writes when asked for ``type_`` on ``shape``."""
    t = type_in_target(type_, target)
    ne0 = tuple(shape)[-1]
    fb = _mainline_fallback(t, ne0) if target == "mainline" else _ik_fallback(t, ne0)
    return fb.name


def resolved_nbytes(type_: str | QuantType, shape: Iterable[int], target: str) -> int:
    return tensor_nbytes(resolve(type_, shape, target), shape)


def recipe_types(target: str) -> list[str]:
    """Every type a recipe for ``target`` may name (floats and quant types), by name."""
    return [t.name for t in _TABLE if t.in_target(target)]
