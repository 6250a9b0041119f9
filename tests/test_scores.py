"""Importance scores: imatrix files and collection, layer similarity, tensor importance,
measured sensitivity, ``search score``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import objectives
from objectives import _eval as E
from objectives._imatrix import Imatrix, read_imatrix, write_dat, write_gguf
from objectives._models import family
from objectives._qcache import QuantCache
from objectives._score_measure import RUNS
from objectives._scores import (collect, default_groups, measure_sensitivity, similarity_rows,
                                tensor_importance, written_types)

REFS = Path(__file__).parent / "fixtures" / "refs"


# ---- imatrix files -------------------------------------------------------------------------

def test_gguf_writer_reproduces_mainline_file_bytes(tmp_path):
    ref = REFS / "imatrix-calib40.gguf"
    im = read_imatrix(ref)
    assert len(im.sums) == 210 and im.chunk_count == 40 and im.chunk_size == 512
    assert im.counts["blk.0.attn_q.weight"].tolist() == [40 * 512]
    out = write_gguf(im, tmp_path / "x.gguf")
    assert out.read_bytes() == ref.read_bytes()
    small = REFS / "imatrix-calib2.gguf"  # another run (2 chunks, another dataset path)
    assert write_gguf(read_imatrix(small), tmp_path / "y.gguf").read_bytes() == small.read_bytes()


def test_dat_layout_by_hand(tmp_path):
    im = Imatrix(sums={"blk.0.a.weight": np.array([[2.0, 4.0]]),
                       "blk.0.e.weight": np.array([[1.0, 3.0], [5.0, 7.0]])},
                 counts={"blk.0.a.weight": np.array([2]), "blk.0.e.weight": np.array([1, 0])},
                 chunk_count=3, datasets=["c.txt"])
    raw = write_dat(im, tmp_path / "x.dat").read_bytes()
    assert struct.unpack_from("<i", raw)[0] == 2
    name_len = struct.unpack_from("<i", raw, 4)[0]
    assert raw[8:8 + name_len] == b"blk.0.a.weight"
    pos = 8 + name_len
    assert struct.unpack_from("<ii2f", raw, pos) == (3, 2, 3.0, 6.0)  # mean * ncall
    pos += 16 + 4 + len(b"blk.0.e.weight")
    # expert 1 saw no token: stored as 1 * ncall (mainline's legacy writer)
    assert struct.unpack_from("<ii4f", raw, pos) == (3, 4, 3.0, 9.0, 3.0, 3.0)
    assert raw[-13:] == struct.pack("<ii", 3, 5) + b"c.txt"
    back = read_imatrix(tmp_path / "x.dat")
    np.testing.assert_array_equal(back.mean("blk.0.a.weight"), [1.0, 2.0])
    assert back.chunk_count == 3 and back.datasets == ["c.txt"]


def test_dat_keeps_the_reference_means(tmp_path):
    ref = read_imatrix(REFS / "imatrix-calib40.gguf")
    back = read_imatrix(write_dat(ref, tmp_path / "x.dat"))
    for name in ref.sums:
        np.testing.assert_allclose(back.mean(name), ref.mean(name), rtol=2e-7)


# ---- collection on a tiny model ------------------------------------------------------------

def _tokens(n=400, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n).astype(np.int32)


def _normed_embedding(model, chunks):
    """Layer 0's first matmul input, by hand: rms_norm(embedding) * attn_norm (numpy, f64)."""
    x = model.f32("token_embd.weight")[chunks].astype(np.float64)
    eps = family(model.arch).config(model).eps
    x = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)
    return x * model.f32("blk.0.attn_norm.weight")


def test_imatrix_sums_squared_matmul_inputs(tiny_model):
    model = objectives.open_gguf(tiny_model("llama-quant"))
    chunks = E.make_chunks(_tokens(), ctx=32, n_chunks=3)
    im = collect(model, chunks, batch=2).imatrix  # the last batch is padded: must not count
    n0 = _normed_embedding(model, chunks)
    want = (n0 * n0).reshape(-1, n0.shape[-1]).sum(0)
    for role in ("attn_q", "attn_k", "attn_v"):
        np.testing.assert_allclose(im.sums[f"blk.0.{role}.weight"][0], want, rtol=2e-5)
    assert {im.counts[n][0] for n in im.counts} == {3 * 32}
    assert len(im.sums) == 2 * 7 and "token_embd.weight" not in im.sums
    one = collect(model, chunks, batch=1).imatrix  # no padding; padded rows would add 1/3
    for n in im.sums:  # batch shape changes f16 KV roundings: up to 1.5e-4 apart
        np.testing.assert_allclose(im.sums[n], one.sums[n], rtol=1e-3)
    np.testing.assert_allclose(im.sums["blk.1.ffn_gate.weight"], im.sums["blk.1.ffn_up.weight"])


def _cos(a, b):
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def _numpy_qwen2_inputs(path, chunks):
    """A plain float64 numpy forward of the tiny qwen2 model, read with gguf-py's own reader:
    per layer the inputs of every matmul ({role: [N, T, n_in]}), then output.weight's input.
    llama.cpp's qwen2 graph: rms_norm * w, q/k/v with bias, NEOX rope, causal softmax attention
    (Q, K, V rounded to f16 as the CPU's f16 KV cache does), residual, SwiGLU, residual."""
    import gguf
    from _tiny_gguf import HD, HKV, N_LAYER

    t = {x.name: np.asarray(x.data, np.float64) for x in gguf.GGUFReader(path).tensors}
    eps, n_head = 1e-5, t["blk.0.attn_q.weight"].shape[0] // HD

    def norm(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w

    def rope(x):  # [N, T, H, HD], pairs (i, i + HD/2); ggml's float32 angle recurrence
        half, scale = HD // 2, np.float32(10000.0) ** np.float32(-2.0 / HD)
        theta = np.empty((x.shape[1], half), np.float32)
        theta[:, 0] = np.arange(x.shape[1])
        for i in range(1, half):
            theta[:, i] = theta[:, i - 1] * scale
        c, s_ = np.cos(theta)[None, :, None], np.sin(theta)[None, :, None]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * c - b * s_, a * s_ + b * c], -1)

    f16 = lambda x: x.astype(np.float16).astype(np.float64)  # noqa: E731
    h = t["token_embd.weight"][chunks]
    n, n_tok = chunks.shape
    causal = np.tril(np.ones((n_tok, n_tok), bool))
    layers = []
    for il in range(N_LAYER):
        w = lambda r: t[f"blk.{il}.{r}.weight"]  # noqa: B023,E731
        bias = lambda r: t[f"blk.{il}.{r}.bias"]  # noqa: B023,E731
        a = norm(h, w("attn_norm"))
        q = (a @ w("attn_q").T + bias("attn_q")).reshape(n, n_tok, n_head, HD)
        k = (a @ w("attn_k").T + bias("attn_k")).reshape(n, n_tok, HKV, HD)
        v = (a @ w("attn_v").T + bias("attn_v")).reshape(n, n_tok, HKV, HD)
        q, k, v = f16(rope(q)), f16(rope(k)), f16(v)
        k, v = (np.repeat(u, n_head // HKV, axis=2) for u in (k, v))
        sc = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(HD)
        sc = np.where(causal, sc, -np.inf)
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        o = np.einsum("nhqk,nkhd->nqhd", pr / pr.sum(-1, keepdims=True), v)
        o = o.reshape(n, n_tok, n_head * HD)
        h = h + o @ w("attn_output").T
        f = norm(h, w("ffn_norm"))
        gate, up = f @ w("ffn_gate").T, f @ w("ffn_up").T
        m = gate / (1 + np.exp(-gate)) * up
        h = h + m @ w("ffn_down").T
        layers.append({"attn_q": a, "attn_k": a, "attn_v": a, "attn_output": o,
                       "ffn_gate": f, "ffn_up": f, "ffn_down": m})
    return layers, norm(h, t["output_norm.weight"])


@pytest.fixture(scope="module")
def qwen2_collected(tiny_model):
    """(ours, the numpy reference) on the tiny untied qwen2 model, 3 chunks of 32."""
    path = tiny_model("qwen2")
    model = objectives.open_gguf(path)
    chunks = E.make_chunks(_tokens(300, 1), ctx=32, n_chunks=3)
    return collect(model, chunks, batch=2), _numpy_qwen2_inputs(path, chunks), chunks


def test_layer_similarity_matches_a_numpy_forward(qwen2_collected):
    """ik's three lists (spec 5.1) from an independent float64 forward: the mean over all
    tokens of cos(a_L, a_L+1), cos(a_L, f_L), cos(f_L, a_L+1), a = first matmul's input of a
    layer (output.weight's for the last), f = the first ffn_ matmul's."""
    ours, (layers, last), _ = qwen2_collected
    sim = ours.similarity
    a = [lay["attn_q"] for lay in layers] + [last]
    want = {"layer": [_cos(a[i], a[i + 1]).mean() for i in range(len(layers))],
            "attn": [_cos(lay["attn_q"], lay["ffn_gate"]).mean() for lay in layers],
            "ffn": [_cos(layers[i]["ffn_gate"], a[i + 1]).mean() for i in range(len(layers))]}
    for kind, values in want.items():
        assert sorted(sim[kind]) == list(range(len(layers))), kind
        for il, v in enumerate(values):
            assert sim[kind][il] == pytest.approx(v, abs=2e-6), (kind, il)
    rows = similarity_rows(sim)
    assert [abs(r["layer_cos"]) for r in rows] == sorted(abs(r["layer_cos"]) for r in rows)
    assert set(rows[0]) == {"layer", "layer_cos", "attn_cos", "ffn_cos"}


def test_imatrix_sums_match_a_numpy_forward(qwen2_collected):
    """Every matmul's entry (spec 4.1): sum over all tokens of its f32 input squared. Inputs
    before the first f16 rounding agree to f32 precision; after it, a value that f32 and f64
    put on either side of an f16 rounding midpoint moves one V element by one f16 ulp (seen:
    1.8701 vs 1.8711, chunk 1 position 0), which later tokens see: 5e-4 at most here."""
    ours, (layers, _), chunks = qwen2_collected
    im = ours.imatrix
    assert len(im.sums) == 7 * len(layers)
    for il, lay in enumerate(layers):
        for role, x in lay.items():
            name = f"blk.{il}.{role}.weight"
            want = (x * x).reshape(-1, x.shape[-1]).sum(0)
            exact = il == 0 and role in ("attn_q", "attn_k", "attn_v")
            np.testing.assert_allclose(im.sums[name][0], want, rtol=2e-6 if exact else 1e-3,
                                       err_msg=name)
            assert im.counts[name].tolist() == [chunks.size]


def test_tied_model_has_no_last_layer_similarity(tiny_model):
    model = objectives.open_gguf(tiny_model("llama"))  # ik matches output.weight only
    sim = collect(model, E.make_chunks(_tokens(), ctx=32, n_chunks=2)).similarity
    assert sorted(sim["layer"]) == [0] and sorted(sim["attn"]) == [0, 1]


def test_short_chunks_are_refused(tiny_model):
    model = objectives.open_gguf(tiny_model("llama"))
    with pytest.raises(objectives._gguf.UserError, match="16 tokens"):
        collect(model, E.make_chunks(_tokens(), ctx=8, n_chunks=2))


# ---- tensor importance ---------------------------------------------------------------------

def test_tensor_importance_cosines(tiny_model):
    model = objectives.open_gguf(tiny_model("llama"))
    col = collect(model, E.make_chunks(_tokens(), ctx=32, n_chunks=2), sample_tokens=32)
    assert col.samples["token_embd.weight"].shape == (32, 64)  # the tied head's input
    assert col.samples["blk.0.attn_q.weight"] is col.samples["blk.0.attn_v.weight"]
    cache = QuantCache(model, "mainline", col.imatrix.for_quantizer())
    names = ("blk.1.ffn_down.weight", "blk.1.attn_q.weight")
    imp = tensor_importance(model, {n: col.samples[n] for n in names}, ["q4_0", "q8_0"], cache)
    name = names[0]
    x, w, q = col.samples[name], model.f32(name), cache.values(name, "q4_0")
    y, yq = x @ w.T, x @ q.T
    assert imp[name]["q4_0"]["cos"] == pytest.approx(_cos(y, yq).mean(), abs=1e-6)
    rel = np.linalg.norm(y - yq) / np.linalg.norm(y)
    assert imp[name]["q4_0"]["rel_err"] == pytest.approx(rel, rel=1e-4)
    qw = cache.imatrix[name].astype(np.float64)
    want = np.sqrt(((w - q) ** 2 * qw).sum() / ((w * w) * qw).sum())
    assert imp[name]["q4_0"]["imatrix_err"] == pytest.approx(want, rel=1e-6)
    for row in imp.values():
        assert row["q8_0"]["rel_err"] < row["q4_0"]["rel_err"]
        assert row["q8_0"]["cos"] > row["q4_0"]["cos"]
    # 64 columns: q5_K is written as q5_1 by mainline llama-quantize (spec 3.3)
    assert written_types(model, names[1], ["q5_K", "q8_0"], "mainline") == {"q5_K": "q5_1",
                                                                           "q8_0": "q8_0"}


# ---- measured sensitivity ------------------------------------------------------------------

GROUPS = {"ffn_down@0": ["blk.0.ffn_down.weight"], "attn_v@1": ["blk.1.attn_v.weight"],
          "token_embd": ["token_embd.weight"]}


def test_streamed_sensitivity_equals_measuring_from_scratch(tiny_model, tmp_path):
    model = objectives.open_gguf(tiny_model("llama"))
    toks = _tokens(500, 2)
    kw = dict(ctx=32, n_chunks=3, batch=2, cache_dir=tmp_path)
    before = dict(RUNS)
    sens = measure_sensitivity(model, GROUPS, ["q4_0", "q8_0"], toks, **kw)
    assert RUNS["prefix"] == before.get("prefix", 0) + 1
    cache = QuantCache(model, "mainline")
    for g, names in GROUPS.items():
        for t in ("q4_0", "q8_0"):
            w = {n: cache.values(n, t) for n in names}
            ref = E.evaluate(model, weights=w, tokens=toks, ctx=32, n_chunks=3, batch=2,
                             act_round=False)["kld_mean"]
            assert sens[g][t] == pytest.approx(ref, rel=1e-6, abs=1e-12)
        assert sens[g]["q4_0"] > sens[g]["q8_0"] > 0
    after = dict(RUNS)
    again = measure_sensitivity(model, GROUPS, ["q4_0", "q8_0"], toks, **kw)
    assert again == sens and dict(RUNS) == after  # read from the file: no forward pass
    stored = json.loads(next(tmp_path.glob("sensitivity-*.json")).read_text())
    assert stored["key"]["model"] and stored["key"]["corpus"] and stored["key"]["tool"]
    other = measure_sensitivity(model, GROUPS, ["q8_0"], toks, target="ik", **kw)
    assert RUNS["prefix"] == after["prefix"] + 1 and set(other) == set(GROUPS)


def test_default_groups_cover_quantizable_tensors(tiny_model):
    model = objectives.open_gguf(tiny_model("qwen2"))
    g = default_groups(model)
    assert g["ffn_down@1"] == ["blk.1.ffn_down.weight"] and g["output"] == ["output.weight"]
    assert "output_norm" not in g and all(len(v) == 1 for v in g.values())


# ---- search score --------------------------------------------------------------------------

def test_search_score_cli(tiny_model, tmp_path, capsys):
    from search._cli import main

    text = tmp_path / "calib.txt"
    rng = np.random.default_rng(3)
    text.write_text(" ".join("".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(1, 8)))
                             for _ in range(900)))
    out = tmp_path / "out"
    rc = main(["score", str(tiny_model("llama")), "-f", str(text), "--ctx", "32", "--chunks",
               "3", "--measure", "--measure-chunks", "2", "--types", "q4_0,q8_0", "--out",
               str(out), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert read_imatrix(res["imatrix_dat"]).chunk_count == 3
    assert read_imatrix(res["imatrix_gguf"]).counts["blk.0.attn_q.weight"].tolist() == [96]
    assert {r["layer"] for r in res["layer_similarity"]} == {0, 1}
    assert set(res["layer_similarity"][0]) == {"layer", "layer_cos", "attn_cos", "ffn_cos"}
    assert set(res["spearman"]) == {"1-cos", "rel_err", "imatrix_err", "1-layer_cos"}
    assert Path(res["plot_html"]).read_text().count("<rect") > 10
    scores = json.loads((out / "scores.json").read_text())
    assert scores["sensitivity"]["ffn_down@1"]["q4_0"] > scores["sensitivity"]["ffn_down@1"]["q8_0"]
    assert main(["score", str(tiny_model("llama")), "--types", "nope"]) == 2


# ---- SmolLM2 against llama.cpp (2 chunks in the default run; 40 chunks heavy) --------------

@pytest.fixture(scope="module")
def smollm2_calib2(smollm2):
    toks = E.corpus_tokens(smollm2, objectives.read_corpus(None, "calib"))
    return collect(smollm2, E.make_chunks(toks, 512, 2, E.bos_id(smollm2)))


def test_smollm2_imatrix_matches_mainline_2_chunks(smollm2_calib2):
    """mainline llama-imatrix on the F32 base, first 2 chunks of calib (refs/README): per
    tensor |ours - theirs| / |theirs| of the mean squared inputs, measured median 1.7e-5,
    max 2.5e-4 (blk.20.attn_output)."""
    path = REFS / "imatrix-calib2.gguf"
    if not path.is_file():
        pytest.skip(f"fixture tests/fixtures/refs/{path.name} missing (see its README)")
    ref = read_imatrix(path)
    ours = smollm2_calib2.imatrix
    assert ref.chunk_count == 2 and sorted(ours.sums) == sorted(ref.sums)
    d = np.array([np.linalg.norm(ours.mean(n) - ref.mean(n)) / np.linalg.norm(ref.mean(n))
                  for n in ref.sums])
    assert np.median(d) <= 1e-4 and d.max() <= 1e-3, (np.median(d), d.max())
    assert all(ours.counts[n].tolist() == ref.counts[n].tolist() for n in ref.sums)


@pytest.fixture(scope="module")
def smollm2_calib40(smollm2):
    toks = E.corpus_tokens(smollm2, objectives.read_corpus(None, "calib"))
    return collect(smollm2, E.make_chunks(toks, 512, 40, E.bos_id(smollm2)))


@pytest.mark.heavy
def test_smollm2_imatrix_matches_mainline(smollm2_calib40):
    ref = read_imatrix(REFS / "imatrix-calib40.gguf")
    ours = smollm2_calib40.imatrix
    assert sorted(ours.sums) == sorted(ref.sums)
    d = np.array([np.linalg.norm(ours.mean(n) - ref.mean(n)) / np.linalg.norm(ref.mean(n))
                  for n in ref.sums])
    assert np.median(d) <= 0.005 and d.max() <= 0.05
    assert all(ours.counts[n].tolist() == ref.counts[n].tolist() for n in ref.sums)


@pytest.mark.heavy
def test_smollm2_layer_similarity_matches_ik(smollm2_calib40):
    ref = json.loads((REFS / "layer-similarity-calib40.json").read_text())
    sim = smollm2_calib40.similarity
    for kind in ("layer", "attn", "ffn"):
        assert sorted(sim[kind]) == sorted(int(k) for k in ref[kind])
        for k, v in ref[kind].items():
            assert sim[kind][int(k)] == pytest.approx(v, abs=1e-3)


def test_dat_experts_reshaped_with_the_model(tmp_path):
    class Info:
        ne = (2, 3, 4)

    class Model:
        tensors = {"blk.0.ffn_up_exps.weight": Info()}

    im = Imatrix(sums={"blk.0.ffn_up_exps.weight": np.arange(1.0, 9.0).reshape(4, 2)},
                 counts={"blk.0.ffn_up_exps.weight": np.array([1, 1, 2, 0])}, chunk_count=1)
    back = read_imatrix(write_dat(im, tmp_path / "e.dat"))  # one flat entry of 8 values
    assert back.for_quantizer()["blk.0.ffn_up_exps.weight"].shape == (8,)
    qw = back.for_quantizer(Model())["blk.0.ffn_up_exps.weight"]
    np.testing.assert_array_equal(qw, [[1, 2], [3, 4], [2.5, 3], [1, 1]])
    np.testing.assert_array_equal(im.for_quantizer()["blk.0.ffn_up_exps.weight"], qw)


def test_tensor_importance_in_slices_of_rows_equals_the_whole(tiny_model, monkeypatch):
    """Slices of 5 rows (the last padded with zero rows) give the whole tensor's figures."""
    from objectives import _qcache

    model = objectives.open_gguf(tiny_model("llama"))
    col = collect(model, E.make_chunks(_tokens(), ctx=32, n_chunks=2), sample_tokens=32)
    cache = QuantCache(model, "mainline", col.imatrix.for_quantizer())
    names = ("token_embd.weight", "blk.1.ffn_down.weight")
    args = ({n: col.samples[n] for n in names}, ["q4_0", "q6_K"], cache)
    whole = tensor_importance(model, *args)
    monkeypatch.setattr(_qcache, "ROW_SLICE_BYTES", 5 * 4 * 64)
    sliced = tensor_importance(model, *args)
    for n in names:
        for t in ("q4_0", "q6_K"):
            for k in ("cos", "rel_err", "imatrix_err"):
                assert sliced[n][t][k] == pytest.approx(whole[n][t][k], rel=1e-5), (n, t, k)
