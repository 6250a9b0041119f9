"""Write quantized GGUF files as llama-quantize does, and split / merge them as llama-gguf-split.

    write_quantized(model, types, packed, out_path, target, file_type, ...) -> [Path]
        types:  {tensor name: ggml type name}, written as given (resolve fallbacks first)
        packed: (name, type) -> uint8 [R, row_bytes] in ggml's on-disk layout (quant.quantize)
        progress("write", bytes done, bytes total) after each tensor
    split_gguf(path, out_prefix, split_max_size) -> [PREFIX-00001-of-0000N.gguf, ...]
    merge_gguf(first_split, out_path) -> out_path
    imatrix_metadata(path, imatrix) -> {"file", "dataset", "entries_count", "chunks_count"}
    raw_header(path) -> ([(key, raw KV bytes)], {tensor: stored type id})
    quantized_kvs(kvs, target, file_type, imatrix_meta) -> the KVs llama-quantize writes

File layout (ggml's gguf writer): magic, version 3, n_tensors u64, n_kv u64, the KVs, the tensor
infos (name, n_dims = ggml_n_dims, ne[n_dims] u64, type i32, offset u64 from the data start),
zero padding to ``general.alignment`` (default 32), then each tensor's bytes padded the same way.
Input KVs are copied as raw bytes (their GGUF value types kept). The new keys follow each
project's llama-quantize:

    mainline  gguf_set_* = remove + append: general.quantization_version (u32 2),
              general.file_type (u32), then quantize.imatrix.file / .dataset (str, at most 127
              bytes) / .entries_count / .chunks_count (u32; chunks only when > 0)
    ik        gguf_set_* updates in place (appends a new key): quantization_version, the imatrix
              keys (counts as i32), general.file_type last
    both      split.no / split.count / split.tensors.count of the input dropped

Tensor order: mainline llama-quantize writes its weights map, sorted by (layer or -1, name); ik
keeps the file order (``keep_order=True`` keeps the file order for mainline too). Shards: a new
file whenever the next tensor's padded bytes would pass ``split_max_size`` (metadata not counted);
the first file holds every KV, each file ends with split.no (u16), split.tensors.count (i32),
split.count (u16). Every file is written to a temporary name and renamed once all are complete;
at most one tensor's bytes are in memory at a time.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from quant import UserError, check_target, get_type

from ._gguf import _MAGIC, GGUFModel, _array_value, _Cursor, ggml_n_dims, layer_of, open_gguf

Packed = Callable[[str, str], np.ndarray]
Progress = Callable[[str, int, int], None]

QNT_VERSION = 2  # GGML_QNT_VERSION, both projects
DEFAULT_ALIGNMENT = 32
_U16, _U32, _I32, _STR, _ARR = 2, 4, 5, 8, 9
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
_IMATRIX_KEYS = ("file", "dataset", "entries_count", "chunks_count")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([MG])\s*$", re.IGNORECASE)


class GGUFWriteError(UserError):
    pass


@dataclass(frozen=True)
class _Slot:
    """One tensor to write: its info and where its bytes come from."""

    name: str
    ne: tuple[int, ...]
    type_id: int
    nbytes: int
    quant_type: str | None  # None: copy the stored bytes


# --- KVs --------------------------------------------------------------------------------------

def _enc_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, value) -> tuple[str, bytes]:
    if vtype == _STR:
        body = _enc_str(value)
    else:
        body = struct.pack({_U16: "<H", _U32: "<I", _I32: "<i"}[vtype], value)
    return key, _enc_str(key) + struct.pack("<I", vtype) + body


def raw_header(path: str | Path) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """One file's KVs as (key, raw bytes from key to end of value), in file order, and the
    stored ggml type id of each of its tensors."""
    path = Path(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(buf, path)
    if cur.take(4) != _MAGIC:
        raise GGUFWriteError(f"{path}: not a GGUF file (bad magic): give a .gguf model file")
    _, n_tensors, n_kv = cur.scalar(4), cur.scalar(10), cur.scalar(10)
    kvs = []
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string()
        _array_value(cur, cur.scalar(4))
        kvs.append((key, cur.mv[start:cur.pos].tobytes()))
    ids = {}
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar(4)
        cur.pos += 8 * n_dims
        ids[name] = cur.scalar(4)
        cur.scalar(10)
    return kvs, ids


def _model_header(model: GGUFModel) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    kvs, ids = raw_header(model.paths[0])
    for p in model.paths[1:]:
        ids |= raw_header(p)[1]
    return [kv for kv in kvs if kv[0] not in _SPLIT_KEYS], ids


def _set(kvs: list[tuple[str, bytes]], kv: tuple[str, bytes], in_place: bool) -> None:
    """gguf_set_*: mainline removes the key and appends it; ik (old ggml) updates in place."""
    i = next((i for i, (k, _) in enumerate(kvs) if k == kv[0]), None)
    if i is not None and in_place:
        kvs[i] = kv
        return
    if i is not None:
        del kvs[i]
    kvs.append(kv)


def _imatrix_kvs(meta: dict | None, int_type: int) -> list[tuple[str, bytes]]:
    if not meta:
        return []
    bad = set(meta) - set(_IMATRIX_KEYS)
    if bad:
        raise GGUFWriteError(f"unknown imatrix metadata {sorted(bad)}: use "
                             f"{', '.join(_IMATRIX_KEYS)}")
    out = [_kv("quantize.imatrix.file", _STR, str(meta["file"]).encode()[:127])]
    if meta.get("dataset"):
        out.append(_kv("quantize.imatrix.dataset", _STR, str(meta["dataset"]).encode()[:127]))
    out.append(_kv("quantize.imatrix.entries_count", int_type, int(meta["entries_count"])))
    if int(meta.get("chunks_count") or 0) > 0:
        out.append(_kv("quantize.imatrix.chunks_count", int_type, int(meta["chunks_count"])))
    return out


def quantized_kvs(kvs: list[tuple[str, bytes]], target: str, file_type: int,
                  imatrix_meta: dict | None = None) -> list[tuple[str, bytes]]:
    """The KV list the target's llama-quantize writes for input ``kvs`` (split keys removed)."""
    out = [kv for kv in kvs if kv[0] not in _SPLIT_KEYS]
    ik = check_target(target) == "ik"
    sets = [_kv("general.quantization_version", _U32, QNT_VERSION)]
    ftype = _kv("general.file_type", _U32, int(file_type))
    imat = _imatrix_kvs(imatrix_meta, _I32 if ik else _U32)
    sets += imat + [ftype] if ik else [ftype] + imat
    for kv in sets:
        _set(out, kv, in_place=ik)
    return out


def imatrix_metadata(path: str | Path, imatrix) -> dict:
    """What llama-quantize records for ``--imatrix path`` (``path`` as given on its command
    line); ``imatrix``: the ``objectives.Imatrix`` read from it."""
    return {"file": str(path), "dataset": imatrix.datasets[0] if imatrix.datasets else None,
            "entries_count": len(imatrix.sums), "chunks_count": imatrix.chunk_count}


def _alignment(kvs: list[tuple[str, bytes]]) -> int:
    for k, raw in kvs:
        if k == "general.alignment":
            vtype, = struct.unpack_from("<I", raw, 8 + len(k.encode()))
            value = struct.unpack_from("<I", raw, 12 + len(k.encode()))[0] if vtype == _U32 else 0
            if value <= 0 or value & (value - 1):
                raise GGUFWriteError("general.alignment must be a u32 power of 2: fix the input")
            return value
    return DEFAULT_ALIGNMENT


# --- tensors ----------------------------------------------------------------------------------

def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def _llama_order(name: str) -> tuple[int, str]:
    """llama_model_loader's weight_name_comparer: layer of ``blk.N.`` (else -1), then name."""
    layer = layer_of(name)
    return (-1 if layer is None else layer, name)


def _copy_id(stored: int, name: str, model: GGUFModel, target: str | None) -> int:
    if target is None:
        return stored
    qt = model.tensors[name].qtype
    tid = qt.ggml_id(target)
    if tid is None:
        raise GGUFWriteError(f"{name} is stored as {qt.name}, which {target} llama.cpp does not "
                             "have: give it a type in the recipe")
    return tid


def _plan(model: GGUFModel, types: dict[str, str], target: str | None,
          ids: dict[str, int], keep_order: bool) -> list[_Slot]:
    unknown = sorted(set(types) - set(model.tensors))
    if unknown:
        raise GGUFWriteError(f"the recipe names {len(unknown)} tensor(s) the model lacks "
                             f"({', '.join(unknown[:3])}): use a recipe made for this model")
    names = list(model.tensors)
    if not keep_order and target == "mainline":
        names.sort(key=_llama_order)
    slots = []
    for name in names:
        t = model.tensors[name]
        if name not in types:
            tid = _copy_id(ids[name], name, model, target)
            slots.append(_Slot(name, t.ne, tid, t.nbytes, None))
            continue
        qt = get_type(types[name])
        tid = qt.ggml_id(target)
        if tid is None:
            raise GGUFWriteError(f"{name}: type {qt.name} does not exist in {target} llama.cpp: "
                                 "choose another type or the other target")
        nbytes = math.prod(t.shape[:-1]) * qt.row_nbytes(t.ne[0])
        slots.append(_Slot(name, t.ne, tid, nbytes, qt.name))
    return slots


def parse_split_size(size: int | str) -> int:
    """llama-gguf-split's ``--split-max-size``: N followed by M (10^6) or G (10^9), or bytes."""
    if isinstance(size, int):
        n = size
    else:
        m = _SIZE_RE.match(str(size))
        if m is None:
            raise GGUFWriteError(f"split size '{size}': give N followed by M or G (e.g. 50G)")
        n = int(m.group(1)) * (10**6 if m.group(2).upper() == "M" else 10**9)
    if n <= 0:
        raise GGUFWriteError(f"split size {size}: must be positive")
    return n


def _shards(slots: list[_Slot], max_size: int | None, align: int) -> list[list[_Slot]]:
    """llama-gguf-split's size strategy (padded tensor bytes only, metadata not counted)."""
    if max_size is None:
        return [slots]
    shards, size = [[]], 0
    for s in slots:
        n = _pad(s.nbytes, align)
        if size + n > max_size:
            if not shards[-1]:
                raise GGUFWriteError(f"the first tensor, {s.name}, has {n} bytes, more than the "
                                     f"split size {max_size}: give a larger --split-max-size")
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += n
    return shards


def _shard_kvs(kvs, i: int, n: int, n_tensors: int) -> list[tuple[str, bytes]]:
    out = list(kvs) if i == 0 else []
    for kv in (_kv("split.no", _U16, i), _kv("split.tensors.count", _I32, n_tensors),
               _kv("split.count", _U16, n)):
        _set(out, kv, in_place=False)
    return out


def _header(kvs: list[tuple[str, bytes]], slots: list[_Slot], align: int) -> bytes:
    parts = [_MAGIC, struct.pack("<IQQ", 3, len(slots), len(kvs))] + [raw for _, raw in kvs]
    offset = 0
    for s in slots:
        nd = ggml_n_dims(s.ne)
        parts += [_enc_str(s.name), struct.pack(f"<I{nd}QiQ", nd, *s.ne[:nd], s.type_id, offset)]
        offset += _pad(s.nbytes, align)
    head = b"".join(parts)
    return head + bytes(_pad(len(head), align) - len(head))


def split_name(prefix: str | Path, i: int, n: int) -> Path:
    """llama_split_path: ``PREFIX-%05d-of-%05d.gguf`` with i counted from 0."""
    return Path(f"{prefix}-{i + 1:05d}-of-{n:05d}.gguf")


# --- files ------------------------------------------------------------------------------------

def _check_room(paths: list[Path], total: int, inputs: Iterable[Path]) -> None:
    folder = paths[0].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GGUFWriteError(f"{folder}: cannot create the output folder ({e.strerror}): "
                             "choose another -o") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GGUFWriteError(f"{folder}: the output folder is not writable: choose another -o")
    same = {p.resolve() for p in inputs} & {p.resolve() for p in paths}
    if same:
        raise GGUFWriteError(f"{sorted(same)[0]}: the output would replace the input model: "
                             "choose another -o")
    free = shutil.disk_usage(folder).free
    if free < total:
        raise GGUFWriteError(f"{folder}: {total / 1e9:.2f} GB needed but {free / 1e9:.2f} GB "
                             "free: free disk space or choose another -o")


def _write_all(jobs: list[tuple[Path, bytes, list[_Slot]]], source: Callable[[_Slot], np.ndarray],
               align: int, inputs: Iterable[Path], progress: Progress | None) -> list[Path]:
    paths = [p for p, _, _ in jobs]
    sizes = [len(h) + sum(_pad(s.nbytes, align) for s in slots) for _, h, slots in jobs]
    _check_room(paths, sum(sizes), inputs)
    total, done = sum(s.nbytes for _, _, slots in jobs for s in slots), 0
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in paths]
    try:
        for (path, head, slots), tmp in zip(jobs, tmps):
            with open(tmp, "wb") as f:
                f.write(head)
                for s in slots:
                    f.write(_checked(source(s), s))
                    f.write(bytes(_pad(s.nbytes, align) - s.nbytes))
                    done += s.nbytes
                    if progress:
                        progress("write", done, total)
        for tmp, path in zip(tmps, paths):
            tmp.replace(path)
    except OSError as e:
        raise GGUFWriteError(f"{paths[0].parent}: writing failed ({e.strerror}): free disk "
                             "space or choose another -o") from None
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return paths


def _checked(data: np.ndarray, s: _Slot) -> memoryview:
    a = np.ascontiguousarray(data)
    if a.dtype != np.uint8 or a.size != s.nbytes:
        what = s.quant_type or "its stored type"
        raise GGUFWriteError(f"{s.name}: the bytes for {what} are {a.size} {a.dtype} values, "
                             f"{s.nbytes} uint8 expected: clear the quantization cache")
    return memoryview(a.reshape(-1))


def _write_model(model: GGUFModel, kvs, slots: list[_Slot], source, out_path: Path,
                 split_max_size, progress) -> list[Path]:
    align = _alignment(kvs)
    max_size = None if split_max_size is None else parse_split_size(split_max_size)
    shards = _shards(slots, max_size, align)
    if max_size is None:
        jobs = [(out_path, _header(kvs, slots, align), slots)]
    else:
        prefix = out_path.with_suffix("") if out_path.suffix == ".gguf" else out_path
        n = len(shards)
        heads = [_header(_shard_kvs(kvs, i, n, len(slots)), sh, align)
                 for i, sh in enumerate(shards)]
        jobs = [(split_name(prefix, i, n), h, sh) for i, (h, sh) in enumerate(zip(heads, shards))]
    return _write_all(jobs, source, align, model.paths, progress)


def write_quantized(model: GGUFModel, types: dict[str, str], packed: Packed,
                    out_path: str | Path, target: str, file_type: int, *,
                    imatrix_meta: dict | None = None, split_max_size: int | str | None = None,
                    keep_order: bool = False, progress: Progress | None = None) -> list[Path]:
    """Write ``model`` with the tensors of ``types`` replaced by ``packed(name, type)``, the rest
    copied byte for byte; ``file_type``: the mix's llama_ftype (``general.file_type``);
    ``imatrix_meta``: see ``imatrix_metadata``; ``split_max_size``: bytes or "50G" (then
    ``OUT.gguf`` becomes ``OUT-00001-of-0000N.gguf``, ...). Returns the written files."""
    check_target(target)
    kvs, ids = _model_header(model)
    kvs = quantized_kvs(kvs, target, file_type, imatrix_meta)
    slots = _plan(model, types, target, ids, keep_order)

    def source(s: _Slot) -> np.ndarray:
        return model.raw(s.name) if s.quant_type is None else packed(s.name, s.quant_type)

    return _write_model(model, kvs, slots, source, Path(out_path), split_max_size, progress)


def _copy_plan(model: GGUFModel, ids: dict[str, int]) -> list[_Slot]:
    return [_Slot(t.name, t.ne, ids[t.name], t.nbytes, None) for t in model.tensors.values()]


def split_gguf(path: str | Path, out_prefix: str | Path, split_max_size: int | str,
               progress: Progress | None = None) -> list[Path]:
    """``llama-gguf-split --split --split-max-size N PATH OUT_PREFIX``."""
    model = open_gguf(path)
    if len(model.paths) > 1:
        raise GGUFWriteError(f"{path} is already split: merge it first")
    kvs, ids = _model_header(model)
    prefix = Path(out_prefix)
    return _write_model(model, kvs, _copy_plan(model, ids), lambda s: model.raw(s.name),
                        prefix.with_name(prefix.name + ".gguf"), split_max_size, progress)


def merge_gguf(first_split: str | Path, out_path: str | Path,
               progress: Progress | None = None) -> Path:
    """The split files of ``first_split`` as one file. Unlike ``llama-gguf-split --merge``
    (which leaves split.no, split.tensors.count and split.count = 0 behind) the split keys are
    dropped, so merging a split file gives back the unsplit file byte for byte."""
    model = open_gguf(first_split)
    kvs, ids = _model_header(model)
    return _write_model(model, kvs, _copy_plan(model, ids), lambda s: model.raw(s.name),
                        Path(out_path), None, progress)[0]
