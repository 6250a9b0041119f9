"""``search plan``: the quantization stage's time follows the quantizers' slices (hand-computed
cases), a study that cannot fit is refused in one line, and the plan of a tiny model lists every
stage, caches its rates per machine and reuses them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import namedtuple

import pytest

from quant import UserError, slice_rows
from search import merge, prepare
from search._pipeline import _plan
from search._pipeline._plan import quantize_seconds

RATE = float(1 << 19)  # weights per second of one slice alone: a full CPU slice takes 1 s
FAST = ("--ctx", "64", "--chunks", "4", "--eval-chunks", "4", "--select-chunks", "0",
        "--imatrix-chunks", "4", "--trials", "3", "--types", "q4_0,q5_0,q8_0")


def test_slices_of_a_large_tensor():
    # ne0 4096: llama-quantize's chunk is 4 rows, a CPU slice 2^19 weights = 128 rows, so
    # 1000 rows are 8 slices: the first alone, then 7 on the workers
    assert slice_rows(1000, 4096) == 128
    assert quantize_seconds((1000, 4096), RATE, 1.0, 2) == pytest.approx(1 + 4)  # 1 + ceil(7/2)
    assert quantize_seconds((1000, 4096), RATE, 1.25, 2) == pytest.approx(1 + 4 * 1.25)
    assert quantize_seconds((1000, 4096), RATE, 1.25, 8) == pytest.approx(1 + 1.25)
    assert quantize_seconds((1000, 4096), RATE, 1.0, 1) == pytest.approx(1 + 7)


def test_a_small_tensor_is_one_padded_slice_whatever_the_cores():
    # 10 rows pad to 16: one slice of 16 x 4096 weights, no parallelism
    for n in (1, 2, 16):
        assert quantize_seconds((10, 4096), RATE, 1.5, n) == pytest.approx(16 * 4096 / RATE)


def test_experts_are_sliced_one_by_one():
    # 4 experts of 300 rows: each 3 slices of 128 rows (first alone, then 2 at once)
    assert quantize_seconds((4, 300, 4096), RATE, 1.25, 2) == pytest.approx(4 * (1 + 1.25))
    # the same weights as one 2-D tensor of 1200 rows: 10 slices
    assert quantize_seconds((1200, 4096), RATE, 1.25, 2) == pytest.approx(1 + 5 * 1.25)


def _spec(tmp_path, model, *args):
    text = tmp_path / "text.txt"
    if not text.exists():
        import _tiny_gguf

        text.write_text(_tiny_gguf.corpus_text(3000))
    opts = {"model": str(model), "budget": "5.5bpw", "calib": str(text),
            "eval_file": str(text), "studies_dir": str(tmp_path / "st"), "ctx": 64,
            "chunks": 4, "eval_chunks": 4, "select_chunks": 0, "imatrix_chunks": 4,
            "types": ("q4_0", "q5_0", "q8_0"), **dict(args)}
    return prepare(merge(opts))


def test_a_study_that_cannot_fit_is_refused_in_one_line(tmp_path, tiny_model, monkeypatch):
    spec = _spec(tmp_path, tiny_model("llama"))
    est = _plan.Estimate(disk_bytes=5 << 30, host_bytes=3 << 30, stages={"x": 1.0}, trial_s=1.0)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_plan.shutil, "disk_usage", lambda p: usage(8 << 30, 7 << 30, 1 << 30))
    with pytest.raises(UserError) as e:
        _plan.check_fits(spec, est)
    assert "needs 5.0 GiB of disk" in str(e.value) and "1.0 GiB are free" in str(e.value)
    assert "--measure-dir" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(_plan.shutil, "disk_usage", lambda p: usage(8 << 30, 0, 8 << 30))
    monkeypatch.setattr(_plan, "_available_memory", lambda: 2 << 30)
    with pytest.raises(UserError) as e:
        _plan.check_fits(spec, est)
    assert "about 3.0 GiB of memory, 2.0 GiB are available" in str(e.value)
    monkeypatch.setattr(_plan, "_available_memory", lambda: 4 << 30)
    _plan.check_fits(spec, est)  # fits: no error


def _plan_cli(tmp_path, model) -> dict:
    text = tmp_path / "text.txt"
    if not text.exists():
        import _tiny_gguf

        text.write_text(_tiny_gguf.corpus_text(3000))
    p = subprocess.run([sys.executable, "-m", "search", "plan", str(model), "--budget",
                        "5.5bpw", "-f", str(text), "--eval-file", str(text), "--studies-dir",
                        str(tmp_path / "st"), "--json", *FAST],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def test_plan_of_a_tiny_model_lists_every_stage_and_reuses_its_rates(tmp_path, tiny_model):
    first = _plan_cli(tmp_path, tiny_model("llama"))
    assert set(first["stages"]) == {
        "imatrix pass", "base statistics", "quantization cache", "calibration probes",
        "trials (5.5bpw)", "held-out base statistics",
        "held-out comparison (5.5bpw)"}  # --select-chunks 0: no final pick
    assert first["total_s"] == pytest.approx(sum(first["stages"].values()))
    assert first["stages"]["trials (5.5bpw)"] == pytest.approx(3 * first["trial_s"])
    assert first["fits"] is True and first["disk_bytes"] > 0 and first["host_bytes"] > 1 << 30
    (rates,) = (tmp_path / "st" / "measure").glob("*/rates.json")
    (key,) = json.loads(rates.read_text())
    assert json.loads(key)[0] == "rates/2"
    (entry,) = json.loads(rates.read_text()).values()
    assert set(entry["quantize"]) == {"q4_0", "q5_0", "q8_0"}
    assert entry["quant_wave"] == {}  # every tensor is one slice: no wave, none in the estimate
    second = _plan_cli(tmp_path, tiny_model("llama"))  # the cached rates: the same estimate
    assert second["stages"] == first["stages"]
    assert not (tmp_path / "st" / "measure" / rates.parent.name / "quant").exists()


def test_a_layer_holds_its_weights_or_two_slices_of_its_experts(tiny_model, monkeypatch):
    from objectives import layer_resident_bytes, open_gguf
    from objectives._models import _stream, family

    m = open_gguf(str(tiny_model("deepseek2")))
    # tiny deepseek2, layer 1 (MoE), float32 bytes: 35,024 weights outside the experts
    # (norms, MLA, router, shared expert, bias) and 16 experts of 3 x 32 x 64
    rest, one = 4 * 35_024, 4 * 3 * 32 * 64
    assert layer_resident_bytes(m) == rest + 16 * one  # below the threshold: the whole layer
    monkeypatch.setattr(_stream, "EXPERT_LAYER_BYTES", 100_000)
    fam = family(m.arch)
    size = _stream.expert_slice(fam, fam.config(m), m, _stream.Weights(m), 1)
    assert size == 100_000 // one == 4  # what the streaming forward slices by
    assert layer_resident_bytes(m) == rest + 2 * size * one


def test_quantizing_a_tensor_holds_its_source_unless_read_in_place(tiny_model, monkeypatch):
    from objectives import _qcache, cache_quantize_bytes, open_gguf

    f32 = open_gguf(str(tiny_model("deepseek2")))  # every tensor stored as f32: read in place
    assert cache_quantize_bytes(f32, "blk.1.attn_q_b.weight", 1000) == 2 * 1000
    q = open_gguf(str(tiny_model("llama-quant")))
    (name, t) = next((n, t) for n, t in q.tensors.items()
                     if len(t.shape) == 2 and t.qtype.name not in ("f32", "f16", "bf16"))
    assert cache_quantize_bytes(q, name, 1000) == 4 * t.n_elements + 2 * 1000  # dequantized
    experts = "blk.1.ffn_gate_exps.weight"  # [16, 32, 64]: 131,072 bytes of float32
    assert cache_quantize_bytes(f32, experts, 10) == 2 * 10  # one piece, read in place
    monkeypatch.setattr(_qcache, "SLICE_BYTES", 40_000)  # sliced: at most one slice of source
    assert cache_quantize_bytes(f32, experts, 10) == 40_000 + 2 * 10


def test_stages_the_measurement_holds_are_done_not_counted(tmp_path, tiny_model):
    """After ``search measure`` with the same settings, the plan of a budget lists the four
    measurement stages as done and counts only the study's own stages."""
    model = tiny_model("llama")
    before = _plan_cli(tmp_path, model)
    assert "done" not in " ".join(before["lines"])
    measure = ["--ctx", "64", "--chunks", "4", "--select-chunks", "0", "--imatrix-chunks", "4",
               "--types", "q4_0,q5_0,q8_0"]
    p = subprocess.run([sys.executable, "-m", "search", "measure", str(model), "-f",
                        str(tmp_path / "text.txt"), "--eval-file", str(tmp_path / "text.txt"),
                        "--studies-dir", str(tmp_path / "st"), *measure],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    after = _plan_cli(tmp_path, model)
    done = ("imatrix pass", "base statistics", "quantization cache", "calibration probes")
    for stage in done:
        assert any(line.split(stage)[-1].strip() == "done (in the measurement folder)"
                   for line in after["lines"] if stage in line), stage
    assert after["done"] == sorted(done) and before["done"] == []
    study = sum(v for k, v in after["stages"].items() if k not in done)
    assert after["total_s"] == pytest.approx(study) and study < before["total_s"]
    assert after["disk_bytes"] < before["disk_bytes"]  # the cache is on disk already
