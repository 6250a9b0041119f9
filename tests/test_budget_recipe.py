"""Budgets, the recipe format, and recipes extracted from quantized files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FIXTURES
from search import BudgetError, check_reachable, parse_budget
from search import FORMAT, RecipeError, build_recipe, load_recipe, recipe_from_gguf, save_recipe
from search import PlanError
from search import build_space

BASELINE = json.loads((FIXTURES / "baseline-sizes.json").read_text())


@pytest.mark.parametrize("text,unit,value", [
    ("4.1bpw", "bpw", 4.1), ("14.2GiB", "bytes", 14.2 * 2**30), ("900MiB", "bytes", 900 * 2**20),
    ("15GB", "bytes", 15e9), ("4.5 BPW", "bpw", 4.5), ("123456B", "bytes", 123456)])
def test_parse_budget(text, unit, value):
    b = parse_budget(text)
    assert b.unit == unit and b.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "4.1", "abc", "4.1bpww", "-3GiB", "0bpw", "1,5GiB"])
def test_malformed_budgets(text):
    # a bare number is ambiguous (bits per weight or bytes?) and refused
    with pytest.raises(BudgetError):
        parse_budget(text)


def test_bpw_budget_in_bytes_is_llama_quantize_s_arithmetic(smollm2):
    # pure Q4_0: 75785472 bytes = 4.5072 BPW; 4.5072bpw must include it, 4.5071bpw not
    n = smollm2.n_elements
    assert parse_budget("4.5073bpw").nbytes(n) >= 75785472 > parse_budget("4.5071bpw").nbytes(n)


def test_out_of_reach_budget_names_the_range(smollm2):
    lo, hi = build_space(smollm2, "mainline", ["q4_0", "q8_0"]).extremes()
    assert lo == BASELINE["files"]["pure-Q4_0"]["bytes"] and hi == BASELINE["files"]["pure-Q8_0"]["bytes"]
    with pytest.raises(BudgetError, match=r"smallest 72\.27 MiB.*largest 136\.40 MiB"):
        check_reachable(parse_budget("4.1bpw"), lo, hi, smollm2.n_elements, "mainline")
    assert check_reachable(parse_budget("5bpw"), lo, hi, smollm2.n_elements, "mainline") > lo


def test_recipe_of_the_release_file_is_exact(smollm2, tmp_path):
    r = recipe_from_gguf(smollm2)
    assert r.to_json()["format"] == FORMAT and r.target == "mainline"
    assert r.bytes == BASELINE["files"]["orig-Q4_1"]["bytes"] == smollm2.nbytes
    assert len(r.tensors) == 211 and r.tensors["token_embd.weight"] == "q8_0"
    back = load_recipe(save_recipe(r, tmp_path / "r.json"))
    assert back == r


def test_recipe_records_fallbacks(smollm2, mainline_mixes):
    plan = {n: "q4_K" for n in mainline_mixes["Q4_K_M"]}
    r = build_recipe(smollm2, plan, "mainline")
    assert r.tensors["blk.0.attn_q.weight"] == "q5_0" and r.tensors["blk.0.ffn_down.weight"] == "q4_K"
    assert r.requested["blk.0.attn_q.weight"] == "q4_K" and "blk.0.ffn_down.weight" not in r.requested


def test_a_hand_written_recipe_is_resolved_as_llama_quantize_would(smollm2, tmp_path):
    """token_embd at q4_K on 576-wide rows: written as q5_0 (the fallback), requested kept, bytes
    and BPW from the catalog's row sizes (computed here from the block table: q5_0 is 22 bytes
    per 32 weights, q4_0 18 per 32; f32 norms 4 bytes each)."""
    import json

    r = recipe_from_gguf(smollm2).to_json()
    r["tensors"] = {n: "q4_0" for n in r["tensors"]}
    r["tensors"]["token_embd.weight"] = "q4_K"
    for k in ("bytes", "bpw", "requested", "fixed_bytes"):
        r.pop(k)  # as a user might write it
    (tmp_path / "hand.json").write_text(json.dumps(r))
    got = load_recipe(tmp_path / "hand.json").resolved()
    assert got.tensors["token_embd.weight"] == "q5_0"
    assert got.requested == {"token_embd.weight": "q4_K"}
    shapes = {t.name: t.shape for t in smollm2.tensors.values()}
    n = lambda name: int(np.prod(shapes[name]))  # noqa: E731
    quantized = sum(n(k) for k in r["tensors"])
    want = (quantized - n("token_embd.weight")) // 32 * 18 + n("token_embd.weight") // 32 * 22 \
        + 4 * sum(n(k) for k in shapes if k not in r["tensors"])
    assert got.bytes == want and got.bpw == round(8 * want / smollm2.n_elements, 6)


def test_bad_recipes(smollm2, tmp_path):
    with pytest.raises(PlanError, match="lacks"):
        build_recipe(smollm2, {"blk.0.attn_q.weight": "q4_0"}, "mainline")
    plan = {t.name: "q4_0" for t in smollm2.quantizable()}
    with pytest.raises(PlanError, match="does not quantize"):
        build_recipe(smollm2, {**plan, "blk.99.attn_q.weight": "q4_0"}, "mainline")
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(RecipeError, match="format"):
        load_recipe(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{nope")
    with pytest.raises(RecipeError, match="not a JSON"):
        load_recipe(tmp_path / "y.json")
