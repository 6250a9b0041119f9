"""``search --budget B``: prepare (all checks before the study is touched), calibrate the prior,
warm-start, optimize (sampler and surrogate proposals), pick the final recipe on more calibration
chunks, re-evaluate it on held-out text against every warm start and llama.cpp mix, export, report.

    studies/NAME/study.db        Optuna storage (default; --storage for journal or PostgreSQL)
    studies/NAME/recipe.json     best recipe (gguf-recipe/1) + its exports and report.json
    studies/.cache/              quantized tensors and base-model statistics, shared by studies
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from quant import UserError, has_quantizer, searchable_types, type_in_target

from objectives import GGUFModel

from . import _warm
from ._allocate import UnitTable, to_plan, unit_table
from ._budget import check_reachable, parse_budget
from ._options import SearchOptions
from ._progress import StageBar
from ._recipe import build_recipe, provenance, save_recipe
from ._space import Space, build_space
from ._storage import check_url, default_url, open_storage, reap_dead_workers
from ._calibrate import calibrate, group_roles
from ._study import OBJECTIVES, Proposer, RecipeObjective

DEFAULT_EXCLUDE = ("f32", "f16", "bf16")


class StudyMismatch(UserError):
    pass


@dataclass
class Prepared:
    opts: SearchOptions
    model: GGUFModel
    space: Space
    table: UnitTable
    budget: int
    spec: dict
    imatrix_path: str | None = None
    ties: tuple = ()
    scales: dict[str, float] | None = None  # measured KLD per unit of prior damage, per role
    base_kld: float = 0.0  # the least-damage recipe's KLD: the surrogate's intercept prior


def default_types(target: str) -> list[str]:
    return [t for t in searchable_types(target) if t not in DEFAULT_EXCLUDE]


def _types(opts: SearchOptions) -> list[str]:
    if not opts.types:
        return default_types(opts.target)
    names = [type_in_target(t, opts.target).name for t in opts.types]
    missing = [t for t in names if t not in searchable_types(opts.target)]
    if missing:
        raise UserError(f"no {opts.target} kernel for {', '.join(missing)} here: the search can "
                        f"evaluate {', '.join(searchable_types(opts.target))}")
    return names


def check_jobs(opts: SearchOptions) -> None:
    """Several processes on one SQLite study can pop the same waiting trial (SQLite ignores the
    row lock optuna asks for), so ``--jobs`` needs a journal file or a server."""
    url = opts.storage or default_url(opts.study_dir())
    if opts.jobs > 1 and url.startswith("sqlite"):
        raise UserError(f"--jobs {opts.jobs} runs several processes on one study, which SQLite "
                        f"cannot serve safely: add --storage journal:{opts.study_dir()}/study.log "
                        "(or a postgresql:// URL)")


def prepare(opts: SearchOptions, model: GGUFModel) -> Prepared:
    """Everything that can fail on bad input, before any study is created or changed."""
    if opts.storage:
        check_url(opts.storage)
    check_jobs(opts)
    if opts.objective not in OBJECTIVES:
        raise UserError(f"unknown --objective '{opts.objective}': use {', '.join(OBJECTIVES)}")
    types = _types(opts)
    ties = (("ffn_gate_exps", "ffn_up_exps"),) + tuple(tuple(t.split(",")) for t in opts.ties)
    space = build_space(model, opts.target, types, opts.pins, ties)
    lo, hi = space.extremes()
    budget = check_reachable(parse_budget(opts.budget), lo, hi, model.n_elements, opts.target)
    spec = {"model": model.identity()["sha256_header_and_heads"], "target": opts.target,
            "budget_bytes": budget, "types": types, "pins": list(opts.pins),
            "objective": opts.objective, "pareto": opts.pareto, "ctx": opts.ctx,
            "chunks": opts.chunks, "calib": opts.calib or "bundled",
            "imatrix": "none" if opts.no_imatrix else (opts.imatrix or f"own:{opts.imatrix_chunks}")}
    return Prepared(opts, model, space, unit_table(space), budget, spec, ties=ties)


def open_study(p: Prepared) -> optuna.Study:
    url = p.opts.storage or default_url(p.opts.study_dir())
    storage = open_storage(url)
    sampler = optuna.samplers.TPESampler(seed=p.opts.seed, multivariate=True, constant_liar=True,
                                         n_startup_trials=10)
    pruner = optuna.pruners.NopPruner() if p.opts.pareto else optuna.pruners.WilcoxonPruner(
        p_threshold=0.1, n_startup_steps=4)
    study = optuna.create_study(study_name=p.opts.study_name(), storage=storage,
                                directions=["minimize"] * (2 if p.opts.pareto else 1),
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    old = study.user_attrs.get("spec")
    if old is None:
        study.set_user_attr("spec", p.spec)
    elif old != p.spec:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in p.spec.items()
                         if old.get(k) != v)
        raise StudyMismatch(f"study '{p.opts.study_name()}' was made with other settings ({diff}):"
                            " give another --study name or the same settings")
    reap_dead_workers(study)
    return study


def warm_starts(p: Prepared, layer_cos: dict[int, float] | None = None,
                loss_table: UnitTable | None = None,
                milp_name: str = "milp") -> list[tuple[str, np.ndarray]]:
    """(name, unit choice) of every warm start that applies, each within the budget."""
    fixed, out = p.space.fixed_bytes, []
    out += _warm.uniform(p.table, p.budget, fixed)
    mix = _mix_start(p)
    if mix is not None:
        out.append(mix)
    if layer_cos:
        c = _warm.cossim(p.table, p.budget, fixed, layer_cos)
        if c is not None:
            out.append(("cossim", c))
    if loss_table is not None:
        c = _warm.milp(loss_table, p.budget, fixed)
        if c is not None:
            out.append((milp_name, c))
    return out


def _mix_start(p: Prepared) -> tuple[str, np.ndarray] | None:
    """llama.cpp's default mix nearest the budget, projected onto the space and repaired."""
    from ._sizes import plan_bytes

    best = None
    for ftype, plan in _mixes(p):
        gap = abs(plan_bytes(p.model, plan, p.opts.target) - p.budget)
        if best is None or gap < best[0]:
            best = (gap, ftype, plan)
    if best is None:
        return None
    unit_bytes = np.array([sum(_nbytes(p.model, n, best[2][n]) for n in names)
                           for names in p.table.tensors])
    c = _warm.project(p.table, best[2], unit_bytes)
    from ._allocate import repair

    return f"mix-{best[1].replace(' --', '-')}", repair(p.table, c, p.budget, p.space.fixed_bytes, improve=False)


def _mixes(p: Prepared):
    """(name, plan) of llama.cpp's default mixes, plain and ``--pure``, whose every type we
    can quantize."""
    from ._mixes import FTYPES, mix_types

    for ftype in FTYPES[p.opts.target]:
        for pure in (False, True):
            try:
                plan = mix_types(p.model, ftype, p.opts.target, imatrix=not p.opts.no_imatrix,
                                 pure=pure)
            except UserError:
                continue
            if all(has_quantizer(t, p.opts.target) for t in set(plan.values())):
                yield ftype + (" --pure" if pure else ""), plan


def _nbytes(model: GGUFModel, name: str, type_: str) -> int:
    from quant import tensor_nbytes

    return tensor_nbytes(type_, model.tensors[name].shape)


def enqueue(study: optuna.Study, p: Prepared, starts: list[tuple[str, np.ndarray]]) -> int:
    """Enqueue each warm start once per study (a resumed study does not repeat them)."""
    if study.user_attrs.get("warm_enqueued"):
        return 0
    free = [i for i, g in enumerate(p.space.groups) if len(g.options) > 1]
    from ._allocate import levels_of

    for name, choice in starts:
        plan = to_plan(p.table, choice)
        levels = levels_of(p.table, plan)
        params = {p.space.groups[i].name: levels[i] for i in free}
        study.enqueue_trial(params, user_attrs={"warm_start": name, "warm_plan": plan})
    study.set_user_attr("warm_enqueued", [n for n, _ in starts])
    return len(starts)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise UserError(f"study '{study.study_name}' has no completed trial yet: run more trials")
    if len(study.directions) == 1:
        return min(done, key=lambda t: t.value)
    return min(done, key=lambda t: t.values[1])


def trial_plan(p: Prepared, t: optuna.trial.FrozenTrial) -> dict[str, str]:
    plan = t.user_attrs.get("recipe")
    if plan is None:
        raise UserError(f"trial {t.number} stored no recipe")
    return plan


def summary(p: Prepared, study: optuna.Study, best: optuna.trial.FrozenTrial, recipe_path: Path,
            heldout: dict, rows: list[dict]) -> dict[str, Any]:
    return {"study": study.study_name, "out_dir": str(p.opts.study_dir()),
            "recipe": str(recipe_path), "bytes": best.user_attrs["bytes"],
            "bpw": best.user_attrs["bpw"], "kld_mean": heldout.get("kld_mean"),
            "heldout": heldout, "best_trial": best.number,
            "n_trials": len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                      TrialState.PRUNED))),
            "comparison": rows, "selection": study.user_attrs.get("selection"),
            "role_scales": p.scales, "trials_by_origin": origins(study)}


def origins(study: optuna.Study) -> dict[str, dict[str, float]]:
    """Per origin (warm start, surrogate, sampler): finished trials and their best value."""
    out: dict[str, dict[str, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        a = t.user_attrs
        kind = "warm start" if "warm_start" in a else "surrogate" if "proposal" in a else "sampler"
        row = out.setdefault(kind, {"trials": 0, "best": float("inf")})
        row["trials"] += 1
        if t.state == TrialState.COMPLETE:
            row["best"] = min(row["best"], t.values[-1])
    return out


def format_summary(s: dict) -> str:
    lines = [f"study {s['study']}: best trial {s['best_trial']} of {s['n_trials']}",
             f"recipe {s['recipe']}: {s['bytes']} bytes, {s['bpw']:.4f} BPW, held-out "
             f"KLD {s['kld_mean']:.6f}", "",
             f"  {'recipe':28} {'MiB':>8} {'BPW':>7} {'KLD':>10} {'KLD p99':>9} {'PPL':>8}"]
    for r in s["comparison"]:
        lines.append(f"  {r['name']:28} {r['bytes'] / 2**20:8.2f} {r['bpw']:7.4f} "
                     f"{r['kld_mean']:10.6f} {r['kld_p99']:9.5f} {r['ppl']:8.4f}")
    return "\n".join(lines)


def scores(p: Prepared, progress=None) -> tuple[dict | None, dict[int, float], str | None]:
    """(imatrix for the quantizers, layer similarity {layer: cos}, path of the imatrix used).

    Our own llama-imatrix pass over the calibration text gives both, once per (model, text,
    ctx, chunks): cached as GGUF imatrix + JSON under studies/.cache/scores/. ``--imatrix FILE``
    replaces the imatrix; ``--no-imatrix`` quantizes without one."""
    from objectives._imatrix import read_imatrix

    im_path, sim = _collected(p, progress)
    if p.opts.imatrix:
        im_path = Path(p.opts.imatrix)
    imatrix = None if p.opts.no_imatrix else read_imatrix(im_path).for_quantizer(p.model)
    return imatrix, sim, None if p.opts.no_imatrix else str(im_path)


def _collected(p: Prepared, progress) -> tuple[Path, dict[int, float]]:
    import hashlib

    from objectives._corpus import read_corpus
    from objectives._eval import corpus_tokens
    from objectives._imatrix import write_gguf
    from objectives._scores import collect_scores

    text = read_corpus(p.opts.calib, "calib")
    key = hashlib.sha256(json.dumps([p.spec["model"], text, p.opts.ctx,
                                     p.opts.imatrix_chunks]).encode()).hexdigest()[:16]
    folder = p.opts.cache_dir() / "scores"
    im_path, sim_path = folder / f"imatrix-{key}.gguf", folder / f"similarity-{key}.json"
    if not (im_path.is_file() and sim_path.is_file()):
        tokens = corpus_tokens(p.model, text)
        im, sim = collect_scores(p.model, tokens, p.opts.ctx, p.opts.imatrix_chunks,
                                 progress=progress)
        folder.mkdir(parents=True, exist_ok=True)
        im.datasets = [p.opts.calib or "bundled calib.txt"]
        write_gguf(im, im_path)
        sim_path.write_text(json.dumps({k: {str(L): c for L, c in v.items()}
                                        for k, v in sim.items()}))
    sim = json.loads(sim_path.read_text())
    return im_path, {int(L): c for L, c in sim.get("layer", {}).items()}


def check_corpora(p: Prepared) -> None:
    """Both texts exist and hold at least one chunk (a UserError before any long work)."""
    from objectives._corpus import read_corpus
    from objectives._eval import bos_id, corpus_tokens, make_chunks

    for kind, path in (("calib", p.opts.calib), ("eval", p.opts.eval_file)):
        make_chunks(corpus_tokens(p.model, read_corpus(path, kind)), p.opts.ctx, 1,
                    bos_id(p.model))


def session(p: Prepared, kind: str, n_chunks: int, imatrix: dict | None, progress=None):
    """An evaluation session on the calibration (``calib``) or held-out (``eval``) text."""
    from objectives._corpus import read_corpus
    from objectives._eval import corpus_tokens
    from objectives._session import EvalSession

    path = p.opts.calib if kind == "calib" else p.opts.eval_file
    tokens = corpus_tokens(p.model, read_corpus(path, kind))
    return EvalSession(p.model, tokens, p.opts.ctx, n_chunks, p.opts.target, imatrix,
                       p.opts.cache_dir(), progress=progress)


def objective(p: Prepared, evaluator, artifacts: Path | None = None) -> RecipeObjective:
    def on_recipe(trial: optuna.Trial, plan: dict[str, str], metrics: dict) -> None:
        if artifacts is not None:
            _upload_recipe(trial, p, plan, metrics, artifacts)

    return RecipeObjective(p.space, p.table, p.budget, evaluator, p.opts.objective,
                           stage=2, seed=p.opts.seed, pareto=p.opts.pareto, on_recipe=on_recipe)


def _upload_recipe(trial, p: Prepared, plan, metrics, artifacts: Path) -> None:
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    artifacts.mkdir(parents=True, exist_ok=True)
    path = save_recipe(build_recipe(p.model, plan, p.opts.target, objectives=_plain(metrics)),
                       artifacts / f"trial-{trial.number:05d}.recipe.json")
    upload_artifact(artifact_store=FileSystemArtifactStore(str(artifacts)), file_path=str(path),
                    study_or_trial=trial, mimetype="application/json")


def _plain(d: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in d.items()}


def measured_loss(p: Prepared, imatrix, progress=None) -> dict[str, np.ndarray] | None:
    """--measure: per group [n_tensors, n_options] the measured delta KLD of each tensor's
    role x layer group at each option (stored measurements are reused, missing ones measured);
    the loss table of the MILP warm start."""
    if not p.opts.measure:
        return None
    from objectives._corpus import read_corpus
    from objectives._eval import corpus_tokens
    from objectives._scores import default_groups, measure_sensitivity
    from quant import resolve

    groups = default_groups(p.model, p.opts.target, p.ties)
    tokens = corpus_tokens(p.model, read_corpus(p.opts.calib, "calib"))
    sens = measure_sensitivity(p.model, groups, p.spec["types"], tokens, p.opts.ctx,
                               p.opts.measure_chunks, p.opts.target, imatrix,
                               p.opts.cache_dir() / "measure", progress=progress)
    where = {n: g for g, names in groups.items() for n in names}
    out = {}
    for g in p.space.groups:
        rows = []
        for name in g.tensors:
            shape, mg = p.model.tensors[name].shape, where[name]
            per = {resolve(t, shape, p.opts.target): v / len(groups[mg])
                   for t, v in sens.get(mg, {}).items()}
            rows.append([per.get(o, np.nan) for o in g.options])
        out[g.name] = np.array(rows)
    return out


def prior_loss(p: Prepared, session, progress=None) -> dict[str, np.ndarray]:
    """Per group [n_tensors, n_options]: each tensor's output error energy at each option
    (quantizes every tensor at every option once; the cache keeps them for the trials). The
    output head, which has no imatrix entry, is weighted by its inputs' mean squares (the base
    model's final normed hidden states)."""
    head = "token_embd.weight" if p.model.tied_embeddings else "output.weight"
    head_qw = np.mean(np.square(session.base.hidden, dtype=np.float64), axis=0)
    cache = session.cache
    out, n, done = {}, sum(g.nbytes.size for g in p.space.groups), 0
    for g in p.space.groups:
        rows = []
        for name in g.tensors:
            qw = head_qw if name == head else None
            rows.append([cache.error(name, o, qw) for o in g.options])
            done += len(g.options)
            if progress:
                progress("quantize", done, n)
        out[g.name] = np.array(rows)
    return out


def _trial_bar(study: optuna.Study, n_trials: int | None, enabled: bool):
    from tqdm import tqdm

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    bar = tqdm(total=n_trials, initial=len(study.get_trials(deepcopy=False, states=finished)),
               desc="trials", disable=not enabled)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update(1)
        try:
            b = best_trial(study)
            bar.set_postfix(best=f"{b.values[-1]:.5f}", bpw=f"{b.user_attrs['bpw']:.3f}")
        except UserError:
            pass

    return bar, callback


def proposer(p: Prepared) -> Proposer | None:
    """The surrogate's proposals (single-objective studies only)."""
    if p.opts.pareto:
        return None
    return Proposer(p.space, p.table, p.budget, p.base_kld, p.opts.trials, p.opts.seed,
                    role=group_roles(p.space)[1])


def optimize(study: optuna.Study, obj: RecipeObjective, opts: SearchOptions,
             propose: Proposer | None = None) -> None:
    from optuna.study import MaxTrialsCallback

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    bar, cb = _trial_bar(study, opts.trials, not opts.json)
    callbacks = [cb] + ([propose] if propose else [])
    if opts.trials is not None:
        callbacks.append(MaxTrialsCallback(opts.trials, states=finished))
        if len(study.get_trials(deepcopy=False, states=finished)) >= opts.trials:
            bar.close()
            return
    try:
        study.optimize(obj, n_trials=None, timeout=opts.timeout, callbacks=callbacks)
    finally:
        bar.close()


def run_search(opts: SearchOptions) -> dict[str, Any]:
    """The whole job; bad input fails before the study is created or changed."""
    from ._commands import load_model

    bar = StageBar(not opts.json)
    p, calib, imatrix, similarity = _setup(opts, load_model(opts.model), bar)
    measured = measured_loss(p, imatrix, bar)
    bar.close()
    study = open_study(p)
    study.set_user_attr("role_scales", p.scales)
    milp_table = unit_table(p.space, measured) if measured else p.table
    enqueue(study, p, warm_starts(p, similarity, milp_table,
                                  "milp-measured" if measured else "milp-prior"))
    workers = [_spawn_worker(opts) for _ in range(opts.jobs - 1)]
    try:
        optimize(study, objective(p, calib, p.opts.study_dir() / "artifacts"), opts,
                 proposer(p))
    finally:
        for w in workers:
            w.join()
            if w.exitcode:
                print(f"warning: worker {w.pid} exited with code {w.exitcode}; the study keeps "
                      "every trial it completed", file=sys.stderr)
    return finish(p, study, imatrix)


def _setup(opts: SearchOptions, model: GGUFModel, progress=None):
    """Checks, scores (imatrix, layer similarity), the calibration session and the prior:
    (Prepared with its loss table, session, imatrix, layer similarity)."""
    p = prepare(opts, model)
    check_corpora(p)
    imatrix, similarity, p.imatrix_path = scores(p, progress)
    calib = session(p, "calib", opts.chunks, imatrix, progress)
    p.table = unit_table(p.space, prior_loss(p, calib, progress))
    calibrate(p, calib, progress)
    return p, calib, imatrix, similarity


def _spawn_worker(opts: SearchOptions) -> mp.Process:
    """--jobs N: N-1 more processes optimize the same study (same storage) until the trial
    count is reached; each builds its own objective."""
    proc = mp.get_context("spawn").Process(target=worker_main, args=(opts,), daemon=False)
    proc.start()
    return proc


def worker_main(opts: SearchOptions) -> None:
    from dataclasses import replace

    from ._commands import load_model

    opts = replace(opts, json=True, seed=opts.seed + 1 + mp.current_process().pid % 9973)
    p, calib, _, _ = _setup(opts, load_model(opts.model))
    optimize(open_study(p), objective(p, calib, p.opts.study_dir() / "artifacts"), opts,
             proposer(p))


def _heldout_rows(p: Prepared, study: optuna.Study, best, heldout) -> list[dict]:
    """The best recipe, every warm start and llama.cpp's default mixes (plain and --pure)
    within 10% of the budget, all evaluated on the held-out text; identical recipes once."""
    from ._sizes import plan_bytes
    from ._study import plan_sha

    named = [("best (trial %d)" % best.number, best.user_attrs["recipe"])]
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "warm_start" in t.user_attrs and "recipe" in t.user_attrs:
            named.append((f"warm: {t.user_attrs['warm_start']}", t.user_attrs["recipe"]))
    for ftype, plan in _mixes(p):
        if abs(plan_bytes(p.model, plan, p.opts.target) - p.budget) <= 0.1 * p.budget:
            named.append((f"llama.cpp {ftype}", plan))
    rows, seen = [], {}
    for name, plan in named:
        sha = plan_sha(plan)
        if sha in seen:
            seen[sha]["name"] += f" = {name}"
            continue
        nb = plan_bytes(p.model, plan, p.opts.target)
        seen[sha] = {"name": name, "bytes": nb, "bpw": 8 * nb / p.model.n_elements,
                     **_plain(heldout.evaluate(plan))}
        rows.append(seen[sha])
    return rows


def finish(p: Prepared, study: optuna.Study, imatrix: dict | None) -> dict[str, Any]:
    from ._export import plan_export, write_plan

    out = p.opts.study_dir()
    out.mkdir(parents=True, exist_ok=True)
    bar = StageBar(not p.opts.json)
    best = select(p, study, imatrix, bar)
    heldout = session(p, "eval", p.opts.eval_chunks, imatrix, bar)
    rows = _heldout_rows(p, study, best, heldout)
    bar.close()
    calib_metrics = {k: best.user_attrs[k] for k in OBJECTIVES.values() if k in best.user_attrs}
    recipe = build_recipe(p.model, best.user_attrs["recipe"], p.opts.target,
                          objectives={"heldout": rows[0], "calibration": calib_metrics},
                          prov=provenance(p.opts.calib, p.imatrix_path))
    path = save_recipe(recipe, out / "recipe.json")
    imat_file = _write_imatrix(p, out)
    plan = plan_export(recipe["tensors"], recipe["shapes"], p.opts.target, imat_file,
                       recipe["input_quantized"])
    files = write_plan(plan, out)
    s = summary(p, study, best, path, rows[0], rows)
    s["exports"] = [str(f) for f in files]
    (out / "report.json").write_text(json.dumps(s, indent=1) + "\n")
    _note(study, s, plan.notes)
    return s


SELECT_TOP = 5


def select(p: Prepared, study: optuna.Study, imatrix, progress=None) -> optuna.trial.FrozenTrial:
    """The final pick: the best ``SELECT_TOP`` distinct recipes re-evaluated on
    ``--select-chunks`` calibration chunks (a trial sees only ``--chunks``; the best of many on
    few chunks is partly luck), the lowest wins. Stored as the study's ``selection``."""
    if p.opts.pareto or p.opts.select_chunks <= p.opts.chunks:
        return best_trial(study)
    top, seen = [], set()
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: t.value):
        if t.user_attrs.get("plan_sha") not in seen and "recipe" in t.user_attrs:
            seen.add(t.user_attrs.get("plan_sha"))
            top.append(t)
    top = top[:SELECT_TOP]
    if len(top) < 2:
        return best_trial(study)
    sel = session(p, "calib", p.opts.select_chunks, imatrix, progress)
    key = OBJECTIVES[p.opts.objective]
    scored = {t.number: float(sel.evaluate(t.user_attrs["recipe"])[key]) for t in top}
    study.set_user_attr("selection", {"chunks": sel.n_chunks, "objective": key,
                                      "trials": {str(n): v for n, v in scored.items()}})
    return next(t for t in top if t.number == min(scored, key=scored.get))


def _write_imatrix(p: Prepared, out: Path) -> Path | None:
    """The imatrix the study used, in the target's format (ik reads only .dat)."""
    if not p.imatrix_path:
        return None
    from objectives._imatrix import read_imatrix, write_dat, write_gguf

    im = read_imatrix(p.imatrix_path)
    if p.opts.target == "ik":
        return write_dat(im, out / "imatrix.dat")
    return write_gguf(im, out / "imatrix.gguf")


def _note(study: optuna.Study, s: dict, notes: list[str]) -> None:
    """A study note (optuna-dashboard) with the export commands of the best recipe."""
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    script = [e for e in s["exports"] if e.endswith(".sh")]
    body = [f"# Best recipe: trial {s['best_trial']}", "",
            f"{s['bytes']} bytes, {s['bpw']:.4f} BPW, held-out KLD {s['kld_mean']:.6f}", "",
            "Quantize with llama-quantize:", "", "```",
            f"LLAMA_QUANTIZE=/path/to/llama-quantize {script[0] if script else '...'} IN.gguf OUT.gguf",
            "```", "", f"Recipe: `{s['recipe']}`"]
    body += ["", "Notes:", *(f"- {n}" for n in notes[:20])] if notes else []
    save_note(study, "\n".join(body))
