"""Stage 2, one study per budget over a measurement: the prior in KLD units, warm starts,
trials (sampler and surrogate proposals, ``--jobs`` worker processes on the same storage).

    prior_table(plan, measurement)          -> UnitTable   error energies x role scales
    warm_starts(plan, table, measurement)   -> [(name, choice)]   distinct plans, names merged
    open_study(plan, url)                   -> optuna.Study       (refuses other settings)
    run_study(spec, plan, measurement, session, ui) -> optuna.Study
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from quant import UserError, has_quantizer, tensor_nbytes

from .._json import plain
from .._llamacpp import FTYPES, build_recipe, mix_types, plan_bytes, save_recipe
from .._optimize import (UnitTable, cossim, error_loss, experts_low, group_roles, levels_of,
                         milp, project, repair, to_plan, uniform, unit_table)
from .._study import (PairedPruner, Proposer, RecipeObjective, default_url, open_storage,
                      reap_dead_workers)
from ._measure import Measurement
from ._prepare import Plan, Spec
from ._ui import SILENT, Ui


class StudyMismatch(UserError):
    pass


# ---------------------------------------------------------------- the prior and warm starts


def prior_table(spec: Spec, plan: Plan, m: Measurement, measured: dict | None = None
                ) -> UnitTable:
    """Each tensor's error energy times its role's measured scale (``--measure``: the measured
    sensitivities instead)."""
    if measured is not None:
        return unit_table(plan.space, measured)
    role_of = {t.name: t.role for t in spec.model.quantizable(spec.opts.target)}
    return unit_table(plan.space, error_loss(plan.space, m.errors(), m.probes.role_scales,
                                             role_of))


def llama_mixes(spec: Spec):
    """(name, plan) of llama.cpp's default mixes, plain and ``--pure``, whose every type we can
    quantize."""
    for ftype in FTYPES[spec.opts.target]:
        for pure in (False, True):
            try:
                mix = mix_types(spec.model, ftype, spec.opts.target,
                                imatrix=not spec.opts.no_imatrix, pure=pure)
            except UserError:
                continue
            if all(has_quantizer(t, spec.opts.target) for t in set(mix.values())):
                yield ftype + (" --pure" if pure else ""), mix


MIX_BAND, MIX_MOST = 0.03, 3  # llama.cpp mixes this close below the budget start too


def mix_candidates(sizes: list[tuple[str, int]], budget: int, band: float = MIX_BAND,
                   most: int = MIX_MOST) -> list[str]:
    """Names of the llama.cpp mixes that seed a study: the one nearest the budget (either
    side), then those within ``band`` below it, largest first; ``most`` in all. (The nearest
    alone can be a poor start: Gemma 3 270M at 4.51 BPW, pure Q4_0 is nearest and pure IQ4_XS,
    0.8 % smaller, has 40 % less KLD.)"""
    if not sizes:
        return []
    nearest = min(sizes, key=lambda s: abs(s[1] - budget))[0]
    below = [n for n, b in sorted(sizes, key=lambda s: -s[1])
             if (1 - band) * budget <= b <= budget and n != nearest]
    return [nearest, *below][:most]


def _mix_starts(spec: Spec, plan: Plan, table: UnitTable) -> list[tuple[str, np.ndarray]]:
    """llama.cpp's default mixes of ``mix_candidates``, projected onto the space and repaired."""
    mixes = dict(llama_mixes(spec))
    sizes = [(f, plan_bytes(spec.model, mix, spec.opts.target)) for f, mix in mixes.items()]
    out = []
    for ftype in mix_candidates(sizes, plan.budget):
        mix = mixes[ftype]
        shapes = {n: spec.model.tensors[n].shape for n in mix}
        unit_bytes = np.array([sum(tensor_nbytes(mix[n], shapes[n]) for n in names)
                               for names in table.tensors])
        c = project(table, mix, unit_bytes)
        out.append((f"mix-{ftype.replace(' --', '-')}",
                    repair(table, c, plan.budget, plan.space.fixed_bytes, improve=False)))
    return out


def warm_starts(spec: Spec, plan: Plan, table: UnitTable, m: Measurement,
                milp_name: str = "milp-prior") -> list[tuple[str, np.ndarray]]:
    """(name, unit choice) of every warm start that applies, each within the budget; a plan
    two warm starts share is enqueued once under both names (``a = b``)."""
    fixed, out = plan.space.fixed_bytes, []
    out += uniform(table, plan.budget, fixed)
    out += _mix_starts(spec, plan, table)
    layer_cos = m.similarity.get("layer", {})
    if layer_cos:
        c = cossim(table, plan.budget, fixed, layer_cos)
        if c is not None:
            out.append(("cossim", c))
    routed = np.array([spec.model.tensors[names[0]].role.endswith("_exps")
                       for names in table.tensors])
    c = experts_low(table, plan.budget, fixed, routed)
    if c is not None:
        out.append(("experts-low", c))
    c = milp(table, plan.budget, fixed)
    if c is not None:
        out.append((milp_name, c))
    merged: dict[bytes, tuple[str, np.ndarray]] = {}
    for name, c in out:
        key = c.tobytes()
        merged[key] = (f"{merged[key][0]} = {name}", c) if key in merged else (name, c)
    return list(merged.values())


# ---------------------------------------------------------------- the study


def open_study(plan: Plan, url: str | None = None) -> optuna.Study:
    opts = plan.opts
    storage = open_storage(url or opts.storage or default_url(opts.study_dir()))
    sampler = optuna.samplers.TPESampler(seed=opts.seed, multivariate=True, constant_liar=True,
                                         n_startup_trials=10)
    pruner = optuna.pruners.NopPruner() if opts.pareto or opts.no_prune else PairedPruner()
    study = optuna.create_study(study_name=opts.study_name(), storage=storage,
                                directions=["minimize"] * (2 if opts.pareto else 1),
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    old = study.user_attrs.get("spec")
    _same_spec(opts, old, plan.attrs)
    if old is None:
        study.set_user_attr("spec", plan.attrs)
    reap_dead_workers(study)
    return study


def check_study(plan: Plan) -> None:
    """A study that exists must have been made with these settings: refused before any work."""
    opts = plan.opts
    url = opts.storage or default_url(opts.study_dir())
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return
    if url.startswith("journal:") and not Path(url.removeprefix("journal:")).is_file():
        return
    try:
        old = optuna.load_study(study_name=opts.study_name(), storage=open_storage(url)
                                ).user_attrs.get("spec")
    except KeyError:
        return
    _same_spec(opts, old, plan.attrs)


def _same_spec(opts, old: dict | None, new: dict) -> None:
    if old is not None and old != new:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items()
                         if old.get(k) != v)
        raise StudyMismatch(f"study '{opts.study_name()}' was made with other settings ({diff}):"
                            " give another --study name or the same settings")


def enqueue(study: optuna.Study, plan: Plan, table: UnitTable,
            starts: list[tuple[str, np.ndarray]]) -> int:
    """Enqueue each warm start once per study (a resumed study does not repeat them)."""
    if study.user_attrs.get("warm_enqueued"):
        return 0
    free = [i for i, g in enumerate(plan.space.groups) if len(g.options) > 1]
    for name, choice in starts:
        recipe = to_plan(table, choice)
        levels = levels_of(table, recipe)
        params = {plan.space.groups[i].name: levels[i] for i in free}
        study.enqueue_trial(params, user_attrs={"warm_start": name, "warm_plan": recipe})
    study.set_user_attr("warm_enqueued", [n for n, _ in starts])
    return len(starts)


def objective(spec: Spec, plan: Plan, table: UnitTable, session) -> RecipeObjective:
    artifacts = plan.opts.study_dir() / "artifacts"

    def on_recipe(trial: optuna.Trial, recipe: dict[str, str], metrics: dict) -> None:
        _upload_recipe(trial, spec, recipe, metrics, artifacts)

    return RecipeObjective(plan.space, table, plan.budget, session, plan.opts.objective,
                           stage=session.batch, seed=plan.opts.seed, pareto=plan.opts.pareto,
                           chunks=plan.opts.chunks, on_recipe=on_recipe)


def _upload_recipe(trial, spec: Spec, recipe, metrics, artifacts: Path) -> None:
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    artifacts.mkdir(parents=True, exist_ok=True)
    path = save_recipe(build_recipe(spec.model, recipe, spec.opts.target,
                                    objectives=plain(metrics)),
                       artifacts / f"trial-{trial.number:05d}.recipe.json")
    upload_artifact(artifact_store=FileSystemArtifactStore(str(artifacts)), file_path=str(path),
                    study_or_trial=trial, mimetype="application/json")


def proposer(plan: Plan, table: UnitTable, base_kld: float) -> Proposer | None:
    """The surrogate's proposals (single-objective studies only)."""
    if plan.opts.pareto:
        return None
    return Proposer(plan.space, table, plan.budget, base_kld, plan.opts.trials, plan.opts.seed,
                    role=group_roles(plan.space)[1])


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise UserError(f"study '{study.study_name}' has no completed trial yet: run more trials")
    if len(study.directions) == 1:
        return min(done, key=lambda t: t.value)
    return min(done, key=lambda t: t.values[1])


STALL = 50  # trials in a row that found no new plan: the space near the trials is exhausted


def evaluated(study: optuna.Study) -> list:
    """Finished trials that evaluated their own plan (not a duplicate told without one)."""
    return [t for t in study.get_trials(deepcopy=False, states=FINISHED)
            if "duplicate_of" not in t.user_attrs]


class _StopAt:
    """Stops the study at ``n`` evaluated trials (duplicates do not count), or when the last
    STALL trials all found no new plan."""

    def __init__(self, n: int | None) -> None:
        self.n = n

    def __call__(self, study: optuna.Study, trial) -> None:
        if self.n is not None and len(evaluated(study)) >= self.n:
            study.stop()
            return
        recent = study.get_trials(deepcopy=False, states=FINISHED)[-STALL:]
        if len(recent) == STALL and all("duplicate_of" in t.user_attrs for t in recent):
            study.set_user_attr("exhausted", True)
            study.stop()


class _TrialBar:
    """The trial bar: evaluated trials, the best calibration KLD, the running trial's chunks."""

    def __init__(self, study: optuna.Study, n_trials: int | None, ui: Ui) -> None:
        self.ui, self.n_trials, self.best = ui, n_trials or 0, ""
        self(study, None)

    def __call__(self, study: optuna.Study, trial) -> None:
        self.ui.progress("trials", len(evaluated(study)), self.n_trials)
        try:
            b = best_trial(study)
            self.best = f"best calibration KLD {b.values[-1]:.5f} (trial {b.number})"
        except UserError:
            pass
        self.ui.status("trials", self.best)

    def stage(self, number: int, done: int, total: int) -> None:
        self.ui.status("trials", f"{self.best}; trial {number}: {done}/{total} chunks".lstrip("; "))


def optimize(study: optuna.Study, obj: RecipeObjective, opts, propose: Proposer | None = None,
             ui: Ui = SILENT) -> None:
    from dataclasses import replace

    if opts.trials is not None and len(evaluated(study)) >= opts.trials:
        return
    bar = _TrialBar(study, opts.trials, ui)
    callbacks = [bar] + ([propose] if propose else []) + [_StopAt(opts.trials)]
    study.optimize(replace(obj, on_stage=bar.stage), n_trials=None, timeout=opts.timeout,
                   callbacks=callbacks)


def measured_loss(spec: Spec, plan: Plan, m: Measurement, ui: Ui) -> dict | None:
    """--measure: per group [n_tensors, n_options] the measured delta KLD of each tensor's
    role x layer group at each option (stored in the measurement; missing ones measured)."""
    if not spec.opts.measure:
        return None
    from objectives import corpus_tokens, read_corpus
    from objectives._scores import default_groups, measure_sensitivity
    from quant import resolve

    groups = default_groups(spec.model, spec.opts.target, spec.ties)
    tokens = corpus_tokens(spec.model, read_corpus(spec.opts.calib, "calib"))
    sens = measure_sensitivity(spec.model, groups, list(spec.types), tokens, spec.opts.ctx,
                               spec.opts.measure_chunks, spec.opts.target,
                               m.imatrix(spec.model), m.folder / "sensitivity",
                               progress=ui.staged("sensitivity"))
    where = {n: g for g, names in groups.items() for n in names}
    out = {}
    for g in plan.space.groups:
        rows = []
        for name in g.tensors:
            shape, mg = spec.model.tensors[name].shape, where[name]
            per = {resolve(t, shape, spec.opts.target): v / len(groups[mg])
                   for t, v in sens.get(mg, {}).items()}
            rows.append([per.get(o, np.nan) for o in g.options])
        out[g.name] = np.array(rows)
    return out


def run_study(spec: Spec, plan: Plan, m: Measurement, session, ui: Ui = SILENT
              ) -> optuna.Study:
    """Warm starts, then trials until ``--trials`` finished or ``--timeout``; ``--jobs`` adds
    worker processes that load the same measurement."""
    table = prior_table(spec, plan, m)
    measured = measured_loss(spec, plan, m, ui)
    study = open_study(plan)
    study.set_user_attr("role_scales", m.probes.role_scales)
    study.set_user_attr("measurement", str(m.folder))
    milp_table = prior_table(spec, plan, m, measured) if measured else table
    starts = warm_starts(spec, plan, milp_table, m,
                         "milp-measured" if measured else "milp-prior")
    enqueue(study, plan, table, starts)
    workers = [_spawn_worker(plan.opts) for _ in range(plan.opts.jobs - 1)]
    try:
        optimize(study, objective(spec, plan, table, session), plan.opts,
                 proposer(plan, table, m.probes.base_kld), ui)
    finally:
        for w in workers:
            w.join()
            if w.exitcode:
                print(f"warning: worker {w.pid} exited with code {w.exitcode}; the study keeps "
                      "every trial it completed", file=sys.stderr)
    return study


def _spawn_worker(opts) -> mp.Process:
    proc = mp.get_context("spawn").Process(target=worker_main, args=(opts,), daemon=False)
    proc.start()
    return proc


def worker_main(opts) -> None:
    """A ``--jobs`` worker: the same study, the measurement loaded (not recomputed)."""
    from dataclasses import replace

    from ._measure import calib_session, measure
    from ._prepare import prepare

    opts = replace(opts, json=True, jobs=1, seed=opts.seed + 1 + mp.current_process().pid % 9973)
    spec = prepare(opts)
    plan = spec.plans[0]
    m = measure(spec)
    session = calib_session(spec)
    table = prior_table(spec, plan, m)
    optimize(open_study(plan), objective(spec, plan, table, session), plan.opts,
             proposer(plan, table, m.probes.base_kld))


def trials_by_origin(study: optuna.Study) -> dict[str, dict]:
    """Per origin (warm start, surrogate, sampler): evaluated trials, those stopped early,
    their best value, and the trials that found only an evaluated plan (told as duplicates)."""
    out: dict[str, dict] = {}
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        a = t.user_attrs
        kind = "warm start" if "warm_start" in a else "surrogate" if "proposal" in a else "sampler"
        row = out.setdefault(kind, {"trials": 0, "pruned": 0, "duplicates": 0, "best": None})
        if "duplicate_of" in a:
            row["duplicates"] += 1
            continue
        row["trials"] += 1
        row["pruned"] += t.state == TrialState.PRUNED
        if t.state == TrialState.COMPLETE and (row["best"] is None or t.values[-1] < row["best"]):
            row["best"] = t.values[-1]
    return out


def distinct_plans(study: optuna.Study) -> int:
    return len({t.user_attrs.get("plan_sha") for t in evaluated(study)})

