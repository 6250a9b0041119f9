"""Kernel registry: one quantizer per (type, target), one dequantizer per type.

Kernels work on rows (numpy shape convention, last axis = row):

    quantize_rows(x, w) -> q     x: f32 [R, ne0]; w: f32 [ne0] imatrix or None; q: uint8 [R, row_bytes]
    dequantize_rows(q, ne0) -> y q: uint8 [R, row_bytes]; y: f32 [R, ne0]

Both must be traceable by ``jax.jit`` with ``ne0`` static (it is read from the shapes). A type
family registers its kernels from its own module with ``register_quantizer`` /
``register_dequantizer``; registering twice fails loudly with the type's name.
"""

from __future__ import annotations

from typing import Callable

from ._catalog import TARGETS, check_target, get_type
from ._errors import KernelMissingError

QuantizeFn = Callable  # (x [R, ne0] f32, w [ne0] f32 | None) -> uint8 [R, row_bytes]
DequantizeFn = Callable  # (q uint8 [R, row_bytes], ne0: int) -> f32 [R, ne0]

_QUANTIZERS: dict[tuple[str, str], QuantizeFn] = {}
_DEQUANTIZERS: dict[tuple[str, str], DequantizeFn] = {}


def _targets(targets: str | tuple[str, ...]) -> tuple[str, ...]:
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    return tuple(check_target(t) for t in targets)


def register_quantizer(type_name: str, targets: str | tuple[str, ...] = TARGETS):
    """Decorator: register ``fn`` as the quantizer of ``type_name`` for ``targets``."""

    def deco(fn: QuantizeFn) -> QuantizeFn:
        name = get_type(type_name).name
        for tgt in _targets(targets):
            if (name, tgt) in _QUANTIZERS:
                raise RuntimeError(f"quantizer for {name} ({tgt}) registered twice")
            _QUANTIZERS[(name, tgt)] = fn
        return fn

    return deco


def register_dequantizer(type_name: str, targets: str | tuple[str, ...] = TARGETS):
    """Decorator: register ``fn`` as the dequantizer of ``type_name`` (same for both targets
    unless a target registers its own, e.g. iq6_k's table vs ggml's polynomial)."""

    def deco(fn: DequantizeFn) -> DequantizeFn:
        name = get_type(type_name).name
        for tgt in _targets(targets):
            if (name, tgt) in _DEQUANTIZERS:
                raise RuntimeError(f"dequantizer for {name} ({tgt}) registered twice")
            _DEQUANTIZERS[(name, tgt)] = fn
        return fn

    return deco


def quantizer(type_name: str, target: str) -> QuantizeFn:
    name = get_type(type_name).name
    fn = _QUANTIZERS.get((name, check_target(target)))
    if fn is None:
        raise KernelMissingError(f"no {target} quantizer for {name} here: choose another type")
    return fn


def dequantizer(type_name: str, target: str = "mainline") -> DequantizeFn:
    name = get_type(type_name).name
    fn = _DEQUANTIZERS.get((name, check_target(target)))
    if fn is None:
        raise KernelMissingError(f"no dequantizer for {name} here")
    return fn


def has_quantizer(type_name: str, target: str) -> bool:
    return (get_type(type_name).name, target) in _QUANTIZERS


def searchable_types(target: str) -> list[str]:
    """Types the search may offer for ``target``: those with a quantizer and a dequantizer."""
    return sorted(n for (n, t) in _QUANTIZERS if t == target and (n, t) in _DEQUANTIZERS)
