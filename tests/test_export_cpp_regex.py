"""Exported rules applied by C++ ``std::regex``, parsed the way each llama-quantize parses them.

A small C++ program (compiled once per session into a temporary folder) reads many cases from
stdin and prints, per tensor name, the type of the first rule whose pattern ``std::regex_search``
finds in the name (ECMAScript grammar, as both tools compile it), or ``-``:

- mainline (tools/quantize/quantize.cpp): ``--tensor-type-file`` is read token by token with
  ``file >> arg``; each token is split at its first ``=``, the pattern lower-cased, the type
  compared with ``ggml_type_name`` case-insensitively (src/llama-quant.cpp: ``std::regex``).
- ik (examples/quantize/quantize.cpp of ik_llama.cpp 8337e4cd3861): ``--custom-q`` is split on
  ``,`` (``string_split``), each item at its first ``=``; the pattern is used as written, the
  type compared with ``ggml_type_name`` by ``strcmp`` (src/llama-quantize.cpp: a
  ``std::regex`` per rule, first ``regex_search`` match wins).

Recipes: the seeded generator of test_export.py's property tests, on SmolLM2's tensor list and
on a synthetic 60-layer MoE list, for both targets. Expected: every tensor of the recipe gets
exactly its planned type (after llama-quantize's fallback), every other tensor no rule.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from test_export import moe_quantizable, moe_shapes, random_recipe, smol_quantizable, smol_shapes

from quant import recipe_types, resolve
from search import plan_export, render_custom_q, render_tensor_types

N_RECIPES = 200

HARNESS = r"""
#include <algorithm>
#include <cctype>
#include <cstring>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

using Rule = std::pair<std::regex, std::string>;

// mainline parse_tensor_type_file + parse_tensor_type
static std::vector<Rule> parse_mainline(const std::string & file_text) {
    std::vector<Rule> rules;
    std::istringstream file(file_text);
    std::string arg;
    while (file >> arg) {
        const char * data = arg.c_str();
        const char * sep = std::strchr(data, '=');
        if (sep == nullptr || sep == data || std::strlen(sep) == 1) {
            std::cout << "PARSE-ERROR " << arg << "\n";
            continue;
        }
        std::string tn(data, sep - data);
        std::transform(tn.begin(), tn.end(), tn.begin(), ::tolower);
        std::string type(sep + 1);
        std::transform(type.begin(), type.end(), type.begin(), ::tolower);  // striequals
        rules.emplace_back(std::regex(tn), type);
    }
    return rules;
}

// ik parse_custom_quants (string_split<std::string> on ',', then the first '=')
static std::vector<Rule> parse_ik(const std::string & arg) {
    std::vector<Rule> rules;
    std::vector<std::string> items;
    size_t begin = 0, pos = arg.find(',');
    while (pos != std::string::npos) {
        items.push_back(arg.substr(begin, pos - begin));
        begin = pos + 1;
        pos = arg.find(',', begin);
    }
    items.push_back(arg.substr(begin));
    for (const auto & item : items) {
        auto eq = item.find('=');
        if (eq == std::string::npos) {
            std::cout << "PARSE-ERROR " << item << "\n";
            continue;
        }
        rules.emplace_back(std::regex(item.substr(0, eq)), item.substr(eq + 1));
    }
    return rules;
}

// stdin: cases of "<target> <n_text_lines> <n_names>", the rule text lines, the names
int main() {
    std::ios::sync_with_stdio(false);
    std::string target;
    size_t n_lines, n_names;
    while (std::cin >> target >> n_lines >> n_names) {
        std::string line, text;
        std::getline(std::cin, line);
        for (size_t i = 0; i < n_lines; ++i) {
            std::getline(std::cin, line);
            text += line + "\n";
        }
        if (target == "ik" && !text.empty()) text.pop_back();  // one --custom-q argument
        std::vector<Rule> rules = target == "ik" ? parse_ik(text) : parse_mainline(text);
        std::cout << "CASE " << rules.size() << "\n";
        for (size_t i = 0; i < n_names; ++i) {
            std::getline(std::cin, line);
            std::string hit = "-";
            for (const auto & r : rules) {
                if (std::regex_search(line, r.first)) { hit = r.second; break; }
            }
            std::cout << hit << "\n";
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="session")
def regex_harness(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++, c++ or clang++) on PATH to build the std::regex "
                    "harness: apt-get install g++")
    folder = tmp_path_factory.mktemp("regex-harness")
    src, exe = folder / "harness.cpp", folder / "harness"
    src.write_text(HARNESS)
    subprocess.run([cxx, "-std=c++17", "-O1", str(src), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    return exe


def _rule_text(plan, target: str) -> str:
    """What the exporter hands each tool: the tensor-type file, or one --custom-q argument."""
    if target == "mainline":
        return render_tensor_types(plan.rules)
    return ",".join(render_custom_q(plan.rules).splitlines())


def _cases(names, shapes, n, seed):
    """(target, rule text, all names, expected {name: type}) for n seeded random recipes."""
    rng = np.random.default_rng(seed)
    cache = {("types", t): recipe_types(t) for t in ("mainline", "ik")}
    all_names = list(shapes)
    for i in range(n):
        target = ("mainline", "ik")[i % 2]
        recipe = random_recipe(rng, names, shapes, target, cache)
        plan = plan_export(recipe, shapes, target)
        expected = {k: resolve(t, shapes[k], target) for k, t in recipe.items()}
        yield target, _rule_text(plan, target), all_names, expected


def _run(exe, cases) -> None:
    """Feed every case to one harness process; assert the tool's first-match type per name."""
    cases = list(cases)
    stdin = []
    for target, text, names, _ in cases:
        lines = text.splitlines()
        stdin += [f"{target} {len(lines)} {len(names)}", *lines, *names]
    out = subprocess.run([str(exe)], input="\n".join(stdin) + "\n", capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert not [o for o in out if o.startswith("PARSE-ERROR")], out[:5]
    pos = 0
    for k, (target, text, names, expected) in enumerate(cases):
        assert out[pos].startswith("CASE "), out[pos]
        got = dict(zip(names, out[pos + 1: pos + 1 + len(names)]))
        pos += 1 + len(names)
        want = {n: expected.get(n, "-") for n in names}
        if target == "mainline":  # the type name is compared case-insensitively
            want = {n: t.lower() for n, t in want.items()}
        bad = {n: (got[n], want[n]) for n in names if got[n] != want[n]}
        assert not bad, f"case {k} ({target}): {dict(list(bad.items())[:5])}\n{text[:500]}"
    assert pos == len(out)


def test_cpp_regex_gives_smollm2_tensors_their_planned_types(regex_harness, smollm2):
    shapes = smol_shapes(smollm2)
    _run(regex_harness, _cases(smol_quantizable(shapes), shapes, N_RECIPES, seed=16))


def test_cpp_regex_gives_moe_tensors_their_planned_types(regex_harness):
    shapes = moe_shapes()
    _run(regex_harness, _cases(moe_quantizable(shapes), shapes, N_RECIPES, seed=17))


def test_harness_applies_first_match_and_each_tools_case_rule(regex_harness):
    """Hand-made rules: the harness itself does what the tools do (it can fail)."""
    names = ["blk.1.attn_q.weight", "blk.12.attn_q.weight", "output.weight"]
    mainline = "BLK\\.1\\.=Q8_0\nattn_q=q4_0\n"  # pattern lower-cased: both rules can match
    ik = "BLK\\.1\\.=q8_0,blk\\.1=q5_0,attn_q=q4_0"  # ik keeps the case: the first never hits
    cases = [("mainline", mainline, names, {names[0]: "q8_0", names[1]: "q4_0"}),
             ("ik", ik, names, {names[0]: "q5_0", names[1]: "q5_0"})]
    _run(regex_harness, cases)
    with pytest.raises(AssertionError):
        _run(regex_harness, [("ik", "attn_q=q4_0", names, {names[0]: "q4_0"})])
