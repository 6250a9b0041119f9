"""The study over several storages: budget-exact trials checked by an independent size count,
no plan evaluated twice (one process, or two workers on one storage), pruned plans never
proposed again, pruning with the production settings, resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from _study_worker import BUDGET, DAMAGE, TYPES, SyntheticEvaluator, make_objective, synthetic_kld
from search import (PairedPruner, Proposer, StorageError, build_space, choice_of, milp,
                    open_storage, plan_sha, repair, to_plan, unit_table)

WORKER = Path(__file__).parent / "_study_worker.py"


def storages(tmp_path):
    return {"inmemory": None, "sqlite": f"sqlite:///{tmp_path}/s.db",
            "journal": f"journal:{tmp_path}/s.log"}


def file_bytes(model, plan: dict[str, str]) -> int:
    """Tensor data bytes of the file, from gguf-py's own (block, type size) table: independent
    of our catalog."""
    total = 0
    for t in model.tensors.values():
        qt = plan.get(t.name, t.qtype.name)
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qt.upper()]]
        total += t.n_elements // block * size
    return total


@pytest.fixture(scope="module")
def smollm2_model():
    from objectives import default_model_path, open_gguf

    return open_gguf(default_model_path())


@pytest.mark.parametrize("mode", ["inmemory", "sqlite", "journal"])
def test_every_trial_is_budget_exact_and_scored_on_what_it_evaluated(smollm2_model, tmp_path,
                                                                     mode):
    url = storages(tmp_path)[mode]
    objective = make_objective()  # a fresh objective per storage: nothing carried over
    study = optuna.create_study(storage=open_storage(url) if url else None,
                                sampler=optuna.samplers.TPESampler(seed=1),
                                pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=6)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6
    assert len(objective.evaluator.evaluations(objective.order[0])) == 6
    for t in done:
        recipe = t.user_attrs["recipe"]
        assert file_bytes(smollm2_model, recipe) == t.user_attrs["bytes"]
        assert 0.995 * BUDGET <= t.user_attrs["bytes"] <= BUDGET
        want = np.mean([synthetic_kld(recipe, c) for c in objective.order])
        assert t.value == pytest.approx(want, rel=1e-12)


def test_resume_continues_the_same_study(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    for _ in range(2):
        study = optuna.create_study(study_name="r", storage=open_storage(url), load_if_exists=True,
                                    pruner=optuna.pruners.NopPruner())
        study.optimize(make_objective(), n_trials=3)
    study = optuna.load_study(study_name="r", storage=open_storage(url))
    assert len(study.trials) == 6
    assert len({t.user_attrs["plan_sha"] for t in study.trials}) == 6


def test_unknown_storage_url():
    with pytest.raises(StorageError, match="unknown storage URL"):
        open_storage("redis://localhost/0")


def test_the_same_request_is_moved_to_a_new_plan_not_evaluated_again():
    """Five trials ask for the same levels: one evaluates that plan, four move to the nearest
    plans nobody has (each evaluated once); no evaluation repeats a plan."""
    objective = make_objective()
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    same = {objective.space.groups[i].name: 0 for i in objective.free_groups()}
    for _ in range(5):
        study.enqueue_trial(same, skip_if_exists=False)
    study.optimize(objective, n_trials=5)
    evaluated = objective.evaluator.evaluations(objective.order[0])
    assert len(evaluated) == 5 == len(set(evaluated))
    shas = [t.user_attrs["plan_sha"] for t in study.trials]
    assert shas == evaluated and len(set(shas)) == 5
    assert sum("moved_from" in t.user_attrs for t in study.trials) == 4
    moved = {t.user_attrs["moved_from"] for t in study.trials if "moved_from" in t.user_attrs}
    assert moved == {shas[0]}


def test_a_warm_start_twin_takes_the_stored_result():
    objective = make_objective()
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    plan = to_plan(objective.table, np.zeros(len(objective.table.group), np.int64) + 1)
    for name in ("a", "b"):
        study.enqueue_trial({}, user_attrs={"warm_start": name, "warm_plan": plan})
    study.optimize(objective, n_trials=2)
    a, b = study.trials
    assert len(objective.evaluator.evaluations(objective.order[0])) == 1
    assert b.user_attrs["duplicate_of"] == a.number and b.value == a.value


def _trial(study, recipe, values, state, **attrs):
    t = optuna.trial.create_trial(
        state=state, value=float(np.mean(values)) if state == TrialState.COMPLETE else None,
        intermediate_values=dict(enumerate(values)),
        user_attrs={"recipe": recipe, "plan_sha": plan_sha(recipe), **attrs})
    study.add_trial(t)


def damage_table(model, space):
    """A prior in KLD-like units: the type's damage times the tensor's millions of weights."""
    prior = {g.name: np.array([[DAMAGE[o] * model.tensors[t].n_elements / 1e6 for o in g.options]
                               for t in g.tensors]) for g in space.groups}
    return unit_table(space, prior)


def test_the_proposer_never_proposes_a_pruned_plan_again(smollm2_model):
    """A pruned greedy polish must neither be proposed again under its label nor as a plan:
    the proposer sees every trial in the storage, not only the complete ones."""
    space = make_objective().space
    table = damage_table(smollm2_model, space)
    prop = Proposer(space, table, BUDGET, 0.0, seed=0)
    study = optuna.create_study()
    start = to_plan(table, milp(table, BUDGET, space.fixed_bytes))
    _trial(study, start, [0.5] * 8, TrialState.COMPLETE, warm_start="milp")
    first = prop.propose(study.get_trials(), 1)
    assert "greedy from trial 0" in first[1]
    polished = to_plan(table, first[0])
    _trial(study, polished, [0.9] * 4, TrialState.PRUNED, proposal=first[1],
           pruned_kld_mean=0.9)
    for n in range(2, 8):
        got = prop.propose(study.get_trials(), n)
        assert got is not None and got[1] != first[1]
        assert plan_sha(to_plan(table, got[0])) not in {t.user_attrs["plan_sha"]
                                                        for t in study.trials}
        _trial(study, to_plan(table, got[0]), [0.6] * 8, TrialState.COMPLETE, proposal=got[1])


def test_a_pruned_trial_enters_the_fit_at_its_estimated_full_value():
    from search import observed_value

    study = optuna.create_study()
    objective = make_objective()
    plan = to_plan(objective.table, np.zeros(len(objective.table.group), np.int64))
    _trial(study, plan, [0.1, 0.2, 0.3, 0.4], TrialState.COMPLETE)
    _trial(study, plan, [0.2, 0.4], TrialState.PRUNED, pruned_kld_mean=0.3)
    best, pruned = study.trials
    # twice the best on the chunks both saw: twice the best's full mean (0.25)
    assert observed_value(pruned, best) == pytest.approx(0.5)


def _worker(url, name, n, sleep, log="", n_same=0, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), url, name, str(n), str(sleep), log,
                             str(n_same)], env={**os.environ, **(env or {})},
                            stderr=subprocess.PIPE)


@pytest.mark.parametrize("mode", ["journal", "postgres"])
def test_two_workers_never_evaluate_one_plan_twice(tmp_path, mode, request):
    """Both workers start by asking for the same levels three times: the claims must move all
    but one of those six requests, whichever process runs them."""
    url = storages(tmp_path)[mode] if mode != "postgres" else request.getfixturevalue("pg_url")
    name, log = f"two-{os.getpid()}-{time.time_ns()}", tmp_path / "evals.log"
    workers = [_worker(url, name, 5, 0.2, str(log), n_same=3) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=300) == 0, w.stderr.read().decode()[-2000:]
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 10
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2
    first = make_objective().order[0]
    evaluated = [line.split()[0] for line in log.read_text().splitlines()
                 if int(line.split()[2]) == first]
    assert len(evaluated) == 10 and Counter(evaluated).most_common(1)[0][1] == 1
    assert {t.user_attrs["plan_sha"] for t in done} == set(evaluated)


def test_pruning_with_the_production_settings():
    """Stages of one forward batch (4 chunks), the default rule: a candidate 1.5x worse on
    every chunk is stopped at the first decision (4 chunks); one 1 % worse runs to the end; a warm
    start is never stopped, however bad."""

    class Scaled(SyntheticEvaluator):
        """Per-chunk KLD independent of the plan, times a factor per evaluation."""

        def __init__(self, factors, first):
            super().__init__()
            self.factors, self.first, self.factor = list(factors), first, None

        def run(self, plan, chunks):
            if chunks[0] == self.first:
                self.factor = self.factors.pop(0)
            return [{"kld": 0.3 * self.factor * (1 + 0.05 * (c % 3))} for c in chunks]

    order = make_objective().order
    objective = make_objective(evaluator=Scaled([1.0, 1.5, 1.01, 5.0], order[0]))
    assert objective.stage == 4 and len(objective.order) == 8
    study = optuna.create_study(pruner=PairedPruner(), sampler=optuna.samplers.RandomSampler(0))
    for _ in range(3):
        study.enqueue_trial({})
    study.enqueue_trial({}, user_attrs={"warm_start": "w"})
    study.optimize(objective, n_trials=4)
    best, bad, near, warm = study.trials
    assert best.state == near.state == warm.state == TrialState.COMPLETE
    assert bad.state == TrialState.PRUNED and len(bad.intermediate_values) == 4
    assert len(near.intermediate_values) == 8 and len(warm.intermediate_values) == 8


def test_pareto_runs_bytes_against_kld():
    from dataclasses import replace

    obj = replace(make_objective(), pareto=True)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(obj, n_trials=5)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.values[0] == t.user_attrs["bytes"] <= BUDGET
        want = np.mean([synthetic_kld(t.user_attrs["recipe"], c) for c in obj.order])
        assert t.values[1] == pytest.approx(want, rel=1e-12)
    assert study.best_trials


def test_proposals_beat_the_prior_optimum_when_the_prior_is_miscalibrated(smollm2_model):
    """A synthetic additive truth whose per-role damage scales differ from the prior's by up
    to 20x: the MILP optimum of the prior is the warm start; the surrogate's proposals, fitted
    to the trials, must beat it within 16 trials, and each proposal is evaluated as planned."""
    from search import RecipeObjective

    model = smollm2_model
    space = build_space(model, "mainline", TYPES)
    truth = {"ffn_down": 20.0, "attn_v": 8.0, "token_embd": 0.05}
    table = damage_table(model, space)

    class Additive(SyntheticEvaluator):
        def run(self, plan, chunks):
            kld = sum(DAMAGE[ty] * model.tensors[n].n_elements / 1e6
                      * truth.get(model.tensors[n].role, 1.0) for n, ty in plan.items()) / 1e3
            return [{"kld": kld} for _ in chunks]

    obj = RecipeObjective(space, table, BUDGET, Additive(), seed=0)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.NopPruner())
    start = to_plan(table, milp(table, BUDGET, space.fixed_bytes))
    study.enqueue_trial({}, user_attrs={"warm_start": "milp", "warm_plan": start})
    study.optimize(obj, n_trials=16, callbacks=[Proposer(space, table, BUDGET, 0.0, 16, seed=0)])
    warm = study.trials[0].value
    proposed = [t for t in study.trials if "proposal" in t.user_attrs]
    assert len(proposed) >= 8
    assert all(t.user_attrs["recipe"] == t.user_attrs["plan"] for t in proposed
               if "moved_from" not in t.user_attrs)
    # the warm start is the prior's optimum, so its polish under the prior is itself (already
    # evaluated, skipped): the first proposal is the polish under the fitted surrogate
    assert repair(table, choice_of(table, start), BUDGET, space.fixed_bytes).tolist() == \
        choice_of(table, start).tolist()
    assert proposed[0].user_attrs["proposal"] == "surrogate, greedy from trial 0"
    greedy = [t.user_attrs["proposal"] for t in proposed if "greedy" in t.user_attrs["proposal"]]
    assert len(set(greedy)) == len(greedy)  # each polish once per best trial
    assert all(0.995 * BUDGET <= t.user_attrs["bytes"] <= BUDGET for t in study.trials)
    assert len({t.user_attrs["plan_sha"] for t in study.trials}) == 16
    assert min(t.value for t in proposed) < 0.9 * warm
    assert choice_of(table, start) is not None
