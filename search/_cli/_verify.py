"""``search verify``: the study's predicted KLD/PPL against what the user's llama-perplexity
measures on the written file."""

from __future__ import annotations

from .._pipeline import verify
from ._args import Parser, studies_dir_arg, json_arg
from ._output import emit
from ._progress import with_bars


def main(argv: list[str]) -> int:
    p = Parser(prog="search verify", description="Write the study's best recipe, run "
               "llama-perplexity --kl-divergence on it, and compare with our prediction.")
    p.add_argument("study", help="study name (a folder of the studies folder)")
    p.add_argument("--llama-bin", help="folder of llama.cpp or ik_llama.cpp binaries (default: "
                   "$LLAMA_BIN, else PATH)")
    p.add_argument("-f", "--file", help="evaluation text (default: the bundled held-out corpus)")
    p.add_argument("--chunks", type=int, help="chunks of --ctx tokens (default: the study's "
                   "held-out chunks)")
    studies_dir_arg(p)
    json_arg(p)
    a = p.parse_args(argv)
    res = with_bars(a.json, verify, a.study, a.studies_dir, a.llama_bin, a.file, a.chunks)
    emit(res, bool(a.json), format_verify)
    return 0


def format_verify(r: dict) -> str:
    m, p, d = r["measured"], r["predicted"], r["rel_diff"]
    lines = [f"{r['file']}: {r['project']} llama-perplexity, {r['chunks']} chunks",
             f"  {'figure':12} {'llama-perplexity':>18} {'predicted':>12} {'difference':>11}"]
    for k in ("kld_mean", "kld_p99", "same_top_p", "ppl"):
        diff = "" if d.get(k) is None else f"{100 * d[k]:+.2f} %"
        lines.append(f"  {k:12} {m[k]:18.6f} {p[k]:12.6f} {diff:>11}")
    lines.append(f"  {'file bytes':12} {m['file_bytes']:18,}")
    lines += [f"warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)
