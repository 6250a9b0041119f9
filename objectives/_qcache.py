"""Quantize each (tensor, type) once per study: packed bytes in memory and on disk.

    packed(name, type)  uint8 [R, row_bytes]  quant.quantize of the tensor's float32 values, or
                                              the stored bytes when ``type`` is the stored type
                                              (llama-quantize copies such a tensor, both projects)
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
import math
from pathlib import Path

import ml_dtypes
import numpy as np

import quant

from ._gguf import GGUFModel
from ._version import tool_version

_ERROR_SLICE = 1 << 20  # weights per slice of error()
ROW_SLICE_BYTES = 64 << 20  # float32 bytes of a stored-quantized tensor's rows read at once
_FLOAT_VIEWS = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": ml_dtypes.bfloat16}


def row_slices(n_rows: int, ne0: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``ROW_SLICE_BYTES`` of float32 values each."""
    step = max(1, ROW_SLICE_BYTES // (4 * ne0))
    return [(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]


def imatrix_sha(imatrix: dict[str, np.ndarray] | None) -> str:
    if not imatrix:
        return "none"
    h = hashlib.sha256()
    for name in sorted(imatrix):
        h.update(name.encode())
        h.update(np.ascontiguousarray(imatrix[name], np.float32).tobytes())
    return h.hexdigest()[:16]


SLICE_BYTES = 1 << 30  # float32 bytes of experts quantized at once


class QuantCache:
    def __init__(self, model: GGUFModel, target: str,
                 imatrix: dict[str, np.ndarray] | None = None,
                 cache_dir: str | Path | None = None):
        self.model, self.target, self.imatrix = model, target, imatrix or {}
        key = json.dumps([model.identity()["sha256_header_and_heads"], target,
                          imatrix_sha(imatrix), tool_version()])
        self.dir = Path(cache_dir) / hashlib.sha256(key.encode()).hexdigest()[:16] \
            if cache_dir else None
        self._mem: dict[tuple[str, str], np.ndarray] = {}

    def _path(self, name: str, type_: str) -> Path | None:
        return self.dir / f"{name}.{type_}.npy" if self.dir else None

    def packed(self, name: str, type_: str, keep: bool = True) -> np.ndarray:
        """``keep=False`` (writing a file): not held in memory; a disk entry is memory-mapped."""
        key = (name, type_)
        if key in self._mem:
            return self._mem[key]
        if not keep:
            return self._load_or_quantize(name, type_, mmap_mode="r")
        self._mem[key] = self._load_or_quantize(name, type_)
        return self._mem[key]

    def _load_or_quantize(self, name: str, type_: str, mmap_mode: str | None = None) -> np.ndarray:
        if type_ == self.model.tensors[name].qtype.name:
            # llama-quantize: "quantize = cur_type != new_type"; the file keeps these bytes
            return self.model.raw(name)
        path = self._path(name, type_)
        if path is not None and path.is_file():
            return np.load(path, mmap_mode=mmap_mode)
        q = self._quantize(name, type_)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{id(q)}.tmp.npy")
            np.save(tmp, q)
            tmp.replace(path)
        return q

    def _quantize(self, name: str, type_: str) -> np.ndarray:
        """The tensor's bytes; a 3-D tensor of experts is read and quantized a slice at a time
        (rows are independent: the bytes are the whole tensor's)."""
        t, im = self.model.tensors[name], self.imatrix.get(name)
        if len(t.shape) != 3 and t.qtype.name not in _FLOAT_VIEWS \
                and 4 * t.n_elements > ROW_SLICE_BYTES:
            return self._quantize_rows(name, type_, im)
        if len(t.shape) != 3 or 4 * t.n_elements <= SLICE_BYTES:
            return quant.quantize(self._source(name), type_, im, self.target)
        step = max(1, SLICE_BYTES // (4 * t.n_elements // t.shape[0]))
        parts = []
        for e0 in range(0, t.shape[0], step):
            e1 = min(e0 + step, t.shape[0])
            w = im if im is None or np.size(im) == t.shape[-1] else \
                np.asarray(im).reshape(t.shape[0], -1)[e0:e1]
            parts.append(quant.quantize(self.model.f32_experts(name, e0, e1), type_, w,
                                        self.target))
        return np.concatenate(parts)

    def _quantize_rows(self, name: str, type_: str, im) -> np.ndarray:
        """A stored-quantized matrix dequantized and quantized a slice of rows at a time (rows
        are independent: the bytes are the whole tensor's; no float32 copy of all of it)."""
        shape = self.model.tensors[name].shape
        ne0, n_rows = shape[-1], math.prod(shape[:-1])
        out = np.empty((n_rows, quant.get_type(type_).row_nbytes(ne0)), np.uint8)
        for a, b in row_slices(n_rows, ne0):
            out[a:b] = quant.quantize(self.model.f32_rows(name, a, b), type_, im, self.target)
        return out

    def value_rows(self, name: str, type_: str, a: int, b: int) -> np.ndarray:
        """Float32 rows a..b-1 of the tensor's [n_rows, ne0] view at ``type_``."""
        ne0 = self.model.tensors[name].shape[-1]
        return quant.dequantize(self._stored(name, type_)[a:b], type_, (b - a, ne0),
                                self.target)

    def expert_values(self, name: str, type_: str, e0: int, e1: int) -> np.ndarray:
        """Float32 values of experts e0..e1-1 of a 3-D tensor at ``type_`` (only those rows
        are dequantized).  # [e1-e0, ne1, ne0]"""
        shape = self.model.tensors[name].shape
        rows = self._stored(name, type_)[e0 * shape[1]:e1 * shape[1]]
        return quant.dequantize(rows, type_, (e1 - e0, *shape[1:]), self.target)

    def _source(self, name: str) -> np.ndarray:
        """The tensor's values, numpy shape: a zero-copy view of the file's rows when it stores
        floats (quant converts them slice by slice: no float32 copy of a whole 27B embedding),
        else its float32 dequantization."""
        t = self.model.tensors[name]
        view = _FLOAT_VIEWS.get(t.qtype.name)
        if view is None:
            return self.model.f32(name)
        return self.model.raw(name).view(view).reshape(t.shape)

    def drop(self, name: str) -> None:
        """Forget the packed bytes of ``name`` held in memory (the disk copy stays)."""
        for key in [k for k in self._mem if k[0] == name]:
            del self._mem[key]

    def _stored(self, name: str, type_: str) -> np.ndarray:
        """Packed bytes for dequantization: memory-mapped from disk when there is a cache
        folder, so a study's trials do not accumulate every type of every tensor in memory."""
        return self.packed(name, type_, keep=self.dir is None)

    def values(self, name: str, type_: str) -> np.ndarray:
        shape = self.model.tensors[name].shape
        return quant.dequantize(self._stored(name, type_), type_, shape, self.target)

    def error(self, name: str, type_: str, qw: np.ndarray | None = None) -> float:
        """``qw`` weights the columns when the imatrix has no entry for this tensor (the
        output head's inputs, which llama-imatrix does not collect for tied embeddings). An
        imatrix of one row per expert weights each expert's rows by its own row."""
        t = self.model.tensors[name]
        qw = self.imatrix.get(name, qw)
        ne0, n_rows = t.shape[-1], math.prod(t.shape[:-1])
        groups = 1 if qw is None or np.size(qw) == ne0 else t.shape[0]
        per = n_rows // groups
        q, col = self.packed(name, type_, keep=False), np.zeros((groups, ne0))
        step = max(1, _ERROR_SLICE // ne0)  # rows at a time: float64 temporaries bounded
        a = 0
        while a < n_rows:
            b = min(a + step, (a // per + 1) * per)  # a slice never crosses an expert
            part = self.model.f32_rows(name, a, b)
            d = (part - quant.dequantize(q[a:b], type_, part.shape, self.target)).astype(
                np.float64)
            col[a // per] += (d * d).sum(axis=0)
            a = b
        w = np.ones_like(col) if qw is None else np.asarray(qw, np.float64).reshape(groups, ne0)
        return float((col * w).sum())
