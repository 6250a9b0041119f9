"""``search inspect``'s library side: tensors and the types each can take, uniform sizes,
llama-quantize's default mix per tensor, the recipe of a quantized file."""

from __future__ import annotations

from collections import defaultdict

from objectives import GGUFModel

from .._llamacpp import mix_types, plan_bytes, recipe_from_gguf, tensor_options, uniform_plans


def size_row(nbytes: int, n_elements: int) -> dict:
    return {"bytes": nbytes, "mib": round(nbytes / 2**20, 2), "gib": round(nbytes / 2**30, 4),
            "bpw": round(8 * nbytes / n_elements, 4)}


def inspect(model: GGUFModel, targets: list[str]) -> dict:
    tensors = []
    q = {tgt: {x.name for x in model.quantizable(tgt)} for tgt in targets}
    for t in model.tensors.values():
        row = {"name": t.name, "role": t.role, "layer": t.layer, "shape": list(t.shape),
               "type": t.qtype.name, "bytes": t.nbytes, "can_take": {}}
        for tgt in targets:
            row["can_take"][tgt] = sorted(tensor_options(t, tgt)) if t.name in q[tgt] else None
        tensors.append(row)
    uniform = {tgt: [{**r, **size_row(r["bytes"], model.n_elements)}
                     for r in uniform_plans(model, tgt)] for tgt in targets}
    return {"model": model.identity(), "hparams": model.hparams().__dict__,
            "tied_embeddings": model.tied_embeddings,
            "size": size_row(model.nbytes, model.n_elements), "tensors": tensors,
            "uniform": uniform}


def as_recipe(model: GGUFModel, target: str | None) -> dict:
    return recipe_from_gguf(model, target).to_json()


def mix(model: GGUFModel, ftype: str, target: str, imatrix: bool, pure: bool) -> dict:
    written = mix_types(model, ftype, target, imatrix=imatrix, pure=pure)
    counts: dict[str, int] = defaultdict(int)
    for v in written.values():
        counts[v] += 1
    return {"ftype": ftype, "target": target, "imatrix": imatrix, "pure": pure,
            "tensors": written, "counts": dict(counts),
            **size_row(plan_bytes(model, written, target), model.n_elements)}
