"""``search score``: imatrix, layer similarity, tensor importance and (``--measure``) measured
sensitivity, with plots; the defaults are ``search``'s."""

from __future__ import annotations

from pathlib import Path

from quant import TARGETS, UserError, searchable_types

from .._pipeline import default_of, default_score_dir, default_types, score
from ._args import Parser, studies_dir_arg, csv, json_arg, model_arg
from ._output import emit
from ._progress import with_bars


def _parser() -> Parser:
    p = Parser(prog="search score", description="Importance scores: imatrix, layer similarity, "
               "tensor importance, measured sensitivity.")
    model_arg(p)
    p.add_argument("-f", "--calib", help="calibration text (default: the bundled corpus)")
    p.add_argument("--ctx", type=int, default=default_of("ctx"),
                   help=f"tokens per chunk (default: {default_of('ctx')})")
    p.add_argument("--chunks", type=int, default=default_of("imatrix_chunks"),
                   help=f"chunks of the imatrix pass (default: {default_of('imatrix_chunks')})")
    p.add_argument("--measure", action="store_true", help="measure delta KLD per tensor group "
                   "and type (slow: groups x types forward suffixes)")
    p.add_argument("--measure-chunks", type=int, default=default_of("measure_chunks"),
                   help=f"chunks for --measure (default: {default_of('measure_chunks')})")
    p.add_argument("--types", type=csv, help="comma-separated candidate types (default: every "
                   "type the target can quantize here, but f32/f16/bf16)")
    p.add_argument("--target", choices=TARGETS, default=default_of("target"),
                   help=f"project (default: {default_of('target')})")
    p.add_argument("--out", type=Path, help="output folder (default: "
                   "STUDIES_DIR/scores/MODEL-TARGET)")
    studies_dir_arg(p, "home of study outputs")
    json_arg(p)
    return p


def _types(names: list[str] | None, target: str) -> list[str]:
    if not names:
        return default_types(target)
    known = set(searchable_types(target))
    bad = [t for t in names if t not in known]
    if bad:
        raise UserError(f"--types: {', '.join(bad)} cannot be searched for {target}; use some "
                        f"of {', '.join(sorted(known))}")
    return names


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    out = a.out or default_score_dir(a.model, a.target, a.studies_dir)
    res = with_bars(a.json, score, a.model, a.calib, _types(a.types, a.target), a.target, a.ctx,
                    a.chunks, out, a.measure, a.measure_chunks)
    keep = ("imatrix_dat", "imatrix_gguf", "scores", "plot_png", "plot_html",
            "layer_similarity", "spearman", "chunks", "ctx")
    emit({k: res[k] for k in keep if k in res} if a.json else res, bool(a.json), format_score)
    return 0


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
