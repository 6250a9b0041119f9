"""The GGUF reader: real files, split files, ik-only type ids, and bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from conftest import write_tiny_gguf
from objectives import GGUFError, open_gguf


def test_reads_the_embedded_model(smollm2):
    assert smollm2.arch == "llama" and smollm2.tied_embeddings
    h = smollm2.hparams()
    assert (h.n_layer, h.n_embd, h.n_ff, h.n_head, h.n_head_kv, h.n_vocab) == (30, 576, 1536, 9, 3, 49152)
    t = smollm2.tensors["blk.7.ffn_down.weight"]
    assert (t.shape, t.ne, t.role, t.layer, t.qtype.name) == ((576, 1536), (1536, 576), "ffn_down", 7, "q4_1")
    assert len(smollm2.quantizable("mainline")) == 211 and smollm2.nbytes == 96576768


def test_f32_agrees_with_gguf_reference_reader(smollm2):
    import gguf

    ref = {t.name: t for t in gguf.GGUFReader(smollm2.paths[0]).tensors}
    for name in ("blk.0.attn_k.weight", "token_embd.weight", "output_norm.weight"):
        r = ref[name]
        want = gguf.quants.dequantize(r.data, r.tensor_type).reshape(smollm2.tensors[name].shape)
        np.testing.assert_array_equal(smollm2.f32(name), want)


def _tiny(tmp_path, **kw):
    rng = np.random.default_rng(0)
    tensors = {"token_embd.weight": rng.normal(size=(16, 64)),
               "blk.0.attn_q.weight": rng.normal(size=(64, 64)),
               "blk.0.attn_norm.weight": rng.normal(size=(64,)),
               "blk.1.ffn_down_exps.weight": rng.normal(size=(4, 64, 32))}
    return write_tiny_gguf(tmp_path / "tiny.gguf", tensors, block_count=2, **kw), tensors


def test_split_files_read_as_one(tmp_path):
    path, tensors = _tiny(tmp_path, split_max_tensors=2)
    first = sorted(tmp_path.glob("tiny-00001-of-*.gguf"))
    assert len(first) == 1 and len(list(tmp_path.glob("tiny-*.gguf"))) == 2
    m = open_gguf(first[0])
    assert len(m.paths) == 2 and set(m.tensors) == set(tensors)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(m.f32(name), arr.astype(np.float32))
    assert m.tensors["blk.1.ffn_down_exps.weight"].role == "ffn_down_exps"
    assert [t.name for t in m.quantizable("mainline")] == [
        "token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down_exps.weight"]


def test_missing_split_part_is_a_clear_error(tmp_path):
    _tiny(tmp_path, split_max_tensors=2)
    (sorted(tmp_path.glob("tiny-*.gguf"))[1]).unlink()
    with pytest.raises(GGUFError, match="no such file"):
        open_gguf(sorted(tmp_path.glob("tiny-00001-*.gguf"))[0])


def test_truncated_file(tmp_path):
    path, _ = _tiny(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) - 100, 40, 10):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match="truncated|not a GGUF"):
            open_gguf(p)


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(GGUFError, match="not a GGUF"):
        open_gguf(p)


def _patch_type_id(path, name: str, new_id: int, new_ne0_bytes: int | None = None) -> None:
    """Rewrite the ggml type id of tensor ``name`` in place (its data size must stay valid)."""
    data = bytearray(path.read_bytes())
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, new_id)
    path.write_bytes(bytes(data))


def test_ik_only_type_ids_are_read(tmp_path):
    # a 256 x 2 f32 tensor holds 2048 bytes; as iq4_kss (id 146) 2 rows of 256 need 2 x 132 bytes
    path = write_tiny_gguf(tmp_path / "ik.gguf", {"blk.0.ffn_down.weight": np.zeros((2, 256))})
    _patch_type_id(path, "blk.0.ffn_down.weight", 146)
    t = open_gguf(path).tensors["blk.0.ffn_down.weight"]
    assert t.qtype.name == "iq4_kss" and t.nbytes == 2 * (4 + 128)


def test_unknown_type_id_is_refused(tmp_path):
    path = write_tiny_gguf(tmp_path / "bad.gguf", {"blk.0.ffn_down.weight": np.zeros((2, 256))})
    _patch_type_id(path, "blk.0.ffn_down.weight", 212)  # q4_k_r4: repacked layout
    with pytest.raises(GGUFError, match="type id 212"):
        open_gguf(path)
