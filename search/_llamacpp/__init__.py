"""llama.cpp's formats and rules, each table once: FTYPEs, default mixes, sizes and budgets,
the recipe file, and the exports both projects' llama-quantize accept."""

from ._budget import Budget, BudgetError, check_reachable, human_size, parse_budget, parse_budgets
from ._export import (ExportPlan, check_rules, choose_ftype, compact_rules, input_is_quantized, layer_regex,
                      plan_export, range_alternatives, render_custom_q, render_ik_script,
                      render_mainline_script, render_tensor_types, write_export, write_plan)
from ._ftypes import (FTYPES, MixError, base_type, canonical_ftype, ftype_id, ftype_of_type,
                      needs_imatrix)
from ._mixes import mix_types, use_more_bits
from ._perplexity import ToolError, find_tool, parse_kld, project_of, run_tool
from ._recipe import FORMAT, Recipe, RecipeError, build_recipe, file_sha256, load_recipe
from ._recipe import provenance, recipe_from_gguf, save_recipe
from ._sizes import PlanError, fixed_bytes, plan_bytes, resolve_plan, tensor_options
from ._sizes import uniform_plans

__all__ = ["Budget", "BudgetError", "ExportPlan", "FORMAT", "FTYPES", "MixError", "PlanError",
           "Recipe", "RecipeError", "ToolError", "base_type", "choose_ftype", "build_recipe", "canonical_ftype", "find_tool", "parse_kld", "project_of", "run_tool",
           "check_reachable", "check_rules", "compact_rules", "file_sha256", "fixed_bytes",
           "ftype_id", "ftype_of_type", "human_size", "input_is_quantized", "layer_regex",
           "load_recipe", "mix_types", "needs_imatrix", "parse_budget", "parse_budgets",
           "plan_bytes", "plan_export", "provenance", "range_alternatives", "recipe_from_gguf", "render_custom_q",
           "render_ik_script", "render_mainline_script",
           "render_tensor_types", "resolve_plan", "save_recipe", "tensor_options",
           "uniform_plans", "use_more_bits", "write_export", "write_plan"]
