"""``search score``'s library side: imatrix, layer similarity, per-tensor cosine importance and
(with ``measure``) measured sensitivity, written to one folder.

    OUT/imatrix.dat, OUT/imatrix.gguf   the imatrix in both formats (ik reads only .dat)
    OUT/scores.json                     similarities, tensor importance, sensitivity, Spearman
    OUT/scores.png, OUT/scores.html     layer importance and the tensor x type heatmap
    OUT/cache/                          quantized tensors, base statistics, measurement file

Defaults are ``search``'s (``SearchOptions``): the same candidate types, context and chunks of
the imatrix pass, and the output under the studies folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from objectives import (QuantCache, bos_id, collect, corpus_tokens, layer_of, make_chunks,
                        read_corpus, similarity_rows, tensor_importance, write_dat, write_gguf)

from .._json import write_json
from ._model import load_model
from ._options import default_of
from ._plots import write_html, write_png
from ._ui import SILENT, Ui

SAMPLE_TOKENS = 256


def default_out(model: str | None, target: str, studies_dir: str | None = None) -> Path:
    stem = Path(model).stem if model else "SmolLM2-135M-Instruct"
    return Path(studies_dir or default_of("studies_dir")) / "scores" / f"{stem}-{target}"


def score(model_path: str | None, calib: str | None, types: list[str], target: str, ctx: int,
          chunks: int | None, out: Path, measure: bool, measure_chunks: int,
          ui: Ui = SILENT) -> dict:
    model = load_model(model_path)
    tokens = corpus_tokens(model, read_corpus(calib, "calib"))
    chunk_arr = make_chunks(tokens, ctx, chunks, bos_id(model))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    col = collect(model, chunk_arr, sample_tokens=SAMPLE_TOKENS, progress=ui.staged("imatrix pass"))
    col.imatrix.datasets = [Path(calib).name if calib else "calib.txt"]
    paths = {"imatrix_dat": str(write_dat(col.imatrix, out / "imatrix.dat")),
             "imatrix_gguf": str(write_gguf(col.imatrix, out / "imatrix.gguf"))}
    qw = col.imatrix.for_quantizer()
    cache = QuantCache(model, target, qw, out / "cache" / "quant")
    imp = tensor_importance(model, col.samples, types, cache, ui.staged("tensor importance"))
    res = {"format": "gguf-recipe-scores/1", "model": model.identity(), "target": target,
           "ctx": ctx, "chunks": len(chunk_arr), "types": types, **paths,
           "layer_similarity": similarity_rows(col.similarity), "tensor_importance": imp,
           "collect_seconds": round(time.perf_counter() - t0, 1)}
    if measure:
        res.update(_measure(model, tokens, types, target, ctx, measure_chunks, qw, imp,
                            col.similarity, out, ui))
    res.update(_plots(out, res))
    res["scores"] = str(write_json(out / "scores.json", res))
    return res


def _measure(model, tokens, types, target, ctx, measure_chunks, qw, imp, similarity, out,
             ui: Ui) -> dict:
    from objectives._scores import (cheap_scores, default_groups, measure_sensitivity,
                                    spearman_table)

    groups = default_groups(model, target)
    t0 = time.perf_counter()
    sens = measure_sensitivity(model, groups, types, tokens, ctx, measure_chunks, target,
                               qw, out / "cache", progress=ui.staged("sensitivity"))
    rho = spearman_table(sens, cheap_scores(groups, types, imp, similarity))
    return {"sensitivity": sens, "measure_chunks": measure_chunks,
            "measure_seconds": round(time.perf_counter() - t0, 1), "spearman": rho}


def _heat(res: dict):
    types = res["types"]
    if res.get("sensitivity"):
        data, title = res["sensitivity"], "measured delta KLD per tensor group and type"
        get = lambda row, t: row.get(t)  # noqa: E731
    else:
        data, title = res["tensor_importance"], "1 - cosine importance per tensor and type"
        get = lambda row, t: 1 - row[t]["cos"] if t in row else None  # noqa: E731
    rows = sorted(data, key=_order_key)
    vals = np.array([[np.nan if get(data[r], t) is None else get(data[r], t) for t in types]
                     for r in rows], np.float64)
    return title, rows, types, vals


def _order_key(name: str):
    """Tensors (blk.N.*) and groups (role@N) by layer, then name."""
    layer = layer_of(name)
    if layer is None and "@" in name:
        layer = int(name.split("@", 1)[1].split("-")[0])
    return (-1 if layer is None else layer, name)


def _plots(out: Path, res: dict) -> dict:
    heat = _heat(res)
    plots = {"plot_html": str(write_html(out / "scores.html", res["layer_similarity"], heat))}
    png = write_png(out / "scores.png", res["layer_similarity"], heat)
    plots["plot_png"] = str(png) if png else None
    return plots
