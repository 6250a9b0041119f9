"""The ``search`` command: thin commands over library functions.

    search --budget B [MODEL] ...          run a recipe search (the main job)
    search inspect [MODEL] [--as-recipe | --mix FTYPE] [--target T] [--json]
    search export RECIPE.json --format ik|mainline|json [-o DIR]

Known errors (``quant.UserError``) become one line on stderr and exit status 2, in ``main``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from quant import TARGETS, UserError

from . import _commands as cmd

SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {}


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one-line UserErrors (printed by ``main``)."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def subcommand(name: str):
    def deco(fn):
        SUBCOMMANDS[name] = fn
        return fn
    return deco


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="GGUF model (first file of a split); default: the "
                   "embedded SmolLM2-135M-Instruct")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def emit(result: dict, as_json: bool, human: Callable[[dict], str]) -> None:
    print(json.dumps(result, indent=1) if as_json else human(result))


@subcommand("inspect")
def inspect_main(argv: list[str]) -> int:
    p = Parser(prog="search inspect", description="Tensors, the types each can "
                                "really take per target, and uniform-type sizes.")
    _model_arg(p)
    _json_arg(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--as-recipe", action="store_true", help="print the recipe of a quantized file")
    g.add_argument("--mix", metavar="FTYPE", help="predict llama-quantize's types for a default mix")
    p.add_argument("--target", choices=TARGETS, help="project (default: both; for --mix mainline)")
    p.add_argument("--no-imatrix", action="store_true", help="with --mix: the rules without imatrix")
    p.add_argument("--pure", action="store_true", help="with --mix: as llama-quantize --pure")
    a = p.parse_args(argv)
    model = cmd.load_model(a.model)
    if a.as_recipe:
        print(json.dumps(cmd.as_recipe(model, a.target), indent=1))
    elif a.mix:
        res = cmd.mix(model, a.mix, a.target or "mainline", not a.no_imatrix, a.pure)
        emit(res, a.json, cmd.format_mix)
    else:
        emit(cmd.inspect(model, [a.target] if a.target else list(TARGETS)), a.json,
             cmd.format_inspect)
    return 0


@subcommand("export")
def export_main(argv: list[str]) -> int:
    p = Parser(prog="search export", description="Write llama-quantize inputs "
                                "for a recipe.")
    p.add_argument("recipe", type=Path, help="recipe.json (format gguf-recipe/1)")
    p.add_argument("--format", required=True, choices=("ik", "mainline", "json"))
    p.add_argument("-o", "--out-dir", type=Path, default=Path("."), help="output folder")
    p.add_argument("--imatrix", type=Path, help="imatrix file the scripts pass to llama-quantize")
    _json_arg(p)
    a = p.parse_args(argv)
    res = cmd.export(a.recipe, a.format, a.out_dir, a.imatrix)
    emit(res, a.json, cmd.format_export)
    return 0


def _search_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="search", description="Find the mixed-precision GGUF recipe with the lowest KLD "
        "under a size budget.", epilog="subcommands: " + ", ".join(SUBCOMMANDS)
        + " (search SUBCOMMAND -h)")
    _model_arg(p)
    a = p.add_argument
    a("--budget", help="size budget: 4.1bpw, 900MiB, 14.2GiB, 15GB")
    a("--config", help="study file (TOML) with any of these options; the command line wins")
    a("-f", "--calib", help="calibration text (default: the bundled corpus)")
    a("--eval-file", help="held-out text for the final comparison (default: bundled)")
    a("--target", choices=TARGETS)
    a("--types", type=_csv, help="comma-separated candidate types (default: all searchable)")
    a("--pin", dest="pins", action="append", metavar="REGEX=TYPE", help="fix matching tensors")
    a("--tie", dest="ties", action="append", metavar="ROLE,ROLE", help="roles sharing a type")
    a("--objective", choices=("kld", "kld99", "ppl"))
    a("--trials", type=int, help="total finished trials of the study (default 60)")
    a("--timeout", type=float, help="stop after this many seconds")
    a("--study", help="study name (default: MODEL-TARGET-BUDGET); the same name resumes")
    a("--storage", help="sqlite:///PATH (default under studies/NAME), journal:PATH, "
      "postgresql://...")
    a("--jobs", type=int, help="worker processes on this machine")
    a("--seed", type=int)
    a("--pareto", action="store_true", default=None, help="bytes and KLD as two objectives")
    a("--ctx", type=int, help="context size (default 512)")
    a("--chunks", type=int, help="calibration chunks per trial (default 8)")
    a("--eval-chunks", type=int, help="held-out chunks of the final comparison (default 16)")
    a("--select-chunks", type=int, help="calibration chunks on which the best 5 trials are "
      "re-evaluated to pick the final recipe (default 16; a value <= --chunks skips this)")
    a("--imatrix", help="importance matrix (.dat or GGUF) to quantize with (default: computed "
      "on the calibration text, as llama-imatrix does)")
    a("--no-imatrix", action="store_true", default=None, help="quantize without an imatrix")
    a("--imatrix-chunks", type=int, help="chunks of our imatrix pass (default 32)")
    a("--measure", action="store_true", default=None, help="measure every group's sensitivity "
      "first (stored and reused; slow): the MILP warm start then optimizes measured KLD")
    a("--measure-chunks", type=int, help="chunks per sensitivity measurement (default 4)")
    a("--studies-dir", help="home of study storage and outputs (default: studies)")
    a("--json", action="store_true", default=None, help="print the summary as JSON")
    return p


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run_main(argv: list[str]) -> int:
    from ._options import merge
    from ._run import format_summary, run_search

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = vars(_search_parser().parse_args(argv))
    opts = merge({k: v for k, v in args.items() if k != "config"}, args["config"])
    s = run_search(opts)
    emit(s, opts.json, format_summary)
    return 0


@subcommand("eval")
def eval_main(argv: list[str]) -> int:
    p = Parser(prog="search eval", description="PPL and KLD of a recipe "
                                "against the unquantized model, as llama-perplexity prints them.")
    _model_arg(p)
    p.add_argument("--recipe", required=True, type=Path, help="recipe.json (gguf-recipe/1)")
    p.add_argument("--imatrix", help="importance matrix used to quantize (.dat or GGUF)")
    p.add_argument("-f", "--file", help="evaluation text (default: the bundled held-out corpus)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, help="number of chunks (default: all)")
    p.add_argument("--no-act-round", action="store_true",
                   help="do not round activations to q8 as llama.cpp's CPU matmuls do")
    _json_arg(p)
    a = p.parse_args(argv)
    res = cmd.evaluate_recipe(a.model, a.recipe, a.imatrix, a.file, a.ctx, a.chunks,
                              not a.no_act_round, progress=not a.json)
    emit(res, a.json, cmd.format_eval)
    return 0


@subcommand("dashboard")
def dashboard_main(argv: list[str]) -> int:
    p = Parser(prog="search dashboard", description="Watch a study live in "
                                "optuna-dashboard.")
    p.add_argument("--study", help="study name (a folder of studies/); default: the newest")
    p.add_argument("--storage", help="storage URL (default: studies/NAME/study.db)")
    p.add_argument("--studies-dir", default="studies")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    a = p.parse_args(argv)
    cmd.dashboard(a.study, a.storage, Path(a.studies_dir), a.host, a.port)
    return 0


@subcommand("score")
def score_main(argv: list[str]) -> int:
    from ._score_cmd import main as score

    return score(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fn = SUBCOMMANDS.get(argv[0]) if argv else None
    try:
        return fn(argv[1:]) if fn else run_main(argv)
    except UserError as e:
        print(f"search: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as e:
        print(f"search: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("search: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
