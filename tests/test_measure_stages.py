"""The stages over files: measure once, then any number of budgets; a killed measurement
resumes to the same manifest; a measurement of other settings is refused; the final pick."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

import quant
import search._pipeline._measure as stage
from search import SearchOptions, prepare, run_search, select
from search._pipeline._prepare import Plan

TINY_ARGS = {"types": ("q4_0", "q4_1", "q5_0", "q8_0"), "ctx": 64, "chunks": 4,
             "select_chunks": 6, "eval_chunks": 2, "imatrix_chunks": 4, "trials": 8}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from _tiny_gguf import corpus_text, write_tiny

    d = tmp_path_factory.mktemp("stages")
    (d / "calib.txt").write_text(corpus_text(1500))
    (d / "eval.txt").write_text(corpus_text(700)[::-1])
    return {"dir": d, "model": str(write_tiny(d / "tiny.gguf", "llama")),
            "calib": str(d / "calib.txt"), "eval": str(d / "eval.txt")}


def _cli(tiny, *args) -> list[str]:
    return [sys.executable, "-m", "search", "measure", tiny["model"], "-f", tiny["calib"],
            "--eval-file", tiny["eval"], "--types", ",".join(TINY_ARGS["types"]), "--ctx", "64",
            "--chunks", "4", "--select-chunks", "6", "--imatrix-chunks", "4", *args]


@pytest.fixture(scope="module")
def measured(tiny):
    """``search measure`` run once to the end, in its own process."""
    folder = tiny["dir"] / "measure-a"
    p = subprocess.run(_cli(tiny, "--measure-dir", str(folder), "--json"), capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    return folder


def _opts(tiny, folder: Path, studies: Path, budget: str) -> SearchOptions:
    return SearchOptions(budget=budget, model=tiny["model"], calib=tiny["calib"],
                         eval_file=tiny["eval"], measure_dir=str(folder),
                         studies_dir=str(studies), study=f"s-{budget}", **TINY_ARGS)


def _counting(monkeypatch) -> dict:
    calls = {"quantize": 0, "probes": 0}
    real_q, real_probe = quant.quantize, stage.evaluate_staged

    def q(*a, **k):
        calls["quantize"] += 1
        return real_q(*a, **k)

    def probe(*a, **k):
        calls["probes"] += 1
        return real_probe(*a, **k)

    monkeypatch.setattr(quant, "quantize", q)
    monkeypatch.setattr(stage, "evaluate_staged", probe)
    return calls


def test_one_measurement_serves_two_budgets_and_equals_one_shot_runs(tiny, measured, tmp_path,
                                                                     monkeypatch):
    calls = _counting(monkeypatch)
    a = run_search(_opts(tiny, measured, tmp_path / "st", "6.2bpw"))[0]
    b = run_search(_opts(tiny, measured, tmp_path / "st", "5.5bpw"))[0]
    assert calls == {"quantize": 0, "probes": 0}  # no imatrix pass, quantization or probe
    assert a["measurement"] == b["measurement"] == str(measured)
    monkeypatch.undo()
    fresh = run_search(_opts(tiny, tmp_path / "own-measure", tmp_path / "st2", "5.5bpw"))[0]
    assert json.loads(Path(fresh["recipe"]).read_text())["tensors"] == \
        json.loads(Path(b["recipe"]).read_text())["tensors"]
    assert fresh["kld_mean"] == b["kld_mean"] and fresh["best_trial"] == b["best_trial"]
    manifest = lambda f: json.loads((Path(f) / "manifest.json").read_text())  # noqa: E731
    assert manifest(tmp_path / "own-measure") == manifest(measured)


def test_a_killed_measurement_resumes_to_the_same_manifest(tiny, measured, tmp_path):
    folder = tmp_path / "killed"
    proc = subprocess.Popen(_cli(tiny, "--measure-dir", str(folder), "--json"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal, end = folder / "quant-index.partial.jsonl", time.time() + 600
    while time.time() < end and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the measurement ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(journal.read_text().splitlines())
    assert 5 <= done_before < 60 and not (folder / "quant-index.json").exists()
    p = subprocess.run(_cli(tiny, "--measure-dir", str(folder), "--json"), capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((folder / "manifest.json").read_text()) == \
        json.loads((measured / "manifest.json").read_text())
    assert not journal.exists()


@pytest.mark.parametrize("change", ["corpus", "model"])
def test_a_measurement_of_other_settings_is_refused(tiny, measured, tmp_path, change):
    from _tiny_gguf import corpus_text, write_tiny

    other = tmp_path / ("other.txt" if change == "corpus" else "other.gguf")
    args = _cli(tiny, "--measure-dir", str(measured))
    if change == "corpus":
        other.write_text(corpus_text(1600))
        args[args.index(tiny["calib"])] = str(other)
    else:
        write_tiny(other, "qwen2")
        args[args.index(tiny["model"])] = str(other)
    before = (measured / "manifest.json").read_text()
    p = subprocess.run(args, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    what = "calibration text" if change == "corpus" else "model"
    assert f"was made with another {what}" in p.stderr
    assert (measured / "manifest.json").read_text() == before


class FakeSession:
    """Re-evaluation on more chunks: reverses the order of the first three trials."""

    n_chunks, batch = 16, 4
    more = {"a": 0.30, "b": 0.20, "c": 0.10, "d": 0.05, "e": 0.01, "f": 0.001}

    seen: set = set()

    def run(self, plan, chunks):
        self.seen |= set(chunks)
        return [plan["t"]] * len(chunks)

    def summarize(self, stats):
        return {"kld_mean": self.more[stats[0]]}

    def release(self):
        pass


def study_with(values: dict[str, float]) -> optuna.Study:
    study = optuna.create_study()
    for name, v in values.items():
        study.add_trial(optuna.trial.create_trial(
            value=v, user_attrs={"recipe": {"t": name}, "plan_sha": name}))
    return study


def _plan(**kw) -> Plan:
    return Plan(SearchOptions(budget="4bpw", chunks=4, **kw), None, 0, {})


def test_the_lowest_on_more_chunks_wins_among_the_top_five():
    # "f" is sixth on the trial chunks: not re-evaluated, though best on more chunks
    study = study_with({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5, "f": 0.6})
    session = FakeSession()
    best = select(_plan(), study, session)
    assert best.user_attrs["plan_sha"] == "e"
    sel = study.user_attrs["selection"]
    assert session.seen == set(range(4, 16))  # only chunks the trials (4 chunks) did not see
    assert sel["chunks"] == 12 and set(sel["trials"]) == {"0", "1", "2", "3", "4"}
    assert sel["trials"]["4"] == pytest.approx(0.01)


def test_the_best_warm_start_joins_the_final_pick():
    # the warm start "f" is sixth on the trial chunks, best on more chunks: a search result
    # must beat it on chunks neither was chosen on, so it is re-evaluated too (and wins here);
    # the worse warm start "g" is not
    study = study_with({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5})
    for name, v in (("f", 0.6), ("g", 0.7)):
        study.add_trial(optuna.trial.create_trial(value=v, user_attrs={
            "recipe": {"t": name}, "plan_sha": name, "warm_start": f"w-{name}"}))
    best = select(_plan(), study, FakeSession())
    assert best.user_attrs["warm_start"] == "w-f"
    assert set(study.user_attrs["selection"]["trials"]) == {"0", "1", "2", "3", "4", "5"}


def test_no_reevaluation_without_select_chunks():
    class Never(FakeSession):
        def run(self, plan, chunks):
            raise AssertionError("re-evaluated")

    study = study_with({"a": 0.1, "b": 0.2})
    assert select(_plan(select_chunks=0), study, Never()).number == 0
    assert select(_plan(select_chunks=1), study, Never()).number == 0  # one chunk decides nothing
    assert "selection" not in study.user_attrs


def test_prepare_refuses_bad_input_before_any_work(tiny, tmp_path):
    from quant import UserError

    base = _opts(tiny, tmp_path / "m", tmp_path / "st", "6.2bpw")
    for change, msg in [({"ties": ("attn_q,nope",)}, "no quantizable tensor has role 'nope'"),
                        ({"ties": ("attn_q",)}, "is not ROLE,ROLE"),
                        ({"pins": ("nomatch=q4_0",)}, "matches no quantizable tensor"),
                        ({"budget": "6.2bpw,1bpw"}, "below the smallest"),
                        ({"imatrix": "x.dat", "no_imatrix": True}, "exclude each other")]:
        with pytest.raises(UserError, match=msg):
            prepare(replace(base, **change))
    assert not (tmp_path / "m").exists() and not (tmp_path / "st").exists()
