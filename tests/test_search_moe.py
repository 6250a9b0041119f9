"""``search --budget`` end to end on the tiny random mixture-of-experts models: measurement,
trials, held-out comparison, exports and ``search write``, for each MoE family.

References: the budget in bytes (llama-quantize's sizes, held to real files by test_mixes and
test_gguf_write), our GGUF reader on the written file, ik's fused up/gate rule (one type for
``ffn_gate_exps`` and ``ffn_up_exps`` of a layer). The same runs exported through a real
mainline llama-quantize wrote files of exactly the predicted bytes (dev-only; closing note).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from objectives import open_gguf

FAST = ("--ctx", "64", "--chunks", "4", "--eval-chunks", "4", "--select-chunks", "0",
        "--imatrix-chunks", "4", "--trials", "3", "--types", "q4_0,q5_0,q8_0,iq4_nl")
BUDGET_BPW = 5.5


def _search(tmp_path, model, target: str) -> dict:
    text = tmp_path / "text.txt"
    if not text.exists():
        import _tiny_gguf

        text.write_text(_tiny_gguf.corpus_text(3000))
    p = subprocess.run([sys.executable, "-m", "search", str(model), "--target", target,
                        "--budget", f"{BUDGET_BPW}bpw", "-f", str(text), "--eval-file", str(text),
                        "--studies-dir", str(tmp_path / "st"), "--json", *FAST],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def _study(tmp_path):
    (folder,) = [d for d in (tmp_path / "st").iterdir() if d.is_dir() and d.name != "measure"]
    return folder


@pytest.mark.parametrize("arch,target", [("qwen3moe", "mainline"), ("deepseek2", "mainline"),
                                         ("glm4moe", "mainline"), ("gpt-oss", "mainline"),
                                         ("qwen3moe", "ik")])
def test_search_on_a_tiny_moe_model(arch, target, tiny_model, tmp_path):
    model = open_gguf(tiny_model(arch))
    report = _search(tmp_path, tiny_model(arch), target)
    study = _study(tmp_path)
    recipe = json.loads((study / "recipe.json").read_text())
    budget = int(BUDGET_BPW * model.n_elements / 8)
    assert report["budget_bytes"] == budget and 0.99 * budget <= recipe["bytes"] <= budget
    assert report["bytes"] == recipe["bytes"]
    names = {n for w in report["warm_starts"] for n in w.split(" = ")}  # shared plans: "a = b"
    assert "experts-low" in names  # the hand-made style
    experts = {t.name for t in model.quantizable(target) if len(t.shape) == 3}
    assert experts and experts <= set(recipe["tensors"])
    if target == "ik":  # ik's fused up/gate needs one type
        for name in experts:
            if "ffn_gate_exps" in name:
                assert recipe["tensors"][name] == recipe["tensors"][
                    name.replace("gate_exps", "up_exps")]
    rules = (study / ("tensor-types.txt" if target == "mainline" else "custom-q.txt")).read_text()
    assert re.search(r"ffn_(gate|up|down)_exps", rules)
    out = tmp_path / "out.gguf"
    p = subprocess.run([sys.executable, "-m", "search", "write", study.name, "-o", str(out),
                        "--studies-dir", str(tmp_path / "st")], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    back = open_gguf(out)
    for name, type_ in recipe["tensors"].items():
        assert back.tensors[name].qtype.name == type_, name
    assert sum(t.nbytes for t in back.tensors.values()) == recipe["bytes"]  # norms included
