"""PPL / KLD metrics: definitions checked against hand computation and llama-perplexity output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

import objectives
from objectives import _eval as E
from quant import UserError

FIX = Path(__file__).parent / "fixtures" / "forward"


def _logp(rng, shape, sharp=1.0):
    return np.asarray(jax.nn.log_softmax(sharp * rng.standard_normal(shape).astype(np.float32)))


def _kld_exact(lp, lq):
    return np.sum(np.exp(lp.astype(np.float64)) * (lp - lq), axis=-1)


def test_kl_stats_against_numpy():
    rng = np.random.default_rng(0)
    lp, lq = _logp(rng, (2, 5, 50)), _logp(rng, (2, 5, 50))
    targets = rng.integers(0, 50, (2, 5))
    nll, kld, amax = (np.asarray(a) for a in E.kl_stats(lp, lq, targets))
    np.testing.assert_allclose(kld, _kld_exact(lp, lq), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(nll, -np.take_along_axis(lq, targets[..., None], -1)[..., 0])
    np.testing.assert_array_equal(amax, lq.argmax(-1))
    assert np.all(kld >= -1e-7)


def test_summarize_hand_computed():
    nll = np.array([1.0, 2.0, 3.0, 2.0] * 5, np.float32)  # 20 tokens
    base = np.array([1.0, 1.0, 3.0, 3.0] * 5, np.float32)
    kld = np.arange(20, dtype=np.float32)
    same = np.array([True, False, True, True] * 5)
    r = E.summarize(nll, base, kld, same)
    assert r["n_tokens"] == 20
    assert r["ppl"] == pytest.approx(math.exp(2.0))
    assert r["ppl_base"] == pytest.approx(math.exp(2.0))
    assert r["ln_ppl_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert r["kld_mean"] == pytest.approx(9.5)
    assert r["kld_median"] == pytest.approx(9.5)  # even count: mean of the two middle values
    assert r["kld_p90"] == pytest.approx(0.9 * 19)  # linear interpolation at fraction*(n-1)
    assert r["kld_p99"] == pytest.approx(0.99 * 19, rel=1e-6)
    assert r["kld_max"] == 19.0
    assert r["same_top_p"] == pytest.approx(0.75)
    assert r["same_top_p_err"] == pytest.approx(math.sqrt(0.75 * 0.25 / 19))
    dp = np.exp(-nll.astype(np.float64)) - np.exp(-base.astype(np.float64))
    assert r["rms_dp"] == pytest.approx(math.sqrt(np.mean(dp ** 2)), rel=1e-6)
    var = np.mean(nll.astype(np.float64) ** 2) - 4.0
    assert r["ppl_err"] == pytest.approx(math.exp(2.0) * math.sqrt(var / 19))


def test_make_chunks_replaces_first_token_with_bos():
    toks = np.arange(100, 1100)
    c = E.make_chunks(toks, ctx=100, n_chunks=3, bos=1)
    assert c.shape == (3, 100)
    assert list(c[:, 0]) == [1, 1, 1] and c[1, 1] == 201
    assert E.make_chunks(toks, ctx=100).shape == (10, 100)
    first, targets = E.scored(c)
    assert first == 50 and targets.shape == (3, 49)  # ctx - 1 - ctx/2 scored per chunk
    with pytest.raises(UserError, match="needs at least"):
        E.make_chunks(toks[:150], ctx=100)


def _llama_stats(name: str) -> dict:
    return json.loads((FIX / "llama_stats.json").read_text())[name]


@pytest.mark.skipif(not (FIX / "llama_stats.json").is_file(),
                    reason="tests/fixtures/forward/llama_stats.json missing (see its README)")
def test_summary_matches_llama_perplexity_on_its_own_log_probs():
    """Feed llama.cpp's own log-probs (base: tiny llama f32, Q: tiny llama-quant) to our
    metric code; every figure llama-perplexity --kl-divergence printed, each ± included, must
    come back within 1e-4 relative (measured: <= 5e-5; Q's log-probs are stored as uint16,
    1.2e-4 nats apart) or half a unit of its last printed digit (Δp and same-top figures are
    printed in % with 3 decimals, the others with 6)."""
    _, lp = E.read_llama_kld_base(FIX / "tiny-llama.kld")
    toks, lq = E.read_llama_kld_base(FIX / "tiny-llama-quant.kld")
    _, targets = E.scored(toks)
    nll, kld, amax = (np.asarray(a).reshape(-1) for a in E.kl_stats(lp, lq, targets))
    tgt = np.take_along_axis(lp, targets[..., None], -1).reshape(-1)
    r = E.summarize(nll, -tgt, kld, amax == lp.argmax(-1).reshape(-1))
    ref = _llama_stats("kld_tiny-llama-quant_vs_tiny-llama")
    assert r["n_tokens"] == ref["n_tokens"]
    keys = ("ppl", "ppl_err", "ppl_base", "ppl_base_err", "ln_ppl_ratio", "ln_ppl_ratio_err",
            "kld_mean", "kld_err", "kld_median", "kld_p90", "kld_p95", "kld_p99", "kld_p999",
            "kld_max", "rms_dp", "rms_dp_err", "same_top_p", "same_top_p_err", "mean_dp")
    for key in keys:
        printed = 0.5e-5 if key.startswith(("rms_dp", "same_top", "mean_dp")) else 0.5e-6
        assert abs(r[key] - ref[key]) <= max(1e-4 * abs(ref[key]), printed), \
            (key, r[key], ref[key])


def test_base_cache_is_reused(tmp_path, monkeypatch, tiny_model):
    m = objectives.open_gguf(tiny_model("llama"))
    toks = np.random.default_rng(0).integers(0, 256, 200)
    chunks = E.make_chunks(toks, ctx=32, n_chunks=2, bos=E.bos_id(m))
    a = E.base_stats(m, chunks, tmp_path, batch=2)
    assert len(list(tmp_path.glob("base-*.npz"))) == 1
    assert a.hidden.shape == (2 * 15, 64) and a.tgt_logp.shape == (30,)
    monkeypatch.setattr(E, "_compute_base", lambda *a, **k: pytest.fail("recomputed"))
    b = E.base_stats(m, chunks, tmp_path, batch=2)
    np.testing.assert_array_equal(a.hidden, b.hidden)
    np.testing.assert_array_equal(a.tgt_logp, b.tgt_logp)


def test_evaluate_base_against_itself_is_exact(tiny_model):
    """The base's own weights: KLD 0, same top 1, PPL = PPL(base), as llama-perplexity prints
    for a model against its own base file."""
    m = objectives.open_gguf(tiny_model("qwen2"))
    toks = np.random.default_rng(2).integers(0, 256, 300)
    r = E.evaluate(m, tokens=toks, ctx=32, n_chunks=8, batch=4, offload=True)
    assert r["n_tokens"] == 8 * 15
    assert r["kld_mean"] == pytest.approx(0.0, abs=1e-6) and r["same_top_p"] == 1.0
    assert r["ppl"] == pytest.approx(r["ppl_base"], rel=1e-6) and r["rms_dp"] < 1e-6
