"""The recipe format, ``gguf-recipe/1``: one versioned JSON file per recipe.

    format      "gguf-recipe/1"
    target      "mainline" | "ik"
    tensors     every quantizable tensor name -> the ggml type llama-quantize writes
    bytes, bpw  tensor data bytes of the quantized file and 8*bytes/elements (llama-quantize's)
    requested   only where a requested type falls back: name -> requested type
    shapes      every tensor of the model -> numpy shape (exports need no model file)
    input_quantized  whether llama-quantize needs --allow-requantize for this base file
    model       base-model identity (objectives.GGUFModel.identity)
    objectives  measured statistics (kld_mean, ppl, ...) when known
    provenance  tool version, command line, corpus and imatrix sha256, creation time
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from quant import UserError

from objectives import GGUFModel

from ._sizes import plan_bytes, resolve_plan

FORMAT = "gguf-recipe/1"


class RecipeError(UserError):
    pass


def tool_version() -> str:
    try:
        return version("gguf-recipe-search")
    except PackageNotFoundError:
        return "0+unknown"


def file_sha256(path: str | Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def provenance(corpus: str | Path | None = None, imatrix: str | Path | None = None) -> dict:
    return {"tool": "gguf-recipe-search", "version": tool_version(),
            "command": shlex.join(["search", *sys.argv[1:]]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "corpus": str(corpus) if corpus else None, "corpus_sha256": file_sha256(corpus),
            "imatrix": str(imatrix) if imatrix else None, "imatrix_sha256": file_sha256(imatrix)}


def build_recipe(model: GGUFModel, plan: dict[str, str], target: str, *,
                 objectives: dict | None = None, prov: dict | None = None) -> dict[str, Any]:
    """A recipe from a plan (name -> requested type), with the types llama-quantize writes."""
    written = resolve_plan(model, plan, target)
    nbytes = plan_bytes(model, written, target)
    requested = {n: plan[n] for n in written if plan[n].lower() != written[n].lower()}
    return {"format": FORMAT, "target": target, "tensors": written, "bytes": nbytes,
            "bpw": round(8.0 * nbytes / model.n_elements, 6), "requested": requested,
            "model": model.identity(), "objectives": objectives or {},
            "provenance": prov or provenance(),
            "shapes": {t.name: list(t.shape) for t in model.tensors.values()},
            "input_quantized": any(not t.qtype.float_type for t in model.quantizable(target))}


def recipe_from_gguf(model: GGUFModel, target: str | None = None) -> dict[str, Any]:
    """The recipe of an already quantized file: each quantizable tensor's stored type."""
    target = target or _file_target(model)
    plan = {t.name: t.qtype.name for t in model.quantizable(target)}
    return build_recipe(model, plan, target)


def _file_target(model: GGUFModel) -> str:
    return "ik" if any(t.qtype.mainline_id is None for t in model.tensors.values()) else "mainline"


def save_recipe(recipe: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recipe, indent=1) + "\n")
    return path


def load_recipe(path: str | Path) -> dict[str, Any]:
    try:
        recipe = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not a JSON recipe ({e}): give a recipe.json") from None
    if not isinstance(recipe, dict) or recipe.get("format") != FORMAT:
        got = recipe.get("format") if isinstance(recipe, dict) else None
        raise RecipeError(f"{path}: format is {got!r}, expected '{FORMAT}'")
    for key in ("target", "tensors", "shapes"):
        if key not in recipe:
            raise RecipeError(f"{path}: recipe lacks the '{key}' key")
    return recipe
