"""Quant types (catalog and sizes) and JAX fake-quant kernels that reproduce ggml's quantizers."""

from __future__ import annotations

from . import _families  # noqa: F401  (registers the kernels)
from ._api import dequantize
from ._api import fake_quant
from ._api import quantize
from ._catalog import TARGETS
from ._catalog import TYPES
from ._catalog import QuantType
from ._catalog import check_target
from ._catalog import get_type
from ._catalog import recipe_types
from ._catalog import resolve
from ._catalog import resolved_nbytes
from ._catalog import tensor_nbytes
from ._catalog import type_by_id
from ._catalog import type_in_target
from ._errors import FallbackError
from ._errors import KernelMissingError
from ._errors import TargetError
from ._errors import UnknownTypeError
from ._errors import UserError
from ._registry import has_quantizer
from ._registry import register_dequantizer
from ._registry import register_quantizer
from ._registry import searchable_types
from ._slices import slice_rows
from ._slices import workers

__all__ = [
    "TARGETS", "TYPES", "QuantType", "check_target", "dequantize", "fake_quant", "quantize",
    "get_type", "recipe_types",
    "resolve", "resolved_nbytes", "tensor_nbytes", "type_by_id", "type_in_target",
    "FallbackError", "KernelMissingError", "TargetError", "UnknownTypeError", "UserError",
    "has_quantizer", "register_dequantizer", "register_quantizer", "searchable_types",
    "slice_rows", "workers",
]
