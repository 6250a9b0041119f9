"""``search score``: imatrix, layer similarity, per-tensor cosine importance and (with
``--measure``) measured sensitivity, written to one folder.

    OUT/imatrix.dat, OUT/imatrix.gguf   the imatrix in both formats (ik reads only .dat)
    OUT/scores.json                     similarities, tensor importance, sensitivity, Spearman
    OUT/scores.png, OUT/scores.html     layer importance and the tensor x type heatmap
    OUT/cache/                          quantized tensors, base statistics, measurement file
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from quant import TARGETS, UserError, searchable_types

from . import _commands as cmd
from ._score_plot import write_html, write_png

DEFAULT_TYPES = ("q3_K", "q4_K", "q5_K", "q6_K", "q8_0")
SAMPLE_TOKENS = 256


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search score", description="Importance scores: imatrix, "
                                "layer similarity, tensor importance, measured sensitivity.")
    p.add_argument("model", nargs="?", help="GGUF model (default: the embedded SmolLM2)")
    p.add_argument("-f", "--calib", help="calibration text (default: the bundled corpus)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, help="chunks for the imatrix (default: all)")
    p.add_argument("--measure", action="store_true", help="measure delta KLD per tensor group "
                   "and type (slow: groups x types forward suffixes)")
    p.add_argument("--measure-chunks", type=int, default=4, help="chunks for --measure (4)")
    p.add_argument("--types", help="comma-separated candidate types (default: "
                   + ",".join(DEFAULT_TYPES) + ")")
    p.add_argument("--target", choices=TARGETS, default="mainline")
    p.add_argument("--out", type=Path, default=Path("scores"), help="output folder (scores)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _types(text: str | None, target: str) -> list[str]:
    if not text:
        return list(DEFAULT_TYPES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    known = set(searchable_types(target))
    bad = [t for t in names if t not in known]
    if bad:
        raise UserError(f"--types: {', '.join(bad)} cannot be searched for {target}; use some "
                        f"of {', '.join(sorted(known))}")
    return names


def _progress(enabled: bool):
    if not enabled:
        return None

    def show(stage: str, done: int, total: int) -> None:
        print(f"\r{stage}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr,
              flush=True)
    return show


def score(a: argparse.Namespace) -> dict:
    from objectives import corpus_tokens, make_chunks, read_corpus
    from objectives._eval import bos_id
    from objectives._imatrix import write_dat, write_gguf
    from objectives._qcache import QuantCache
    from objectives._scores import collect, similarity_rows, tensor_importance

    model, types = cmd.load_model(a.model), _types(a.types, a.target)
    tokens = corpus_tokens(model, read_corpus(a.calib, "calib"))
    chunks = make_chunks(tokens, a.ctx, a.chunks, bos_id(model))
    a.out.mkdir(parents=True, exist_ok=True)
    prog, t0 = _progress(not a.json), time.perf_counter()
    col = collect(model, chunks, sample_tokens=SAMPLE_TOKENS, progress=prog)
    col.imatrix.datasets = [Path(a.calib).name if a.calib else "calib.txt"]
    paths = {"imatrix_dat": str(write_dat(col.imatrix, a.out / "imatrix.dat")),
             "imatrix_gguf": str(write_gguf(col.imatrix, a.out / "imatrix.gguf"))}
    qw = col.imatrix.for_quantizer()
    cache = QuantCache(model, a.target, qw, a.out / "cache" / "quant")
    imp = tensor_importance(model, col.samples, types, cache, prog)
    res = {"format": "gguf-recipe-scores/1", "model": model.identity(), "target": a.target,
           "ctx": a.ctx, "chunks": len(chunks), "types": types, **paths,
           "layer_similarity": similarity_rows(col.similarity), "tensor_importance": imp,
           "collect_seconds": round(time.perf_counter() - t0, 1)}
    if a.measure:
        res.update(_measure(model, tokens, types, a, qw, imp, col.similarity, prog))
    res.update(_plots(a.out, res))
    (a.out / "scores.json").write_text(json.dumps(res, indent=1))
    res["scores"] = str(a.out / "scores.json")
    return res


def _measure(model, tokens, types, a, qw, imp, similarity, prog) -> dict:
    from objectives._scores import (cheap_scores, default_groups, measure_sensitivity,
                                    spearman_table)

    groups = default_groups(model, a.target)
    t0 = time.perf_counter()
    sens = measure_sensitivity(model, groups, types, tokens, a.ctx, a.measure_chunks, a.target,
                               qw, a.out / "cache", progress=prog)
    rho = spearman_table(sens, cheap_scores(groups, types, imp, similarity))
    return {"sensitivity": sens, "measure_chunks": a.measure_chunks,
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
    import re

    m = re.search(r"(?:blk\.|@)(\d+)", name)
    return (int(m.group(1)) if m else -1, name)


def _plots(out: Path, res: dict) -> dict:
    heat = _heat(res)
    plots = {"plot_html": str(write_html(out / "scores.html", res["layer_similarity"], heat))}
    png = write_png(out / "scores.png", res["layer_similarity"], heat)
    plots["plot_png"] = str(png) if png else None
    return plots


def format_score(r: dict) -> str:
    rows = [x for x in r["layer_similarity"] if x["layer_cos"] is not None]
    fmt = lambda x: f"  layer {x['layer']:3d}  cos {x['layer_cos']:.4f}"  # noqa: E731
    lines = [f"imatrix: {r['imatrix_dat']}, {r['imatrix_gguf']} ({r['chunks']} chunks of "
             f"{r['ctx']})", "most important layers (lowest layer cosine):"]
    lines += [fmt(x) for x in rows[:5]] + ["least important layers:"]
    lines += [fmt(x) for x in rows[-3:]]
    if r.get("spearman"):
        lines.append(f"Spearman correlation with measured delta KLD ({r['measure_chunks']} "
                     f"chunks, {r['measure_seconds']} s):")
        lines += [f"  {k:12s} {'n/a' if v is None else f'{v:+.3f}'}"
                  for k, v in r["spearman"].items()]
    lines.append(f"scores: {r['scores']}; plots: {r.get('plot_png') or '(no matplotlib)'}, "
                 f"{r['plot_html']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    res = score(a)
    if a.json:
        keep = ("imatrix_dat", "imatrix_gguf", "scores", "plot_png", "plot_html",
                "layer_similarity", "spearman", "chunks", "ctx")
        print(json.dumps({k: res[k] for k in keep if k in res}, indent=1))
    else:
        print(format_score(res))
    return 0
