"""Mixture-of-experts forward (qwen3moe, deepseek2, glm4moe, gpt-oss): logits, PPL and routing
against llama.cpp on tiny random models, expert slicing, the per-expert imatrix and
llama-quantize's rules.

References (tests/fixtures/forward/README.md, make_moe_fixtures.sh): llama-perplexity's
--kl-divergence-base logits and PPL, every layer's selected experts as llama.cpp computed them
on the same chunks (dump_routing.cpp), llama-imatrix's files and llama-quantize's Q4_0 bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import objectives
import quant
from objectives import _eval as E
from objectives._imatrix import read_imatrix
from objectives._models import _moe, family
from objectives._models import _stream as S
from objectives._score_collect import collect
from quant import UserError
from test_forward import LOGP_TOL, _max_err

FIX = Path(__file__).parent / "fixtures" / "forward"
F32 = ("qwen3moe", "deepseek2", "deepseek2-kvb", "glm4moe", "gpt-oss")
QUANT = {  # quantized-expert variant -> (its f32 variant, gain of the rounding, PPL rel. tol.)
    "qwen3moe-quant": ("qwen3moe", 2.0, 5e-4), "gpt-oss-mxfp4": ("gpt-oss", 1.8, 5e-3)}


def _fixture(name: str) -> Path:
    path = FIX / name
    if not path.is_file():
        pytest.skip(f"{path} missing: regenerate with tests/fixtures/forward/make_moe_fixtures.sh")
    return path


def _stats() -> dict:
    return json.loads(_fixture("moe_stats.json").read_text())


def _chunks(model, tokens):
    bos = E.bos_id(model)
    out = np.where(np.arange(tokens.shape[1]) == 0, bos, tokens) if bos is not None else tokens
    return out.astype(np.int32)


@pytest.fixture(scope="module")
def runs(tiny_model):
    """arch -> (model, llama.cpp tokens, llama.cpp log-probs, ours unsliced)."""
    out = {}

    def get(arch):
        if arch not in out:
            tokens, ref = E.read_llama_kld_base(_fixture(f"tiny-{arch}.kld"))
            model = objectives.open_gguf(tiny_model(arch))
            ours = E.log_probs(model, S.Weights(model, act_round=True), _chunks(model, tokens),
                               batch=2)
            out[arch] = model, tokens, ref, ours
        return out[arch]

    return get


@pytest.mark.parametrize("arch", F32)
def test_log_probs_and_ppl_match_llama_cpp(arch, runs):
    _, tokens, ref, ours = runs(arch)
    assert _max_err(ours, ref) < LOGP_TOL
    _, targets = E.scored(tokens)
    nll = -np.take_along_axis(ours, targets[..., None], -1)[..., 0]
    ppl = _stats()[f"ppl_tiny-{arch}"]["ppl"]
    assert float(np.exp(nll.astype(np.float64).mean())) == pytest.approx(ppl, rel=2e-4)


@pytest.mark.parametrize("arch", F32)
def test_routing_identical_to_llama_cpp(arch, runs):
    """Every token of every MoE layer goes to the experts llama.cpp picked, in its order (the
    last layer: only the output rows, which are all llama.cpp runs its FFN on)."""
    model, tokens, _, _ = runs(arch)
    ref = np.load(_fixture(f"tiny-{arch}-routing.npz"))
    ours = S.expert_routing(model, S.Weights(model, act_round=True), _chunks(model, tokens),
                            batch=2)
    cfg = family(model.arch).config(model)
    moe_layers = [il for il in range(cfg.n_layer) if il >= getattr(cfg, "n_dense", 0)]
    assert sorted(ours) == moe_layers == sorted(int(k[5:]) for k in ref if k.startswith("layer"))
    for il in moe_layers:
        first = int(ref[f"first{il}"])
        np.testing.assert_array_equal(ours[il][:, first:], ref[f"layer{il}"], err_msg=str(il))


@pytest.mark.parametrize("arch", sorted(QUANT))
def test_expert_matmuls_round_activations(arch, runs, tiny_model):
    """qwen3moe-quant holds qwen3moe's experts as q8_0 / q4_0 / q5_0, gpt-oss-mxfp4 gpt-oss's
    as mxfp4 (as the real model ships them): llama.cpp's ggml_mul_mat_id rounds each routed row
    to q8_0 first. With the rounding emulated our log-probs land on llama.cpp's own
    (tiny-<arch>.kld) 2-3 times closer, and the KLD and PPL against the f32 variant on
    llama-perplexity's figures (gpt-oss-mxfp4: 7 of its 768 routed rows go elsewhere in
    llama.cpp, near-ties under the rounding's noise, hence the wider PPL tolerance)."""
    base_arch, gain, ppl_tol = QUANT[arch]
    tokens, ref = E.read_llama_kld_base(_fixture(f"tiny-{arch}.kld"))
    model = objectives.open_gguf(tiny_model(arch))
    above = ref > ref.max(-1, keepdims=True) - 15.9
    med = {}
    for on in (False, True):
        lq = E.log_probs(model, S.Weights(model, act_round=on), tokens.astype(np.int32), batch=2)
        med[on] = float(np.median(np.abs(lq - ref)[above]))
    assert med[True] < med[False] / gain
    want = _stats()[f"kld_tiny-{arch}_vs_tiny-{base_arch}"]
    base = runs(base_arch)[2]  # llama.cpp's log-probs of the unquantized model
    _, targets = E.scored(tokens)
    nll, kld, _ = E.kl_stats(base, lq, targets)
    assert float(np.mean(kld)) == pytest.approx(want["kld_mean"], rel=3e-2)
    assert float(np.exp(np.mean(np.asarray(nll, np.float64)))) == pytest.approx(want["ppl"],
                                                                                  rel=ppl_tol)


# ---- routing: our selection against a plain numpy version of ggml's ---------------------------

def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e * np.float32(1.0 / e.sum(-1, dtype=np.float64, keepdims=True))


def _ggml_route(logits, gating, k, bias=None, groups=0, used=0, norm=False, scale=0.0):
    """build_moe_ffn's selection in numpy float32: softmax (scaled by 1/sum), sigmoid or the
    logits (softmax_weight), + bias, groups scored by their two best, ggml_argsort_top_k =
    std::sort descending (for <= 16 experts an insertion sort: equal scores keep the lower
    expert first); softmax_weight: the softmax of the k picked logits."""
    x = logits.astype(np.float32)
    if gating == "softmax":
        p = _softmax(x)
    elif gating == "softmax_weight":
        p = x
    else:
        p = np.float32(1) / (np.float32(1) + np.exp(-x))
    sel = p + bias if bias is not None else p.copy()
    desc = lambda v: sorted(range(len(v)), key=lambda j: -v[j])  # noqa: E731 (stable)
    ids = []
    for n in range(len(sel)):
        s = sel[n].copy()
        if groups > 1:
            g = s.reshape(groups, -1)
            score = [g[i][desc(g[i])[0]] + g[i][desc(g[i])[1]] for i in range(groups)]
            keep = set(desc(score)[:used])
            s = np.where(np.repeat([i in keep for i in range(groups)], g.shape[1]), s, -np.inf)
        ids.append(desc(s)[:k])
    ids = np.array(ids)
    w = np.take_along_axis(p, ids, -1)
    if gating == "softmax_weight":
        w = _softmax(w)
    if norm:
        w = w / np.maximum(w.sum(-1, keepdims=True), np.float32(6.103515625e-5))
    if scale not in (0.0, 1.0):
        w = w * np.float32(scale)
    return ids, w


ROUTINGS = {
    "qwen3moe": (_moe.Routing("softmax", 4, norm=True), 16, False),
    "deepseek-v3": (_moe.Routing("sigmoid", 8, 8, 4, norm=True, scale=2.5), 64, True),
    "deepseek-v2": (_moe.Routing("softmax", 6), 16, False),
    "gpt-oss": (_moe.Routing("softmax_weight", 4), 32, False),
}


@pytest.mark.parametrize("kind", sorted(ROUTINGS))
def test_routing_equals_ggml_selection_with_ties(kind):
    r, n_exp, with_bias = ROUTINGS[kind]
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((64, n_exp)).astype(np.float32)
    logits[:16] = np.round(logits[:16] * 2) / 2  # many exact ties inside a row
    logits[16:24] = 0.25  # every expert tied
    logits[24:32, n_exp // 2:] = logits[24:32, :n_exp // 2]  # two halves tied (groups too)
    bias = (0.1 * rng.standard_normal(n_exp)).astype(np.float32) if with_bias else None
    if bias is not None:
        bias[n_exp // 2:] = bias[:n_exp // 2]
    ids, w = _moe.route(r, jnp.asarray(logits), None if bias is None else jnp.asarray(bias))
    want_ids, want_w = _ggml_route(logits, r.gating, r.n_used, bias, r.n_groups,
                                   r.n_group_used, r.norm, r.scale)
    np.testing.assert_array_equal(np.asarray(ids), want_ids)
    np.testing.assert_allclose(np.asarray(w), want_w, rtol=2e-6)


def test_unsupported_gating_is_refused():
    with pytest.raises(UserError, match="expert_gating_func 4"):
        _moe.gating_name(4)


# ---- expert slices -----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["qwen3moe", "deepseek2", "gpt-oss"])
def test_sliced_experts_give_identical_logits(arch, runs):
    """3 experts at a time (the last slice padded) equals all at once, bit for bit; only the
    slices are read (gpt-oss: the experts' biases stay whole), and new weights recompile
    nothing."""
    model, tokens, _, whole = runs(arch)
    seen = []

    class Recording(S.Weights):
        def get(self, name):
            seen.append(name)
            return super().get(name)

    w = Recording(model, act_round=True, expert_slice=3)
    sliced = E.log_probs(model, w, _chunks(model, tokens), batch=2)
    np.testing.assert_array_equal(sliced, whole)
    assert seen and not [n for n in seen if "_exps.weight" in n]
    traces = dict(S.TRACES)
    name = "blk.1.ffn_down_exps.weight"
    noisy = {name: model.f32(name) * np.float32(1.01)}
    again = E.log_probs(model, S.Weights(model, noisy, act_round=True, expert_slice=3),
                        _chunks(model, tokens), batch=2)
    assert dict(S.TRACES) == traces and not np.array_equal(again, whole)


def test_automatic_slice_size(tiny_model, monkeypatch):
    model = objectives.open_gguf(tiny_model("qwen3moe"))
    fam = family(model.arch)
    cfg = fam.config(model)
    per = sum(4 * model.tensors[n].n_elements for n in fam.expert_names(cfg, 0)) // 16
    assert S.expert_slice(fam, cfg, model, S.Weights(model), 0) is None  # fits: whole layer
    monkeypatch.setattr(S, "EXPERT_LAYER_BYTES", 5 * per)
    assert S.expert_slice(fam, cfg, model, S.Weights(model), 0) == 5
    assert S.expert_slice(fam, cfg, model, S.Weights(model, expert_slice=16), 0) is None


def test_recipe_slices_equal_whole_fake_quant(tiny_model):
    """A recipe's experts fake-quantized slice by slice (per-expert imatrix rows) are the
    whole tensor's fake quantization."""
    model = objectives.open_gguf(tiny_model("qwen3moe"))
    name = "blk.0.ffn_up_exps.weight"
    im = np.random.default_rng(0).uniform(0.5, 2.0, (16, 64)).astype(np.float32)
    w = S.Weights(model, recipe={name: "q4_0"}, imatrix={name: im})
    whole = np.asarray(quant.fake_quant(model.f32(name), "q4_0", im))
    np.testing.assert_array_equal(np.asarray(w.get_experts(name, 5, 9)), whole[5:9])


# ---- imatrix and llama-quantize ------------------------------------------------------------

@pytest.mark.parametrize("arch", ["qwen3moe", "deepseek2", "gpt-oss",
                                  pytest.param("glm4moe", marks=pytest.mark.heavy)])
def test_expert_imatrix_matches_llama_imatrix(arch, tiny_model):
    """llama-imatrix -c 64 --chunks 4 on the tiny text: the same entries, the same counts (one
    per expert for *_exps: every routed row counted where llama.cpp routed it), sums within
    f32 noise (each within 2e-3, or 1e-3 of its row's mean where that is over 1: in gpt-oss'
    layer 0 expert 8 gets one routed row, and a sum 80 times below its row's mean keeps the
    forward's 0.3% noise of that one input); attn_k_b / attn_v_b as one row of per-head sums."""
    ref = read_imatrix(_fixture(f"imatrix-tiny-{arch}.gguf"))
    model = objectives.open_gguf(tiny_model(arch))
    toks = E.corpus_tokens(model, __import__("_tiny_gguf").corpus_text())
    ours = collect(model, E.make_chunks(toks, 64, 4, E.bos_id(model)), batch=2).imatrix
    assert sorted(ours.sums) == sorted(ref.sums)
    for n in ref.sums:
        assert ours.sums[n].shape == ref.sums[n].shape, n
        assert ours.counts[n].tolist() == ref.counts[n].tolist(), n
        row = np.maximum(np.abs(ref.sums[n]).mean(-1, keepdims=True), 1.0)
        np.testing.assert_allclose(ours.sums[n] / row, ref.sums[n] / row, rtol=2e-3, atol=1e-3,
                                   err_msg=n)
    e = "blk.1.ffn_down_exps.weight"
    assert len(ref.counts[e]) == model.tensors[e].shape[0] and ref.counts[e].min() < \
        ref.counts[e].max()


@pytest.mark.parametrize("arch", F32)
def test_moe_tensors_quantized_as_llama_quantize_does(arch, tiny_model):
    """llama-quantize --pure --imatrix Q4_0: it quantizes exactly our quantizable tensors
    (not ffn_gate_inp, exp_probs_b, norms, gpt-oss' attn_sinks and biases, the 2-D expert
    biases included) and our kernels write its bytes of the 3-D tensors with their per-expert
    (and per-head: attn_k_b, attn_v_b) imatrix rows."""
    want = _stats()["q4_0_pure_imatrix"][arch]
    model = objectives.open_gguf(tiny_model(arch))
    quantized = {n for n, v in want.items() if v["type"] != model.tensors[n].qtype.name}
    assert {t.name for t in model.quantizable("mainline")} == quantized
    assert {t.name for t in model.quantizable("ik")} == quantized
    im = read_imatrix(_fixture(f"imatrix-tiny-{arch}.gguf")).for_quantizer(model)
    for n in sorted(n for n in quantized if len(model.tensors[n].shape) == 3):
        q = quant.quantize(model.f32(n), want[n]["type"], im.get(n))
        assert hashlib.sha256(q.tobytes()).hexdigest() == want[n]["sha256"], n


def test_mla_tensors_are_quantized_except_for_glm5_next():
    """llama-quantize keeps attn_kv_a_mqa / attn_k_b / attn_v_b unquantized for glm5-next only."""
    ne = (128, 512, 128)
    assert objectives.is_quantizable("blk.0.attn_k_b.weight", ne, "mainline", "deepseek2")
    assert not objectives.is_quantizable("blk.0.attn_k_b.weight", ne, "mainline", "glm5-next")
    assert not objectives.is_quantizable("blk.0.ffn_gate_inp.weight", (7168, 256), "ik")
