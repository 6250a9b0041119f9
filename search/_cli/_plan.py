"""``search plan``: what a study will cost on this machine (disk, memory, time per stage),
before any work."""

from __future__ import annotations

from .._pipeline import merge, prepare
from .._pipeline._plan import check_fits, estimate, rates, summary_lines
from .._pipeline._prepare import header
from ._args import Parser, add_options, json_arg
from ._output import emit


def main(argv: list[str]) -> int:
    p = Parser(prog="search plan", description="The cost of a study on this machine: disk, "
               "peak memory and the time of each stage, from rates measured in a few seconds "
               "on the model's real shapes.")
    add_options(p)
    json_arg(p)
    opts = merge(vars(p.parse_args(argv)))
    spec = prepare(opts)
    est = estimate(spec, rates(spec))
    fits = True
    try:
        check_fits(spec, est)
    except Exception as e:  # reported, not raised: the plan's job is to say so
        fits = str(e)
    res = {"header": header(spec), "stages": est.stages, "done": sorted(est.done),
           "total_s": est.total_s,
           "trial_s": est.trial_s, "host_bytes": est.host_bytes, "disk_bytes": est.disk_bytes,
           "fits": fits, "lines": summary_lines(spec, est)}
    emit(res, bool(opts.json), lambda r: "\n".join(
        [*r["header"], *r["lines"], "" if r["fits"] is True else f"does not fit: {r['fits']}"]))
    return 0
