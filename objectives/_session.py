"""An evaluation session: one model, one tokenized corpus, base statistics computed once;
candidate recipes evaluated on any subset of chunks (the study's stages).

    EvalSession(model, tokens, ctx, n_chunks, target, imatrix, cache_dir)
      .run(plan, chunk_ids)  -> list of per-chunk token statistics (nll, kld, same_top, base nll)
      .chunk_kld(stat)       -> that chunk's mean KLD (the value the pruner compares)
      .summarize(stats)      -> llama-perplexity's figures over the chunks evaluated
      .evaluate(plan)        -> summarize(run(plan, all chunks))

Weights of a recipe come from the QuantCache (each tensor quantized once per type), so a trial
costs dequantization and the streamed forward only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ._eval import (BaseStats, base_stats, bos_id, make_chunks, summarize, token_metrics)
from ._gguf import GGUFModel
from ._models._stream import Weights
from ._qcache import QuantCache


MEMO_LIMIT = 4 << 30  # keep a whole dequantized model in memory below this many f32 bytes


class CachedWeights(Weights):
    """Weights whose recipe tensors come from a QuantCache instead of fake_quant calls; small
    models keep every dequantized tensor, so the stages of one trial dequantize once."""

    def __init__(self, model, recipe, cache: QuantCache, act_round=True):
        super().__init__(model, recipe=recipe, act_round=act_round, target=cache.target)
        self.cache = cache
        self.keep_all = 4 * model.n_elements < MEMO_LIMIT

    def _load(self, name: str):
        x = self.cache.values(name, self.recipe[name]) if name in self.recipe \
            else self.model.f32(name)
        if self.keep_all:
            self._memo[name] = x
        return x

    def get_experts(self, name: str, e0: int, e1: int):
        if name in self.recipe and name not in self.override:
            return self.cache.expert_values(name, self.recipe[name], e0, e1)
        return super().get_experts(name, e0, e1)


@dataclass
class ChunkStats:
    chunk: int
    nll: np.ndarray  # [S] negative log-likelihood of the target under the candidate
    nll_base: np.ndarray  # [S] same under the base model
    kld: np.ndarray  # [S] KLD(base || candidate)
    same_top: np.ndarray  # [S] bool


class EvalSession:
    def __init__(self, model: GGUFModel, tokens: np.ndarray, ctx: int = 512,
                 n_chunks: int | None = None, target: str = "mainline",
                 imatrix: dict[str, np.ndarray] | None = None,
                 cache_dir: str | Path | None = None, batch: int = 4,
                 act_round: bool = True, progress=None) -> None:
        self.model, self.batch, self.act_round = model, batch, act_round
        self.chunks = make_chunks(tokens, ctx, n_chunks, bos_id(model))
        self.n_chunks = len(self.chunks)
        self.S = ctx - 1 - ctx // 2
        base_dir = Path(cache_dir) / "base" if cache_dir else None
        self.base = base_stats(model, self.chunks, base_dir, batch, progress=progress)
        self.cache = QuantCache(model, target, imatrix, Path(cache_dir) / "quant" if cache_dir
                                else None)
        self._last: CachedWeights | None = None
        self._last_plan: dict[str, str] = {}

    def _base_of(self, ids: Sequence[int]) -> BaseStats:
        rows = np.concatenate([np.arange(c * self.S, (c + 1) * self.S) for c in ids])
        return BaseStats(self.base.hidden[rows], self.base.tgt_logp[rows], self.base.argmax[rows])

    def weights(self, plan: dict[str, str]) -> CachedWeights:
        """The plan's weights; the last plan's are reused (the stages of one trial)."""
        if self._last is None or self._last_plan != plan:
            self._last = CachedWeights(self.model, plan, self.cache, self.act_round)
            self._last_plan = dict(plan)
        return self._last

    def release(self) -> None:
        """Drop the last plan's weights (the next ``run`` loads its plan again)."""
        self._last = None

    def run(self, plan: dict[str, str], chunk_ids: Sequence[int]) -> list[ChunkStats]:
        ids = list(chunk_ids)
        base = self._base_of(ids)
        w = self.weights(plan)
        tm = token_metrics(self.model, w, self.chunks[ids], base, self.batch, True)
        out = []
        for i, c in enumerate(ids):
            s = slice(i * self.S, (i + 1) * self.S)
            out.append(ChunkStats(c, tm["nll"][s], -base.tgt_logp[s], tm["kld"][s],
                                  tm["argmax"][s] == base.argmax[s]))
        return out

    def chunk_kld(self, stat: ChunkStats) -> float:
        return float(np.mean(stat.kld))

    def summarize(self, stats: list[ChunkStats]) -> dict[str, float]:
        cat = lambda f: np.concatenate([getattr(s, f) for s in stats])  # noqa: E731
        return summarize(cat("nll"), cat("nll_base"), cat("kld"), cat("same_top"))

    def evaluate(self, plan: dict[str, str]) -> dict[str, float]:
        return self.summarize(self.run(plan, range(self.n_chunks)))
