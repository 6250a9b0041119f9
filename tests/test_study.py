"""The study over several storages: budget-exact trials, resume, killed workers, two workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from _study_worker import BUDGET, make_objective
from search._storage import StorageError, open_storage

WORKER = Path(__file__).parent / "_study_worker.py"


def storages(tmp_path):
    return {"inmemory": None, "sqlite": f"sqlite:///{tmp_path}/s.db",
            "journal": f"journal:{tmp_path}/s.log"}


@pytest.fixture(scope="module")
def objective():
    return make_objective()


@pytest.mark.parametrize("mode", ["inmemory", "sqlite", "journal"])
def test_every_trial_is_budget_exact_and_records_its_recipe(objective, tmp_path, mode):
    url = storages(tmp_path)[mode]
    storage = open_storage(url) if url else None
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.TPESampler(seed=1),
                                pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=6)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6
    for t in done:
        assert 0.995 * BUDGET <= t.user_attrs["bytes"] <= BUDGET
        assert t.value == pytest.approx(t.user_attrs["kld_mean"])


def test_resume_continues_the_same_study(objective, tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    for _ in range(2):
        study = optuna.create_study(study_name="r", storage=open_storage(url), load_if_exists=True,
                                    pruner=optuna.pruners.NopPruner())
        study.optimize(objective, n_trials=3)
    assert len(optuna.load_study(study_name="r", storage=open_storage(url)).trials) == 6


def test_unknown_storage_url():
    with pytest.raises(StorageError, match="unknown storage URL"):
        open_storage("redis://localhost/0")


def _worker(url: str, name: str, n: int, sleep: float, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), url, name, str(n), str(sleep)],
                            env={**os.environ, **(env or {})}, stderr=subprocess.PIPE)


def _wait_running(url: str, name: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url))
            if study.get_trials(states=(TrialState.RUNNING,)):
                return
        except KeyError:
            pass
        time.sleep(0.5)
    raise AssertionError("no trial started")


@pytest.mark.parametrize("mode", ["sqlite", "journal"])
def test_sigkilled_worker_loses_nothing_and_its_trial_is_retried(tmp_path, mode):
    url = storages(tmp_path)[mode]
    env = {"GRS_HEARTBEAT_S": "1", "GRS_GRACE_S": "2"}
    first = _worker(url, "k", 3, 1.5, env)
    _wait_running(url, "k")
    time.sleep(4)  # let at least one trial complete
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    study = optuna.load_study(study_name="k", storage=open_storage(url))
    done_before = {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}
    time.sleep(3)  # past the heartbeat grace period
    second = _worker(url, "k", 2, 0.0, env)
    assert second.wait(timeout=300) == 0, second.stderr.read().decode()[-2000:]
    study = optuna.load_study(study_name="k", storage=open_storage(url))
    failed = study.get_trials(states=(TrialState.FAIL,))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done_before <= {t.number for t in done}
    assert len(failed) == 1
    retried = [t for t in done if t.user_attrs.get("retry_of") == failed[0].number
               or t.system_attrs.get("failed_trial") == failed[0].number]
    # the killed trial may have died while its parameters were being sampled
    assert len(retried) == 1 and failed[0].params.items() <= retried[0].params.items()


@pytest.mark.parametrize("mode", ["journal", "postgres"])
def test_two_workers_share_one_study(tmp_path, mode, request):
    url = storages(tmp_path)[mode] if mode != "postgres" else request.getfixturevalue("pg_url")
    name = f"two-{os.getpid()}-{time.time_ns()}"
    workers = [_worker(url, name, 4, 0.2) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=300) == 0, w.stderr.read().decode()[-2000:]
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 8 and len({t.number for t in done}) == 8
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2


def test_wilcoxon_prunes_clearly_worse_candidates_early():
    from _study_worker import SyntheticEvaluator, TYPES
    from objectives import default_model_path, open_gguf
    from search._allocate import unit_table
    from search._space import build_space
    from search._study import RecipeObjective

    class Long(SyntheticEvaluator):
        n_chunks = 16

    model = open_gguf(default_model_path())
    space = build_space(model, "mainline", TYPES)
    obj = RecipeObjective(space, unit_table(space), BUDGET, Long(), stage=2, seed=0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3),
                                pruner=optuna.pruners.WilcoxonPruner(p_threshold=0.1,
                                                                     n_startup_steps=2))
    best = {n: "q4_1" for g in space.groups for n in g.tensors}  # least damage of the types
    worst = {n: "q4_0" for n in best}
    study.enqueue_trial({}, user_attrs={"warm_start": "good", "warm_plan": best})
    study.enqueue_trial({}, user_attrs={"warm_start": "bad", "warm_plan": worst})
    study.optimize(obj, n_trials=7)
    bad = next(t for t in study.trials if t.user_attrs.get("warm_start") == "bad")
    assert bad.state == TrialState.COMPLETE  # warm starts are baselines: never pruned
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "no candidate was pruned"
    assert all(len(t.intermediate_values) < 16 for t in pruned)
    assert study.best_trial.user_attrs.get("warm_start") == "good"


def test_pareto_runs_bytes_against_kld(objective):
    from dataclasses import replace

    obj = replace(objective, pareto=True, _seen={})
    obj.__post_init__()
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(obj, n_trials=5)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.values[0] == t.user_attrs["bytes"] <= BUDGET
        assert t.values[1] == pytest.approx(t.user_attrs["kld_mean"])
    assert study.best_trials


def test_proposals_beat_the_prior_optimum_when_the_prior_is_miscalibrated():
    """A synthetic additive truth whose per-role damage scales differ from the prior's by up
    to 20x: the MILP optimum of the prior is the warm start; the surrogate's proposals, fitted
    to the trials, must beat it within 16 trials, and each proposal is evaluated as planned."""
    from _study_worker import DAMAGE, SyntheticEvaluator, TYPES
    from objectives import default_model_path, open_gguf
    from search._allocate import to_plan, unit_table
    from search._space import build_space
    from search._study import Proposer, RecipeObjective
    from search._warm import milp

    model = open_gguf(default_model_path())
    space = build_space(model, "mainline", TYPES)
    truth = {"ffn_down": 20.0, "attn_v": 8.0, "token_embd": 0.05}
    prior = {g.name: np.array([[DAMAGE[o] * n for o in g.options] for n in
                               (model.tensors[t].n_elements / 1e6 for t in g.tensors)])
             for g in space.groups}
    table = unit_table(space, prior)

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
    assert all(t.user_attrs["recipe"] == t.user_attrs["plan"] for t in proposed)
    assert proposed[0].user_attrs["proposal"] == "surrogate, greedy from trial 0"  # prior: optimal
    greedy = [t.user_attrs["proposal"] for t in proposed if "greedy" in t.user_attrs["proposal"]]
    assert len(set(greedy)) == len(greedy)  # each polish once per best trial
    assert all(0.995 * BUDGET <= t.user_attrs["bytes"] <= BUDGET for t in study.trials)
    assert min(t.value for t in proposed) < 0.9 * warm
