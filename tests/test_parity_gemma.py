"""Parity with llama-perplexity on Gemma 3 270M (issue 13): our evaluation of each llama.cpp
file's recipe against what mainline llama-perplexity printed for the file itself.

fixtures/gemma3/llama-kld.json (see its README.md): --kl-divergence figures on the first 20
(and 2) chunks of 512 tokens of the eval corpus, against the F32 dequantization of the shipped
Q4_K_M file, for that shipped file and four llama-quantize mixes made from the F32 file with
fixtures/gemma3/imatrix-calib40.gguf; each file's per-tensor types read back from it. Our base
is the shipped file's own values, i.e. the same F32 weights; our Q is the shipped model
fake-quantized with each file's types and the same imatrix (the shipped file: its own values,
with llama.cpp's activation rounding for its types).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import objectives
from objectives import _corpus

GEMMA = Path(__file__).parent / "fixtures" / "gemma3"
CHUNKS = 20
SHIPPED = "shipped-Q4_K_M"


def _fixture() -> dict:
    return json.loads((GEMMA / "llama-kld.json").read_text())


def evaluate_files(model, n_chunks: int, cache, names=None) -> dict:
    """Our figures for the fixture's files on the first n_chunks of the eval corpus."""
    fx = _fixture()
    im = objectives.read_imatrix(GEMMA / "imatrix-calib40.gguf").for_quantizer()
    toks = objectives.corpus_tokens(model, _corpus.default_corpus("eval"))
    out = {}
    for name in names or fx["files"]:
        recipe = None if name == SHIPPED else fx["files"][name]["types"]
        out[name] = objectives.evaluate(model, recipe=recipe, imatrix=im, tokens=toks,
                                        ctx=fx["ctx"], n_chunks=n_chunks, base_cache=cache)
    return out


@pytest.fixture(scope="module")
def parity_run(gemma3, tmp_path_factory):
    ours = evaluate_files(gemma3, CHUNKS, tmp_path_factory.mktemp("gemma-base"))
    fx = _fixture()
    return {f: e["llama"][str(CHUNKS)] for f, e in fx["files"].items()}, ours


@pytest.mark.heavy
def test_base_ppl_within_0p2_percent(parity_run):
    theirs, ours = parity_run
    for file, r in ours.items():
        assert r["ppl_base"] == pytest.approx(theirs[file]["ppl_base"], rel=2e-3), file


@pytest.mark.heavy
def test_ppl_within_0p2_percent(parity_run):
    theirs, ours = parity_run
    for file, r in ours.items():
        assert r["ppl"] == pytest.approx(theirs[file]["ppl"], rel=2e-3), file


@pytest.mark.heavy
def test_kld_within_3_percent(parity_run):
    theirs, ours = parity_run
    for file, r in ours.items():
        ratio = r["kld_mean"] / theirs[file]["kld_mean"]
        assert 0.97 < ratio < 1.03, f"{file}: ours {r['kld_mean']:.6f}, ratio {ratio:.4f}"


@pytest.mark.heavy
def test_same_top_p_and_rms_dp_agree(parity_run):
    theirs, ours = parity_run
    for file, r in ours.items():
        assert abs(r["same_top_p"] - theirs[file]["same_top_p"]) < 0.01, file
        assert r["rms_dp"] == pytest.approx(theirs[file]["rms_dp"], rel=0.03), file


@pytest.mark.heavy
def test_kld_ranking_matches(parity_run):
    theirs, ours = parity_run
    files = list(theirs)
    assert sorted(files, key=lambda f: ours[f]["kld_mean"]) == \
        sorted(files, key=lambda f: theirs[f]["kld_mean"])
