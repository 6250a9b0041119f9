"""Architecture registry: ``general.architecture`` -> family module.

A family module provides ``ARCHS``, ``LINEARS``, a frozen ``Config`` (``config(model)``), a
registered-dataclass ``Layer`` (``load_layer(cfg, get, act, il)``), ``layer_consts(cfg, model,
il, n_ctx) -> (rope table, window)`` and ``forward_layer(cfg, layer, x, rope, window,
f16_kv)``. Mixture-of-experts families add ``is_moe_layer(cfg, il)``, ``expert_names(cfg,
il)``, ``load_layer(..., experts=False)``, ``forward_pre`` and ``forward_post`` (``_stream``
runs the experts of a layer in slices).
"""

from __future__ import annotations

from types import ModuleType

from quant import UserError

from . import deepseek2, gemma3, glm4moe, gpt_oss, llama, qwen, qwen3moe

FAMILIES: dict[str, ModuleType] = {a: m for m in (llama, qwen, gemma3, qwen3moe, deepseek2,
                                                  glm4moe, gpt_oss) for a in m.ARCHS}


def family(arch: str) -> ModuleType:
    """The family module for an architecture name; a UserError lists the supported ones."""
    try:
        return FAMILIES[arch]
    except KeyError:
        raise UserError(f"architecture '{arch}' is not supported by the JAX forward pass; "
                        f"supported: {', '.join(sorted(FAMILIES))}") from None


def supported_architectures() -> list[str]:
    return sorted(FAMILIES)
