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
