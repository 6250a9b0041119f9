"""Parity with llama-perplexity on real llama-quantize files (issue 5 acceptance).

fixtures/parity/llama-kld-20chunks.json holds what mainline llama-perplexity printed for five
files quantized by llama-quantize from the F32 base (= the default model's dequantized values)
with fixtures/refs/imatrix-calib40.gguf, on the first 20 chunks of 512 tokens of the eval
corpus, plus each file's per-tensor types (read back from the files) and the exact commands.
Our evaluation fake-quantizes the default model with the same types and imatrix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import objectives
from objectives import _corpus

PARITY = Path(__file__).parent / "fixtures" / "parity"


def _fixture() -> dict:
    return json.loads((PARITY / "llama-kld-20chunks.json").read_text())


def test_fixture_recipes_cover_the_model(smollm2):
    fx = _fixture()
    names = {t.name for t in smollm2.quantizable("mainline")}
    for file, entry in fx["files"].items():
        assert set(entry["types"]) == names, file


@pytest.fixture(scope="module")
def parity_run(smollm2, tmp_path_factory):
    """Our figures for every fixture file, evaluated once for the module."""
    fx = _fixture()
    im = objectives.read_imatrix(PARITY.parent / "refs" / "imatrix-calib40.gguf").for_quantizer()
    toks = objectives.corpus_tokens(smollm2, _corpus.default_corpus("eval"))
    cache = tmp_path_factory.mktemp("parity-base")
    ours = {f: objectives.evaluate(smollm2, recipe=e["types"], imatrix=im, tokens=toks,
                                   ctx=fx["ctx"], n_chunks=fx["chunks"], base_cache=cache)
            for f, e in fx["files"].items()}
    return fx, ours


@pytest.mark.heavy
def test_base_ppl_matches_llama_perplexity(parity_run):
    fx, ours = parity_run
    for r in ours.values():
        assert r["ppl_base"] == pytest.approx(fx["base_ppl"], rel=2e-3)


@pytest.mark.heavy
def test_kld_within_10_percent_of_llama_perplexity(parity_run):
    fx, ours = parity_run
    for file, entry in fx["files"].items():
        ratio = ours[file]["kld_mean"] / entry["llama"]["kld_mean"]
        assert 0.9 < ratio < 1.1, f"{file}: ours {ours[file]['kld_mean']:.6f}, ratio {ratio:.3f}"


@pytest.mark.heavy
def test_kld_ranking_matches_llama_perplexity(parity_run):
    fx, ours = parity_run
    files = list(fx["files"])
    theirs = sorted(files, key=lambda f: fx["files"][f]["llama"]["kld_mean"])
    assert sorted(files, key=lambda f: ours[f]["kld_mean"]) == theirs
