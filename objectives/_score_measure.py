"""Measured sensitivity: the KLD one tensor group adds when it alone takes a type.

    measure_sensitivity(model, groups {group: [tensor names]}, types, tokens, ctx, n_chunks,
                        target, imatrix, cache_dir) -> {group: {type: delta KLD}}

delta(g, t) = mean KLD(base || model with g at t, rest at the file's values)
              - mean KLD(base || model with nothing changed)     (0 unless act_round)
over the scored tokens of the first ``n_chunks`` calibration chunks (llama-perplexity scoring).

Streaming: one base pass keeps the hidden state at every layer input ([n_layer + 1] x
[N, T, D]); a group whose first tensor sits in layer L restarts from the state at layer L and
recomputes layers L .. n_layer-1 and the head; ``token_embd`` restarts from the embedding.

Measurements live in one JSON file per key (hashes of model, chunks, imatrix, target, settings
and tool version) under ``cache_dir``, written after every group; a later run reads them and
runs no forward pass for what is stored. ``RUNS`` counts base passes and suffixes (tests).
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ._eval import _q_jit, base_stats, bos_id, make_chunks, scored
from ._models import family
from ._models._stream import Weights, _layer_jit, batches, embed, head_inputs
from ._qcache import QuantCache, imatrix_sha
from ._version import tool_version
from ._session import CachedWeights
from ._score_tensor import written_types

FORMAT = "gguf-recipe-sensitivity/1"
RUNS: collections.Counter = collections.Counter()


def measurement_key(model, chunks: np.ndarray, imatrix, target: str, act_round: bool,
                    f16_kv: bool) -> dict[str, str]:
    """The hashes a stored measurement must match to be reused."""
    corpus = hashlib.sha256(np.ascontiguousarray(chunks, np.int32).tobytes()).hexdigest()[:16]
    return {"model": model.identity()["sha256_header_and_heads"][:16], "corpus": corpus,
            "imatrix": imatrix_sha(imatrix), "target": target, "tool": tool_version(),
            "format": FORMAT, "settings": f"ctx{chunks.shape[1]}-n{len(chunks)}-"
            f"act{int(act_round)}-kv{'f16' if f16_kv else 'f32'}"}


def _store_path(cache_dir, key: dict) -> Path | None:
    if cache_dir is None:
        return None
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"sensitivity-{h}.json"


def _load(path: Path | None, key: dict) -> dict:
    if path is not None and path.is_file():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            return data
    return {"format": FORMAT, "key": key, "groups": {}}


def _save(path: Path | None, data: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


class Streamer:
    """Base hidden states at every layer input; KLD of a changed plan from its first layer."""

    def __init__(self, model, chunks, cache: QuantCache, act_round=False, f16_kv=True, batch=4,
                 base_dir=None):
        self.model, self.chunks, self.cache = model, chunks, cache
        self.act_round, self.f16_kv, self.batch = act_round, f16_kv, batch
        self.fam = family(model.arch)
        self.cfg = self.fam.config(model)
        self.base = base_stats(model, chunks, base_dir, batch, f16_kv)
        self.w = Weights(model, act_round=act_round)
        self.layers, self.states = self._prefix()
        self.floor = self._kld(self.states[-1], self.w)

    def _layer_args(self, il: int):
        rope, window = self.fam.layer_consts(self.cfg, self.model, il, self.chunks.shape[1])
        return jnp.asarray(rope), jnp.int32(window)

    def _prefix(self):
        RUNS["prefix"] += 1
        table = self.w.get("token_embd.weight")
        hs = [embed(self.cfg, table, b) for b in batches(self.chunks, self.batch)]
        layers, states = [], [hs]
        for il in range(self.cfg.n_layer):
            p = self.fam.load_layer(self.cfg, self.w.get, self.w.act, il)
            rope, window = self._layer_args(il)
            hs = [_layer_jit(self.fam, self.cfg, self.f16_kv, p, h, rope, window) for h in hs]
            layers.append(p)
            states.append(hs)
        return layers, states

    def _kld(self, hs, weights) -> float:
        cfg, head = head_inputs(self.model, weights)
        w_base = head_inputs(self.model, self.w)[1][1]
        first, targets = scored(self.chunks)
        per, out = self.batch * targets.shape[1], []
        for i, (h, t) in enumerate(zip(hs, batches(targets, self.batch))):
            hb = self.base.batch_hidden(i * per, (i + 1) * per, (self.batch, targets.shape[1]))
            out.append(np.asarray(_q_jit(cfg, first, head, w_base, h, jnp.asarray(t), hb)[1]))
        kld = np.concatenate([o.reshape(-1) for o in out])[:targets.size]
        return float(np.mean(kld.astype(np.float64)))

    def start_layer(self, names) -> int:
        """First layer whose output a change of these tensors alters (-1: the embedding)."""
        layers = [self.model.tensors[n].layer for n in names]
        if "token_embd.weight" in names:
            return -1
        return min([il for il in layers if il is not None], default=self.cfg.n_layer)

    def delta(self, plan: dict[str, str]) -> float:
        """KLD increase when the tensors of ``plan`` {name: written type} take those types."""
        RUNS["suffix"] += 1
        w = CachedWeights(self.model, plan, self.cache, self.act_round)
        start = self.start_layer(list(plan))
        if start < 0:
            hs = [embed(self.cfg, w.get("token_embd.weight"), b)
                  for b in batches(self.chunks, self.batch)]
            start = 0
        else:
            hs = self.states[start]
        changed = {self.model.tensors[n].layer for n in plan}
        for il in range(start, self.cfg.n_layer):
            p = self.fam.load_layer(self.cfg, w.get, w.act, il) if il in changed \
                else self.layers[il]
            rope, window = self._layer_args(il)
            hs = [_layer_jit(self.fam, self.cfg, self.f16_kv, p, h, rope, window) for h in hs]
        return self._kld(hs, w) - self.floor


def _plan(model, names, t: str, target: str) -> dict[str, str] | None:
    """{tensor: written type} for type t, or None when some tensor cannot take t."""
    plan = {n: written_types(model, n, [t], target).get(t) for n in names}
    return None if None in plan.values() else plan


def measure_sensitivity(model, groups: dict[str, list[str]], types, tokens, ctx: int = 512,
                        n_chunks: int = 4, target: str = "mainline", imatrix=None,
                        cache_dir=None, act_round: bool = False, f16_kv: bool = True,
                        batch: int = 4, progress=None) -> dict[str, dict[str, float]]:
    """delta KLD per group and type (types a group cannot take are left out); stored results
    under ``cache_dir`` are reused and new ones added."""
    chunks = make_chunks(tokens, ctx, n_chunks, bos_id(model))
    key = measurement_key(model, chunks, imatrix, target, act_round, f16_kv)
    path = _store_path(cache_dir, key)
    data = _load(path, key)
    todo = [(g, t) for g in groups for t in types if t not in data["groups"].get(g, {})]
    streamer, memo = None, {}
    for i, (g, t) in enumerate(todo):
        plan = _plan(model, groups[g], t, target)
        entry = None
        if plan is not None:
            pk = tuple(sorted(plan.items()))
            if pk not in memo:
                if streamer is None:
                    streamer = _streamer(model, chunks, imatrix, target, cache_dir, act_round,
                                         f16_kv, batch)
                memo[pk] = streamer.delta(plan)
            entry = memo[pk]
        data["groups"].setdefault(g, {})[t] = entry
        _save(path, data)
        if progress:
            progress("measure", i + 1, len(todo))
    return {g: {t: data["groups"][g][t] for t in types if data["groups"][g].get(t) is not None}
            for g in groups}


def _streamer(model, chunks, imatrix, target, cache_dir, act_round, f16_kv, batch) -> Streamer:
    qdir = Path(cache_dir) / "quant" if cache_dir else None
    cache = QuantCache(model, target, imatrix, qdir)
    base_dir = Path(cache_dir) / "base" if cache_dir else None
    return Streamer(model, chunks, cache, act_round, f16_kv, batch, base_dir)


def default_groups(model, target: str = "mainline", ties=()) -> dict[str, list[str]]:
    """One group per quantizable tensor role x layer (``role@layer``); roles of a tie share
    one group per layer; token_embd/output alone."""
    from ._gguf import is_quantizable

    groups: dict[str, list[str]] = {}
    for t in model.tensors.values():
        if not is_quantizable(t.name, t.ne, target):
            continue
        role = next(("+".join(tie) for tie in ties if t.role in tie), t.role)
        name = role if t.layer is None else f"{role}@{t.layer}"
        groups.setdefault(name, []).append(t.name)
    return groups

