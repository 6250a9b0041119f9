"""``search export``: a recipe into llama-quantize's inputs for either project, or back into a
resolved recipe JSON."""

from __future__ import annotations

from pathlib import Path

from .._pipeline import export
from ._args import Parser, json_arg
from ._output import emit


def main(argv: list[str]) -> int:
    p = Parser(prog="search export", description="Write llama-quantize inputs for a recipe "
               "(or, with --format json, the recipe with fallbacks resolved, bytes and BPW).")
    p.add_argument("recipe", type=Path, help="recipe.json (format gguf-recipe/1)")
    p.add_argument("--format", required=True, choices=("ik", "mainline", "json"),
                   help="mainline: tensor-types.txt + quantize-mainline.sh; ik: custom-q.txt + "
                   "quantize-ik.sh; json: recipe.json")
    p.add_argument("-o", "--out-dir", type=Path, default=Path("."),
                   help="output folder (default: the current folder)")
    p.add_argument("--imatrix", type=Path, help="imatrix file the scripts pass to llama-quantize "
                   "(default: none)")
    json_arg(p)
    a = p.parse_args(argv)
    emit(export(a.recipe, a.format, a.out_dir, a.imatrix), a.json, format_export)
    return 0


def format_export(r: dict, max_notes: int = 12) -> str:
    notes = [f"note: {n}" for n in r["notes"][:max_notes]]
    if len(r["notes"]) > max_notes:
        notes.append(f"note: ... and {len(r['notes']) - max_notes} more (--json lists all)")
    size = f"recipe: {r['bytes']:,} bytes, {r['bpw']:.4f} BPW"
    return "\n".join([*(f"wrote {f}" for f in r["files"]), size, *notes])
