"""``search eval``'s library side: a recipe's PPL/KLD against the model's own weights."""

from __future__ import annotations

from pathlib import Path

from objectives import corpus_tokens, evaluate, read_corpus, read_imatrix

from .._llamacpp import load_recipe, resolve_plan
from ._model import load_model
from ._ui import SILENT, Ui


def evaluate_recipe(model_path, recipe_path: Path, imatrix: str | None, text: str | None,
                    ctx: int, chunks: int | None, act_round: bool, studies_dir: str = "studies",
                    ui: Ui = SILENT) -> dict:
    model = load_model(model_path)
    recipe = load_recipe(recipe_path)
    plan = resolve_plan(model, recipe.tensors, recipe.target)
    imat = read_imatrix(imatrix).for_quantizer(model) if imatrix else None
    tokens = corpus_tokens(model, read_corpus(text, "eval"))
    res = evaluate(model, recipe=plan, imatrix=imat, tokens=tokens, ctx=ctx, n_chunks=chunks,
                   base_cache=Path(studies_dir) / ".cache" / "base", act_round=act_round,
                   target=recipe.target, progress=ui.progress)
    return {k: (float(v) if hasattr(v, "dtype") else v) for k, v in res.items()}
