"""The quantization cache: each (tensor, type) quantized once, reused from disk; error energy."""

from __future__ import annotations

import numpy as np
import pytest

import quant
from conftest import write_tiny_gguf
from objectives import open_gguf
from objectives._qcache import QuantCache


@pytest.fixture()
def model(tmp_path):
    rng = np.random.default_rng(0)
    return open_gguf(write_tiny_gguf(tmp_path / "m.gguf", {
        "blk.0.ffn_down.weight": rng.normal(size=(8, 256)) * 0.02,
        "token_embd.weight": rng.normal(size=(16, 64))}, block_count=1))


def test_error_energy_is_the_weighted_squared_error(model, tmp_path):
    w = model.f32("blk.0.ffn_down.weight")
    qw = np.linspace(0.5, 2.0, 256).astype(np.float32)
    cache = QuantCache(model, "mainline", {"blk.0.ffn_down.weight": qw}, tmp_path / "c")
    d = (w - np.asarray(quant.fake_quant(w, "q4_K", qw))).astype(np.float64)
    assert cache.error("blk.0.ffn_down.weight", "q4_K") == pytest.approx(float((d * d).sum(0) @ qw),
                                                                          rel=1e-9)
    head = np.full(64, 3.0)
    e = model.f32("token_embd.weight") - cache.values("token_embd.weight", "q8_0")
    assert cache.error("token_embd.weight", "q8_0", head) == pytest.approx(
        3.0 * float(np.square(e, dtype=np.float64).sum()), rel=1e-9)


def test_second_cache_reads_from_disk(model, tmp_path, monkeypatch):
    first = QuantCache(model, "mainline", None, tmp_path / "c").packed("token_embd.weight", "q4_0")
    monkeypatch.setattr(quant, "quantize", lambda *a, **k: pytest.fail("quantized again"))
    again = QuantCache(model, "mainline", None, tmp_path / "c").packed("token_embd.weight", "q4_0")
    np.testing.assert_array_equal(first, again)


def test_values_of_a_disk_cache_are_not_held_in_memory(model, tmp_path):
    """A study's trials read many types of every tensor: with a cache folder the packed bytes
    are memory-mapped for each dequantization, not accumulated."""
    cache = QuantCache(model, "mainline", None, tmp_path / "c")
    ref = quant.fake_quant(model.f32("token_embd.weight"), "q4_0")
    np.testing.assert_array_equal(cache.values("token_embd.weight", "q4_0"), ref)
    assert cache._mem == {}
    assert (cache.dir / "token_embd.weight.q4_0.npy").is_file()


def test_a_recipe_at_the_stored_types_evaluates_the_file_itself():
    """llama-quantize copies such tensors; the fake-quant path must not re-quantize them."""
    from conftest import FIXTURES
    from objectives._models._stream import Weights

    m = open_gguf(FIXTURES / "write" / "tiny-llama.Q4_K_M.gguf")
    names = [t.name for t in m.quantizable("mainline")]
    kept = Weights(m, recipe={n: m.tensors[n].qtype.name for n in names})
    assert kept.recipe == {}
    moved = Weights(m, recipe={n: "q8_0" for n in names})
    assert set(moved.recipe) == {n for n in names if m.tensors[n].qtype.name != "q8_0"}


def test_error_of_experts_weights_each_expert_by_its_own_imatrix_row(tiny_model):
    """A 3-D expert tensor's imatrix has one row per expert (llama-imatrix's layout)."""
    m = open_gguf(tiny_model("qwen3moe-quant"))  # experts stored quantized: rows dequantized
    name = "blk.0.ffn_down_exps.weight"
    e, rows, ne0 = m.tensors[name].shape
    qw = np.random.default_rng(1).uniform(0.1, 3.0, (e, ne0)).astype(np.float32)
    cache = QuantCache(m, "mainline", {name: qw})
    w = m.f32(name)
    d = (w - cache.values(name, "q4_0")).astype(np.float64)
    want = float(sum((d[i] ** 2).sum(0) @ qw[i] for i in range(e)))
    assert cache.error(name, "q4_0") == pytest.approx(want, rel=1e-9)


def test_a_stored_quantized_matrix_is_quantized_a_slice_of_rows_at_a_time(monkeypatch):
    """A q4_K/q6_K file's tensor larger than ROW_SLICE_BYTES is read, dequantized and quantized
    in slices of rows (Gemma 3's q8_0 embedding would otherwise exist whole in float32): the
    bytes equal those of quantizing the whole float32 tensor at once, imatrix included."""
    from conftest import FIXTURES
    from objectives import _qcache

    m = open_gguf(FIXTURES / "write" / "tiny-llama.Q4_K_M.gguf")
    name = next(n for n, t in m.tensors.items() if t.qtype.name not in ("f32", "f16")
                and len(t.shape) == 2 and t.shape[0] > 16)
    qw = np.linspace(0.5, 2.0, m.tensors[name].shape[-1]).astype(np.float32)
    whole = quant.quantize(m.f32(name), "q4_0", qw)
    rows = 7  # slices of 7 rows: the last one shorter
    monkeypatch.setattr(_qcache, "ROW_SLICE_BYTES", rows * 4 * m.tensors[name].shape[-1])
    seen = []
    real = m.f32_rows
    monkeypatch.setattr(m, "f32_rows", lambda n, a, b: seen.append(b - a) or real(n, a, b))
    sliced = QuantCache(m, "mainline", {name: qw}).packed(name, "q4_0")
    np.testing.assert_array_equal(sliced, whole)
    assert max(seen) == rows and len(seen) == -(-m.tensors[name].shape[0] // rows)
