"""Default llama-quantize mixes (search._mixes) against the types real llama-quantize wrote.

Fixtures: ``mainline-mix-types.json`` (mainline llama-quantize on SmolLM2-135M, F32 base),
``ik-mix-types.json`` (ik_llama.cpp llama-quantize on the same base; types and tensor bytes of
each output file, with the commands that made them) and ``synthetic-mix-types.json`` (both tools
on small random llama models whose rows fit 256, so the rules are seen without fallback: gqa 4
untied, gqa 2 tied, 4, 8 and 16 experts: mainline's MoE rules ask for exactly 8, ik's for 4 or
more; and a header-only ``deepseek2`` model of DeepSeek-V3's real shapes: 61 layers, 3 dense,
256 experts, MLA, bf16) and ``tiny-moe-mix-types.json`` (both tools' real output files of the
tiny MoE models of ``tests/_tiny_gguf.py``, 64-wide rows, so every k-quant falls back: types and
tensor bytes).
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import pytest

from objectives import GGUFModel, TensorInfo, default_model_path, open_gguf
from quant import FallbackError, UserError, get_type, tensor_nbytes
from search import FTYPES, MixError, base_type, mix_types, use_more_bits

FIXTURES = Path(__file__).parent / "fixtures"


def _load(name: str) -> dict:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {path} missing")
    return _read(path)


@lru_cache(maxsize=None)
def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _flags(key: str) -> tuple[str, bool, bool]:
    """'noimat-pure-Q4_0' -> ('Q4_0', imatrix=False, pure=True)."""
    imatrix, pure = True, False
    if key.startswith("noimat-"):
        imatrix, key = False, key[len("noimat-"):]
    if key.startswith("pure-"):
        pure, key = True, key[len("pure-"):]
    return key, imatrix, pure


@pytest.fixture(scope="module")
def smollm2():
    return open_gguf(default_model_path())


def _keys(fixture: str, part: str = "files") -> list:
    """The fixture's cases; a missing fixture gives one case skipped with its name."""
    path = FIXTURES / fixture
    if not path.is_file():
        return [pytest.param(None, id="missing", marks=pytest.mark.skip(
            reason=f"fixture tests/fixtures/{fixture} missing (see tests/fixtures/README.md)"))]
    files = json.loads(path.read_text()).get(part, {})
    keys = [k for k in files if not k.startswith(("custom-", "orig-"))]
    assert keys, f"tests/fixtures/{fixture} has no '{part}' cases"
    return keys


@pytest.mark.parametrize("key", _keys("mainline-mix-types.json"))
def test_mainline_mix_matches_llama_quantize(smollm2, key):
    recorded = _load("mainline-mix-types.json")["files"][key]
    ftype, imatrix, pure = _flags(key)
    assert mix_types(smollm2, ftype, "mainline", imatrix=imatrix, pure=pure) == recorded


def _ik_record(key: str) -> tuple[dict[str, str], int]:
    fx = _load("ik-mix-types.json")
    rec = fx["files"][key]
    return dict(zip(fx["quantized"], rec["types"].split())), rec["nbytes"]


def _in_order(model: GGUFModel, names: list[str]) -> GGUFModel:
    """``model`` with its tensors in the order of ``names`` (then the rest): ik counts attn_v and
    ffn tensors in input-file order, and the F32 base ik read has blk.2 before blk.10 while the
    Q4_1 file has blk.10 first."""
    tensors = {n: model.tensors[n] for n in names}
    tensors.update({n: t for n, t in model.tensors.items() if n not in tensors})
    return dataclasses.replace(model, tensors=tensors)


@pytest.fixture(scope="module")
def smollm2_base_order(smollm2):
    return _in_order(smollm2, _load("ik-mix-types.json")["quantized"])


@pytest.mark.parametrize("key", _keys("ik-mix-types.json"))
def test_ik_mix_matches_llama_quantize(smollm2_base_order, key):
    expected, _ = _ik_record(key)
    ftype, imatrix, pure = _flags(key)
    assert mix_types(smollm2_base_order, ftype, "ik", imatrix=imatrix, pure=pure) == expected


@pytest.mark.parametrize("key", _keys("ik-mix-types.json"))
def test_ik_mix_bytes_match_file(smollm2_base_order, key):
    """Tensor data bytes of the real ik output = predicted types' bytes + the f32 tensors."""
    model, (_, nbytes) = smollm2_base_order, _ik_record(key)
    ftype, imatrix, pure = _flags(key)
    types = mix_types(model, ftype, "ik", imatrix=imatrix, pure=pure)
    fixed = sum(t.n_elements * 4 for n, t in model.tensors.items() if n not in types)
    predicted = fixed + sum(tensor_nbytes(types[n], model.tensors[n].shape) for n in types)
    assert predicted == nbytes


def test_counters_follow_each_tools_order(smollm2):
    """Q4_0 + imatrix promotes ffn_down of the first n_layer/8 = 3 layers visited to q4_1: ik
    visits the Q4_1 file in its order (blk.0, blk.1, blk.10, ...), mainline sorts by layer."""
    def promoted(target: str) -> list[str]:
        types = mix_types(smollm2, "Q4_0", target, imatrix=True)
        return sorted(n for n, t in types.items() if t == "q4_1")

    assert promoted("ik") == [f"blk.{i}.ffn_down.weight" for i in (0, 1, 10)]
    assert promoted("mainline") == [f"blk.{i}.ffn_down.weight" for i in (0, 1, 2)]


def _synthetic_model(spec: dict) -> GGUFModel:
    """A header-only model (names, shapes, hparams) of the synthetic fixture; a tensor line is
    ``name ne0 [ne1 [ne2]] [stored type]`` (f32 when no type is given)."""
    tensors = {}
    for line in spec["tensors"]:
        name, *ne = line.split()
        ty = get_type(ne.pop() if not ne[-1].isdigit() else "f32")
        ne = tuple(map(int, ne))
        tensors[name] = TensorInfo(name, ne, ty, 0, 0, tensor_nbytes(ty, ne[::-1]))
    return GGUFModel([Path("synthetic.gguf")], spec["meta"], tensors, [], [])


@pytest.mark.parametrize("key", _keys("synthetic-mix-types.json"))
def test_synthetic_mix_matches_llama_quantize(key):
    fx = _load("synthetic-mix-types.json")
    target, model_name, run = key.split("/")
    spec = fx["models"][model_name]
    expected = dict(zip(spec["quantized"], fx["files"][key].split()))
    ftype, imatrix, pure = _flags(run)
    got = mix_types(_synthetic_model(spec), ftype, target, imatrix=imatrix, pure=pure)
    assert got == expected


@pytest.mark.parametrize("key", _keys("synthetic-mix-types.json", "errors"))
def test_synthetic_refusals_without_imatrix(key):
    """Runs that real llama-quantize stopped for want of an imatrix raise a MixError."""
    fx = _load("synthetic-mix-types.json")
    target, model_name, run = key.split("/")
    ftype, imatrix, pure = _flags(run)
    with pytest.raises(MixError, match="imatrix"):
        mix_types(_synthetic_model(fx["models"][model_name]), ftype, target, imatrix=imatrix,
                  pure=pure)


@pytest.mark.parametrize("key", _keys("tiny-moe-mix-types.json"))
def test_tiny_moe_mix_matches_llama_quantize(tiny_model, key):
    """Types and tensor data bytes of both tools' files of the tiny MoE models."""
    fx = _load("tiny-moe-mix-types.json")
    target, arch, run = key.split("/")
    model = open_gguf(tiny_model(arch))
    names = fx["models"][arch]
    assert list(model.tensors) == names, "tests/_tiny_gguf.py changed: remake the fixture"
    ftype, imatrix, pure = _flags(run)
    types = mix_types(model, ftype, target, imatrix=imatrix, pure=pure)
    written = {n: types.get(n, model.tensors[n].qtype.name) for n in names}
    assert written == dict(zip(names, fx["files"][key]["types"].split()))
    fixed = sum(t.nbytes for n, t in model.tensors.items() if n not in types)
    predicted = fixed + sum(tensor_nbytes(types[n], model.tensors[n].shape) for n in types)
    assert predicted == fx["files"][key]["nbytes"]


@pytest.mark.parametrize("key", _keys("tiny-moe-mix-types.json", "errors"))
def test_tiny_moe_refusals(tiny_model, key):
    """Runs that real llama-quantize refused on the tiny MoE models are refused here too: for
    want of an imatrix (a MixError), or a type whose rows cannot hold the tensor's (ik's
    IQ1_BN/IQ2_BN on 32-wide expert rows: no fallback exists, a FallbackError)."""
    fx = _load("tiny-moe-mix-types.json")
    target, arch, run = key.split("/")
    ftype, imatrix, pure = _flags(run)
    imat = "importance matrix" in fx["errors"][key]["error"].lower() or \
        "imatrix" in fx["errors"][key]["error"].lower()
    with pytest.raises(MixError if imat else FallbackError, match="imatrix" if imat else None):
        mix_types(open_gguf(tiny_model(arch)), ftype, target, imatrix=imatrix, pure=pure)


def test_moe_rules_differ_with_the_expert_count():
    """The fixture's 4- and 16-expert models get what 8 experts get from ik only: mainline's
    attn_v/attn_k q8_0 rule asks for exactly 8 experts, ik's for 4 or more."""
    files = _load("synthetic-mix-types.json")["files"]
    for target, same in (("mainline", False), ("ik", True)):
        for n in (4, 16):
            key = f"{target}/syn-gqa1-moe{n}/Q3_K_M"
            assert (files[key] == files[f"{target}/syn-gqa1-moe8/Q3_K_M"]) == same, key


def test_mainline_fixture_is_discriminating(smollm2):
    """The recorded Q4_K_M differs from a pure Q4_K_M, so the mix rules are really exercised."""
    recorded = _load("mainline-mix-types.json")["files"]["Q4_K_M"]
    pure = mix_types(smollm2, "Q4_K_M", "mainline", imatrix=True, pure=True)
    assert sum(recorded[n] != pure[n] for n in pure) >= 10


def test_use_more_bits_hand_computed():
    # n = 30: n/8 = 3, 7n/8 = 26; the middle gets every third layer from 5
    assert [i for i in range(30) if use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20,
                                                              23, 26, 27, 28, 29]


def test_ftypes_and_bases():
    assert {"Q4_K_M", "IQ4_XS", "Q3_K_M", "Q4_0", "Q8_0", "F16"} <= set(FTYPES["mainline"])
    assert {"IQ2_K", "IQ3_K", "IQ4_K", "IQ4_KS", "IQ4_KSS", "IQ5_K", "IQ5_KS", "IQ6_K", "IQ2_KS",
            "IQ3_KS", "IQ2_KL", "IQ3_KL"} <= set(FTYPES["ik"])
    assert base_type("IQ2_S", "mainline") == "iq2_xs"
    assert base_type("IQ3_KL", "ik") == "iq3_k"
    assert base_type("q4_k", "mainline") == "q4_K"  # alias of Q4_K_M, case-insensitive


def test_unknown_or_foreign_ftype_is_a_user_error(smollm2):
    with pytest.raises(UserError, match="IQ4_KS"):
        mix_types(smollm2, "IQ4_KS", "mainline", imatrix=True)
    with pytest.raises(UserError, match="Q9_K"):
        base_type("Q9_K", "ik")
