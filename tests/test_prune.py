"""The pruning rule on hand-made per-chunk KLDs, and with the production settings in a study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search import MARGIN_ALPHA_MIN, PairedPruner, clearly_worse, lower_bound

# per-chunk KLDs of a best recipe: chunks differ by 3x, as real calibration chunks do
BEST = np.array([0.10, 0.31, 0.18, 0.25, 0.12, 0.29, 0.21, 0.15])


def test_lower_bound_is_the_one_sided_t_bound():
    d = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, sd 1.2910, n 4, t(0.99, 3) = 4.5407
    assert lower_bound(d, alpha=0.01) == pytest.approx(2.5 - 4.5407 * 1.2910 / 2, abs=1e-3)


def test_a_near_tie_is_kept_however_consistent():
    """1 % worse on every chunk, with no noise: real, but within the margin."""
    assert not clearly_worse(BEST * 1.01, BEST, margin=0.03)


def test_clearly_worse_is_stopped_after_the_minimum_chunks():
    worse = BEST * 1.2 + np.array([0.01, -0.01, 0.02, 0.0, -0.02, 0.01, 0.0, 0.01])
    assert not clearly_worse(worse[:3], BEST[:3], min_chunks=4)  # too few chunks to decide
    assert clearly_worse(worse[:4], BEST[:4], min_chunks=4)


def test_worse_on_average_but_noisy_is_kept():
    """+10 % on average over 4 chunks, but the paired ratios swing from -10 % to +80 %."""
    noisy = BEST[:4] * np.array([1.8, 0.9, 1.4, 0.9])
    assert np.mean(noisy) > 1.09 * np.mean(BEST[:4])
    assert not clearly_worse(noisy, BEST[:4])


def test_better_is_never_stopped():
    assert not clearly_worse(BEST * 0.5, BEST)


def _report(study, values, number_of_steps=None):
    trial = study.ask()
    for step, v in enumerate(values):
        trial.report(float(v), step)
    return trial


@pytest.mark.parametrize("factor,pruned", [(1.5, True), (1.01, False)])
def test_the_study_pruner_compares_the_chunks_both_saw(factor, pruned):
    """Production settings (stages of 4 chunks): the candidate's first 4 chunks against the
    best complete trial's same 4 chunks."""
    study = optuna.create_study(pruner=PairedPruner())
    best = _report(study, BEST)
    study.tell(best, float(BEST.mean()))
    cand = _report(study, (BEST * factor)[:MARGIN_ALPHA_MIN[2]])
    assert cand.should_prune() is pruned
    assert study.trials[0].state == TrialState.COMPLETE


# ------------------------------------------------- replay on a recorded study (real KLDs)

# the README main command's study (SmolLM2, 4.1 BPW, seed 0): its 15 trials evaluated to the end,
# per-chunk calibration KLDs in the order the study evaluates chunks (fixtures/prune/record.py)
RECORDED = Path(__file__).parent / "fixtures" / "prune" / "smollm2-4.1bpw-main.json"
STAGE = 4  # chunks per stage (one forward batch), as the study evaluates them


def _recorded() -> dict:
    if not RECORDED.is_file():
        pytest.skip(f"fixture {RECORDED.name} is missing (tests/fixtures/prune/record.py)")
    return json.loads(RECORDED.read_text())


def _stopped_at(candidate: np.ndarray, best: np.ndarray) -> int | None:
    """Chunks seen when the rule stops ``candidate`` against ``best`` (None: never)."""
    for n in range(STAGE, len(candidate), STAGE):  # no decision after the last stage
        if clearly_worse(candidate[:n], best[:n]):
            return n
    return None


def test_replayed_rule_never_stops_a_trial_that_ended_better_than_the_best():
    """Each trial of a study evaluated to the end, in order, against the best trial before it
    (warm starts are never stopped, as in the study)."""
    trials = _recorded()["trials"]
    assert len(trials) >= 12
    for i, t in enumerate(trials):
        if i == 0 or t["warm_start"]:
            continue
        best = min(trials[:i], key=lambda u: np.mean(u["chunks"]))
        c, b = np.array(t["chunks"]), np.array(best["chunks"])
        if _stopped_at(c, b) is not None:
            assert c.mean() >= b.mean(), f"trial {t['number']} stopped, ended better"


def test_replayed_rule_on_every_ordered_pair_of_recorded_trials():
    """Each recorded trial against each other as the best: the rule stops often (it saves
    work) and never a candidate that ended better than its best."""
    trials = [np.array(t["chunks"]) for t in _recorded()["trials"]]
    stops = wrong = 0
    for a in trials:
        for b in trials:
            if a is not b and _stopped_at(a, b) is not None:
                stops += 1
                wrong += a.mean() < b.mean()
    assert wrong == 0 and stops >= len(trials)
