"""``search --budget``: bad input fails in one line, before any study is created."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_search(tmp_path, *args):
    p = subprocess.run([sys.executable, "-m", "search", "--studies-dir", str(tmp_path / "st"),
                        "--trials", "1", *args], capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "st").exists()  # no study was created or changed
    return p.stderr


@pytest.mark.parametrize("args,msg", [
    (("--budget", "2bpw", "--types", "q4_0,q8_0"), "below the smallest"),
    (("--budget", "5bpw", "--pin", "token_embd=q1_0"), "cannot apply"),
    (("--budget", "5bpw", "--storage", "redis://localhost/0"), "unknown storage URL"),
    (("--budget", "5bpw", "--types", "iq4_ks"), "does not exist in mainline"),
    (("--budget", "5bpw", "--objective", "speed"), "invalid choice"),
    (("--budget", "5bpw", "--jobs", "2"), "SQLite cannot serve safely"),
])
def test_bad_input(tmp_path, args, msg):
    assert msg in run_search(tmp_path, *args)


def test_corpus_too_short(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short for a chunk of 512 tokens.")
    assert "needs at least" in run_search(tmp_path, "--budget", "5bpw", "-f", str(short))


def test_study_files_parse_and_the_command_line_wins(tmp_path):
    from pathlib import Path

    from search._options import merge

    demo = Path(__file__).parents[1] / "studies" / "smollm2-demo.toml"
    o = merge({"trials": 5}, str(demo))
    assert o.budget == "4.51bpw" and o.trials == 5 and o.study == "smollm2-demo"
    gemma = merge({"model": "x.gguf"}, str(demo.with_name("gemma3-27b-qat-ik.toml")))
    assert gemma.types == ["iq4_ks", "iq3_k", "q6_0", "q8_0"] and gemma.target == "ik"
    bad = tmp_path / "bad.toml"
    bad.write_text('budget = "4bpw"\nbudgett = 3\n')
    with pytest.raises(Exception, match="unknown option 'budgett'"):
        merge({}, str(bad))


def test_a_whole_search_with_two_workers_on_a_tiny_model(tmp_path):
    """The main command end to end on a tiny random llama: calibration, warm starts, two worker
    processes on one study (``--timeout``, so the second, which starts later, gets trials
    however slow its start), the final pick, the held-out report and the exports."""
    import json

    import optuna

    from _tiny_gguf import corpus_text, write_tiny

    model = write_tiny(tmp_path / "tiny.gguf", "llama")
    (tmp_path / "calib.txt").write_text(corpus_text(1500))
    (tmp_path / "eval.txt").write_text(corpus_text(700)[::-1])
    st = tmp_path / "st"
    p = subprocess.run([sys.executable, "-m", "search", str(model), "--budget", "6.2bpw",
                        "--types", "q4_0,q4_1,q5_0,q8_0", "--ctx", "64", "--chunks", "4",
                        "--select-chunks", "6", "--eval-chunks", "2", "--imatrix-chunks", "4",
                        "-f", str(tmp_path / "calib.txt"), "--eval-file", str(tmp_path / "eval.txt"),
                        "--timeout", "20", "--jobs", "2", "--study", "t", "--studies-dir", str(st),
                        "--storage", f"journal:{tmp_path}/t.log",
                        "--json"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads(p.stdout)
    from search._storage import open_storage

    study = optuna.load_study(study_name="t", storage=open_storage(f"journal:{tmp_path}/t.log"))
    done = [t for t in study.trials if t.state.is_finished()]
    pids = [t.user_attrs["worker"]["pid"] for t in done]
    assert len(set(pids)) == 2  # each process optimizes for 20 s from its own start
    assert 0.995 * 6.2 <= s["bpw"] <= 6.2
    assert set(s["trials_by_origin"]) >= {"warm start", "surrogate"}
    assert s["selection"]["chunks"] == 6 and str(s["best_trial"]) in s["selection"]["trials"]
    assert json.loads(open(s["recipe"]).read())["tensors"]
    assert (st / "t" / "tensor-types.txt").is_file() and (st / "t" / "report.json").is_file()
