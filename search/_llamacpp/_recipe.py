"""The recipe format, ``gguf-recipe/1``: one versioned JSON file per recipe (``Recipe``).

    format      "gguf-recipe/1"
    target      "mainline" | "ik"
    tensors     every quantizable tensor name -> the ggml type llama-quantize writes
    bytes, bpw  tensor data bytes of the quantized file and 8*bytes/elements (llama-quantize's)
    requested   only where a requested type falls back: name -> requested type
    shapes      every tensor of the model -> numpy shape (exports need no model file)
    fixed_bytes bytes of the tensors llama-quantize copies unchanged (norms, routers, ...)
    input_quantized  whether llama-quantize needs --allow-requantize for this base file
    model       base-model identity (objectives.GGUFModel.identity)
    objectives  measured statistics (kld_mean, ppl, ...) when known
    provenance  tool version, command line, corpus and imatrix sha256, creation time

A hand-written recipe may name requested types (``q4_K`` on 576-wide rows): ``resolved()``
applies llama-quantize's fallback from the shapes and fills ``requested``, ``bytes`` and ``bpw``.
Recipes written before ``fixed_bytes`` existed count the unquantized tensors as f32 (what every
converter stores norms as).
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from quant import FallbackError, UserError, check_target, resolve, tensor_nbytes, type_in_target

from objectives import GGUFModel, tool_version

from .._json import write_json
from ._export import input_is_quantized
from ._sizes import fixed_bytes, resolve_plan

FORMAT = "gguf-recipe/1"


class RecipeError(UserError):
    pass


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


@dataclass(frozen=True)
class Recipe:
    target: str
    tensors: dict[str, str]
    shapes: dict[str, list[int]]
    bytes: int
    bpw: float
    fixed_bytes: int
    requested: dict[str, str] = field(default_factory=dict)
    input_quantized: bool = False
    model: dict = field(default_factory=dict)
    objectives: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def n_elements(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any, where: str = "recipe") -> Recipe:
        """Validated: a one-line RecipeError names what is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise RecipeError(f"{where}: format is {got!r}, expected '{FORMAT}'")
        for key, kind in (("target", str), ("tensors", dict), ("shapes", dict)):
            if not isinstance(data.get(key), kind):
                raise RecipeError(f"{where}: recipe lacks the '{key}' key (a {kind.__name__})")
        try:
            check_target(data["target"])
        except UserError as e:
            raise RecipeError(f"{where}: {e}") from None
        shapes = {str(k): [int(d) for d in v] for k, v in data["shapes"].items()}
        missing = sorted(set(data["tensors"]) - set(shapes))
        if missing:
            raise RecipeError(f"{where}: tensor '{missing[0]}' has no entry in 'shapes'")
        tensors = {str(k): str(v) for k, v in data["tensors"].items()}
        fixed = data.get("fixed_bytes")
        if fixed is None:  # older recipes: the unquantized tensors as f32
            fixed = sum(4 * math.prod(s) for n, s in shapes.items() if n not in tensors)
        known = {f.name for f in cls.__dataclass_fields__.values()} - {"fixed_bytes"}
        extra = {k: data[k] for k in known if k in data and k not in ("tensors", "shapes")}
        extra.setdefault("bytes", 0)
        extra.setdefault("bpw", 0.0)
        return cls(tensors=tensors, shapes=shapes, fixed_bytes=int(fixed), **extra)

    def resolved(self) -> Recipe:
        """Types as llama-quantize writes them (fallback applied from the shapes), with
        ``requested``, ``bytes`` and ``bpw`` recomputed."""
        written, requested = {}, dict(self.requested)
        for name, t in self.tensors.items():
            asked = type_in_target(t, self.target).name
            try:
                written[name] = resolve(asked, self.shapes[name], self.target)
            except FallbackError as e:
                raise RecipeError(f"{name}: {e}") from None
            if written[name] != asked:
                requested[name] = requested.get(name, asked)
        nbytes = self.fixed_bytes + sum(tensor_nbytes(t, self.shapes[n]) for n, t in written.items())
        return replace(self, tensors=written, requested=requested, bytes=nbytes,
                       bpw=round(8.0 * nbytes / self.n_elements, 6))


def build_recipe(model: GGUFModel, plan: dict[str, str], target: str, *,
                 objectives: dict | None = None, prov: dict | None = None) -> Recipe:
    """A recipe from a plan (name -> requested type), with the types llama-quantize writes."""
    resolve_plan(model, plan, target)  # every quantizable tensor named once, each type valid
    base = Recipe(target=target, tensors=plan, requested={}, fixed_bytes=fixed_bytes(model, target),
                  shapes={t.name: list(t.shape) for t in model.tensors.values()}, bytes=0,
                  bpw=0.0, input_quantized=input_is_quantized(model, target),
                  model=model.identity(), objectives=objectives or {},
                  provenance=prov or provenance())
    return base.resolved()


def recipe_from_gguf(model: GGUFModel, target: str | None = None) -> Recipe:
    """The recipe of an already quantized file: each quantizable tensor's stored type."""
    target = target or _file_target(model)
    plan = {t.name: t.qtype.name for t in model.quantizable(target)}
    return build_recipe(model, plan, target)


def _file_target(model: GGUFModel) -> str:
    return "ik" if any(t.qtype.mainline_id is None for t in model.tensors.values()) else "mainline"


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    return write_json(path, recipe.to_json())


def load_recipe(path: str | Path) -> Recipe:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not a JSON recipe ({e}): give a recipe.json") from None
    return Recipe.from_json(data, str(path))
