"""The GGUF writer (objectives._gguf_write): quantized files, shards, merge, bad output folders.

References: a real mainline llama-quantize file of the tiny model (tests/fixtures/write: Q4_K_M
with an imatrix) reproduced byte for byte; the default SmolLM2 file (written by a llama-quantize
that updated KVs in place and kept the file order, as ik's does) reproduced byte for byte;
gguf-py's independent GGUFReader and dequantizer; KV bytes built by hand.
"""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

import quant
from conftest import FIXTURES, write_tiny_gguf
from objectives import open_gguf, read_imatrix
from objectives._gguf_write import (GGUFWriteError, imatrix_metadata, merge_gguf, quantized_kvs,
                                    raw_header, split_gguf, write_quantized)
from objectives._imatrix import Imatrix
from objectives._qcache import QuantCache

WRITE = FIXTURES / "write"
LLAMA_Q4_K_M = WRITE / "tiny-llama.Q4_K_M.gguf"
LLAMA_REQUANT = WRITE / "tiny-llama.Q4_K_M.requant-Q5_0.gguf"  # from LLAMA_Q4_K_M, see README
IK_RECIPE = {"blk.0.ffn_down.weight": "iq4_ks", "blk.1.ffn_down.weight": "iq4_ks",
             "blk.0.attn_q.weight": "q8_0", "blk.1.attn_k.weight": "q4_0"}
FILE_TYPE = {"mainline": 15, "ik": 145}  # llama.h: LLAMA_FTYPE_MOSTLY_Q4_K_M; ik: ..._IQ4_KS


def _imatrix_meta() -> dict:
    return imatrix_metadata("tiny-imatrix.gguf", read_imatrix(WRITE / "tiny-imatrix.gguf"))


def _llama_recipe(model) -> dict[str, str]:
    """The types llama-quantize chose for the tiny model (Q4_K_M with the fixture imatrix)."""
    ref = open_gguf(LLAMA_Q4_K_M)
    return {n: t.qtype.name for n, t in ref.tensors.items() if t.qtype != model.tensors[n].qtype}


@pytest.fixture(scope="module")
def written(tiny_model, tmp_path_factory):
    """written(target) -> (input model, cache, recipe, output path), each written once: the
    mainline file as llama-quantize made the fixture (same recipe, imatrix and metadata), the
    ik file with an iq4_ks recipe and no imatrix."""
    model = open_gguf(tiny_model("llama"))
    im = read_imatrix(WRITE / "tiny-imatrix.gguf")
    out, done = tmp_path_factory.mktemp("written"), {}

    def get(target):
        if target not in done:
            if target == "mainline":
                cache = QuantCache(model, target, im.for_quantizer(model))
                recipe = _llama_recipe(model)
            else:
                cache, recipe = QuantCache(model, target), IK_RECIPE
            paths = write_quantized(model, recipe, cache.packed, out / f"{target}.gguf", target,
                                    FILE_TYPE[target], imatrix_meta=_imatrix_meta())
            done[target] = model, cache, recipe, paths
        return done[target]

    return get


def _kv(key: str, fmt: str, vtype: int, value) -> tuple[str, bytes]:
    """A KV's bytes by hand (GGUF v3): key length u64, key, value type u32, value."""
    k = key.encode()
    body = struct.pack("<Q", len(value)) + value if vtype == 8 else struct.pack(fmt, value)
    return key, struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + body


def _imatrix_kvs(int_fmt: str, int_type: int) -> list[tuple[str, bytes]]:
    return [_kv("quantize.imatrix.file", "", 8, b"tiny-imatrix.gguf"),
            _kv("quantize.imatrix.dataset", "", 8, b"text.txt"),
            _kv("quantize.imatrix.entries_count", int_fmt, int_type, 14),
            _kv("quantize.imatrix.chunks_count", int_fmt, int_type, 4)]


def test_mainline_file_is_llama_quantizes_file(written):
    *_, (path,) = written("mainline")
    assert path.read_bytes() == LLAMA_Q4_K_M.read_bytes()


def test_requantized_file_is_llama_quantizes_file(tmp_path):
    """From a quantized input: tensors already at the requested type are copied (llama-quantize
    skips them: `quantize = cur_type != new_type`), the others re-quantized from their
    dequantized values. Re-quantizing the copied ones would change 12 of them."""
    model, ref = open_gguf(LLAMA_Q4_K_M), open_gguf(LLAMA_REQUANT)
    im = read_imatrix(WRITE / "tiny-imatrix.gguf")
    recipe = {n: t.qtype.name for n, t in ref.tensors.items()}
    cache = QuantCache(model, "mainline", im.for_quantizer(model))
    (path,) = write_quantized(model, recipe, cache.packed, tmp_path / "requant.gguf", "mainline",
                              8, imatrix_meta=_imatrix_meta())  # LLAMA_FTYPE_MOSTLY_Q5_0
    assert path.read_bytes() == LLAMA_REQUANT.read_bytes()


@pytest.mark.parametrize("target", ["mainline", "ik"])
def test_a_tensor_at_its_stored_type_keeps_its_bytes_and_costs_no_error(target):
    model = open_gguf(LLAMA_Q4_K_M)
    cache = QuantCache(model, target)
    for name, t in model.tensors.items():
        np.testing.assert_array_equal(cache.packed(name, t.qtype.name), model.raw(name))
        assert cache.error(name, t.qtype.name) == 0.0
    assert cache.error("blk.1.ffn_down.weight", "q4_K") > 0.0


@pytest.mark.parametrize("target", ["mainline", "ik"])
def test_round_trip_types_shapes_and_bytes(written, target):
    model, cache, recipe, paths = written(target)
    assert len(paths) == 1
    back = open_gguf(paths[0])
    assert set(back.tensors) == set(model.tensors)
    assert {t.qtype.name for t in back.tensors.values()} >= ({"q4_K", "q6_K", "q5_0", "q8_0"}
                                                            if target == "mainline" else
                                                            {"iq4_ks", "q8_0", "q4_0"})
    for name, t in model.tensors.items():
        b = back.tensors[name]
        assert b.shape == t.shape
        if name in recipe:
            assert b.qtype.name == recipe[name]
            np.testing.assert_array_equal(back.raw(name), cache.packed(name, b.qtype.name))
            np.testing.assert_array_equal(
                quant.dequantize(back.raw(name), b.qtype.name, b.shape, target),
                cache.values(name, b.qtype.name))
        else:
            assert b.qtype == t.qtype
            np.testing.assert_array_equal(back.raw(name), model.raw(name))


@pytest.mark.parametrize("target", ["mainline", "ik"])
def test_metadata_copied_and_quantize_keys_as_llama_quantize(written, target):
    model, *_, paths = written(target)
    kin, _ = raw_header(model.paths[0])
    kout, _ = raw_header(paths[0])
    qv = _kv("general.quantization_version", "<I", 4, 2)
    ft = _kv("general.file_type", "<I", 4, FILE_TYPE[target])
    if target == "mainline":  # gguf_set_* removes the key and appends it; counts are u32
        assert kout == kin + [qv, ft] + _imatrix_kvs("<I", 4)
    else:  # ik's gguf_set_* appends new keys in call order; counts are i32
        assert kout == kin + [qv] + _imatrix_kvs("<i", 5) + [ft]
    meta = open_gguf(paths[0]).meta
    for key, value in model.meta.items():
        np.testing.assert_array_equal(meta[key], value)


def test_mainline_file_reads_with_gguf_py(written):
    """gguf-py's own reader: value types, tensor order (llama-quantize's weights map: layer,
    then name), 32-byte aligned offsets, zero padding, and its dequantizer."""
    model, cache, recipe, paths = written("mainline")
    r = gguf.GGUFReader(paths[0])
    assert r.fields["general.file_type"].types == [gguf.GGUFValueType.UINT32]
    assert r.fields["quantize.imatrix.chunks_count"].types == [gguf.GGUFValueType.UINT32]
    assert r.fields["tokenizer.ggml.add_bos_token"].types == [gguf.GGUFValueType.BOOL]
    names = [t.name for t in r.tensors]
    layer = lambda n: int(n.split(".")[1]) if n.startswith("blk.") else -1  # noqa: E731
    assert names == sorted(model.tensors, key=lambda n: (layer(n), n)) != list(model.tensors)
    data = np.fromfile(paths[0], np.uint8)
    end = min(t.data_offset for t in r.tensors)
    for t in sorted(r.tensors, key=lambda t: t.data_offset):
        assert t.data_offset % 32 == 0 and not data[end:t.data_offset].any()
        end = t.data_offset + t.n_bytes
        if t.name in recipe:
            y = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            np.testing.assert_array_equal(y, cache.values(t.name, recipe[t.name]))
    assert len(data) == -(-end // 32) * 32


def test_ik_keeps_the_file_order(written):
    model, *_, paths = written("ik")
    assert list(open_gguf(paths[0]).tensors) == list(model.tensors)


def test_copy_of_the_default_model_is_byte_identical(smollm2, tmp_path):
    """The default model was written by a llama-quantize that updated KVs in place and kept the
    file order, as ik's does: nothing to quantize gives back its bytes (header, every KV,
    tensor infos, offsets, padding)."""
    out = write_quantized(smollm2, {}, None, tmp_path / "copy.gguf", "ik",
                          int(smollm2.meta["general.file_type"]))[0]
    assert out.read_bytes() == smollm2.paths[0].read_bytes()


def test_split_then_merge_is_lossless(written, tmp_path):
    *_, (single,) = written("mainline")
    max_size = 30_000
    shards = split_gguf(single, tmp_path / "part", max_size)
    n = len(shards)
    assert n >= 3 and [p.name for p in shards] == [f"part-{i:05d}-of-{n:05d}.gguf"
                                                   for i in range(1, n + 1)]
    whole = open_gguf(single)
    kin, _ = raw_header(single)
    order = []
    for i, p in enumerate(shards):
        kvs, ids = raw_header(p)
        split = [_kv("split.no", "<H", 2, i),
                 _kv("split.tensors.count", "<i", 5, len(whole.tensors)),
                 _kv("split.count", "<H", 2, n)]
        assert kvs == (kin if i == 0 else []) + split
        order += list(ids)
    padded = {n_: -(-t.nbytes // 32) * 32 for n_, t in whole.tensors.items()}
    sizes = [sum(padded[x] for x in raw_header(p)[1]) for p in shards]
    firsts = [next(iter(raw_header(p)[1])) for p in shards[1:]]
    assert all(s <= max_size for s in sizes)
    assert all(s + padded[f] > max_size for s, f in zip(sizes, firsts))  # greedy, like gguf-split
    assert order == list(whole.tensors)
    back = open_gguf(shards[0])
    assert len(back.paths) == n and list(back.tensors) == list(whole.tensors)
    for name in whole.tensors:
        np.testing.assert_array_equal(back.raw(name), whole.raw(name))
    merged = merge_gguf(shards[0], tmp_path / "merged.gguf")
    assert merged.read_bytes() == single.read_bytes()


def test_written_in_shards_equals_split_of_the_single_file(written, tmp_path):
    model, cache, recipe, (single,) = written("mainline")

    def write(size):
        return write_quantized(model, recipe, cache.packed, tmp_path / "d.gguf", "mainline", 15,
                               imatrix_meta=_imatrix_meta(), split_max_size=size)

    assert [p.name for p in write("1M")] == ["d-00001-of-00001.gguf"]
    split = split_gguf(single, tmp_path / "s", 30_000)
    assert len(split) > 1
    assert [p.read_bytes() for p in write(30_000)] == [p.read_bytes() for p in split]


def test_imatrix_metadata_is_what_llama_quantize_records():
    """llama-quantize printed "loaded 14 importance matrix entries from tiny-imatrix.gguf
    computed on 4 chunks" and "imatrix datasets=['text.txt']" making the fixture."""
    assert _imatrix_meta() == {"file": "tiny-imatrix.gguf", "dataset": "text.txt",
                               "entries_count": 14, "chunks_count": 4}
    bare = imatrix_metadata("im.dat", Imatrix(sums={"a": np.ones((1, 4))},
                                              counts={"a": np.ones(1)}))
    assert bare == {"file": "im.dat", "dataset": None, "entries_count": 1, "chunks_count": 0}
    assert quantized_kvs([], "mainline", 2, bare) == [  # no dataset, no chunk count: keys left out
        _kv("general.quantization_version", "<I", 4, 2), _kv("general.file_type", "<I", 4, 2),
        _kv("quantize.imatrix.file", "", 8, b"im.dat"),
        _kv("quantize.imatrix.entries_count", "<I", 4, 1)]


def test_existing_keys_moved_by_mainline_updated_in_place_by_ik():
    a, old, z = (_kv("a", "<I", 4, 1), _kv("general.file_type", "<I", 4, 0), _kv("z", "<H", 2, 3))
    split = _kv("split.count", "<H", 2, 2)
    qv, ft = _kv("general.quantization_version", "<I", 4, 2), _kv("general.file_type", "<I", 4, 7)
    assert quantized_kvs([a, old, split, z], "mainline", 7) == [a, z, qv, ft]
    assert quantized_kvs([a, old, split, z], "ik", 7) == [a, ft, z, qv]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_bad_output_folders_are_one_line_errors(written, tmp_path, monkeypatch):
    model, cache, recipe, _ = written("mainline")

    def write(out):
        return write_quantized(model, recipe, cache.packed, out, "mainline", 15)

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GGUFWriteError, match="cannot create the output folder"):
        write(blocker / "sub" / "q.gguf")
    with pytest.raises(GGUFWriteError, match="replace the input model"):
        write(model.paths[0])
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(GGUFWriteError, match=r"GB needed but 0.00 GB free") as e:
        write(tmp_path / "full" / "q.gguf")
    assert "\n" not in str(e.value) and _leftovers(tmp_path / "full") == []


def test_failed_write_leaves_no_file(written, tmp_path):
    model, cache, recipe, _ = written("mainline")
    short = lambda n, t: cache.packed(n, t)[:1]  # noqa: E731
    with pytest.raises(GGUFWriteError, match="clear the quantization cache"):
        write_quantized(model, recipe, short, tmp_path / "q.gguf", "mainline", 15)
    assert _leftovers(tmp_path) == []


def test_bad_recipes_are_one_line_errors(written, tmp_path):
    model, cache, *_ = written("mainline")
    with pytest.raises(GGUFWriteError, match="does not exist in mainline"):
        write_quantized(model, {"blk.0.ffn_down.weight": "iq4_ks"}, cache.packed,
                        tmp_path / "q.gguf", "mainline", 15)
    with pytest.raises(GGUFWriteError, match="the model lacks"):
        write_quantized(model, {"blk.9.ffn_down.weight": "q4_K"}, cache.packed,
                        tmp_path / "q.gguf", "mainline", 15)
    with pytest.raises(GGUFWriteError, match="more than the split size"):
        write_quantized(model, {}, cache.packed, tmp_path / "q.gguf", "mainline", 15,
                        split_max_size=100)
    assert _leftovers(tmp_path) == []


GOLDEN = sorted(p.stem for p in (FIXTURES / "golden").glob("*.npz"))


@pytest.mark.heavy
@pytest.mark.parametrize("file", GOLDEN)
def test_cache_bytes_on_disk_are_ggml_golden_bytes(file, tmp_path):
    """The cache's packed bytes, through the writer, are the bytes mainline ggml and ik (no FMA
    contraction) write: row meta and blocks, >= 99 % identical like the quantizer tests."""
    z = np.load(FIXTURES / "golden" / f"{file}.npz")
    qt = quant.get_type(file.removesuffix("_imat"))
    name = "blk.0.ffn_down.weight"
    model = open_gguf(write_tiny_gguf(tmp_path / "g.gguf", {name: z["x"]}, block_count=1))
    imatrix = {name: z["w"]} if z["w"].size else None
    checked = 0
    for key, target in (("q_ggml", "mainline"), ("q_iknofma", "ik")):
        if key not in z.files or not quant.has_quantizer(qt.name, target):
            continue
        out = write_quantized(model, {name: qt.name}, QuantCache(model, target, imatrix).packed,
                              tmp_path / f"{target}.gguf", target, 0)[0]
        got = open_gguf(out).raw(name)
        want = z[key].reshape(got.shape)
        blocks = lambda q: q[:, qt.row_meta:].reshape(-1, qt.type_size)  # noqa: E731
        assert np.mean(np.all(blocks(got) == blocks(want), axis=1)) >= 0.99, target
        assert np.mean(np.all(got[:, :qt.row_meta] == want[:, :qt.row_meta], axis=1)) >= 0.99
        checked += 1
    if not checked:
        pytest.skip(f"no quantizer here for {qt.name}")


@pytest.fixture(scope="module")
def llama_f32_base(tmp_path_factory):
    """(bin folder, F32 base made by llama-quantize from the default model, its folder)."""
    import os
    import subprocess

    from objectives import default_model_path

    b = os.environ.get("LLAMA_BIN")
    if not b or not (Path(b) / "llama-quantize").is_file():
        pytest.skip("LLAMA_BIN (a folder with a mainline llama-quantize) is not set")
    folder = tmp_path_factory.mktemp("llama")
    run = lambda *a: subprocess.run([str(Path(b) / "llama-quantize"), *map(str, a)],  # noqa: E731
                                    check=True, capture_output=True, cwd=folder,
                                    env={**os.environ, "LD_LIBRARY_PATH": b})
    run("--allow-requantize", default_model_path(), "base-f32.gguf", "F32")
    imatrix = (FIXTURES / "refs" / "imatrix-calib40.gguf").read_bytes()
    (folder / "imatrix.gguf").write_bytes(imatrix)
    return run, folder


@pytest.mark.heavy
@pytest.mark.parametrize("ftype,file_type,args", [("Q4_0", 2, ["--pure"]), ("Q4_K_M", 15, [])])
def test_same_file_as_llama_quantize(llama_f32_base, ftype, file_type, args):
    """Mainline llama-quantize and our writer, same recipe (read back from llama-quantize's
    file) and imatrix: identical header (every KV, tensor infos, offsets), >= 99.9 % identical
    blocks per type (pure Q4_0: the whole file)."""
    from objectives import read_imatrix
    from objectives._gguf_write import imatrix_metadata

    run, folder = llama_f32_base
    run(*args, "--imatrix", "imatrix.gguf", "base-f32.gguf", f"{ftype}.gguf", ftype, 2)
    base, ref = open_gguf(folder / "base-f32.gguf"), open_gguf(folder / f"{ftype}.gguf")
    im = read_imatrix(folder / "imatrix.gguf")
    cache = QuantCache(base, "mainline", im.for_quantizer(base))
    types = {n: t.qtype.name for n, t in ref.tensors.items() if t.qtype != base.tensors[n].qtype}
    out = write_quantized(base, types, lambda n, t: cache.packed(n, t, keep=False),
                          folder / f"ours-{ftype}.gguf", "mainline", file_type,
                          imatrix_meta=imatrix_metadata("imatrix.gguf", im))[0]
    ours = open_gguf(out)
    head = ref._headers[0]
    assert out.read_bytes()[:head] == (folder / f"{ftype}.gguf").read_bytes()[:head]
    assert out.stat().st_size == (folder / f"{ftype}.gguf").stat().st_size
    same: dict[str, list[int]] = {}
    for name, t in ref.tensors.items():
        a, b = (m.raw(name).reshape(-1, t.qtype.type_size) for m in (ours, ref))
        s = same.setdefault(t.qtype.name, [0, 0])
        s[0] += int(np.all(a == b, axis=1).sum())
        s[1] += len(a)
    assert all(k / n >= 0.999 for k, n in same.values()), same
    if ftype == "Q4_0":
        assert out.read_bytes() == (folder / f"{ftype}.gguf").read_bytes()


@pytest.mark.heavy
def test_split_like_llama_gguf_split(smollm2, tmp_path):
    """llama-gguf-split --split-max-size 40M on the default model: the same files byte for
    byte; our merge of its shards gives back the model."""
    import os
    import subprocess

    b = os.environ.get("LLAMA_BIN")
    if not b or not (Path(b) / "llama-gguf-split").is_file():
        pytest.skip("LLAMA_BIN (a folder with a mainline llama-gguf-split) is not set")
    subprocess.run([str(Path(b) / "llama-gguf-split"), "--split", "--split-max-size", "40M",
                    str(smollm2.paths[0]), str(tmp_path / "ref")], check=True, capture_output=True,
                   env={**os.environ, "LD_LIBRARY_PATH": b})
    ours = split_gguf(smollm2.paths[0], tmp_path / "ours", "40M")
    refs = sorted(tmp_path.glob("ref-*.gguf"))
    assert len(ours) == len(refs) > 1
    assert all(a.read_bytes() == r.read_bytes() for a, r in zip(ours, refs))
    merged = merge_gguf(refs[0], tmp_path / "merged.gguf")
    assert merged.read_bytes() == smollm2.paths[0].read_bytes()
