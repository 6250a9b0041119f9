"""Importance matrices: the legacy ``.dat`` format (ik reads only this) and the GGUF imatrix
(mainline's default), read and written as llama-imatrix does (spec section 4).

    Imatrix.sums[name]    f64 [n_mat, ne0]  raw sums of squared activations (n_mat experts, 1 if dense)
    Imatrix.counts[name]  i64 [n_mat]       activation rows accumulated per matrix
    Imatrix.mean(name)    f32 [n_mat*ne0]   what llama-quantize hands the quantizer: sums/counts,
                                            1.0 for experts that saw no token
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quant import UserError


class ImatrixError(UserError):
    pass


@dataclass
class Imatrix:
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    chunk_count: int = 0
    chunk_size: int = 512
    datasets: list[str] = field(default_factory=list)

    def mean(self, name: str) -> np.ndarray:
        s, c = self.sums[name], self.counts[name].astype(np.float64)
        m = np.where(c[:, None] > 0, s / np.maximum(c, 1)[:, None], 1.0)
        return m.astype(np.float32).reshape(-1)

    def for_quantizer(self, model=None) -> dict[str, np.ndarray]:
        """Per tensor the values llama-quantize passes (2-D: [ne0]; experts: [n_mat, ne0]).
        A legacy .dat entry holds experts as one flat vector: ``model`` gives their ne0."""
        out = {}
        for n in self.sums:
            m = self.mean(n)
            ne0 = model.tensors[n].ne[0] if model is not None and n in model.tensors else None
            rows = len(self.counts[n]) if len(self.counts[n]) > 1 else \
                (len(m) // ne0 if ne0 and len(m) > ne0 else 1)
            out[n] = m if rows == 1 else m.reshape(rows, -1)
        return out


def read_imatrix(path: str | Path) -> Imatrix:
    path = Path(path)
    if not path.is_file():
        raise ImatrixError(f"{path}: no such imatrix file")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_gguf(path) if magic == b"GGUF" else _read_dat(path)


def _read_gguf(path: Path) -> Imatrix:
    from ._gguf import open_gguf

    m = open_gguf(path)
    if m.meta.get("general.type") != "imatrix":
        raise ImatrixError(f"{path}: a GGUF file but not an imatrix (general.type is "
                           f"{m.meta.get('general.type')!r})")
    im = Imatrix(chunk_count=int(m.meta.get("imatrix.chunk_count", 0)),
                 chunk_size=int(m.meta.get("imatrix.chunk_size", 512)),
                 datasets=list(m.meta.get("imatrix.datasets", [])))
    for name in m.tensors:
        if name.endswith(".in_sum2"):
            base = name.removesuffix(".in_sum2")
            im.sums[base] = m.f32(name).astype(np.float64).reshape(-1, m.tensors[name].ne[0])
            im.counts[base] = m.f32(base + ".counts").astype(np.int64).reshape(-1)
    return im


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ImatrixError(f"{self.path}: truncated imatrix file")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ImatrixError(f"{self.path}: truncated or corrupt imatrix file")
        self.pos += n
        return self.data[self.pos - n:self.pos]


def _read_dat(path: Path) -> Imatrix:
    r = _Reader(path.read_bytes(), path)
    (n,) = r.take("<i")
    if not 0 < n < 1 << 20:
        raise ImatrixError(f"{path}: not an imatrix (.dat or GGUF) file")
    im = Imatrix()
    for _ in range(n):
        name = r.bytes(r.take("<i")[0]).decode("utf-8", errors="replace")
        ncall, nval = r.take("<ii")
        vals = np.frombuffer(r.bytes(4 * nval), np.float32).astype(np.float64)
        # values = mean * ncall; keep them as sums over ncall "rows" so mean() gives them back
        im.sums[name] = vals.reshape(1, -1)
        im.counts[name] = np.array([max(ncall, 1)] if ncall > 0 else [1], np.int64)
    if r.pos + 4 <= len(r.data):
        (im.chunk_count,) = r.take("<i")
        if r.pos + 4 <= len(r.data):
            im.datasets = [r.bytes(r.take("<i")[0]).decode("utf-8", errors="replace")]
    return im


def _dat_values(sums: np.ndarray, counts: np.ndarray, ncall: int) -> np.ndarray:
    """mainline's legacy writer, in float32: (sum/count)*ncall, 1*ncall where count is 0."""
    v = sums.astype(np.float32)
    c = np.broadcast_to(counts.astype(np.float32)[:, None], v.shape)
    v, c = np.where(c == 0, np.float32(1), v), np.where(c == 0, np.float32(1), c)
    return ((v / c) * np.float32(ncall)).astype(np.float32).reshape(-1)


def write_dat(im: Imatrix, path: str | Path) -> Path:
    """Legacy format: per entry name, ncall, nval, mean*ncall (ncall = chunks seen)."""
    path = Path(path)
    out = [struct.pack("<i", len(im.sums))]
    ncall = max(im.chunk_count, 1)
    for name in sorted(im.sums):
        vals = _dat_values(im.sums[name], im.counts[name], ncall)
        b = name.encode()
        out += [struct.pack("<i", len(b)), b, struct.pack("<ii", ncall, len(vals)), vals.tobytes()]
    ds = (im.datasets[0] if im.datasets else "").encode()
    out += [struct.pack("<i", im.chunk_count), struct.pack("<i", len(ds)), ds]
    path.write_bytes(b"".join(out))
    return path


def write_gguf(im: Imatrix, path: str | Path) -> Path:
    """GGUF imatrix as mainline writes it: ``NAME.in_sum2`` ggml [ne0, n_mat] raw sums and
    ``NAME.counts`` [1, n_mat] (trailing 1-dims dropped, so dense entries are [ne0] and [1])."""
    import gguf

    path = Path(path)
    w = gguf.GGUFWriter(path, arch="imatrix")
    w.kv_data[0].pop("general.architecture", None)  # mainline's file has no architecture key
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", im.datasets or ["unknown"])
    w.add_uint32("imatrix.chunk_count", im.chunk_count)
    w.add_uint32("imatrix.chunk_size", im.chunk_size)
    for name in sorted(im.sums):
        sums = im.sums[name].astype(np.float32)
        w.add_tensor(name + ".in_sum2", sums.reshape(-1) if len(sums) == 1 else sums)
        counts = im.counts[name].astype(np.float32)
        w.add_tensor(name + ".counts", counts if len(counts) == 1 else counts.reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
