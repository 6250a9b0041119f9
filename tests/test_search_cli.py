"""``search --budget``: bad input fails in one line before any study; help shows every default;
a whole run on a tiny model writes only strict JSON; a SIGKILLed run resumes through the same
command on SQLite, journal files and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from quant import UserError
from search import SearchOptions, default_of, merge, open_storage, option_fields


def run_search(tmp_path, *args):
    p = subprocess.run([sys.executable, "-m", "search", "--studies-dir", str(tmp_path / "st"),
                        "--trials", "1", *args], capture_output=True, text=True, timeout=1200)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "st").exists()  # no study or measurement was created or changed
    return p.stderr


@pytest.mark.parametrize("args,msg", [
    (("--budget", "2bpw", "--types", "q4_0,q8_0"), "below the smallest"),
    (("--budget", "5bpw,2bpw", "--types", "q4_0,q8_0"), "below the smallest"),
    (("--budget", "5bpw", "--pin", "token_embd=q1_0"), "cannot apply"),
    (("--budget", "5bpw", "--pin", "nomatch=q4_0"), "'nomatch=q4_0' matches no quantizable"),
    (("--budget", "5bpw", "--pin", "blk.(0=q4_0"), "bad regex"),
    (("--budget", "5bpw", "--tie", "attn_q,atn_k"), "no quantizable tensor has role 'atn_k'"),
    (("--budget", "5bpw", "--tie", "attn_q"), "is not ROLE,ROLE"),
    (("--budget", "5bpw", "--storage", "redis://localhost/0"), "unknown storage URL"),
    (("--budget", "5bpw", "--types", "iq4_ks"), "does not exist in mainline"),
    (("--budget", "5bpw", "--objective", "speed"), "invalid choice"),
    (("--budget", "5bpw", "--jobs", "2"), "SQLite cannot serve safely"),
    (("--budget", "5"), "malformed budget"),
    (("--budget", "5bpw", "-f", "/nonexistent/calib.txt"), "no such corpus file"),
    (("--budget", "5bpw", "/nonexistent/model.gguf"), "model.gguf: no such file"),
])
def test_bad_input(tmp_path, args, msg):
    assert msg in run_search(tmp_path, *args)


def test_bad_input_exits_the_process_with_status_2(tmp_path):
    assert "'nomatch=q4_0' matches no quantizable" in run_search(
        tmp_path, "--budget", "5bpw", "--pin", "nomatch=q4_0")


def test_corpus_too_short(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short for a chunk of 512 tokens.")
    assert "needs at least" in run_search(tmp_path, "--budget", "5bpw", "-f", str(short))


def test_help_shows_every_default_and_the_valid_values():
    p = subprocess.run([sys.executable, "-m", "search", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    for f in option_fields():
        meta = f.metadata
        if meta.get("flag_only") or meta.get("positional") or f.name == "json":
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        assert flag in text, flag
        if meta.get("required"):
            continue
        shown = meta.get("default_text") or (None if f.default in (None, ()) else str(f.default))
        if shown and f.name != "trials":
            assert f"(default: {' '.join(shown.split())})" in text, f.name
        for choice in meta.get("choices", ()):
            assert choice in text
    assert f"default {default_of('trials') or 60}" in text or "default 60" in text
    assert "(required, or 'budget' in the --config file)" in text


def test_study_files_parse_and_the_command_line_wins(tmp_path):
    demo = Path(__file__).parents[1] / "studies" / "smollm2-demo.toml"
    o = merge({"trials": 5}, str(demo))
    assert o.budget == "4.51bpw" and o.trials == 5 and o.study == "smollm2-demo"
    gemma = merge({"model": "x.gguf"}, str(demo.with_name("gemma3-27b-qat-ik.toml")))
    assert gemma.types == ("iq4_ks", "iq3_k", "q6_0", "q8_0") and gemma.target == "ik"
    bad = tmp_path / "bad.toml"
    bad.write_text('budget = "4bpw"\nbudgett = 3\n')
    with pytest.raises(Exception, match="unknown option 'budgett'"):
        merge({}, str(bad))
    assert SearchOptions().chunks == default_of("chunks")


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from _tiny_gguf import corpus_text, write_tiny

    d = tmp_path_factory.mktemp("cli")
    (d / "calib.txt").write_text(corpus_text(1500))
    (d / "eval.txt").write_text(corpus_text(700)[::-1])
    return {"dir": d, "model": str(write_tiny(d / "tiny.gguf", "llama")),
            "calib": str(d / "calib.txt"), "eval": str(d / "eval.txt"),
            "measure": str(d / "measure")}


def _tiny_args(tiny, *more) -> list[str]:
    return [sys.executable, "-m", "search", tiny["model"], "--budget", "6.2bpw", "--types",
            "q4_0,q4_1,q5_0,q8_0", "--ctx", "64", "--chunks", "4", "--select-chunks", "6",
            "--eval-chunks", "2", "--imatrix-chunks", "4", "-f", tiny["calib"], "--eval-file",
            tiny["eval"], "--measure-dir", tiny["measure"], *more]


@pytest.fixture(scope="module")
def tiny_study(tiny, tmp_path_factory):
    """The main command end to end on a tiny random llama: measurement, warm starts, two worker
    processes on one study (``--timeout``, so the second, which starts later, gets trials
    however slow its start), the final pick, the held-out report, the exports and the GGUF."""
    d = tmp_path_factory.mktemp("e2e")
    st = d / "st"
    p = subprocess.run(_tiny_args(tiny, "--timeout", "20", "--jobs", "2", "--study", "t",
                                  "--studies-dir", str(st), "--storage", f"journal:{d}/t.log",
                                  "--write", str(d / "t.gguf"), "--json"),
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    return {"dir": d, "studies": st, "stdout": p.stdout, "storage": f"journal:{d}/t.log"}


def test_a_whole_search_with_two_workers_writes_strict_json(tiny, tiny_study):
    """Every JSON file it writes and its --json output parse strictly (no NaN/Infinity); every
    evaluated trial is a distinct recipe, and a trial that found only evaluated recipes took
    no evaluation; the scripts need nothing outside their folder."""
    s, st = _strict(tiny_study["stdout"]), tiny_study["studies"]
    study = optuna.load_study(study_name="t", storage=open_storage(tiny_study["storage"]))
    done = [t for t in study.trials if t.state.is_finished()]
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2
    ran = [t for t in done if "duplicate_of" not in t.user_attrs]
    assert len({t.user_attrs["plan_sha"] for t in ran}) == len(ran) == s["distinct_plans"]
    assert s["n_trials"] == len(ran) and s["duplicates"] == len(done) - len(ran)
    assert all(not t.intermediate_values for t in done if "duplicate_of" in t.user_attrs)
    assert 0.995 * 6.2 <= s["bpw"] <= 6.2
    assert set(s["trials_by_origin"]) >= {"warm start", "surrogate"}
    assert s["selection"]["chunks"] == 6 and str(s["best_trial"]) in s["selection"]["trials"]
    assert (st / "t" / "tensor-types.txt").is_file()
    written = [*(st / "t").rglob("*.json"), *Path(tiny["measure"]).rglob("*.json")]
    assert len(written) >= 5
    for f in written:
        _strict(f.read_text())
    script = (st / "t" / "quantize-mainline.sh").read_text()
    assert '"$here/imatrix.gguf"' in script and str(tiny_study["dir"]) not in script
    assert "ik" not in script.replace("llama-quantize", "")


@pytest.mark.parametrize("warm_kld, says", [
    (0.110, "by more than the uncertainty"),  # 0.010 lower, ± 0.0014 combined
    (0.1005, "but within the uncertainty of 'milp-prior'"),  # 0.0005 lower: a tie
])
def test_the_summary_says_whether_the_win_over_the_nearest_warm_start_is_real(
        tiny_study, tmp_path, capsys, warm_kld, says):
    """'beats every warm start' only when the nearest warm start is worse by more than the two
    figures' combined uncertainty; a lower but tied result is called a tie."""
    from search._cli import main

    report = _strict(tiny_study["stdout"])
    best = {**report["comparison"][0], "kld_mean": 0.100, "kld_err": 0.001}
    warm = {**best, "name": "warm: milp-prior", "kld_mean": warm_kld}
    far = {**best, "name": "warm: cossim", "kld_mean": 0.5}
    report |= {"comparison": [best, far, warm], "beats_every_warm_start": True,
               "at_floor": False, "best_is_warm_start": None}
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "report.json").write_text(json.dumps(report))
    assert main(["report", "--study", "t", "--studies-dir", str(tmp_path)]) == 0
    assert says in capsys.readouterr().out


def test_the_written_gguf_holds_the_recipe_and_the_cache_values(tiny, tiny_study):
    import numpy as np

    from objectives import QuantCache, open_gguf, read_imatrix
    from search import load_recipe

    recipe = load_recipe(tiny_study["studies"] / "t" / "recipe.json")
    out, base = open_gguf(tiny_study["dir"] / "t.gguf"), open_gguf(tiny["model"])
    assert {n: out.tensors[n].qtype.name for n in recipe.tensors} == recipe.tensors
    assert sum(t.nbytes for t in out.tensors.values()) == recipe.bytes
    weights = {}
    for name, t in recipe.tensors.items():
        weights[t] = weights.get(t, 0) + int(np.prod(recipe.shapes[name]))
    most = max(weights, key=weights.get)
    llama_h = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8}  # LLAMA_FTYPE_MOSTLY_* of llama.h
    assert out.meta["general.file_type"] == llama_h[most]
    assert out.meta["general.quantization_version"] == 2
    im = read_imatrix(Path(tiny["measure"]) / "imatrix.gguf").for_quantizer(base)
    cache = QuantCache(base, "mainline", im, Path(tiny["measure"]) / "quant")
    for name, t in recipe.tensors.items():
        np.testing.assert_array_equal(out.f32(name), cache.values(name, t))
    for name in set(base.tensors) - set(recipe.tensors):
        np.testing.assert_array_equal(out.f32(name), base.f32(name))
    assert out.meta["quantize.imatrix.chunks_count"] == 4


def _wait(url: str, name: str, proc, timeout: float = 600):
    """Until the study has a complete trial and a running one that has reported a batch (the
    one to kill), and the process is stopped (SIGSTOP) in that state: a tiny trial can finish
    between a look and a kill, so the state is checked again once the process cannot move.
    A trial killed inside ``study.ask()`` (the sampler's work, before Optuna's heartbeat thread
    starts) has no heartbeat, so no storage can ever tell it is stale: the kill waits for a
    reported batch, when the objective (and its heartbeat) is surely running."""

    def ready() -> bool:
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url))
        except KeyError:
            return False
        trials = study.get_trials(deepcopy=False)
        return (any(t.state == TrialState.COMPLETE for t in trials)
                and trials[-1].state == TrialState.RUNNING
                and bool(trials[-1].intermediate_values))

    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                if ready():
                    return
            except (UserError, sqlalchemy.exc.OperationalError):
                pass  # stopped inside a SQLite write: it holds the lock; let it go on, look again
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"no running trial after a complete one (exit {proc.poll()})")


@pytest.mark.parametrize("mode", ["sqlite", "journal", "postgres"])
def test_a_killed_search_resumes_through_the_same_command(tiny, tmp_path, mode, request):
    url = {"sqlite": f"sqlite:///{tmp_path}/k.db", "journal": f"journal:{tmp_path}/k.log",
           "postgres": request.getfixturevalue("pg_url") if mode == "postgres" else None}[mode]
    name = f"k-{mode}-{os.getpid()}-{time.time_ns()}"
    env = {**os.environ, "GRS_HEARTBEAT_S": "1", "GRS_GRACE_S": "2"}
    base = _tiny_args(tiny, "--study", name, "--storage", url, "--studies-dir",
                      str(tmp_path / "st"), "--json", "--chunks", "8", "--select-chunks", "8")
    first = subprocess.Popen(base + ["--trials", "50"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _wait(url, name, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    complete = {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}
    killed = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert complete and len(killed) == 1
    finished_before = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    time.sleep(3)  # past the heartbeat's grace period
    want = finished_before + 3
    again = subprocess.run(base + ["--trials", str(want)], env=env, capture_output=True,
                           text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == killed
    retried = [t for t in trials if t.user_attrs.get("retry_of") == killed[0]
               or t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert complete <= {t.number for t in trials if t.state == TrialState.COMPLETE}
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == want  # --trials counts the study's finished trials
    warm = [t.user_attrs["warm_start"] for t in trials if "warm_start" in t.user_attrs
            and t.state != TrialState.FAIL]
    assert sorted(warm) == sorted(study.user_attrs["warm_enqueued"])  # not enqueued again
    probes = sorted((Path(tiny["measure"]) / "probes").glob("*.json"))
    changed = subprocess.run(base + ["--chunks", "6", "--trials", str(want)], env=env,
                             capture_output=True, text=True, timeout=1200)
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1
    assert "was made with other settings" in changed.stderr and "chunks: 8 -> 6" in changed.stderr
    assert sorted((Path(tiny["measure"]) / "probes").glob("*.json")) == probes  # no new work


def _fake_tool(folder: Path, help_text: str, on_run: str) -> Path:
    """A stand-in llama-perplexity: prints ``help_text`` for --help, else runs ``on_run``."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "llama-perplexity"
    tool.write_text(f'#!/bin/sh\nif [ "$1" = "--help" ]; then echo "{help_text}"; exit 0; fi\n'
                    f"{on_run}\n")
    tool.chmod(0o755)
    return folder


@pytest.mark.parametrize("case,msg", [
    ("missing", "no executable llama-perplexity in"),
    ("other project", "is a ik build, but the study's recipe is for mainline"),
    ("killed", "llama-perplexity was killed by signal SIGKILL"),
    ("other base", "is not the model the study measured"),
])
def test_verify_refuses_bad_input_in_one_line_and_leaves_the_study(tiny_study, tmp_path, case,
                                                                   msg):
    import shutil

    st = tmp_path / "st"
    shutil.copytree(tiny_study["studies"], st)
    report = st / "t" / "report.json"
    if case == "other base":
        from _tiny_gguf import write_tiny

        data = json.loads(report.read_text())
        data["model"] = str(write_tiny(tmp_path / "other.gguf", "qwen2"))
        report.write_text(json.dumps(data))
    before = report.read_text()
    bins = {"missing": tmp_path / "nothing",
            "other project": _fake_tool(tmp_path / "ik", "-fmoe, --fused-moe", "exit 0"),
            "killed": _fake_tool(tmp_path / "ml", "usage: llama-perplexity", "kill -9 $$"),
            "other base": _fake_tool(tmp_path / "ml-ok", "usage", "exit 0")}[case]
    p = subprocess.run([sys.executable, "-m", "search", "verify", "t", "--studies-dir", str(st),
                        "--llama-bin", str(bins), "--chunks", "4"], capture_output=True,
                       text=True, timeout=1200)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()[-1:]) == 1 and msg in p.stderr, p.stderr[-500:]
    assert report.read_text() == before


@pytest.mark.heavy
def test_verify_with_the_real_llama_perplexity(tiny_study, tmp_path):
    """LLAMA_BIN: a mainline build. Its KLD on the written file within 3 % of our prediction."""
    import shutil

    if not os.environ.get("LLAMA_BIN"):
        pytest.skip("needs LLAMA_BIN: the folder of a mainline llama.cpp build")
    st = tmp_path / "st"
    shutil.copytree(tiny_study["studies"], st)
    p = subprocess.run([sys.executable, "-m", "search", "verify", "t", "--studies-dir", str(st),
                        "--chunks", "6", "--json"], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-2000:]
    r = _strict(p.stdout)
    assert abs(r["rel_diff"]["kld_mean"]) < 0.03 and abs(r["rel_diff"]["ppl"]) < 0.002
    assert json.loads((st / "t" / "report.json").read_text())["verify"]["measured"] == r["measured"]
