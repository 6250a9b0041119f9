"""The ``search`` command as a user runs it: output modes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FIXTURES

BASELINE = json.loads((FIXTURES / "baseline-sizes.json").read_text())


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True,
                       timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode != 0, p.stdout
        assert "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    return p


@pytest.fixture(scope="module")
def inspect_json() -> dict:
    return json.loads(run("inspect", "--json").stdout)


def test_inspect_json(inspect_json):
    assert len(inspect_json["tensors"]) == 272
    uni = {u["type"]: u for u in inspect_json["uniform"]["mainline"]}
    assert uni["q4_0"]["bytes"] == BASELINE["files"]["pure-Q4_0"]["bytes"]
    assert uni["q4_0"]["bpw"] == float(BASELINE["files"]["pure-Q4_0"]["bpw"])
    q = {t["name"]: t for t in inspect_json["tensors"]}
    assert "q4_K" not in q["blk.0.attn_q.weight"]["can_take"]["mainline"]
    assert "q4_K" in q["blk.0.ffn_down.weight"]["can_take"]["mainline"]
    assert "iq4_ks" in q["blk.0.ffn_down.weight"]["can_take"]["ik"]
    assert q["output_norm.weight"]["can_take"]["mainline"] is None


def test_inspect_table():
    out = run("inspect", "--target", "mainline").stdout
    assert "ffn_down" in out and "uniform recipes, mainline" in out and "72.27" in out


def test_as_recipe(tmp_path):
    r = json.loads(run("inspect", "--as-recipe").stdout)
    assert r["format"] == "gguf-recipe/1" and r["bytes"] == BASELINE["files"]["orig-Q4_1"]["bytes"]


@pytest.mark.parametrize("args,msg", [
    (("--budget", "4.1bpw", "--types", "q4_0,q8_0"), "below the smallest"),
    (("--budget", "40bpw"), "above the largest"),
    (("--budget", "four"), "malformed budget"),
    (("--budget", "5bpw", "--types", "q4_0,q9_9"), "unknown quant type 'q9_9'"),
    (("inspect", "/nonexistent.gguf"), "no such file"),
])
def test_one_line_errors(args, msg):
    assert msg in run(*args, ok=False).stderr


def test_truncated_and_foreign_files(tmp_path, smollm2):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2.paths[0].read_bytes()[:5_000_000])
    assert "truncated" in run("inspect", str(cut), ok=False).stderr
    txt = tmp_path / "notes.gguf"
    txt.write_text("hello")
    assert "not a GGUF" in run("inspect", str(txt), ok=False).stderr


def _recipe_file(tmp_path, **changes) -> str:
    r = json.loads(run("inspect", "--as-recipe").stdout)
    r["tensors"].update(changes)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(r))
    return str(path)


def test_export_both_formats(tmp_path):
    recipe = _recipe_file(tmp_path)
    out = json.loads(run("export", recipe, "--format", "mainline", "-o", str(tmp_path / "m"),
                         "--json").stdout)
    assert sorted(p.rsplit("/", 1)[1] for p in out["files"]) == ["quantize-mainline.sh",
                                                                 "tensor-types.txt"]
    run("export", recipe, "--format", "ik", "-o", str(tmp_path / "ik"))
    assert (tmp_path / "ik" / "custom-q.txt").read_text().count("=") >= 2
    run("export", recipe, "--format", "json", "-o", str(tmp_path / "j"))
    assert json.loads((tmp_path / "j" / "recipe.json").read_text())["format"] == "gguf-recipe/1"


@pytest.mark.parametrize("change,fmt,msg", [
    ({"blk.0.ffn_down.weight": "q9_9"}, "mainline", "unknown quant type 'q9_9'"),
    ({"blk.0.ffn_down.weight": "iq4_ks"}, "mainline", "does not exist in mainline"),
])
def test_export_errors(tmp_path, change, fmt, msg):
    recipe = _recipe_file(tmp_path, **change)
    assert msg in run("export", recipe, "--format", fmt, "-o", str(tmp_path), ok=False).stderr


def test_eval_of_the_release_recipe_is_near_lossless(tmp_path):
    """The release file's own types give back its weights exactly (q4_1 on a q4_1 grid): what
    remains is llama.cpp's activation rounding, a KLD of about 0.003 on this model."""
    recipe = _recipe_file(tmp_path)
    r = json.loads(run("eval", "--recipe", recipe, "--ctx", "128", "--chunks", "2",
                       "--json").stdout)
    for key in ("ppl", "ppl_err", "ppl_base", "kld_mean", "kld_err", "kld_median", "kld_p99",
                "kld_p999", "kld_max", "same_top_p", "rms_dp", "n_tokens"):
        assert key in r
    assert r["n_tokens"] == 2 * (128 - 1 - 64)
    assert 0 < r["kld_mean"] < 0.02 and r["same_top_p"] > 0.9
    off = json.loads(run("eval", "--recipe", recipe, "--ctx", "128", "--chunks", "2",
                         "--no-act-round", "--json").stdout)
    assert off["kld_mean"] < 1e-6


def test_dashboard_serves_a_study(tmp_path):
    import socket
    import time
    import urllib.request

    import optuna

    study_dir = tmp_path / "st" / "demo"
    study_dir.mkdir(parents=True)
    optuna.create_study(study_name="demo", storage=f"sqlite:///{study_dir / 'study.db'}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "search", "dashboard", "--study", "demo",
                          "--studies-dir", str(tmp_path / "st"), "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    assert r.status == 200 and b"demo" in r.read()
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("dashboard did not answer")
    finally:
        p.kill()
        p.wait()
    assert "no study named nope" in run("dashboard", "--study", "nope", "--studies-dir",
                                        str(tmp_path / "st"), ok=False).stderr
