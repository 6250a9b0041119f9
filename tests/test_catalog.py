"""The catalog against llama-quantize's own figures (SmolLM2 baseline) and the spec's table."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES
from quant import (FallbackError, TargetError, UnknownTypeError, get_type, resolve,
                   tensor_nbytes, type_in_target)
from search import plan_bytes, resolve_plan

BASELINE = json.loads((FIXTURES / "baseline-sizes.json").read_text())


def test_every_baseline_file_size_matches_llama_quantize(smollm2, mainline_mixes):
    assert smollm2.n_elements == BASELINE["n_elements"]
    checked = 0
    for name, types in mainline_mixes.items():
        written = resolve_plan(smollm2, types, "mainline")
        assert written == types  # the recorded types are already what llama-quantize wrote
        nbytes = plan_bytes(smollm2, written, "mainline")
        ref = BASELINE["files"][name]
        assert nbytes == ref["bytes"], name
        assert f"{nbytes / 2**20:.2f}" == ref["mib"], name
        assert f"{8 * nbytes / smollm2.n_elements:.4f}" == ref["bpw"], name
        checked += 1
    assert checked >= 25


@pytest.mark.parametrize("name,ne0,bpw", [
    ("iq4_ks", 4096, 4.25 + 32 / 4096), ("iq2_ks", 2048, 2.1875 + 16 / 2048),
    ("iq4_kss", 4096, 4.0 + 32 / 4096), ("q8_KV", 4096, 8.0 + 64 / 4096),
    ("q4_K", 4096, 4.5), ("q6_K", 256, 6.5625), ("mxfp4", 576, 4.25), ("q8_0", 32, 8.5),
])
def test_bits_per_weight_from_the_spec(name, ne0, bpw):
    assert get_type(name).bpw(ne0) == pytest.approx(bpw, abs=1e-12)


def test_row_meta_counted_once_per_row():
    # 3 experts x 5 rows of 512 as iq4_ks: 15 rows x (4 + 2 x 136)
    assert tensor_nbytes("iq4_ks", (3, 5, 512)) == 15 * (4 + 2 * 136)


@pytest.mark.parametrize("requested,mainline,ik", [
    ("q2_K", "q4_0", "iq4_nl"), ("q3_K", "q4_0", "iq4_nl"), ("q4_K", "q5_0", "q5_0"),
    ("q5_K", "q5_1", "q6_0"), ("q6_K", "q8_0", "q8_0"), ("iq4_xs", "iq4_nl", "iq4_nl"),
    ("iq3_s", "iq4_nl", "iq4_nl"), ("q4_0", "q4_0", "q4_0"), ("mxfp4", "mxfp4", "mxfp4"),
])
def test_fallback_on_576_wide_rows(requested, mainline, ik):
    assert resolve(requested, (1536, 576), "mainline") == mainline
    assert resolve(requested, (1536, 576), "ik") == ik
    assert resolve(requested, (576, 1536), "mainline") == get_type(requested).name


@pytest.mark.parametrize("requested,ik", [("iq4_ks", "iq4_nl"), ("iq5_ks", "q5_0"),
                                          ("iq5_k", "q6_0"), ("iq6_k", "q8_0"), ("iq2_k", "iq4_nl")])
def test_ik_only_types_fall_back_in_ik(requested, ik):
    assert resolve(requested, (10, 576), "ik") == ik


def test_mainline_ends_at_f16_when_no_block_fits():
    assert resolve("q4_K", (8, 100), "mainline") == "f16"
    assert resolve("q8_0", (8, 100), "mainline") == "f16"
    with pytest.raises(FallbackError):
        resolve("q1_0", (8, 576), "mainline")  # block 128, no fallback defined: llama-quantize throws


def test_ik_refuses_what_it_cannot_write():
    with pytest.raises(FallbackError):
        resolve("q4_0", (8, 100), "ik")


def test_unknown_and_missing_types_fail_with_the_name():
    with pytest.raises(UnknownTypeError, match="q4_k_m"):
        get_type("q4_k_m")
    with pytest.raises(TargetError, match="iq4_ks.*mainline"):
        type_in_target("iq4_ks", "mainline")
    with pytest.raises(TargetError, match="unknown target"):
        type_in_target("q4_0", "vllm")


def test_names_are_case_insensitive_but_spelled_as_ggml():
    assert get_type("Q4_k").name == "q4_K" and get_type("IQ4_KS").name == "iq4_ks"


def test_ik_files_sizes_from_their_types(smollm2):
    """Real ik llama-quantize outputs (row-scaled iq4_ks / iq2_ks / iq3_ks...): the bytes the
    catalog gives for each tensor's stored type equal the file's tensor data bytes."""
    ik = json.loads((FIXTURES / "ik-mix-types.json").read_text())["as_recipe"]
    for name, f in ik.items():
        for tensor, type_ in f["tensor_types"].items():
            assert tensor_nbytes(type_, smollm2.tensors[tensor].shape) == f["tensor_nbytes"][tensor]
        written = {k: v for k, v in f["tensor_types"].items()
                   if k in {t.name for t in smollm2.quantizable("ik")}}
        assert plan_bytes(smollm2, resolve_plan(smollm2, written, "ik"), "ik") == f["nbytes"], name
