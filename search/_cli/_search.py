"""``search --budget B[,B...] [MODEL] ...``: the main job, and its summary table."""

from __future__ import annotations

import math
import shlex

from .._pipeline import merge, run_search
from ._args import Parser, add_options, json_arg
from ._output import emit
from ._progress import StageBar


def parser(subcommands: list[str]) -> Parser:
    p = Parser(prog="search", description="Find the mixed-precision GGUF recipe with the lowest "
               "KLD under a size budget: measure (imatrix, quantization cache, probes; reused by "
               "every budget), optimize one study per budget, compare on held-out text, export.",
               epilog="subcommands: " + ", ".join(subcommands) + " (search SUBCOMMAND -h)")
    add_options(p)
    p.add_argument("--config", help="study file (TOML) with any of these options; the command "
                   "line wins")
    json_arg(p)
    return p


def main(argv: list[str], subcommands: list[str]) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = vars(parser(subcommands).parse_args(argv))
    opts = merge({k: v for k, v in args.items() if k != "config"}, args["config"])
    bar = StageBar(not opts.json)
    try:
        reports = run_search(opts, bar.ui())
    finally:
        bar.close()
    emit(reports if len(reports) > 1 else reports[0], opts.json,
         lambda r: "\n\n".join(map(format_summary, r if isinstance(r, list) else [r])))
    return 0


def _kld(r: dict) -> str:
    return f"{r['kld_mean']:.5f} ± {r['kld_err']:.5f}"


def _ppl(r: dict) -> str:
    return f"{r['ppl']:.3f} ± {r['ppl_err']:.3f}"


def table(rows: list[dict]) -> list[str]:
    """Aligned rows of the held-out comparison; '*' marks a recipe over the budget."""
    cols = [("recipe", lambda r: r["name"], "<"), ("MiB", lambda r: f"{r['bytes'] / 2**20:.2f}", ">"),
            ("BPW", lambda r: f"{r['bpw']:.4f}", ">"), ("KLD ± err", _kld, ">"),
            ("KLD p99", lambda r: f"{r['kld_p99']:.4f}", ">"), ("PPL ± err", _ppl, ">"),
            ("same top", lambda r: f"{100 * r['same_top_p']:.2f} %", ">")]
    cells = [[c[0] for c in cols]] + [[f(r) for _, f, _ in cols] for r in rows]
    width = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    marks = [" "] + ["*" if r["over_budget"] else " " for r in rows]
    return [f"{m} " + "  ".join(f"{v:{a}{w}}" for v, (_, _, a), w in zip(row, cols, width))
            for m, row in zip(marks, cells)]


def _verdict(s: dict) -> list[str]:
    if s["at_floor"]:
        return [f"The best recipe is at the measured floor (KLD {s['floor_kld']:.5f} with every "
                "tensor at its most accurate type): no recipe within the budget can do better."]
    if s.get("best_is_warm_start"):
        return [f"The best recipe is the warm start '{s['best_is_warm_start']}': no trial beat "
                "it on the calibration chunks."]
    warm = [r for r in s["comparison"][1:] if "warm: " in r["name"]]
    w = min(warm, key=lambda r: r["kld_mean"])
    best = s["comparison"][0]
    if s["beats_every_warm_start"]:
        err = math.hypot(best["kld_err"], w["kld_err"])
        if w["kld_mean"] - best["kld_mean"] > err:
            return ["The best recipe beats every warm start on the held-out text, the nearest "
                    f"('{w['name'][6:]}', {w['kld_mean']:.5f}) by more than the uncertainty."]
        return [f"The best recipe is lower than every warm start on the held-out text, but "
                f"within the uncertainty of '{w['name'][6:]}' ({best['kld_mean']:.5f} vs "
                f"{w['kld_mean']:.5f}, ± {err:.5f} combined)."]
    return [f"On the held-out text the warm start '{w['name'][6:]}' is as low or lower "
            f"({w['kld_mean']:.5f} vs {best['kld_mean']:.5f}, ± {best['kld_err']:.5f}): the "
            "trials found no recipe measurably better than it; more --trials or --chunks may."]


def format_summary(s: dict) -> str:
    h = s["heldout"]
    o = s["trials_by_origin"]
    pruned = sum(v["pruned"] for v in o.values())
    dup = (f", {s['duplicates']} found only evaluated recipes" if s.get("duplicates") else "")
    dup += "; no new recipe was left near the trials" if s.get("space_exhausted") else ""
    lines = [f"study {s['study']}: best trial {s['best_trial']} of {s['n_trials']} evaluated "
             f"({s['distinct_plans']} distinct recipes, {pruned} stopped early{dup})",
             f"recipe {s['recipe']}: {s['bytes']:,} bytes = {s['bytes'] / 2**20:.2f} MiB = "
             f"{s['bpw']:.4f} BPW (budget {s['budget']} = {s['budget_bytes']:,} bytes)",
             f"held-out text: {h['n_tokens']:,} scored tokens, base PPL {h['ppl_base']:.4f} ± "
             f"{h['ppl_base_err']:.4f}", ""]
    lines += table(s["comparison"])
    if any(r["over_budget"] for r in s["comparison"]):
        lines.append("  * over the budget: for comparison only")
    lines += [f"  {n}" for n in s.get("not_compared", [])]
    lines += ["", *_verdict(s)]
    script = next((e for e in s["exports"] if e.endswith(".sh")), None)
    if s.get("written"):
        w = s["written"]
        lines += ["", f"wrote {', '.join(w['files'])} ({w['file_bytes']:,} bytes, "
                      f"{w['target']} {w['ftype']})"]
    lines += ["", "next:"]
    if script:
        lines.append(f"  quantize   LLAMA_QUANTIZE=/path/to/llama-quantize {shlex.quote(script)} "
                     f"{shlex.quote(s['model'])} OUT.gguf")
        lines.append("             (IN: the model the recipe was planned on; the imatrix is "
                     "beside the script)")
    lines.append(f"  check      search verify {shlex.quote(s['study'])} --llama-bin DIR   (your "
                 "llama.cpp build measures the written file)")
    lines.append(f"  watch      search dashboard --study {shlex.quote(s['study'])}")
    lines.append(f"  report     search report --study {shlex.quote(s['study'])}")
    return "\n".join(lines)
