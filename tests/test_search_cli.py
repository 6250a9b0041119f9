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
