"""``search eval``: a recipe's PPL and KLD against the unquantized model, printed as
llama-perplexity prints them."""

from __future__ import annotations

from pathlib import Path

from .._pipeline import default_of, evaluate_recipe
from ._args import Parser, studies_dir_arg, json_arg, model_arg
from ._output import emit
from ._progress import with_bars


def main(argv: list[str]) -> int:
    p = Parser(prog="search eval", description="PPL and KLD of a recipe against the "
               "unquantized model, as llama-perplexity prints them.")
    model_arg(p)
    p.add_argument("--recipe", required=True, type=Path, help="recipe.json (gguf-recipe/1)")
    p.add_argument("--imatrix", help="importance matrix used to quantize (.dat or GGUF; "
                   "default: none)")
    p.add_argument("-f", "--file", help="evaluation text (default: the bundled held-out corpus)")
    p.add_argument("--ctx", type=int, default=default_of("ctx"),
                   help=f"tokens per chunk (default: {default_of('ctx')})")
    p.add_argument("--chunks", type=int, help="number of chunks (default: all)")
    p.add_argument("--no-act-round", action="store_true",
                   help="do not round activations to q8 as llama.cpp's CPU matmuls do")
    studies_dir_arg(p, "home of the base-statistics cache")
    json_arg(p)
    a = p.parse_args(argv)
    res = with_bars(a.json, evaluate_recipe, a.model, a.recipe, a.imatrix, a.file, a.ctx,
                    a.chunks, not a.no_act_round, a.studies_dir)
    emit(res, a.json, format_eval)
    return 0


def format_eval(r: dict) -> str:
    """llama-perplexity's --kl-divergence summary layout."""
    return "\n".join([
        f"chunks {r['n_chunks']} x {r['ctx']}, {r['n_tokens']} scored tokens",
        f"Mean PPL(Q)                   : {r['ppl']:10.6f} +/- {r['ppl_err']:10.6f}",
        f"Mean PPL(base)                : {r['ppl_base']:10.6f} +/- {r['ppl_base_err']:10.6f}",
        f"Mean ln(PPL(Q)/PPL(base))     : {r['ln_ppl_ratio']:10.6f} +/- {r['ln_ppl_ratio_err']:10.6f}",
        f"Mean    KLD: {r['kld_mean']:10.6f} +/- {r['kld_err']:10.6f}",
        f"Maximum KLD: {r['kld_max']:10.6f}",
        f"99.9%   KLD: {r['kld_p999']:10.6f}",
        f"99.0%   KLD: {r['kld_p99']:10.6f}",
        f"95.0%   KLD: {r['kld_p95']:10.6f}",
        f"90.0%   KLD: {r['kld_p90']:10.6f}",
        f"Median  KLD: {r['kld_median']:10.6f}",
        f"RMS Δp    : {100 * r['rms_dp']:6.3f} +/- {100 * r['rms_dp_err']:5.3f} %",
        f"Same top p: {100 * r['same_top_p']:6.3f} +/- {100 * r['same_top_p_err']:5.3f} %"])
