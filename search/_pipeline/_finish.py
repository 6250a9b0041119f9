"""Stage 3, after the trials: the final pick on more calibration chunks, the held-out
comparison against every warm start and llama.cpp's nearest default mixes, the exports and
the report.

    select(plan, study, session)            -> FrozenTrial   best of the top 5 and the best warm
                                                             start on --select-chunks
    heldout_rows(spec, plan, m, study, best, session) -> ([row], notes)  one row per recipe
    finish(spec, plan, m, study, session)   -> report (dict, strict JSON, also report.json)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from .._json import plain, write_json
from .._llamacpp import build_recipe, plan_bytes, plan_export, provenance, save_recipe
from .._llamacpp import write_plan
from .._optimize import OBJECTIVES
from .._study import default_url, plan_sha
from ._measure import Measurement, evaluate_staged
from ._prepare import Plan, Spec
from ._run import best_trial, distinct_plans, evaluated, llama_mixes, trials_by_origin
from ._ui import SILENT, Ui

SELECT_TOP = 5
FLOOR_MARGIN = 0.02  # a best within 2 % of the least-damage recipe's KLD is at the floor


def select(plan: Plan, study: optuna.Study, session, ui: Ui = SILENT
           ) -> optuna.trial.FrozenTrial:
    """The final pick: the best ``SELECT_TOP`` distinct recipes, and the best warm start if it
    is not among them, re-evaluated on ``--select-chunks`` calibration chunks that no trial saw
    (the best of many on the trials' chunks is partly luck, which chunks it was chosen on would
    favour again; a search result must beat the best baseline on chunks neither was chosen on),
    the lowest wins. Stored as the study's ``selection``."""
    opts = plan.opts
    fresh = list(range(opts.chunks, min(opts.chunks + opts.select_chunks, session.n_chunks)))
    if opts.pareto or len(fresh) < 2:
        return best_trial(study)
    top, seen = [], set()
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: t.value):
        if t.user_attrs.get("plan_sha") not in seen and "recipe" in t.user_attrs:
            seen.add(t.user_attrs.get("plan_sha"))
            top.append(t)
    warm = [t for t in top if "warm_start" in t.user_attrs]
    top = top[:SELECT_TOP] + [t for t in warm[:1] if t not in top[:SELECT_TOP]]
    if len(top) < 2:
        return best_trial(study)
    key, n, scored = OBJECTIVES[opts.objective], len(fresh), {}
    for i, t in enumerate(top):
        tick = lambda d, i=i: ui.progress("final pick", i * n + d, len(top) * n)  # noqa: E731
        scored[t.number] = float(evaluate_staged(session, t.user_attrs["recipe"], fresh,
                                                 tick)[key])
    study.set_user_attr("selection", {"chunks": n, "first_chunk": fresh[0], "objective": key,
                                      "trials": {str(k): v for k, v in scored.items()}})
    return next(t for t in top if t.number == min(scored, key=scored.get))


def _nearest_mixes(spec: Spec, plan: Plan, m: Measurement) -> tuple[list, list[str]]:
    """llama.cpp's default mixes (plain and --pure) nearest the budget from below and from
    above (within 10 %), among those the measurement holds every (tensor, type) of, so the
    comparison quantizes nothing the estimate did not count: ((name, plan, bytes), ...) and
    the names of nearer mixes left out for a type outside --types."""
    below, above, left_out = None, None, {}
    for ftype, mix in llama_mixes(spec):
        nb = plan_bytes(spec.model, mix, spec.opts.target)
        fits = nb <= plan.budget
        if not fits and nb > 1.1 * plan.budget:
            continue
        nearer = (below is None or nb > below[2]) if fits else (above is None or nb < above[2])
        if not nearer:
            continue
        missing = sorted({t for n, t in mix.items() if t not in m.index.get(n, {})})
        if missing:
            left_out[ftype] = (missing, nb, fits)
            continue
        if fits:
            below = (f"llama.cpp {ftype}", mix, nb)
        else:
            above = (f"llama.cpp {ftype}", mix, nb)
    def nearer_than_kept(nb: int, fits: bool) -> bool:
        kept = below if fits else above
        return kept is None or (nb > kept[2] if fits else nb < kept[2])

    notes = [f"llama.cpp {f} not compared: it needs {', '.join(t)}, not measured (add to "
             "--types)" for f, (t, nb, fits) in left_out.items() if nearer_than_kept(nb, fits)]
    return [x for x in (below, above) if x is not None], notes


def heldout_rows(spec: Spec, plan: Plan, m: Measurement, study: optuna.Study, best, session,
                 ui: Ui = SILENT) -> tuple[list[dict], list[str]]:
    """The best recipe, every warm start and llama.cpp's nearest default mixes, on the
    held-out text; identical recipes once (names joined with '='); rows over the budget
    marked; and the notes on mixes left out."""
    named = [(f"best (trial {best.number})", best.user_attrs["recipe"])]
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "warm_start" in t.user_attrs and "recipe" in t.user_attrs:
            named.append((f"warm: {t.user_attrs['warm_start']}", t.user_attrs["recipe"]))
    mixes, notes = _nearest_mixes(spec, plan, m)
    named += [(name, mix) for name, mix, _ in mixes]
    distinct: dict[str, list] = {}
    for name, recipe in named:
        distinct.setdefault(plan_sha(recipe), [[], recipe])[0].append(name)
    rows, n = [], session.n_chunks
    chunks = list(range(n))
    for i, (names, recipe) in enumerate(distinct.values()):
        nb = plan_bytes(spec.model, recipe, spec.opts.target)
        tick = lambda d, i=i: ui.progress("held-out comparison", i * n + d, len(distinct) * n)  # noqa: E731,E501
        rows.append({"name": " = ".join(names), "bytes": nb,
                     "bpw": 8 * nb / spec.model.n_elements, "over_budget": nb > plan.budget,
                     **plain(evaluate_staged(session, recipe, chunks, tick))})
    return rows, notes


def at_floor(best_value: float, floor_kld: float) -> bool:
    """Whether the best is within ``FLOOR_MARGIN`` of the least-damage recipe's KLD (every
    tensor at its most accurate type): no recipe can do measurably better."""
    return floor_kld > 0 and best_value <= (1 + FLOOR_MARGIN) * floor_kld


def _write_imatrix(spec: Spec, m: Measurement, out: Path) -> Path | None:
    """The imatrix the study used, in the target's format (ik reads only .dat), beside the
    scripts so the study folder can be moved."""
    if m.imatrix_path is None:
        return None
    import shutil

    name = "imatrix.dat" if spec.opts.target == "ik" else "imatrix.gguf"
    return Path(shutil.copyfile(m.folder / name, out / name))


def finish(spec: Spec, plan: Plan, m: Measurement, study: optuna.Study, session, eval_session,
           ui: Ui = SILENT) -> dict[str, Any]:
    out = plan.opts.study_dir()
    out.mkdir(parents=True, exist_ok=True)
    best = select(plan, study, session, ui)
    rows, left_out = heldout_rows(spec, plan, m, study, best, eval_session, ui)
    calib = {k: best.user_attrs[k] for k in OBJECTIVES.values() if k in best.user_attrs}
    recipe = build_recipe(spec.model, best.user_attrs["recipe"], spec.opts.target,
                          objectives={"heldout": rows[0], "calibration": calib},
                          prov=provenance(spec.opts.calib, m.imatrix_path))
    path = save_recipe(recipe, out / "recipe.json")
    imat = _write_imatrix(spec, m, out)
    export = plan_export(recipe.tensors, recipe.shapes, spec.opts.target, imat,
                         recipe.input_quantized)
    files = write_plan(export, out)
    report = {**_report(spec, plan, m, study, best, path, rows, files, imat),
              "not_compared": left_out}
    write_json(out / "report.json", report)
    _note(study, report, export.notes)
    return report


def _report(spec: Spec, plan: Plan, m: Measurement, study, best, path: Path, rows, files,
            imat) -> dict:
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    n_eval = len(evaluated(study))
    warm = [r for r in rows[1:] if "warm: " in r["name"]]
    beats = "warm: " not in rows[0]["name"] and all(rows[0]["kld_mean"] < r["kld_mean"]
                                                     for r in warm)
    return plain({
        "format": "gguf-recipe-report/1", "study": study.study_name,
        "out_dir": str(plan.opts.study_dir()), "recipe": str(path),
        "budget": plan.opts.budget, "budget_bytes": plan.budget,
        "bytes": best.user_attrs["bytes"], "bpw": best.user_attrs["bpw"],
        "kld_mean": rows[0]["kld_mean"], "heldout": rows[0], "best_trial": best.number,
        "best_is_warm_start": best.user_attrs.get("warm_start"),
        "at_floor": at_floor(best.values[-1], m.probes.base_kld),
        "floor_kld": m.probes.base_kld,
        "n_trials": n_eval, "duplicates": len(finished) - n_eval,
        "distinct_plans": distinct_plans(study),
        "space_exhausted": bool(study.user_attrs.get("exhausted", False)),
        "comparison": rows, "beats_every_warm_start": beats,
        "warm_starts": study.user_attrs.get("warm_enqueued", []),
        "selection": study.user_attrs.get("selection"),
        "role_scales": m.probes.role_scales, "trials_by_origin": trials_by_origin(study),
        "measurement": str(m.folder), "exports": [str(f) for f in files],
        "storage": plan.opts.storage or default_url(plan.opts.study_dir()),
        "imatrix": str(imat) if imat else None, "target": spec.opts.target,
        "model": str(spec.model.paths[0]),
    })


def _note(study: optuna.Study, s: dict, notes: list[str]) -> None:
    """A study note (optuna-dashboard) with the export commands of the best recipe."""
    from optuna_dashboard import save_note

    script = [e for e in s["exports"] if e.endswith(".sh")]
    body = [f"# Best recipe: trial {s['best_trial']}", "",
            f"{s['bytes']} bytes, {s['bpw']:.4f} BPW, held-out KLD {s['kld_mean']:.6f}", "",
            "Quantize with llama-quantize:", "", "```",
            f"LLAMA_QUANTIZE=/path/to/llama-quantize {script[0] if script else '...'} "
            f"{s['model']} OUT.gguf", "```", "", f"Recipe: `{s['recipe']}`"]
    body += ["", "Notes:", *(f"- {n}" for n in notes[:20])] if notes else []
    save_note(study, "\n".join(body))
