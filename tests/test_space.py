"""The search space: groups, options after fallback, ties, pins, parameter counts."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_tiny_gguf
from objectives import open_gguf
from search import allocate, to_plan, total, unit_table
from search import plan_bytes, resolve_plan
from search import SpaceError, build_space

TYPES = ["q4_0", "q4_1", "q5_0", "q8_0", "q4_K", "q6_K", "mxfp4"]


def test_smollm2_groups_cover_every_tensor_once(smollm2):
    space = build_space(smollm2, "mainline", TYPES)
    names = [n for g in space.groups for n in g.tensors]
    assert sorted(names) == sorted(t.name for t in smollm2.quantizable())
    assert len(space.groups) <= 64
    for g in space.groups:
        assert list(g.nbytes[0]) == sorted(g.nbytes[0])  # options sorted by bytes
    attn_q = next(g for g in space.groups if g.name.startswith("attn_q@"))
    assert "q4_K" not in attn_q.options and "q5_0" in attn_q.options  # 576-wide rows fall back
    down = next(g for g in space.groups if g.name.startswith("ffn_down@"))
    assert "q4_K" in down.options and "q6_K" in down.options


def test_space_bytes_agree_with_the_plan_size(smollm2):
    space = build_space(smollm2, "mainline", TYPES)
    table = unit_table(space)
    rng = np.random.default_rng(0)
    for _ in range(5):
        levels = [int(rng.integers(len(g.options))) for g in space.groups]
        plan = to_plan(table, np.asarray(levels)[table.group])
        written = resolve_plan(smollm2, plan, "mainline")
        assert space.bytes_at(dict(zip([g.name for g in space.groups], levels))) == \
            plan_bytes(smollm2, written, "mainline")


def test_allocated_recipes_fit_pure_q4_0_budget(smollm2):
    budget = 75785472  # pure Q4_0, as llama-quantize wrote it
    space = build_space(smollm2, "mainline", TYPES)
    table = unit_table(space)
    rng = np.random.default_rng(1)
    for _ in range(10):
        levels = [int(rng.integers(len(g.options))) for g in space.groups]
        c = allocate(table, levels, budget, space.fixed_bytes)
        used = space.fixed_bytes + total(table, c)
        assert 0.995 * budget <= used <= budget
        written = resolve_plan(smollm2, to_plan(table, c), "mainline")
        assert plan_bytes(smollm2, written, "mainline") == used


def test_pins(smollm2):
    space = build_space(smollm2, "mainline", TYPES, pins=["token_embd=q8_0", r"blk\.0\.=q4_K"])
    pinned = {g.tensors[0]: g.options for g in space.groups if g.name.startswith("pin:")}
    assert pinned["token_embd.weight"] == ("q8_0",)
    assert pinned["blk.0.attn_q.weight"] == ("q5_0",)  # pinned q4_K falls back on 576-wide rows
    assert pinned["blk.0.ffn_down.weight"] == ("q4_K",)
    with pytest.raises(SpaceError, match="bad regex"):
        build_space(smollm2, "mainline", TYPES, pins=["blk\\.(=q4_0"])
    with pytest.raises(SpaceError, match="REGEX=TYPE"):
        build_space(smollm2, "mainline", TYPES, pins=["q4_0"])
    with pytest.raises(SpaceError, match="cannot apply"):
        build_space(smollm2, "mainline", TYPES, pins=["attn_q=q1_0"])


def _moe_60(tmp_path):
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    tensors = {"token_embd.weight": z(64, 256)}
    for i in range(60):
        p = f"blk.{i}."
        tensors |= {p + "attn_norm.weight": z(256), p + "attn_q.weight": z(256, 256),
                    p + "attn_k.weight": z(64, 256), p + "attn_v.weight": z(64, 256),
                    p + "attn_output.weight": z(256, 256), p + "ffn_gate_inp.weight": z(4, 256),
                    p + "ffn_gate_exps.weight": z(4, 32, 256), p + "ffn_up_exps.weight": z(4, 32, 256),
                    p + "ffn_down_exps.weight": z(4, 256, 32), p + "ffn_gate_shexp.weight": z(32, 256),
                    p + "ffn_up_shexp.weight": z(32, 256), p + "ffn_down_shexp.weight": z(256, 32)}
    tensors["output.weight"] = z(64, 256)
    return open_gguf(write_tiny_gguf(tmp_path / "moe.gguf", tensors, block_count=60))


def test_60_layer_moe_parameter_count_and_ties(tmp_path):
    model = _moe_60(tmp_path)
    space = build_space(model, "ik", ["q4_0", "q8_0", "iq4_ks", "q6_0"])
    assert len(space.groups) <= 64
    tied = [g for g in space.groups if g.name.startswith("ffn_gate_exps+ffn_up_exps@")]
    assert tied and all(len(set(g.unit_ids())) * 2 == len(g.tensors) for g in tied)
    table = unit_table(space)
    c = allocate(table, [0] * len(space.groups), sum(space.extremes()) // 2, space.fixed_bytes)
    plan = to_plan(table, c)
    for i in range(60):
        assert plan[f"blk.{i}.ffn_gate_exps.weight"] == plan[f"blk.{i}.ffn_up_exps.weight"]


def test_mainline_does_not_tie_up_and_gate_experts(tmp_path):
    space = build_space(_moe_60(tmp_path), "mainline", ["q4_0", "q8_0"])
    assert not [g for g in space.groups if "+" in g.name]
    assert [g for g in space.groups if g.name.startswith("ffn_up_exps@")]


def test_bands_start_at_the_first_expert_layer(tmp_path):
    """3 dense layers, then 7 MoE layers, bands of 2 layers: the expert bands are 3-4, 5-6, 7-8
    and 9 (from the boundary), the dense ffn bands 0-1 and 2."""
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    tensors = {"token_embd.weight": z(64, 256), "output.weight": z(64, 256)}
    for i in range(10):
        p = f"blk.{i}."
        tensors |= {p + "attn_q.weight": z(256, 256)}
        if i < 3:
            tensors |= {p + "ffn_down.weight": z(256, 32)}
        else:
            tensors |= {p + "ffn_down_exps.weight": z(4, 256, 32)}
    model = open_gguf(write_tiny_gguf(tmp_path / "d.gguf", tensors, block_count=10))
    names = [g.name for g in build_space(model, "ik", ["q4_0", "q8_0"], max_params=17).groups]
    assert [n for n in names if n.startswith("ffn_down_exps")] == [
        "ffn_down_exps@3-4", "ffn_down_exps@5-6", "ffn_down_exps@7-8", "ffn_down_exps@9"]
    assert [n for n in names if n.startswith("ffn_down@")] == ["ffn_down@0-1", "ffn_down@2"]
