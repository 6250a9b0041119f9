"""Quantize each (tensor, type) once per study: packed bytes in memory and on disk.

    packed(name, type)  uint8 [R, row_bytes]  quant.quantize of the tensor's float32 values
    values(name, type)  f32, tensor shape     quant.dequantize of the packed bytes (jitted)
    error(name, type)   float                 sum_j qw_j * sum_rows (W - Q(W))_rj^2: the output
                                              error energy E||(W - Q(W)) x||^2 for activations of
                                              mean square qw (1 without an imatrix)

A trial then costs one dequantization per tensor, never a quantizer search. Disk entries are
keyed by model identity, target, imatrix hash and tool version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

import quant

from ._gguf import GGUFModel


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf-recipe-search")
    except PackageNotFoundError:
        return "0"


def imatrix_sha(imatrix: dict[str, np.ndarray] | None) -> str:
    if not imatrix:
        return "none"
    h = hashlib.sha256()
    for name in sorted(imatrix):
        h.update(name.encode())
        h.update(np.ascontiguousarray(imatrix[name], np.float32).tobytes())
    return h.hexdigest()[:16]


class QuantCache:
    def __init__(self, model: GGUFModel, target: str,
                 imatrix: dict[str, np.ndarray] | None = None, cache_dir: str | Path | None = None):
        self.model, self.target, self.imatrix = model, target, imatrix or {}
        key = json.dumps([model.identity()["sha256_header_and_heads"], target,
                          imatrix_sha(imatrix), _version()])
        self.dir = Path(cache_dir) / hashlib.sha256(key.encode()).hexdigest()[:16] \
            if cache_dir else None
        self._mem: dict[tuple[str, str], np.ndarray] = {}

    def _path(self, name: str, type_: str) -> Path | None:
        return self.dir / f"{name}.{type_}.npy" if self.dir else None

    def packed(self, name: str, type_: str) -> np.ndarray:
        key = (name, type_)
        if key not in self._mem:
            self._mem[key] = self._load_or_quantize(name, type_)
        return self._mem[key]

    def _load_or_quantize(self, name: str, type_: str) -> np.ndarray:
        path = self._path(name, type_)
        if path is not None and path.is_file():
            return np.load(path)
        q = quant.quantize(self.model.f32(name), type_, self.imatrix.get(name), self.target)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{id(q)}.tmp.npy")
            np.save(tmp, q)
            tmp.replace(path)
        return q

    def values(self, name: str, type_: str) -> np.ndarray:
        shape = self.model.tensors[name].shape
        return quant.dequantize(self.packed(name, type_), type_, shape, self.target)

    def error(self, name: str, type_: str, qw: np.ndarray | None = None) -> float:
        """``qw`` weights the columns when the imatrix has no entry for this tensor (the
        output head's inputs, which llama-imatrix does not collect for tied embeddings)."""
        w = self.model.f32(name)
        d = (w - self.values(name, type_)).astype(np.float64)
        qw = self.imatrix.get(name, qw)
        col = (d * d).reshape(-1, w.shape[-1]).sum(axis=0)
        return float(col @ (np.asarray(qw, np.float64) if qw is not None else np.ones_like(col)))
