"""Measurements around the study: the calibration probes before it, the final pick after it."""

from __future__ import annotations

import optuna
import pytest

from search import _run
from search._options import SearchOptions


class FakeSession:
    """Re-evaluation on more chunks: reverses the order of the first three trials."""

    n_chunks = 16
    more = {"a": 0.30, "b": 0.20, "c": 0.10, "d": 0.05, "e": 0.01, "f": 0.001}

    def evaluate(self, plan):
        return {"kld_mean": self.more[plan["t"]]}


def study_with(values: dict[str, float]) -> optuna.Study:
    study = optuna.create_study()
    for name, v in values.items():
        study.add_trial(optuna.trial.create_trial(
            value=v, user_attrs={"recipe": {"t": name}, "plan_sha": name}))
    return study


def prepared(**kw):
    return _run.Prepared(SearchOptions(budget="4bpw", chunks=4, **kw), None, None, None, 0, {})


def test_the_lowest_on_more_chunks_wins_among_the_top_five(monkeypatch):
    monkeypatch.setattr(_run, "session", lambda *a, **k: FakeSession())
    # "f" is sixth on the trial chunks: not re-evaluated, though best on more chunks
    study = study_with({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5, "f": 0.6})
    best = _run.select(prepared(), study, None)
    assert best.user_attrs["plan_sha"] == "e"
    sel = study.user_attrs["selection"]
    assert sel["chunks"] == 16 and set(sel["trials"]) == {"0", "1", "2", "3", "4"}
    assert sel["trials"]["4"] == pytest.approx(0.01)


def test_no_reevaluation_when_it_would_not_see_more_chunks(monkeypatch):
    monkeypatch.setattr(_run, "session", lambda *a, **k: pytest.fail("re-evaluated"))
    study = study_with({"a": 0.1, "b": 0.2})
    assert _run.select(prepared(select_chunks=4), study, None).number == 0
    assert "selection" not in study.user_attrs


def test_calibration_probes_are_measured_once_then_cached(tmp_path):
    """calibrate(): a base and one probe per role, scales in KLD per unit of prior damage."""
    from types import SimpleNamespace

    import numpy as np

    from search import _calibrate
    from search._allocate import UnitTable

    names = (("blk.0.attn_v.weight",), ("blk.1.attn_v.weight",), ("blk.0.ffn_down.weight",))
    table = UnitTable(np.array([0, 0, 1]), names, np.tile(np.array([[10, 20]], np.int64), (3, 1)),
                      np.array([[2.0, 0.0], [2.0, 0.0], [4.0, 0.0]]), (("a", "b"), ("a", "b")))
    space = SimpleNamespace(groups=(SimpleNamespace(name="attn_v@0-1"),
                                    SimpleNamespace(name="ffn_down@0")), fixed_bytes=0)
    p = SimpleNamespace(opts=SearchOptions(budget="1bpw", studies_dir=str(tmp_path)),
                        spec={"k": 1}, space=space, table=table, budget=50)

    class Calib:
        n_chunks, calls = 4, 0

        def evaluate(self, plan):  # attn_v at "a": 0.2 each, ffn_down at "a": 0.04
            Calib.calls += 1
            v = sum(0.2 for n, t in plan.items() if t == "a" and "attn_v" in n)
            v += sum(0.04 for n, t in plan.items() if t == "a" and "ffn_down" in n)
            return {"kld_mean": 0.01 + v}

    _calibrate.calibrate(p, Calib())
    assert Calib.calls == 3  # base + 2 roles
    assert p.scales == pytest.approx({"attn_v": 0.4 / 4.0, "ffn_down": 0.04 / 4.0})
    assert p.base_kld == pytest.approx(0.01)
    np.testing.assert_allclose(p.table.loss[:, 0], [0.2, 0.2, 0.04])
    p.table = table
    _calibrate.calibrate(p, Calib())
    assert Calib.calls == 3
