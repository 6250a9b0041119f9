"""``search --budget B[,B...]``: the stages in order, one measurement for every budget.

    prepare -> header and estimate (refused if it cannot fit) -> measure (read, resumed or
    computed) -> per budget: run_study -> finish (-> write)
"""

from __future__ import annotations

import time
from typing import Any

from objectives import read_corpus

from .._json import write_json
from ._finish import finish
from ._measure import calib_session, check_measurement, measure
from ._options import SearchOptions
from ._plan import check_fits, estimate, rates, summary_lines
from ._prepare import header, prepare
from ._run import check_study, run_study
from ._ui import SILENT, Ui
from ._write import write_model


def run_search(opts: SearchOptions, ui: Ui = SILENT) -> list[dict[str, Any]]:
    """Every budget's report; bad input fails before any work or study."""
    t0 = time.perf_counter()
    spec = prepare(opts)
    for plan in spec.plans:
        check_study(plan)
    check_measurement(spec)
    for line in header(spec):
        ui.say(line)
    est = estimate(spec, rates(spec))
    for line in summary_lines(spec, est):
        ui.say(line)
    check_fits(spec, est)
    m = measure(spec, ui)
    session = calib_session(spec, ui)
    seconds = {"measure": time.perf_counter() - t0}
    eval_session, reports = None, []
    for plan in spec.plans:
        t1 = time.perf_counter()
        study = run_study(spec, plan, m, session, ui)
        session.release()  # the last trial's weights: the held-out session loads its own
        t2 = time.perf_counter()
        if eval_session is None:
            eval_session = m.session(spec.model, read_corpus(opts.eval_file, "eval"), opts.ctx,
                                     opts.eval_chunks, opts.target, ui)
        report = finish(spec, plan, m, study, session, eval_session, ui)
        if plan.opts.write:
            report["written"] = write_model(plan.opts.study_name(), plan.opts.write,
                                            studies_dir=plan.opts.studies_dir, ui=ui)
        seconds.update({f"trials ({plan.opts.budget})": t2 - t1,
                        f"finish ({plan.opts.budget})": time.perf_counter() - t2})
        report["seconds"] = {**seconds, "total": time.perf_counter() - t0}
        report["estimate"] = {"stages": est.stages, "total": est.total_s,
                              "host_bytes": est.host_bytes, "disk_bytes": est.disk_bytes}
        write_json(plan.opts.study_dir() / "report.json", report)  # with the times
        reports.append(report)
    return reports
