"""``search write``: the quantized GGUF of a study's best recipe (or of a recipe file), written
from the quantization cache; no llama.cpp build needed."""

from __future__ import annotations

from .._pipeline import write_model
from ._args import Parser, studies_dir_arg, json_arg
from ._output import emit
from ._progress import with_bars


def main(argv: list[str]) -> int:
    p = Parser(prog="search write", description="Write the quantized GGUF of a study's best "
               "recipe, or of a recipe file, for either project, without llama-quantize.")
    p.add_argument("source", help="a study name (a folder of the studies folder) or a "
                   "recipe.json")
    p.add_argument("-o", "--out", required=True, help="output GGUF (the first shard's name is "
                   "derived from it when splitting)")
    p.add_argument("--model", help="the base model (default: the study's; for a recipe file: "
                   "the embedded SmolLM2)")
    p.add_argument("--imatrix", help="imatrix to quantize with (default: the study's; for a "
                   "recipe file: none)")
    p.add_argument("--split-max-size", help="split into shards of at most this size, as "
                   "llama-gguf-split does (e.g. 50G, 500M; default: one file)")
    studies_dir_arg(p)
    json_arg(p)
    a = p.parse_args(argv)
    res = with_bars(a.json, write_model, a.source, a.out, a.model, a.imatrix, a.studies_dir,
                    a.split_max_size)
    emit(res, bool(a.json), format_write)
    return 0


def format_write(r: dict) -> str:
    lines = [f"wrote {f}" for f in r["files"]]
    lines.append(f"{r['target']} {r['ftype']}: {r['bytes']:,} bytes of tensors "
                 f"({r['bpw']:.4f} BPW), {r['file_bytes']:,} bytes on disk")
    return "\n".join(lines)
