"""``search inspect``: tensors, the types each can take, uniform sizes; a quantized file's
recipe; llama-quantize's default mix per tensor."""

from __future__ import annotations

from collections import defaultdict

from quant import TARGETS

from .._llamacpp import human_size
from .._pipeline import as_recipe, inspect, load_model, mix
from ._args import Parser, json_arg, model_arg
from ._output import emit


def main(argv: list[str]) -> int:
    p = Parser(prog="search inspect", description="Tensors, the types each can really take "
               "per target, and uniform-type sizes.")
    model_arg(p)
    json_arg(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--as-recipe", action="store_true", help="print the recipe of a quantized file")
    g.add_argument("--mix", metavar="FTYPE", help="predict llama-quantize's types for a default mix")
    p.add_argument("--target", choices=TARGETS, help="project (default: both; for --mix and "
                   "--as-recipe: mainline, or ik for a file with ik-only types)")
    p.add_argument("--no-imatrix", action="store_true", help="with --mix: the rules without imatrix")
    p.add_argument("--pure", action="store_true", help="with --mix: as llama-quantize --pure")
    a = p.parse_args(argv)
    model = load_model(a.model)
    if a.as_recipe:
        emit(as_recipe(model, a.target), True, str)
    elif a.mix:
        emit(mix(model, a.mix, a.target or "mainline", not a.no_imatrix, a.pure), a.json,
             format_mix)
    else:
        emit(inspect(model, [a.target] if a.target else list(TARGETS)), a.json, format_inspect)
    return 0


def format_inspect(r: dict) -> str:
    m, h = r["model"], r["hparams"]
    lines = [f"{m['name']} ({m['arch']}, {h['n_layer']} layers, n_embd {h['n_embd']}, "
             f"n_ff {h['n_ff']}, heads {h['n_head']}/{h['n_head_kv']}"
             f"{', tied embeddings' if r['tied_embeddings'] else ''})",
             f"{len(r['tensors'])} tensors, {m['n_elements']:,} weights, "
             f"{human_size(m['bytes'], m['n_elements'])} as stored", ""]
    lines += _tensor_groups(r["tensors"])
    for tgt, rows in r["uniform"].items():
        lines += ["", f"uniform recipes, {tgt} (every quantizable tensor asks for one type):",
                  f"  {'type':9} {'MiB':>9} {'GiB':>8} {'BPW':>8}  fallbacks"]
        lines += [f"  {u['type']:9} {u['mib']:9.2f} {u['gib']:8.4f} {u['bpw']:8.4f}  {u['fallbacks']}"
                  for u in rows]
    return "\n".join(lines)


def _tensor_groups(tensors: list[dict]) -> list[str]:
    """One line per (role, shape, stored type): layers and the types it can take."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for t in tensors:
        groups[(t["role"], tuple(t["shape"]), t["type"])].append(t)
    lines = [f"{'role':16} {'shape':>14} {'stored':7} {'n':>4}  can take (after fallback)"]
    for (role, shape, typ), ts in groups.items():
        take = ts[0]["can_take"]
        desc = "; ".join(f"{k}: {' '.join(v)}" for k, v in take.items() if v) or "not quantized"
        lines.append(f"{role:16} {'x'.join(map(str, shape)):>14} {typ:7} {len(ts):4}  {desc}")
    return lines


def format_mix(r: dict) -> str:
    lines = [f"{r['ftype']} ({r['target']}, {'with' if r['imatrix'] else 'without'} imatrix"
             f"{', pure' if r['pure'] else ''}): {r['mib']:.2f} MiB, {r['bpw']:.4f} BPW"]
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())))
    lines += [f"  {n:36} {t}" for n, t in r["tensors"].items()]
    return "\n".join(lines)
