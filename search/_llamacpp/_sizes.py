"""Model-level size math over the catalog: what each tensor can take and what a plan weighs.

A *plan* maps quantizable tensor names to requested types; llama-quantize may write another
type (fallback), and every size here is of the type it really writes. Tensors llama-quantize
does not quantize (norms, routers, ...) keep their stored type and size.
"""

from __future__ import annotations

from quant import FallbackError, get_type, recipe_types, resolve, tensor_nbytes, type_in_target
from quant import UserError

from objectives import GGUFModel, TensorInfo


class PlanError(UserError):
    pass


def tensor_options(t: TensorInfo, target: str, types: list[str] | None = None) -> dict[str, int]:
    """Types ``t`` can really take in ``target`` (after fallback) -> bytes, from ``types``
    (default: every type the target has)."""
    out = {}
    for name in types if types is not None else recipe_types(target):
        try:
            used = resolve(name, t.shape, target)
        except FallbackError:
            continue
        out[used] = tensor_nbytes(used, t.shape)
    return out


def fixed_bytes(model: GGUFModel, target: str) -> int:
    """Bytes of the tensors llama-quantize copies unchanged."""
    q = {t.name for t in model.quantizable(target)}
    return sum(t.nbytes for t in model.tensors.values() if t.name not in q)


def resolve_plan(model: GGUFModel, plan: dict[str, str], target: str) -> dict[str, str]:
    """Every quantizable tensor's written type; the plan must name each one exactly once."""
    names = [t.name for t in model.quantizable(target)]
    unknown = sorted(set(plan) - set(names))
    if unknown:
        raise PlanError(f"recipe names {len(unknown)} tensor(s) the model does not quantize, e.g. "
                        f"'{unknown[0]}': is the recipe for another model?")
    missing = [n for n in names if n not in plan]
    if missing:
        raise PlanError(f"recipe lacks {len(missing)} quantizable tensor(s), e.g. '{missing[0]}'")
    return {n: _resolve_one(model.tensors[n], plan[n], target) for n in names}


def _resolve_one(t: TensorInfo, type_: str, target: str) -> str:
    type_in_target(type_, target)
    try:
        return resolve(type_, t.shape, target)
    except FallbackError as e:
        raise PlanError(f"{t.name}: {e}") from None


def plan_bytes(model: GGUFModel, written: dict[str, str], target: str) -> int:
    """Tensor data bytes of the file llama-quantize writes for an already resolved plan."""
    q = sum(tensor_nbytes(written[t.name], t.shape) for t in model.quantizable(target))
    return q + fixed_bytes(model, target)


def uniform_plans(model: GGUFModel, target: str) -> list[dict]:
    """For each type of ``target``: the size when every quantizable tensor asks for it
    (as ``--pure`` does), and how many tensors fall back."""
    rows = []
    for name in recipe_types(target):
        try:
            written = {t.name: resolve(name, t.shape, target) for t in model.quantizable(target)}
        except FallbackError:
            continue
        n_fb = sum(1 for v in written.values() if v != get_type(name).name)
        rows.append({"type": name, "bytes": plan_bytes(model, written, target), "fallbacks": n_fb})
    return rows
