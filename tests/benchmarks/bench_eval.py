"""Benchmark: streaming evaluation of the default model (SmolLM2-135M) on the bundled corpus.

Run: pytest tests/benchmarks/bench_eval.py -m bench -s   (BENCH_CHUNKS=N, default 8, ctx 512)
Prints the base pass (forward + base statistics), a warm trial (fake weights: new values, no
recompile) and tokens/s; with ``LLAMA_BIN`` naming a folder of llama.cpp binaries, llama-perplexity
runs on the same model, text and chunk count in the same run and the ratio is printed.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import objectives
from objectives import _corpus
from objectives import _eval as E
from objectives._models import _stream as S


@pytest.mark.bench
def test_bench_eval(tmp_path):
    n = int(os.environ.get("BENCH_CHUNKS", "8"))
    model = objectives.open_gguf(objectives.default_model_path())
    toks = E.corpus_tokens(model, _corpus.default_corpus("eval"))
    t0 = time.perf_counter()
    E.evaluate(model, tokens=toks, n_chunks=n, base_cache=tmp_path)
    t1 = time.perf_counter()
    name = "blk.0.ffn_down.weight"
    noisy = model.f32(name) * np.float32(1.01)
    traces = dict(S.TRACES)
    r = E.evaluate(model, weights={name: noisy}, tokens=toks, n_chunks=n, base_cache=tmp_path,
                   act_round=True)
    t2 = time.perf_counter()
    assert dict(S.TRACES) == traces
    n_tok = n * 512
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nchunks {n} x 512 = {n_tok} tokens; first call (base + trial, compiles) "
          f"{t1 - t0:.1f} s; "
          f"warm trial {t2 - t1:.1f} s = {n_tok / (t2 - t1):.0f} tok/s; peak RSS {rss:.0f} MiB; "
          f"ppl {r['ppl']:.4f} base {r['ppl_base']:.4f} kld {r['kld_mean']:.6f}")
    ref = _llama_perplexity_tok_s(model.paths[0], _corpus.corpus_path("eval"), n)
    if ref:
        print(f"llama-perplexity: {ref:.0f} tok/s; ours / llama.cpp = {n_tok / (t2 - t1) / ref:.3f}")


def _llama_perplexity_tok_s(model_path, text, n_chunks: int) -> float | None:
    """Tokens/s of llama-perplexity (-nr: no repacking) on the same model and chunks."""
    b = os.environ.get("LLAMA_BIN")
    if not b:
        print("LLAMA_BIN not set: no llama-perplexity reference in this run")
        return None
    cmd = [str(Path(b) / "llama-perplexity"), "-m", str(model_path), "-f", str(text), "-c", "512",
           "--chunks", str(n_chunks), "-nr", "-t", str(os.cpu_count())]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "LD_LIBRARY_PATH": b})
    return n_chunks * 512 / (time.perf_counter() - t)
