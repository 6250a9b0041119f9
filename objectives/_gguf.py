"""GGUF reader: single and split files, memory-mapped, ik-only type ids included.

We parse the header and tensor infos ourselves (``gguf`` 0.19's ``GGUFReader`` raises on the
type ids that only ik_llama.cpp knows) and keep the data as zero-copy memmap views. Shapes use
the numpy convention (``shape[-1]`` = ne0, the row); ``TensorInfo.ne`` keeps ggml's order.
Float32 values are produced lazily, tensor by tensor (``GGUFModel.f32(name)``).
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quant import QuantType, UserError, tensor_nbytes, type_by_id

_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)\.(weight|bias)$")
_LAYER_PREFIX_RE = re.compile(r"^blk\.(\d+)\.")
_IK_ONLY_IDS = {31, 32, 33, 36} | set(range(97, 100)) | set(range(133, 160)) | set(range(200, 400))


_NEVER = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d", "attn_rel_b.weight")
_NEVER_EXACT = ("position_embd.weight", "token_types.weight")
_NEVER_BY_TARGET = {
    "mainline": ("ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
                 "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
                 *(f"time_mix_{k}.weight" for k in ("first", "w0", "w1", "w2", "v0", "v1", "v2",
                   "a0", "a1", "a2", "g1", "g2", "decay_w1", "decay_w2", "lerp_fused")),
                 ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_",
                 ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd"),
    "ik": ("ssm_x.weight", "ssm_dt.weight"),
}
_NEVER_BY_ARCH = {  # mainline only (llama-quant.cpp, tensor_allows_quantization)
    "glm5-next": ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj",
                  "indexer_compressor_gate", "indexer_compressor_ape", "ssm_f_a.weight",
                  "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight", "ssm_beta.weight",
                  "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight"),
}
_INT_TYPES = ("i8", "i16", "i32", "i64")


class GGUFError(UserError):
    pass


def layer_of(name: str) -> int | None:
    """The layer number of a ``blk.N.*`` tensor name, else None (the one layer rule)."""
    m = _LAYER_PREFIX_RE.match(name)
    return int(m.group(1)) if m else None


def ggml_n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    return 1 + max((i for i, n in enumerate(ne) if n > 1), default=0)


def is_quantizable(name: str, ne: tuple[int, ...], target: str, arch: str | None = None) -> bool:
    """Whether llama-quantize of ``target`` quantizes this tensor (spec section 3.1, default flags;
    ``arch`` adds mainline's per-architecture exclusions)."""
    if not name.endswith("weight") or ggml_n_dims(ne) < 2 or name in _NEVER_EXACT:
        return False
    never = _NEVER + _NEVER_BY_TARGET[target]
    if target == "mainline" and arch in _NEVER_BY_ARCH:
        never += _NEVER_BY_ARCH[arch]
    return not any(s in name for s in never)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: where its bytes are and what llama-quantize would call it."""

    name: str
    ne: tuple[int, ...]  # ggml order: ne0 (row length) first
    qtype: QuantType
    split: int
    offset: int  # absolute byte offset in its split file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:  # numpy order: (..., ne1, ne0)
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)

    @property
    def layer(self) -> int | None:
        return layer_of(self.name) if _LAYER_RE.match(self.name) else None

    @property
    def role(self) -> str:
        """attn_q, ffn_down_exps, token_embd, output_norm, ... (name without layer and suffix)."""
        m = _LAYER_RE.match(self.name)
        return m.group(2) if m else self.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Hparams:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_expert: int
    n_vocab: int


class _Cursor:
    def __init__(self, buf: np.memmap, path: Path) -> None:
        self.mv, self.pos, self.path = memoryview(buf), 0, path

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.mv):
            raise GGUFError(f"{self.path}: truncated GGUF header: re-download or re-convert the file")

    def take(self, n: int) -> bytes:
        self._need(n)
        out = self.mv[self.pos:self.pos + n].tobytes()
        self.pos += n
        return out

    def scalar(self, vtype: int) -> Any:
        fmt = _SCALARS.get(vtype)
        if fmt is None:
            raise GGUFError(f"{self.path}: unknown GGUF value type {vtype}: the file is corrupt")
        size = struct.calcsize(fmt)
        self._need(size)
        value = struct.unpack_from(fmt, self.mv, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.scalar(10)
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.scalar(4), self.scalar(10)
            return [self.value(itype) for _ in range(n)]
        return self.scalar(vtype)


def _array_value(cur: _Cursor, vtype: int) -> Any:
    """Numeric arrays (token scores, types) are read in one go; the rest value by value."""
    if vtype != _ARRAY:
        return cur.value(vtype)
    itype, n = cur.scalar(4), cur.scalar(10)
    if itype in _SCALARS and itype != 7:
        dt = np.dtype(_SCALARS[itype])
        arr = np.frombuffer(cur.take(n * dt.itemsize), dtype=dt)
        return arr
    return [cur.value(itype) for _ in range(n)]


def _parse_split(path: Path, index: int) -> tuple[dict[str, Any], list[TensorInfo], np.memmap, int]:
    if not path.is_file():
        raise GGUFError(f"{path}: no such file: give the path of a .gguf model")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(buf, path)
    if len(buf) < 24 or cur.take(4) != _MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (bad magic): give a .gguf model file")
    version, n_tensors, n_kv = cur.scalar(4), cur.scalar(10), cur.scalar(10)
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3 expected)")
    meta = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = _array_value(cur, cur.scalar(4))
    infos = [_tensor_info(cur, index) for _ in range(n_tensors)]
    align = int(meta.get("general.alignment", 32))
    data_start = -(-cur.pos // align) * align
    infos = [_place(t, data_start) for t in infos]
    _check_complete(path, buf, infos)
    return meta, infos, buf, data_start


def _tensor_info(cur: _Cursor, index: int) -> TensorInfo:
    name = cur.string()
    ne = tuple(cur.scalar(10) for _ in range(cur.scalar(4)))
    type_id, offset = cur.scalar(4), cur.scalar(10)
    qtype = _type_of(type_id, name, cur.path)
    return TensorInfo(name, ne, qtype, index, offset, tensor_nbytes(qtype, tuple(reversed(ne))))


def _type_of(type_id: int, name: str, path: Path) -> QuantType:
    target = "ik" if type_id in _IK_ONLY_IDS else "mainline"
    try:
        return type_by_id(type_id, target)
    except UserError:
        raise GGUFError(f"{path}: tensor {name} has ggml type id {type_id}, which this tool does "
                        "not know (a repacked _rN type? requantize it to its base type)") from None


def _place(t: TensorInfo, data_start: int) -> TensorInfo:
    return TensorInfo(t.name, t.ne, t.qtype, t.split, data_start + t.offset, t.nbytes)


def _check_complete(path: Path, buf: np.memmap, infos: list[TensorInfo]) -> None:
    end = max((t.offset + t.nbytes for t in infos), default=0)
    if end > len(buf):
        raise GGUFError(f"{path}: truncated: the tensors need {end} bytes but the file has "
                        f"{len(buf)}: re-download or re-convert it")


def split_paths(path: Path, meta: dict[str, Any]) -> list[Path]:
    """All files of a split model, from the first file and its ``split.count``."""
    count = int(meta.get("split.count", 1))
    if count <= 1:
        return [path]
    m = _SPLIT_RE.search(path.name)
    if m is None:
        raise GGUFError(f"{path}: split.count is {count} but the name is not NAME-00001-of-"
                        f"{count:05d}.gguf: rename the files as llama-gguf-split wrote them")
    stem = path.name[: m.start()]
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


@dataclass
class GGUFModel:
    """A memory-mapped GGUF model (all splits)."""

    paths: list[Path]
    meta: dict[str, Any]
    tensors: dict[str, TensorInfo]
    _bufs: list[np.memmap] = field(repr=False)
    _headers: list[int] = field(repr=False)

    @property
    def arch(self) -> str:
        return str(self.meta.get("general.architecture", "unknown"))

    @property
    def tied_embeddings(self) -> bool:
        return "output.weight" not in self.tensors and "token_embd.weight" in self.tensors

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    def quantizable(self, target: str = "mainline") -> list[TensorInfo]:
        """Tensors llama-quantize of ``target`` would quantize, in file order."""
        return [t for t in self.tensors.values()
                if t.qtype.name not in _INT_TYPES
                and is_quantizable(t.name, t.ne, target, self.arch)]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def hparams(self) -> Hparams:
        a = self.arch
        get = lambda k, d=0: _scalar(self.meta.get(f"{a}.{k}", d))  # noqa: E731
        n_head = get("attention.head_count", 1)
        vocab = self.meta.get("tokenizer.ggml.tokens")
        return Hparams(a, get("block_count"), get("embedding_length"), get("feed_forward_length"),
                       n_head, get("attention.head_count_kv", n_head) or n_head, get("expert_count"),
                       len(vocab) if vocab is not None else get("vocab_size"))

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of one tensor, uint8 [n_rows, row_bytes] (zero-copy)."""
        t = self.tensors[name]
        data = self._bufs[t.split][t.offset:t.offset + t.nbytes]
        n_rows = math.prod(t.shape[:-1])
        return data.reshape(n_rows, t.nbytes // max(n_rows, 1))

    def f32(self, name: str) -> np.ndarray:
        """The tensor as float32, numpy shape ``TensorInfo.shape``."""
        from quant import dequantize

        t = self.tensors[name]
        return np.asarray(dequantize(self.raw(name), t.qtype.name, t.shape), dtype=np.float32)

    def f32_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of the tensor's [n_rows, ne0] view as float32 (only those rows
        are read and dequantized)."""
        from quant import dequantize

        t = self.tensors[name]
        rows = self.raw(name)[start:stop]
        return np.asarray(dequantize(rows, t.qtype.name, (len(rows), t.shape[-1])),
                          dtype=np.float32)

    def f32_experts(self, name: str, start: int, stop: int) -> np.ndarray:
        """Experts start..stop-1 of a 3-D tensor as float32 [stop-start, ne1, ne0] (only their
        rows are read and dequantized)."""
        from quant import dequantize

        t = self.tensors[name]
        per = math.prod(t.shape[1:-1])
        rows = self.raw(name)[start * per:stop * per]
        return np.asarray(dequantize(rows, t.qtype.name, (stop - start, *t.shape[1:])),
                          dtype=np.float32)

    def identity(self) -> dict[str, Any]:
        """Base-model identity: name, arch, sizes and a sha256 over every split's header
        (metadata and tensor infos) plus the first 64 KiB of each tensor's data."""
        h = hashlib.sha256()
        for buf, start in zip(self._bufs, self._headers):
            h.update(memoryview(buf[:start]))
        for t in sorted(self.tensors.values(), key=lambda t: t.name):
            h.update(memoryview(self._bufs[t.split][t.offset:t.offset + min(t.nbytes, 65536)]))
        return {"name": str(self.meta.get("general.name", self.paths[0].stem)), "arch": self.arch,
                "file": self.paths[0].name, "n_elements": self.n_elements, "bytes": self.nbytes,
                "sha256_header_and_heads": h.hexdigest()}


def _scalar(v: Any) -> int:
    if isinstance(v, (list, np.ndarray)):
        return int(max(v)) if len(v) else 0
    return int(v)


def open_gguf(path: str | Path) -> GGUFModel:
    """Open a GGUF model; for a split model give the first file (``-00001-of-0000N.gguf``)."""
    path = Path(path)
    meta, infos, buf, start = _parse_split(path, 0)
    bufs, headers, all_infos = [buf], [start], list(infos)
    for i, p in enumerate(split_paths(path, meta)[1:], start=1):
        _, more, b, s = _parse_split(p, i)
        bufs.append(b), headers.append(s), all_infos.extend(more)
    tensors = {t.name: t for t in all_infos}
    return GGUFModel([path] + split_paths(path, meta)[1:], meta, tensors, bufs, headers)
