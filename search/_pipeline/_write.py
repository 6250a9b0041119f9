"""``search write``'s library side: the quantized GGUF of a study's recipe (or any recipe file)
written directly from the model's metadata and the quantization cache's packed bytes (what is
missing is quantized), with llama-quantize's file type and imatrix keys; no llama.cpp build.

    study_files(studies_dir, name)  -> (report, recipe path, measurement folder)
    write_model(source, out, ...)   -> {"files", "bytes", "file_bytes", "ftype", ...}
"""

from __future__ import annotations

import json
from pathlib import Path

from quant import UserError

from objectives import (GGUFModel, QuantCache, imatrix_metadata, open_gguf, read_imatrix,
                        write_quantized)

from .._llamacpp import choose_ftype, ftype_id, load_recipe
from ._model import load_model
from ._ui import SILENT, Ui


def study_files(studies_dir: str | Path, name: str) -> tuple[dict, Path, Path]:
    folder = Path(studies_dir) / name
    report, recipe = folder / "report.json", folder / "recipe.json"
    if not (report.is_file() and recipe.is_file()):
        raise UserError(f"{folder} holds no finished study (report.json, recipe.json): run "
                        "'search --budget ...' to the end first, or give a recipe file")
    data = json.loads(report.read_text())
    return data, recipe, Path(data["measurement"])


def _source(source: str, studies_dir, model_path, imatrix) -> tuple:
    """(recipe, model, imatrix path, quantization cache folder) of a study or a recipe file."""
    if Path(source).suffix == ".json" or Path(source).is_file():
        recipe = load_recipe(source).resolved()
        model = load_model(model_path)
        return recipe, model, Path(imatrix) if imatrix else None, \
            Path(studies_dir) / ".cache" / "quant"
    report, recipe_path, m = study_files(studies_dir, source)
    model = open_gguf(model_path or report["model"])
    im = m / "imatrix.gguf" if (m / "imatrix.gguf").is_file() else None
    return load_recipe(recipe_path).resolved(), model, Path(imatrix) if imatrix else im, m / "quant"


def check_model(recipe, model: GGUFModel) -> None:
    want = recipe.model.get("sha256_header_and_heads")
    if want and want != model.identity()["sha256_header_and_heads"]:
        raise UserError(f"{model.paths[0]} is not the model the recipe was made for "
                        f"({recipe.model.get('file')}): give that model")


def write_model(source: str, out: str | Path, model_path: str | None = None,
                imatrix: str | None = None, studies_dir: str = "studies",
                split_max_size: str | None = None, ui: Ui = SILENT) -> dict:
    recipe, model, im_path, cache_dir = _source(source, studies_dir, model_path, imatrix)
    check_model(recipe, model)
    im = read_imatrix(im_path) if im_path else None
    cache = QuantCache(model, recipe.target, im.for_quantizer(model) if im else None, cache_dir)
    ftype = choose_ftype(recipe.tensors, recipe.shapes, recipe.target)
    files = write_quantized(model, recipe.tensors, lambda n, t: cache.packed(n, t, keep=False),
                            out, recipe.target, ftype_id(ftype, recipe.target),
                            imatrix_meta=imatrix_metadata(str(im_path), im) if im else None,
                            split_max_size=split_max_size, progress=ui.staged("write"))
    return {"files": [str(f) for f in files], "bytes": recipe.bytes, "bpw": recipe.bpw,
            "file_bytes": sum(Path(f).stat().st_size for f in files), "ftype": ftype,
            "target": recipe.target, "model": str(model.paths[0])}
