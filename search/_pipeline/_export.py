"""``search export``'s library side: a recipe file into the files llama-quantize accepts, or
back into a resolved recipe (fallbacks applied, ``requested``, ``bytes`` and ``bpw`` filled)."""

from __future__ import annotations

from pathlib import Path

from .._llamacpp import load_recipe, save_recipe, write_export


def export(recipe_path: Path, fmt: str, out_dir: Path, imatrix: Path | None) -> dict:
    recipe = load_recipe(recipe_path).resolved()
    out_dir = Path(out_dir)
    if fmt == "json":
        return {"files": [str(save_recipe(recipe, out_dir / "recipe.json"))], "notes": [],
                "bytes": recipe.bytes, "bpw": recipe.bpw}
    files, notes = write_export(recipe.tensors, recipe.shapes, recipe.target, fmt, out_dir,
                                imatrix=imatrix, input_quantized=recipe.input_quantized)
    return {"files": [str(f) for f in files], "notes": notes, "bytes": recipe.bytes,
            "bpw": recipe.bpw}
