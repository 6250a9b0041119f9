"""Exported llama-quantize rules give each tensor its planned (resolved) type, as the CLIs read them.

The rules are applied here the way llama-quantize applies them (spec 3.4): first rule whose
pattern ``regex_search``-matches the name wins; mainline lower-cases the pattern first; ik splits
``--custom-q`` on ',' and each item on its first '='; mainline's file is whitespace-separated
``PATTERN=TYPE`` tokens. Recipes come from a seeded generator over the SmolLM2 tensor list and a
synthetic 60-layer MoE list, plus the 28 type lists real mainline llama-quantize wrote for SmolLM2.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from quant import FallbackError, TargetError, UserError, get_type, recipe_types, resolve
from search import (compact_rules, input_is_quantized, layer_regex, plan_export,
                    range_alternatives, write_export)

N_RECIPES = 500


# ---------------------------------------------------------------- reference application


def first_match(rules, name, target):
    for pattern, t in rules:
        if re.search(pattern.lower() if target == "mainline" else pattern, name):
            return t
    return None


def assert_rules_give(rules, expected, all_names, target):
    """Each tensor gets its expected type from exactly one rule; no other tensor matches a rule."""
    for pattern, t in rules:
        assert pattern.startswith("^") and pattern.endswith("$"), pattern
        assert "," not in pattern and "=" not in pattern and not re.search(r"\s", pattern), pattern
        assert not re.search(r"(?<!\\)\.", pattern), pattern  # every dot escaped
        assert t == get_type(t).name  # ggml_type_name spelling (ik compares case-sensitively)
    compiled = [(re.compile(p.lower() if target == "mainline" else p), t) for p, t in rules]
    for name in dict.fromkeys([*all_names, *expected]):
        hits = [t for rx, t in compiled if rx.search(name)]
        assert hits == ([expected[name]] if name in expected else []), (name, hits)


# ---------------------------------------------------------------- tensor lists


def smol_shapes(model):
    return {n: t.shape for n, t in model.tensors.items()}


def smol_quantizable(shapes):
    return [n for n, s in shapes.items()
            if len(s) == 2 and n.endswith(".weight") and "_norm" not in n]


def moe_shapes(n_layer=60, n_embd=7168, n_q=8192, n_kv=1024, n_exp=16, n_ff_exp=2048,
               vocab=129280):
    shapes = {"token_embd.weight": (vocab, n_embd), "output_norm.weight": (n_embd,),
              "output.weight": (vocab, n_embd)}
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes |= {b + "attn_norm.weight": (n_embd,), b + "attn_q.weight": (n_q, n_embd),
                   b + "attn_k.weight": (n_kv, n_embd), b + "attn_v.weight": (n_kv, n_embd),
                   b + "attn_output.weight": (n_embd, n_q), b + "ffn_norm.weight": (n_embd,),
                   b + "ffn_gate_inp.weight": (n_exp, n_embd),
                   b + "ffn_gate_exps.weight": (n_exp, n_ff_exp, n_embd),
                   b + "ffn_up_exps.weight": (n_exp, n_ff_exp, n_embd),
                   b + "ffn_down_exps.weight": (n_exp, n_embd, n_ff_exp),
                   b + "ffn_gate_shexp.weight": (n_ff_exp, n_embd),
                   b + "ffn_up_shexp.weight": (n_ff_exp, n_embd),
                   b + "ffn_down_shexp.weight": (n_embd, n_ff_exp)}
    return shapes


def moe_quantizable(shapes):
    return [n for n, s in shapes.items()
            if len(s) >= 2 and "_norm" not in n and "ffn_gate_inp" not in n]


# ---------------------------------------------------------------- recipe generator


def allowed_types(shape, target):
    ok = []
    for t in recipe_types(target):
        try:
            resolve(t, shape, target)
            ok.append(t)
        except FallbackError:
            pass
    return ok


def random_recipe(rng, names, shapes, target, cache):
    """One of three styles: i.i.d. types, per-role runs of layers, uniform with exceptions."""
    pool = list(rng.choice(cache["types", target], size=int(rng.integers(1, 6)), replace=False))
    style = int(rng.integers(0, 3))
    recipe, current = {}, {}
    for name in names:
        ne0 = shapes[name][-1]
        if (ne0, target) not in cache:
            cache[ne0, target] = allowed_types(shapes[name], target)
        ok = cache[ne0, target]
        choices = [t for t in pool if t in ok] or ok
        role = re.sub(r"\d+", "#", name)
        if style == 0 or role not in current or (style == 1 and rng.random() < 0.2):
            current[role] = str(rng.choice(choices))
        exception = style == 2 and rng.random() < 0.03
        recipe[name] = str(rng.choice(ok)) if exception else current[role]
    return recipe


def run_property(names, shapes, n, seed, targets=("mainline", "ik")):
    rng, cache = np.random.default_rng(seed), {("types", t): recipe_types(t) for t in targets}
    all_names = list(shapes)
    for i in range(n):
        target = targets[i % len(targets)]
        recipe = random_recipe(rng, names, shapes, target, cache)
        plan = plan_export(recipe, shapes, target)
        expected = {k: resolve(t, shapes[k], target) for k, t in recipe.items()}
        assert_rules_give(plan.rules, expected, all_names, target)
        assert_reparsed(plan.rules, target)


def assert_reparsed(rules, target):
    """The rules survive each CLI's own parsing unchanged."""
    if target == "ik":
        items = ",".join(f"{p}={t}" for p, t in rules).split(",")
    else:
        items = "".join(f"{p}={t}\n" for p, t in rules).split()
    assert [tuple(item.split("=", 1)) for item in items] == list(rules)


# ---------------------------------------------------------------- tests


def test_random_recipes_on_smollm2_give_back_every_planned_type(smollm2):
    shapes = smol_shapes(smollm2)
    names = smol_quantizable(shapes)
    assert len(names) == 211
    run_property(names, shapes, N_RECIPES, seed=1)


def test_random_recipes_on_a_60_layer_moe_give_back_every_planned_type():
    shapes = moe_shapes()
    run_property(moe_quantizable(shapes), shapes, N_RECIPES, seed=2)
    odd = moe_shapes(n_embd=2880, n_q=4096, n_kv=512, n_ff_exp=2880)  # rows that fall back
    run_property(moe_quantizable(odd), odd, 20, seed=3)


def test_types_mainline_llama_quantize_wrote_for_smollm2_come_back(smollm2, mainline_mixes):
    shapes = smol_shapes(smollm2)
    for name, types in mainline_mixes.items():
        types = {k: v for k, v in types.items() if len(shapes[k]) >= 2}
        rules = compact_rules(types, shapes, "mainline")
        assert_rules_give(rules, types, shapes, "mainline")


def test_consecutive_layers_collapse_into_digit_ranges(smollm2):
    shapes = smol_shapes(smollm2)
    recipe = {n: "q8_0" for n in smol_quantizable(shapes)}
    recipe |= {f"blk.{i}.ffn_down.weight": "q6_K" for i in range(10, 26)}
    rules = compact_rules(recipe, shapes, "mainline")
    assert (r"^blk\.(1[0-9]|2[0-5])\.ffn_down\.weight$", "q6_K") in rules
    assert (r"^blk\.([0-9]|2[6-9])\.ffn_down\.weight$", "q8_0") in rules
    assert len(rules) == 4  # plus token_embd and one rule for the six other roles on every layer


@pytest.mark.parametrize("seed", range(4))
def test_range_alternatives_match_exactly_the_range(seed):
    rng = np.random.default_rng(seed)
    numbers = [str(n) for n in range(1200)] + ["00", "07", "010"]
    for _ in range(60):
        lo, hi = sorted(int(x) for x in rng.integers(0, 1100, size=2))
        rx = re.compile("^(" + "|".join(range_alternatives(lo, hi)) + ")$")
        assert [s for s in numbers if rx.search(s)] == [str(n) for n in range(lo, hi + 1)]
    assert layer_regex([3]) == "3"


def test_odd_names_are_escaped_and_survive_lowercasing():
    names = ["blk.0.Attn_Q.weight", "blk.1.Attn_Q.weight", "x,y=z w.weight", "blk.2.attn_q.weight",
             "blk.0.attn_q.weight", "blk.007.attn_q.weight", "blk.1.attn_q_b.weight"]
    recipe = {n: "q8_0" if i % 2 else "q4_0" for i, n in enumerate(names)}
    for target in ("mainline", "ik"):
        assert_rules_give(compact_rules(recipe, names, target), recipe, names, target)


def test_fallbacks_are_in_the_rules_and_in_the_notes(smollm2):
    shapes = smol_shapes(smollm2)
    recipe = {n: "q4_K" for n in smol_quantizable(shapes)}
    plan = plan_export(recipe, shapes, "mainline")
    assert "blk.0.attn_q.weight: q4_K falls back to q5_0 on rows of 576 (mainline)" in plan.notes
    assert first_match(plan.rules, "blk.0.ffn_down.weight", "mainline") == "q4_K"  # ne0 1536 fits
    plan = plan_export({n: "q5_K" for n in recipe}, shapes, "ik")
    assert "token_embd.weight: q5_K falls back to q6_0 on rows of 576 (ik)" in plan.notes
    assert first_match(plan.rules, "blk.3.attn_v.weight", "ik") == "q6_0"


def test_a_type_the_target_lacks_raises_target_error(smollm2):
    shapes = smol_shapes(smollm2)
    recipe = {n: "q8_0" for n in smol_quantizable(shapes)}
    for target, bad in (("mainline", "iq4_ks"), ("ik", "tq1_0")):
        with pytest.raises(TargetError) as err:
            plan_export(recipe | {"blk.3.ffn_up.weight": bad}, shapes, target)
        assert "\n" not in str(err.value) and bad in str(err.value)


def fake_quantize(tmp_path):
    fake = tmp_path / "fake-quantize"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return fake


def run_script(script, fake, *args, flags=""):
    env = {"PATH": "/usr/bin:/bin", "LLAMA_QUANTIZE": str(fake), "QUANTIZE_FLAGS": flags}
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_mainline_export_runs_llama_quantize_with_the_tensor_type_file(smollm2, tmp_path):
    shapes = smol_shapes(smollm2)
    recipe = {n: ("q6_K" if "ffn_down" in n else "q4_0") for n in smol_quantizable(shapes)}
    assert input_is_quantized(smollm2)
    paths, notes = write_export(recipe, shapes, "mainline", "mainline", tmp_path / "out",
                                input_quantized=True)
    rules_file, script = paths
    assert not any("ffn_down" in n for n in notes)  # 1536-wide rows keep q6_K
    tokens = rules_file.read_text().split()
    assert tokens and all("=" in tok for tok in tokens)
    argv = run_script(script, fake_quantize(tmp_path), "in.gguf", "out.gguf", "4",
                      flags="--dry-run")
    assert argv == ["--dry-run", "--allow-requantize", "--tensor-type-file", str(rules_file),
                    "in.gguf", "out.gguf", "Q4_0", "4"]
    assert "--tensor-type '^blk" in script.read_text()


def test_ik_export_passes_every_rule_in_one_custom_q(smollm2, tmp_path):
    shapes = smol_shapes(smollm2)
    recipe = {n: ("iq4_ks" if "ffn" in n else "q6_0") for n in smol_quantizable(shapes)}
    imatrix = tmp_path / "imatrix.dat"
    (rules_file, script), _ = write_export(recipe, shapes, "ik", "ik", tmp_path / "out",
                                           imatrix=imatrix)
    argv = run_script(script, fake_quantize(tmp_path), "in.gguf", "out.gguf")
    assert argv[:2] == ["--imatrix", str(imatrix)] and argv[2] == "--custom-q"
    assert argv[3].split(",") == rules_file.read_text().split()
    # q6_0 holds the most weights: token_embd 49152x576 > ffn_down 30x576x1536 (gate/up: iq4_nl)
    assert argv[4:] == ["in.gguf", "out.gguf", "Q6_0"]
    rules = [tuple(r.split("=", 1)) for r in argv[3].split(",")]
    expected = {k: resolve(t, shapes[k], "ik") for k, t in recipe.items()}
    assert_rules_give(rules, expected, shapes, "ik")


def test_export_refuses_what_llama_quantize_would_not_take(smollm2, tmp_path):
    shapes = smol_shapes(smollm2)
    recipe = {n: "q8_0" for n in smol_quantizable(shapes)}
    with pytest.raises(UserError, match="legacy .dat"):
        write_export(recipe, shapes, "ik", "ik", tmp_path, imatrix=tmp_path / "imatrix.gguf")
    # a mainline recipe exports for ik only where ik writes the very same types
    (rules_file, _), _ = write_export(recipe, shapes, "mainline", "ik", tmp_path / "ik")
    assert rules_file.name == "custom-q.txt"
    with pytest.raises(UserError, match="does not exist in ik"):
        write_export(recipe | {"blk.0.attn_q.weight": "nvfp4"}, shapes, "mainline", "ik", tmp_path)
    ik_recipe = recipe | {"blk.0.ffn_down.weight": "iq4_ks"}
    with pytest.raises(UserError, match="does not exist in mainline"):
        write_export(ik_recipe, shapes, "ik", "mainline", tmp_path)
    with pytest.raises(UserError, match="not in the model"):
        plan_export(recipe | {"blk.99.attn_q.weight": "q8_0"}, shapes, "mainline")
