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
    p = argparse.ArgumentParser(prog="search inspect", description="Tensors, the types each can "
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
    p = argparse.ArgumentParser(prog="search export", description="Write llama-quantize inputs "
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


def run_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="search", description="Find the mixed-precision GGUF recipe "
                                "with the lowest KLD under a size budget.",
                                epilog="subcommands: " + ", ".join(SUBCOMMANDS)
                                + " (search SUBCOMMAND -h)")
    _model_arg(p)
    p.add_argument("--budget", required=True, help="size budget: 4.1bpw, 900MiB, 14.2GiB, 15GB")
    p.add_argument("--target", choices=TARGETS, default="mainline")
    p.add_argument("--types", help="comma-separated candidate types (default: all searchable)")
    _json_arg(p)
    a = p.parse_args(argv)
    model = cmd.load_model(a.model)
    types = [t.strip() for t in a.types.split(",")] if a.types else None
    cmd.check_budget(model, a.budget, a.target, types)
    raise UserError("the recipe search itself is not implemented in this version yet: "
                    "use 'search inspect' and 'search export' for now")


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
