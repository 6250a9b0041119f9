"""``search measure``: the measurement alone (imatrix, quantization cache, calibration probes,
layer similarity, base statistics), the stage every budget's study reads."""

from __future__ import annotations

from .._pipeline import measure, merge, prepare
from .._pipeline._measure import check_measurement
from .._pipeline._plan import rates
from .._pipeline._prepare import header
from ._args import Parser, add_options, json_arg
from ._output import emit
from ._progress import StageBar

OPTIONS = ["model", "calib", "eval_file", "target", "types", "ctx", "chunks", "select_chunks",
           "imatrix", "no_imatrix", "imatrix_chunks", "probe_bpw", "measure_dir", "studies_dir"]


def main(argv: list[str]) -> int:
    p = Parser(prog="search measure", description="Measure once (imatrix, every tensor "
               "quantized at every candidate type, calibration probes): any number of budgets "
               "then reuse it (search --budget ... with the same options).")
    add_options(p, OPTIONS)
    json_arg(p)
    a = vars(p.parse_args(argv))
    opts = merge(a, need_budget=False)
    spec = prepare(opts)
    check_measurement(spec)
    bar = StageBar(not opts.json)
    try:
        for line in header(spec):
            bar.say(line)
        m = measure(spec, bar.ui())
        rates(spec)  # this machine's rates, for the estimate of every later budget
    finally:
        bar.close()
    res = {"folder": str(m.folder), "settings": m.settings,
           "tensors": len(m.index), "entries": sum(len(v) for v in m.index.values()),
           "role_scales": m.probes.role_scales, "floor_kld": m.probes.base_kld,
           "timings": _timings(m.folder)}
    emit(res, bool(opts.json), format_measure)
    return 0


def _timings(folder) -> dict:
    import json

    path = folder / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def format_measure(r: dict) -> str:
    lines = [f"measurement {r['folder']}: {r['entries']} (tensor, type) entries over "
             f"{r['tensors']} tensors",
             f"floor (every tensor at its most accurate type): calibration KLD "
             f"{r['floor_kld']:.5f}", "role scales (KLD per unit of error energy):"]
    lines += [f"  {k:24} {v:.3g}" for k, v in sorted(r["role_scales"].items(),
                                                   key=lambda kv: -kv[1])]
    if r["timings"]:
        lines.append("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings"].items()))
    lines.append("next: search --budget B with the same options (one study per budget, no "
                 "new measurement)")
    return "\n".join(lines)
